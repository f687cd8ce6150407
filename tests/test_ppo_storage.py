"""The rollout storage is fastvec's ring (zero copy), and every backend fills its ring the same way."""

from __future__ import annotations

import functools
import os

import gymnasium as gym
import numpy as np
import psutil
import pytest
import torch

from ppo.backends import FastvecBackend, GymBackend, SB3SubprocBackend, make_backend, make_env
from ppo.storage import RolloutStorage

NUM_STEPS = 6


@pytest.fixture(autouse=True, scope="module")
def _multiprocessing_heap():
    """gymnasium's AsyncVectorEnv allocates its shared memory from multiprocessing's heap, which keeps
    its first arena mapped for the life of the process by design; map it before the per-test leak check."""
    import multiprocessing

    array = multiprocessing.get_context("fork").Array("d", 16)
    del array
    yield


def _fastvec(env_id: str, num_envs: int, num_workers: int = 2) -> FastvecBackend:
    fns = [functools.partial(make_env, env_id) for _ in range(num_envs)]
    return FastvecBackend(fns, NUM_STEPS + 1, num_workers=num_workers, start_method="fork")


def test_storage_tensors_share_memory_with_the_ring() -> None:
    backend = _fastvec("CartPole-v1", 4)
    storage = RolloutStorage(backend.ring, NUM_STEPS, (), torch.int64, torch.device("cpu"))
    try:
        views = backend.pool.ring
        assert storage.obs.data_ptr() == views.obs[0].ctypes.data
        assert backend.ring.rewards.data_ptr() == views.rewards.ctypes.data
        assert backend.ring.terminated.data_ptr() == views.terminated.ctypes.data
        assert backend.ring.truncated.data_ptr() == views.truncated.ctypes.data
        assert backend.ring.terminal_obs.data_ptr() == views.terminal_obs[0].ctypes.data
        slot = backend.reset([0, 1, 2, 3])
        storage.begin(slot)
        obs = storage.obs_at(0)
        assert obs.data_ptr() == views.obs[0][slot].ctypes.data  # a view of the slot, not a copy
        np.testing.assert_array_equal(obs.numpy(), views.obs[0][slot])
        # writing through numpy is visible in the tensor and the other way round
        views.obs[0][slot, 2, 1] = 123.0
        assert obs[2, 1].item() == 123.0
        storage.obs[slot, 3, 0] = -7.0
        assert views.obs[0][slot, 3, 0] == -7.0
        views.rewards[slot, 1] = 5.5
        assert backend.ring.rewards[slot, 1].item() == 5.5
        # the workers' next step lands in the next slot of the same memory
        next_slot = backend.step(np.zeros(4, dtype=np.int64))
        assert next_slot == (slot + 1) % (NUM_STEPS + 1)
        assert storage.obs_at(1).data_ptr() == views.obs[0][next_slot].ctypes.data
        np.testing.assert_array_equal(storage.obs_at(1).numpy(), views.obs[0][next_slot])
        del obs
    finally:
        storage.release()
        backend.close()


def test_fastvec_layouts(tmp_path) -> None:
    """num_workers=0 steps every env in this process; a fastvec.tune file sets the Pool's layout."""
    backend = _fastvec("CartPole-v1", 4, num_workers=0)
    try:
        assert backend.pool.worker_pids == [] and backend.pool.step_in_parent
    finally:
        backend.close()
    tuned = tmp_path / "tuned.json"
    tuned.write_text('{"config": {"num_workers": 2, "step_in_parent": false, "spin_ns": 0}}')
    backend = make_backend("fastvec", "CartPole-v1", 4, NUM_STEPS + 1, start_method="fork", fastvec_config=str(tuned))
    try:
        assert len(backend.pool.worker_pids) == 2 and backend.pool.spin_ns == 0
    finally:
        backend.close()
    # the file's start method, unless one is given: the trainer's default (fork) applies only where it names none
    tuned.write_text('{"config": {"num_workers": 2, "start_method": "forkserver"}}')
    for given, used in ((None, "forkserver"), ("spawn", "spawn")):
        backend = make_backend(
            "fastvec", "CartPole-v1", 2, NUM_STEPS + 1, start_method=given, default_start_method="fork", fastvec_config=str(tuned)
        )
        try:
            assert backend.pool.start_method == used
        finally:
            backend.close()


