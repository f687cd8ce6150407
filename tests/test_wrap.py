"""Envs moving around the ring's end (``request_move(..., around=True)``): the calling process's
shard then steps envs at both ends of the index range, its own from env 0 and those past the last
worker's. The caller cannot tell: same results as a pool that never moved an env."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from fastvec import EnvError, SubprocVecEnv
from fastvec.pool import Pool
from fastvec.protocol import SAME_STEP
from tests import envs
from tests.test_park import _Pair

N = 6
CLOSED: list[int] = []  # the ids of the Flaky envs closed in this process


class Flaky(gym.Wrapper):
    """CartPole that says which process it runs in, raises in step once told to, and records its close."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.boom = False

    def step(self, action):
        if self.boom:
            raise ZeroDivisionError("boom in a wrapped env")
        return self.env.step(action)

    def pid(self) -> int:
        return os.getpid()

    def close(self):
        CLOSED.append(id(self))
        super().close()


class Remembering(envs.EchoEnv):
    """EchoEnv that keeps the seed and options of its latest reset."""

    def reset(self, *, seed=None, options=None):
        self.seen = (seed, options)
        return super().reset(seed=seed, options=options)


def make_flaky() -> gym.Env:
    return Flaky(gym.make("CartPole-v1"))


# in turn: the worker's top env to shard 0 around the ring's end (twice), shard 0's top env to the
# worker, shard 0's lowest wrapped env back around, the worker's lowest env to shard 0, back around
REQUESTS = [(1, 0, True), (1, 0, True), (0, 1, False), (0, 1, True), (1, 0, False), (0, 1, True)]


