"""fastvec.VectorEnv against gymnasium's SyncVectorEnv: same seeds, same everything."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from fastvec import VectorEnv
from tests import envs


def _same(a, b, what):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{what}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _same(a[key], b[key], f"{what}[{key!r}]")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert a.shape == b.shape, what
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{what}[{i}]")
    elif a is None or b is None:
        assert a is b, what
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("factory", [envs.make_cartpole, envs.make_dict], ids=["cartpole", "dict"])
def test_matches_sync_vector_env(mode, factory) -> None:
    n = 4
    reference = SyncVectorEnv([factory] * n, autoreset_mode=mode)
    fast = VectorEnv([factory] * n, autoreset_mode=mode, num_workers=2, start_method="fork")
    try:
        assert fast.single_observation_space == reference.single_observation_space
        assert fast.observation_space == reference.observation_space
        assert fast.action_space == reference.action_space
        assert fast.metadata["autoreset_mode"] == mode
        obs_f, info_f = fast.reset(seed=42)
        obs_r, info_r = reference.reset(seed=42)
        _same(obs_f, obs_r, "reset obs")
        _same(info_f, info_r, "reset info")
        reference.action_space.seed(1)
        ended = 0
        for t in range(300):
            actions = reference.action_space.sample()
            out_f = fast.step(actions)
            out_r = reference.step(actions)
            for name, a, b in zip(["obs", "rewards", "terminations", "truncations", "infos"], out_f, out_r):
                _same(a, b, f"step {t} {name}")
            assert out_f[1].dtype == np.float64
            ended += int(np.sum(out_r[2] | out_r[3]))
        assert ended > 0
        # partial reset by mask
        mask = np.array([True, False, True, False])
        obs_f, info_f = fast.reset(seed=[7, None, 8, None], options={"reset_mask": mask})
        obs_r, info_r = reference.reset(seed=[7, None, 8, None], options={"reset_mask": mask})
        _same(obs_f, obs_r, "masked reset obs")
        _same(info_f, info_r, "masked reset info")
        actions = reference.action_space.sample()
        for name, a, b in zip(["obs", "rewards", "terminations", "truncations", "infos"], fast.step(actions), reference.step(actions)):
            _same(a, b, f"after masked reset {name}")
    finally:
        fast.close()
        reference.close()


def test_call_get_set_attr_and_render() -> None:
    with VectorEnv([lambda: envs.ImageEnv(render_mode="rgb_array")] * 3, num_workers=2, start_method="fork") as venv:
        assert venv.render_mode == "rgb_array"
        venv.reset(seed=0)
        assert venv.get_attr("episode_length") == (37, 37, 37)
        venv.set_attr("episode_length", [1, 2, 3])
        assert venv.call("episode_length") == (1, 2, 3)
        frames = venv.render()
        assert len(frames) == 3 and frames[0].shape == (8, 8, 3)
        with pytest.raises(ValueError, match="length equal"):
            venv.set_attr("episode_length", [1, 2])
    assert venv.closed


def test_reset_mask_validation() -> None:
    with VectorEnv([envs.make_cartpole] * 2, num_workers=2, start_method="fork") as venv:
        with pytest.raises(TypeError, match="numpy array"):
            venv.reset(options={"reset_mask": [True, False]})
        with pytest.raises(ValueError, match="at least one True"):
            venv.reset(options={"reset_mask": np.zeros(2, dtype=bool)})
        with pytest.raises(ValueError, match="DISABLED"):
            VectorEnv([envs.make_cartpole], autoreset_mode=AutoresetMode.DISABLED)


def test_cleanrl_style_loop_with_record_episode_statistics() -> None:
    venv = gym.wrappers.vector.RecordEpisodeStatistics(VectorEnv([envs.make_cartpole] * 4, start_method="fork"))
    try:
        venv.reset(seed=1)
        returns = []
        for _ in range(200):
            _, _, _, _, infos = venv.step(venv.action_space.sample())
            if "episode" in infos:
                returns += list(infos["episode"]["r"][infos["_episode"]])
        assert returns and all(r > 0 for r in returns)
    finally:
        venv.close()