def _collect(backend, storage: RolloutStorage, actions: np.ndarray, seeds: list[int], rollouts: int = 3):
    """Run ``rollouts`` rollouts with the given actions; record copies of everything seen, step by step."""
    slot = backend.reset(seeds)
    record = []
    for r in range(rollouts):
        storage.begin(slot)
        seen_obs, seen_rewards, seen_term, seen_trunc, seen_final = [], [], [], [], []
        for t in range(NUM_STEPS):
            seen_obs.append(storage.obs_at(t).clone())
            slot = backend.step(actions[r * NUM_STEPS + t])
            ring = backend.ring
            seen_rewards.append(ring.rewards[slot].clone())
            seen_term.append(ring.terminated[slot].clone())
            seen_trunc.append(ring.truncated[slot].clone())
            ended = (ring.terminated[slot] | ring.truncated[slot]).nonzero().flatten()
            seen_final.append((ended.clone(), ring.terminal_obs[ended].clone()))
        rewards, terminated, truncated = storage.results()
        torch.testing.assert_close(storage.rollout_obs(), torch.cat(seen_obs))
        torch.testing.assert_close(rewards, torch.stack(seen_rewards))
        assert torch.equal(terminated, torch.stack(seen_term)) and torch.equal(truncated, torch.stack(seen_trunc))
        torch.testing.assert_close(storage.obs_at(NUM_STEPS), backend.ring.obs[slot])
        record.append(
            (storage.rollout_obs().clone(), rewards.clone(), terminated.clone(), truncated.clone(), seen_final)
        )
    return record


BACKENDS = {
    "fastvec": lambda fns: FastvecBackend(fns, NUM_STEPS + 1, num_workers=2, start_method="fork"),
    "fastvec-in-process": lambda fns: FastvecBackend(fns, NUM_STEPS + 1, num_workers=0),
    "gym-async": lambda fns: GymBackend(fns, NUM_STEPS + 1, asynchronous=True, start_method="fork"),
    "sb3-subproc": lambda fns: SB3SubprocBackend(fns, NUM_STEPS + 1, start_method="fork"),
}


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backends_fill_the_ring_like_the_serial_reference(name: str) -> None:
    """Same seeds and actions: identical rollouts, episode ends, truncation flags and final observations.

    A 7-step time limit on Pendulum makes truncations happen inside rollouts."""
    num_envs = 3
    fns = [functools.partial(gym.make, "Pendulum-v1", max_episode_steps=7) for _ in range(num_envs)]
    actions = np.random.default_rng(0).uniform(-2, 2, size=(3 * NUM_STEPS, num_envs, 1)).astype(np.float32)
    seeds = [11, 12, 13]
    results = []
    for make in (lambda fns: GymBackend(fns, NUM_STEPS + 1, asynchronous=False), BACKENDS[name]):
        backend = make(fns)
        storage = RolloutStorage(backend.ring, NUM_STEPS, (1,), torch.float32, torch.device("cpu"))
        try:
            results.append(_collect(backend, storage, actions, seeds))
        finally:
            storage.release()
            backend.close()
    reference, got = results
    truncations = 0
    for ref_rollout, got_rollout in zip(reference, got):
        for a, b in zip(ref_rollout[:4], got_rollout[:4]):
            torch.testing.assert_close(a, b)
        truncations += int(ref_rollout[3].sum())
        for (ref_ended, ref_final), (got_ended, got_final) in zip(ref_rollout[4], got_rollout[4]):
            assert torch.equal(ref_ended, got_ended)
            torch.testing.assert_close(ref_final, got_final)
    assert truncations == 2 * num_envs  # 18 steps, limit 7: each env was cut twice


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_ring_is_pinned_and_mirrored() -> None:
    """On CUDA the shared block is registered as page-locked memory and each slot is copied asynchronously."""
    backend = _fastvec("CartPole-v1", 4)
    storage = None
    try:
        backend.pin_memory()
        assert backend.ring.obs.is_pinned() and backend.ring.rewards.is_pinned()
        device = torch.device("cuda")
        storage = RolloutStorage(backend.ring, NUM_STEPS, (), torch.int64, device)
        slot = backend.reset([0, 1, 2, 3])
        storage.begin(slot)
        storage.arrived(slot)
        for t in range(NUM_STEPS):
            slot = backend.step(np.ones(4, dtype=np.int64))
            storage.arrived(slot)
            torch.cuda.synchronize()
            assert storage.obs_at(t + 1).device.type == "cuda"
            torch.testing.assert_close(storage.obs_at(t + 1).cpu(), backend.ring.obs[slot])
        rewards, _, _ = storage.results()
        assert rewards.device.type == "cuda" and rewards.shape == (NUM_STEPS, 4)
    finally:
        if storage is not None:
            storage.release()
        backend.close()