@pytest.mark.parametrize("kind", ["sb3", "gymnasium-next-step"])
def test_moves_around_the_ring_give_the_same_results(kind) -> None:
    """420 steps with the boundaries shifting both ways around the ring's end, every result
    compared with a pool that never moved an env (tests.test_park._Pair)."""
    pair = _Pair(kind, N, 2)
    pool = pair.pool
    most = 0
    try:
        for t in range(420):
            if t % 6 == 0:
                pool.request_move(*REQUESTS[(t // 6) % len(REQUESTS)])
            pair.step()
            most = max(most, len(pool.wrap_envs))
            # the bookkeeping: every env in exactly one shard, shard 0's arc as its ring order says
            owned = sorted(list(pool.envs_of(0)) + list(pool.shard_envs[1]))
            assert owned == list(range(N)), (t, pool.shard_envs, pool.wrap_envs)
        assert most >= 2 and pool.moves_done >= 15
        if kind == "sb3":  # where each env runs follows its moves (env_method reaches the wrapped part too)
            pids = pair.moving.env_method("pid")
            assert [i for i, pid in enumerate(pids) if pid == os.getpid()] == sorted(pool.envs_of(0))
            assert pair.moving.stats().shards[0].envs == pool.envs_of(0)
        else:  # a seeded reset reaches the wrapped envs with their seeds
            np.testing.assert_array_equal(pair.moving.reset(seed=9)[0], pair.still.reset(seed=9)[0])
    finally:
        pair.close()


def test_object_actions_reset_options_and_calls_reach_the_wrapped_envs() -> None:
    act_space = spaces.Tuple((spaces.Discrete(3), spaces.Text(3, charset="xy")))
    obs_space = spaces.Box(-1, 1, (2,), np.float32)
    fns = [lambda: Remembering(obs_space, act_space)] * 4
    with Pool(fns, start_method="fork", num_workers=2, autoreset_mode=SAME_STEP) as pool:
        pool.reset()

        def step(actions):
            pool.step_async(actions, per_env=True)
            return pool.step_wait()

        envs.wrap_last(pool, lambda: step([(1, "x")] * 4))
        assert pool.envs_of(0) == (3, 0, 1)
        words = ["x", "yy", "xyx", "y"]
        batch = step([(k, w) for k, w in zip([0, 1, 2, 0], words)])
        assert [batch.infos[i]["action"] for i in range(4)] == [(0, "x"), (1, "yy"), (2, "xyx"), (0, "y")]
        # per-env values, reset options and seeds reach each env, the wrapped one included
        pool.call("set_attr", [0, 1, 2, 3], ("label", False), values=["a", "b", "c", "d"])
        assert pool.call("get_attr", [3, 0, 2], ("label",)) == ["d", "a", "c"]
        pool.reset(seeds=[1, 2, 3, 4], options=[{"k": i} for i in range(4)])
        assert pool.call("get_attr", [0, 1, 2, 3], ("seen",)) == [(1, {"k": 0}), (2, {"k": 1}), (3, {"k": 2}), (4, {"k": 3})]


def test_an_error_in_a_wrapped_env_names_it_and_the_other_envs_still_step() -> None:
    with SubprocVecEnv([make_flaky] * 4, start_method="fork", num_workers=2) as venv:
        venv.reset()
        pool = venv.pool
        envs.wrap_last(pool, lambda: venv.step(np.zeros(4, np.int64)))
        before = venv.env_method("pid")
        venv.env_method("__setattr__", "boom", True, indices=[3])
        with pytest.raises(EnvError, match="env 3") as info:
            venv.step(np.zeros(4, np.int64))
        assert "boom in a wrapped env" in str(info.value) and before[3] == os.getpid()


def test_a_wrapped_env_that_raises_is_restarted() -> None:
    with SubprocVecEnv([make_flaky] * 4, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        pool = venv.pool
        envs.wrap_last(pool, lambda: venv.step(np.zeros(4, np.int64)))
        venv.env_method("__setattr__", "boom", True, indices=[3])
        _, _, dones, infos = venv.step(np.zeros(4, np.int64))
        assert dones[3] and "boom in a wrapped env" in infos[3]["fastvec.restarted"] and pool.shard_restarts() == 1
        assert not any("fastvec.restarted" in info for info in infos[:3])
        venv.step(np.zeros(4, np.int64))  # the fresh env steps on, still in this process
        assert venv.env_method("pid", indices=[3]) == [os.getpid()] and pool.envs_of(0) == (3, 0, 1)


@pytest.mark.parametrize("how", ["close", "terminate"])
def test_the_wrapped_envs_are_closed(how: str) -> None:
    venv = SubprocVecEnv([make_flaky] * 4, start_method="fork", num_workers=2)
    venv.reset()
    envs.wrap_last(venv.pool, lambda: venv.step(np.zeros(4, np.int64)))
    wrapped = id(venv.pool._tail.envs[0])
    CLOSED.clear()
    venv.close() if how == "close" else venv.pool.terminate()
    assert wrapped in CLOSED and len(CLOSED) == 3  # the parent's envs: 0, 1 and the wrapped 3


def test_around_moves_are_refused_where_they_cannot_apply() -> None:
    with SubprocVecEnv([envs.make_cartpole] * 6, start_method="fork", num_workers=3) as venv:
        pool = venv.pool
        assert pool.wraps and pool.shard_envs == [range(0, 2), range(2, 4), range(4, 6)]
        with pytest.raises(ValueError, match="around the ring's end"):
            pool.request_move(1, 0, around=True)  # shard 2 has envs above shard 1
        assert pool.request_move(0, 2, around=True) is None  # nothing wrapped yet to go back
        assert pool.request_move(2, 0, around=True) == 5
        assert pool.request_move(2, 0, around=True) is None  # shard 2 keeps its last env
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, step_in_parent=False) as venv:
        assert not venv.pool.wraps
        with pytest.raises(ValueError, match="around the ring's end"):
            venv.pool.request_move(1, 0, around=True)
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, batch_size=2, step_in_parent=True) as venv:
        assert not venv.pool.wraps and venv.pool.request_move(1, 0, around=True) is None


@pytest.mark.parametrize("kind", ["sb3", "gymnasium-next-step"])
def test_parking_and_moves_around_the_ring_together(kind) -> None:
    """With an env wrapped around to the learner's shard, the worker is parked (its envs go down to
    the learner's own), comes back with none, and takes envs again, from both of the learner's
    edges: results never change."""
    pair = _Pair(kind, 6, 2)
    pool = pair.pool
    try:
        pool.request_move(1, 0, around=True)
        pair.step(until=lambda: pool.wrap_envs == range(5, 6))
        assert pool.request_park(1)
        pair.step(until=lambda: pool.parked == [1])
        assert pool.envs_of(0) == (5, 0, 1, 2, 3, 4) and pool.shard_envs[1] == range(5, 5)
        assert pool.request_unpark(1)
        pool.request_move(0, 1, around=True)  # env 5 back, around the ring's end
        pool.request_move(0, 1)  # env 4, from the top of the learner's own envs
        pair.step(until=lambda: pool.moves_done >= 5)  # (1 around, 2 for the parking, then these 2)
        assert pool.envs_of(0) == range(0, 4) and pool.shard_envs[1] == range(4, 6) and not pool.wrap_envs
        pair.step(50)
    finally:
        pair.close()
