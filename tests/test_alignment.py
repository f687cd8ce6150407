"""Same seeds, same actions: fastvec gives exactly what SB3's DummyVecEnv gives."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

from fastvec import SubprocVecEnv
from tests import envs

STEPS = 1000
CASES = {
    "CartPole-v1": (envs.make_cartpole, 6),
    "Pendulum-v1": (envs.make_pendulum, 4),
    "image-84x84x4": (envs.make_image, 3),
    "dict-obs": (envs.make_dict, 5),
}


def _assert_same_obs(a, b, what: str) -> None:
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), what
        for key in a:
            _assert_same_obs(a[key], b[key], f"{what}[{key!r}]")
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    np.testing.assert_array_equal(a, b, err_msg=what)


def _assert_same_info(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), f"{what}: keys {sorted(a)} != {sorted(b)}"
    for key in a:
        if key == "terminal_observation":
            _assert_same_obs(a[key], b[key], f"{what}[terminal_observation]")
        else:
            assert a[key] == b[key], f"{what}[{key!r}]: {a[key]!r} != {b[key]!r}"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("num_workers", [2, 3])
def test_matches_dummy_vec_env(name: str, num_workers: int) -> None:
    factory, num_envs = CASES[name]
    reference = DummyVecEnv([factory] * num_envs)
    fast = SubprocVecEnv([factory] * num_envs, start_method="fork", num_workers=num_workers)
    try:
        assert fast.observation_space == reference.observation_space
        assert fast.action_space == reference.action_space
        for venv in (reference, fast):
            venv.seed(123)
            venv.action_space.seed(7)
        _assert_same_obs(fast.reset(), reference.reset(), "reset obs")
        for i in range(num_envs):
            _assert_same_info(fast.reset_infos[i], reference.reset_infos[i], f"reset_infos[{i}]")
        rng = np.random.default_rng(0)
        episodes_ended = 0
        for t in range(STEPS):
            if isinstance(reference.action_space, type(fast.action_space)) and hasattr(reference.action_space, "n"):
                actions = rng.integers(0, reference.action_space.n, size=num_envs)
            else:
                low, high = reference.action_space.low, reference.action_space.high
                actions = rng.uniform(low, high, size=(num_envs, *reference.action_space.shape)).astype(np.float32)
            obs_r, rew_r, done_r, infos_r = reference.step(actions)
            obs_f, rew_f, done_f, infos_f = fast.step(actions)
            _assert_same_obs(obs_f, obs_r, f"step {t} obs")
            # float64 rewards, as SB3's SubprocVecEnv returns them (DummyVecEnv stores float32)
            assert rew_f.dtype == np.float64 and done_f.dtype == done_r.dtype
            np.testing.assert_array_equal(rew_f.astype(rew_r.dtype), rew_r, err_msg=f"step {t} rewards")
            np.testing.assert_array_equal(done_f, done_r, err_msg=f"step {t} dones")
            assert len(infos_f) == num_envs
            for i in range(num_envs):
                _assert_same_info(infos_f[i], infos_r[i], f"step {t} infos[{i}]")
                if done_r[i]:
                    _assert_same_info(fast.reset_infos[i], reference.reset_infos[i], f"step {t} reset_infos[{i}]")
            episodes_ended += int(done_r.sum())
        assert episodes_ended > 0, "the comparison must cross episode boundaries"
    finally:
        fast.close()
        reference.close()
