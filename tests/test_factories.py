"""Env factories: each env is made from a copy of its factory of its own, as in a process of its own, and
shares with the caller what processes share (files, pipes, memory maps, multiprocessing's objects, shared
memory, shared torch tensors), as with SB3's SubprocVecEnv and gymnasium's AsyncVectorEnv under fork."""

from __future__ import annotations

import gc
import multiprocessing
import threading
import tracemalloc
from functools import partial
from multiprocessing import shared_memory

import gymnasium as gym
import numpy as np
import pytest
import torch

from fastvec import SubprocVecEnv, VectorEnv
from fastvec.errors import EnvError
from fastvec.factories import private_copy

# multiprocessing's shared heap (mp.Value, mp.Array) keeps its arena's file open for the process's life: made
# at import, so that the leak check does not blame it on the first test that uses the heap
_ARENA = multiprocessing.Value("i", 0)


class Reporting(gym.Env):
    """At each reset, counts itself in arrays the caller shares with it and says so through a file, a pipe and a
    multiprocessing queue and value."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, index: int, shared: dict):
        self.index, self.shared = index, shared

    def reset(self, *, seed=None, options=None):
        shared, i = self.shared, self.index
        for name in ("memmap", "shm_array", "tensor"):
            if name in shared:
                shared[name][i] += 1
        if "file" in shared:
            shared["file"].write(f"env {i}\n")
            shared["file"].flush()
        if "pipe" in shared:
            shared["pipe"].send(i)
        if "queue" in shared:
            shared["queue"].put(i)
            with shared["value"].get_lock():
                shared["value"].value += 1
            shared["mine"].append(i)
        return np.zeros(2, np.float32), {}

    def mine(self) -> list:
        return list(self.shared["mine"])

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


def _make(front: str, fns: list, **kwargs):
    if front == "sb3":
        return SubprocVecEnv(fns, start_method="fork", **kwargs)
    return VectorEnv(fns, context="fork", **kwargs)


@pytest.mark.parametrize("multiprocessing_objects", [False, True], ids=["pickled-lossily", "with-a-queue"])
@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_forked_envs_share_with_the_caller_what_processes_share(tmp_path, front: str, multiprocessing_objects: bool) -> None:
    """What each env's factory captured and the env writes reaches the caller: a memory-mapped array, an array
    over shared memory, a torch tensor in shared memory, a file, a pipe's end (each env got a detached copy of the
    first three and a copy of the file's contents; and the copies of the pipe's end, dropped at close(), closed
    the caller's own); with a multiprocessing queue and shared value too (which refuse to be pickled: the
    factory was called as it was, its envs sharing every object it captured)."""
    memmap = np.memmap(tmp_path / "counts", dtype=np.int64, mode="w+", shape=(4,))
    block = shared_memory.SharedMemory(create=True, size=4 * 8)
    receiving, sending = multiprocessing.Pipe(duplex=False)
    log = open(tmp_path / "log.txt", "w+")  # noqa: SIM115 (the envs write to it while the pool lives)
    try:
        shared = {
            "memmap": memmap,
            "shm_array": np.ndarray((4,), np.int64, buffer=block.buf),
            "tensor": torch.zeros(4, dtype=torch.int64).share_memory_(),
            "file": log,
            "pipe": sending,
        }
        if multiprocessing_objects:
            shared.update(queue=multiprocessing.Queue(), value=multiprocessing.Value("i", 0), mine=[])
        shared["shm_array"][:] = 0
        venv = _make(front, [partial(Reporting, i, shared) for i in range(4)], num_workers=2)
        try:
            venv.reset()
            assert memmap.tolist() == [1, 1, 1, 1]
            assert shared["shm_array"].tolist() == [1, 1, 1, 1]
            assert shared["tensor"].tolist() == [1, 1, 1, 1]
            assert sorted(receiving.recv() for _ in range(4)) == [0, 1, 2, 3]
            assert sorted((tmp_path / "log.txt").read_text().splitlines()) == [f"env {i}" for i in range(4)]
            if multiprocessing_objects:
                assert sorted(shared["queue"].get(timeout=10) for _ in range(4)) == [0, 1, 2, 3]
                assert shared["value"].value == 4
                # the rest is each env's own, as in a process of its own (two envs of a process shared a list)
                mine = venv.env_method("mine") if front == "sb3" else venv.call("mine")
                assert list(mine) == [[0], [1], [2], [3]]
        finally:
            venv.close()
        del venv
        gc.collect()
        sending.send("still the caller's")  # (the envs' copies of this end closed it as they went)
        assert receiving.recv() == "still the caller's"
        assert not log.closed
    finally:
        log.close()
        del shared
        gc.collect()
        block.close()
        block.unlink()


def test_a_copy_keeps_what_processes_share_and_copies_the_rest(tmp_path) -> None:
    memmap = np.memmap(tmp_path / "m", dtype=np.float32, mode="w+", shape=(3,))
    plain = np.zeros(3)
    lock = multiprocessing.Lock()  # (pickled outside a process's start, it refuses: kept, it is shared)
    captured = {"memmap": memmap, "view": memmap[1:], "array": np.asarray(memmap), "plain": plain, "lock": lock}
    copy = private_copy(lambda: captured)()
    assert copy is not captured and copy["plain"] is not plain
    for name in ("memmap", "view", "array", "lock"):
        assert copy[name] is captured[name], name


class Holding(gym.Env):
    """An env holding a thread lock: neither it nor a factory returning it can be pickled."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.lock = threading.Lock()
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(2, self.t / 100, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize("step_in_parent", [True, False], ids=["caller", "workers"])
def test_one_env_object_returned_for_two_envs_of_a_process_is_refused_naming_them(step_in_parent: bool) -> None:
    """``lambda: env`` over an env that cannot be copied gave the envs of one process one object, each step
    stepping it twice, silently (SB3's DummyVecEnv refuses it too)."""
    env = Holding()
    with pytest.raises(EnvError, match=r"the factory of env 1 returned the same env object as env 0's") as raised:
        SubprocVecEnv([lambda: env] * 4, start_method="fork", num_workers=2, step_in_parent=step_in_parent)
    assert isinstance(raised.value, ValueError)
    # one env per process: each is its process's own, as in SB3 (and a factory that can be copied: a copy each)
    with SubprocVecEnv([lambda: env] * 2, start_method="fork", num_workers=2, step_in_parent=step_in_parent) as venv:
        venv.reset()
        obs = venv.step(np.zeros(2, np.int64))[0]
        assert np.array_equal(obs, np.full((2, 2), 0.01, np.float32))
    cartpole = gym.make("CartPole-v1")
    with SubprocVecEnv([lambda: cartpole] * 4, start_method="fork", num_workers=2) as venv:
        venv.seed(3)
        ours = venv.reset()
    with SubprocVecEnv([partial(gym.make, "CartPole-v1")] * 4, start_method="fork", num_workers=2) as venv:
        venv.seed(3)
        assert np.array_equal(venv.reset(), ours)


def test_the_pool_keeps_no_pickle_of_its_factories() -> None:
    """Each factory's pickle stayed in the caller for the pool's life: eight factories over one 16 MB array
    held 128 MB."""
    data = np.ones(2 * 1024 * 1024)  # 16 MB
    fns = [partial(lambda data: gym.make("CartPole-v1"), data) for _ in range(8)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=False) as venv:
            venv.reset()
            held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < data.nbytes, f"{held / 2**20:.0f} MiB held while the pool lives"