class _NoRenderArgument(gym.Env):
    """A user's env whose constructor has no render_mode argument (a common custom-env signature)."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, size: int = 4):
        self.size = size


def test_make_env_passes_render_mode_only_when_given() -> None:
    """gymnasium's make passes every keyword on to the constructor: render_mode=None made this env fail."""
    gym.register("fastvec-test/NoRenderArgument-v0", entry_point=_NoRenderArgument)
    try:
        assert make_env("fastvec-test/NoRenderArgument-v0").unwrapped.size == 4
    finally:
        gym.registry.pop("fastvec-test/NoRenderArgument-v0")


class _DoesNotRender(_NoRenderArgument):
    """Takes render_mode, but keeps gymnasium.Env.render's default (NotImplementedError)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = None):
        super().__init__()
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}


def test_a_video_of_an_env_that_does_not_render_is_skipped(tmp_path) -> None:
    """ppo.eval --video ended in a NotImplementedError traceback instead of its "no video" line."""
    from ppo.agent import Agent
    from ppo.eval import record_video

    gym.register("fastvec-test/DoesNotRender-v0", entry_point=_DoesNotRender)
    try:
        agent = Agent(_DoesNotRender.observation_space, _DoesNotRender.action_space)
        assert record_video(agent, "fastvec-test/DoesNotRender-v0", tmp_path / "video.gif") is None
    finally:
        gym.registry.pop("fastvec-test/DoesNotRender-v0")


def _make_in_parent_only(parent: int) -> gym.Env:
    if os.getpid() != parent:
        raise RuntimeError("this env is made in the calling process only")
    return gym.make("CartPole-v1")


def test_sb3_workers_that_could_not_make_the_env_are_not_left_behind() -> None:
    # the parent's own make succeeds, the workers' fail: SB3's constructor raises with its worker processes out of
    # reach, and the backend ends them (a library user kept them as zombies for the process's life, hunt83 bug 5)
    before = {child.pid for child in psutil.Process().children()}
    fns = [functools.partial(_make_in_parent_only, os.getpid()) for _ in range(3)]
    with pytest.raises(ValueError, match="its workers could not make the env"):
        SB3SubprocBackend(fns, NUM_STEPS + 1, start_method="fork")
    left = [(child.pid, child.status()) for child in psutil.Process().children() if child.pid not in before]
    assert left == []


def test_only_sb3_s_own_workers_are_ended(monkeypatch) -> None:
    """A process another part of the program started while SB3's constructor ran (a thread of a sweep) was killed
    with SB3's workers, taken for one of them (hunt88 bug 4)."""
    import multiprocessing
    import time

    from stable_baselines3.common.vec_env import SubprocVecEnv

    other = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    init = SubprocVecEnv.__init__

    def init_beside_another(self, *args, **kwargs):
        other.start()
        init(self, *args, **kwargs)

    monkeypatch.setattr(SubprocVecEnv, "__init__", init_beside_another)
    fns = [functools.partial(_make_in_parent_only, os.getpid()) for _ in range(2)]
    try:
        with pytest.raises(ValueError, match="its workers could not make the env"):
            SB3SubprocBackend(fns, NUM_STEPS + 1, start_method="fork")
        assert other.is_alive()
    finally:
        other.kill()
        other.join()
