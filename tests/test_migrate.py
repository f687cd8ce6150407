"""Envs moving between neighbouring shards at episode boundaries (fastvec.migrate): the caller cannot
tell, except by where an env runs. Same results as a pool that never moved an env."""

from __future__ import annotations

import os
import threading
import time
import warnings
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils import EzPickle
from gymnasium.vector import AutoresetMode

from fastvec import EnvError, SubprocVecEnv, VectorEnv
from fastvec.errors import ClosedError, WorkerDiedError
from tests import envs

N = 6


class Where(gym.Wrapper):
    """CartPole that says which process it runs in."""

    def pid(self) -> int:
        return os.getpid()

    def sleep_for(self, seconds: float) -> None:  # (a call that holds the pool a while)
        time.sleep(seconds)


class Unpicklable(Where):
    """... and holds something pickle refuses: it does not move (re-created, it would keep only its generator)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lock = threading.Lock()


class Rebuilt(Where, EzPickle):
    """... whose pickle only records how to make it again (gymnasium's Box2D, MuJoCo and ALE envs):
    the env arrives new, and must get the old one's generator."""

    def __init__(self):
        super().__init__(gym.make("CartPole-v1"))
        EzPickle.__init__(self)


class UnpickledNowhere(Where):
    """... that pickles, but cannot be unpickled (a simulator handle that cannot be re-attached in
    another process): it arrives re-created from its factory."""

    def __setstate__(self, state):
        raise RuntimeError("cannot be unpickled here")


class DiesUnpickled(Where):
    """... whose arrival kills the process it arrives in (a crash, an OOM kill)."""

    def __setstate__(self, state):
        os._exit(3)


class HangsUnpickled(Where):
    """... whose arrival hangs the process it arrives in (an unpickling stuck on a lock, say)."""

    def __setstate__(self, state):
        time.sleep(60)


def make_where() -> gym.Env:
    return Where(gym.make("CartPole-v1"))


def make_unpicklable() -> gym.Env:
    return Unpicklable(gym.make("CartPole-v1"))


def make_unpickled_nowhere(flag: str | None = None) -> gym.Env:
    if flag is not None and os.path.exists(flag):
        raise RuntimeError("this factory no longer works")
    return UnpickledNowhere(gym.make("CartPole-v1"))


def _moves_every(pool, t: int) -> None:
    """Shift the boundary back and forth between the parent's shard and the worker's."""
    if t % 7 == 0:
        pool.request_move(0, 1) if (t // 7) % 2 == 0 else pool.request_move(1, 0)


@pytest.mark.parametrize(
    "make",
    [make_where, Rebuilt, make_unpickled_nowhere],
    ids=["pickled", "rebuilt", "not-unpickled"],
)
def test_moves_give_the_same_results_sb3(make) -> None:
    still = SubprocVecEnv([make] * N, start_method="fork", num_workers=2)
    moving = SubprocVecEnv([make] * N, start_method="fork", num_workers=2)
    try:
        for venv in (still, moving):
            venv.seed(5)
        np.testing.assert_array_equal(moving.reset(), still.reset())
        rng = np.random.default_rng(1)
        for t in range(400):
            _moves_every(moving.pool, t)
            actions = rng.integers(0, 2, N)
            a, b = moving.step(actions), still.step(actions)
            np.testing.assert_array_equal(a[0], b[0], err_msg=f"step {t}")
            np.testing.assert_array_equal(a[1], b[1])
            np.testing.assert_array_equal(a[2], b[2])
            for i in np.flatnonzero(b[2]):
                np.testing.assert_array_equal(a[3][i]["terminal_observation"], b[3][i]["terminal_observation"])
        assert moving.pool.moves_done >= 10
        assert moving.env_method("get_wrapper_attr", "np_random_seed") == still.env_method("get_wrapper_attr", "np_random_seed")
        pids = moving.env_method("pid")
        in_parent = sum(pid == os.getpid() for pid in pids)
        assert in_parent == len(moving.pool.shard_envs[0])  # where each env runs follows its moves
    finally:
        still.close()
        moving.close()


def test_moves_give_the_same_results_gymnasium_next_step() -> None:
    fns = [envs.make_cartpole] * N
    still = VectorEnv(fns, context="fork", num_workers=2, autoreset_mode=AutoresetMode.NEXT_STEP)
    moving = VectorEnv(fns, context="fork", num_workers=2, autoreset_mode=AutoresetMode.NEXT_STEP)
    try:
        np.testing.assert_array_equal(moving.reset(seed=3)[0], still.reset(seed=3)[0])
        rng = np.random.default_rng(2)
        for t in range(400):
            _moves_every(moving.pool, t)
            actions = rng.integers(0, 2, N)
            a, b = moving.step(actions), still.step(actions)
            for x, y in zip(a[:4], b[:4]):
                np.testing.assert_array_equal(x, y, err_msg=f"step {t}")
        assert moving.pool.moves_done >= 10
    finally:
        still.close()
        moving.close()


class Curriculum(gym.Wrapper):
    """An env whose state outlives its episodes (its level), holding a lock: it cannot move keeping it."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.level, self.lock = 0, threading.Lock()

    def reset(self, **kwargs):
        self.level += 1
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "level": self.level}


def test_an_env_that_cannot_be_pickled_does_not_move() -> None:
    """Re-created where it arrived, it kept only its generator: its level (a wrapper's running
    statistics, a curriculum) started again, unlike in a pool that never moved it."""
    fns = [make_where] * 2 + [lambda: Curriculum(gym.make("CartPole-v1"))] * 2
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        venv.reset()
        assert venv.pool.shard_envs == [range(0, 2), range(2, 4)]
        assert venv.pool.request_move(1, 0) is None and venv.pool.unmovable == {2}
        assert not venv.pool.can_park(1) and not venv.pool.request_park(1)
        assert venv.pool.request_move(0, 1) == 1  # a picklable one still moves
        ended = np.zeros(4, dtype=int)
        for _ in range(300):
            ended += venv.step(np.zeros(4, dtype=np.int64))[2]
        assert venv.pool.shard_envs == [range(0, 1), range(1, 4)]
        assert venv.get_attr("level", [2, 3]) == [1 + ended[2], 1 + ended[3]]


class LaterCurriculum(Curriculum):
    """A Curriculum that pickles until ``grab()`` (a handle made later: a render surface at its first render())."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lock = None

    def grab(self) -> None:
        self.lock = threading.Lock()


@pytest.mark.parametrize("park", [False, True], ids=["move", "park"])
def test_an_env_that_stopped_pickling_after_it_was_asked_stays(park: bool) -> None:
    """The pool asks once whether an env can move. One that took something unpicklable since, due to leave
    at its episode end, stays where it is, reset there, and the move (or the park) is called off: it moved,
    re-created from its factory, its level started again."""
    fns = [make_where] * 2 + [lambda: LaterCurriculum(gym.make("CartPole-v1"))] * 2
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=False) as venv:
        pool = venv.pool
        venv.reset()
        assert pool.shard_envs == [range(0, 2), range(2, 4)]
        assert pool.request_park(1) if park else pool.request_move(1, 0) == 2  # (asked now: it pickles)
        venv.env_method("grab", indices=[2, 3])
        ended = np.zeros(4, dtype=int)
        for _ in range(300):
            ended += venv.step(np.zeros(4, dtype=np.int64))[2]
        assert pool.pending_moves == 0 and pool.parked == [] and pool.shard_envs == [range(0, 2), range(2, 4)]
        assert pool.unmovable >= {2} and pool.request_move(1, 0) is None
        assert venv.get_attr("level", [2, 3]) == [1 + ended[2], 1 + ended[3]]


class Named(gym.Env):
    """Knows its index (``name``); action 1 ends its episode; ``grab()`` makes it unpicklable from then on."""

    action_space = gym.spaces.Discrete(2)
    observation_space = gym.spaces.Box(0, 1, (1,), np.float32)

    def __init__(self, name: int):
        self.name, self.handle = name, None

    def grab(self) -> None:
        self.handle = threading.Lock()

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, bool(action == 1), False, {}


@pytest.mark.parametrize("park", [False, True], ids=["two-moves", "park"])
def test_an_env_that_stays_beside_one_that_leaves_in_the_same_step(park: bool) -> None:
    """Both edge envs of a shard are due to leave; in one step the lower one leaves and the upper one, no longer
    picklable, stays. Calling the upper one's move off called the lower one's off too, after it had left: its
    package was dropped, and index 3 answered for env 5."""
    with SubprocVecEnv([partial(Named, i) for i in range(9)], start_method="fork", num_workers=3) as venv:
        pool = venv.pool
        venv.reset()
        if park:
            assert pool.request_park(1)
        else:
            assert (pool.request_move(1, 0), pool.request_move(1, 2)) == (3, 5)
        venv.env_method("grab", indices=[5])
        venv.step(np.array([0, 0, 0, 1, 0, 1, 0, 0, 0]))  # envs 3 and 5 end their episodes
        venv.step(np.zeros(9, np.int64))
        assert venv.get_attr("name") == list(range(9))
        assert pool.shard_envs == [range(0, 4), range(4, 6), range(6, 9)] and pool.pending_moves == 0
        assert pool.unmovable == {5} and pool.parked == []


def test_move_requests_are_refused_where_they_cannot_apply() -> None:
    with SubprocVecEnv([envs.make_cartpole] * 3, start_method="fork", num_workers=2) as venv:
        pool = venv.pool
        assert pool.shard_envs == [range(0, 1), range(1, 3)]
        assert pool.request_move(0, 1) is None  # the parent's last env stays
        assert pool.request_move(1, 0) == 1
        assert pool.request_move(1, 0) is None  # already moving
        with pytest.raises(ValueError, match="neighbouring"):
            pool.request_move(0, 2)


def test_a_boundary_moves_one_way_at_a_time() -> None:
    """A move across a boundary that an env is crossing the other way is refused until that one is
    done (both used to be taken: ending in one step the pool broke, in different steps the second
    env never left and the shard could not be parked)."""
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2) as venv:
        pool = venv.pool
        venv.reset()
        assert pool.request_move(1, 0) == 2
        assert pool.request_move(0, 1) is None
        for _ in range(600):
            venv.step(np.zeros(4, dtype=np.int64))
            if pool.shard_envs[0] == range(0, 3):
                break
        assert pool.shard_envs == [range(0, 3), range(3, 4)]
        assert pool.request_move(0, 1) == 2


@pytest.mark.parametrize(("source", "target", "moving"), [(1, 0, 2), (0, 1, 1)], ids=["to-the-caller", "to-a-worker"])
def test_an_env_whose_reset_after_moving_raises(source: int, target: int, moving: int) -> None:
    """It moved all the same: its error is the env's (an EnvError that is also a ValueError), as an
    autoreset's would be, and the pool stays usable (it used to break, with an internal error)."""
    fns = [partial(envs.SecondResetFails, i == moving, 3, "boom in the reset after moving") for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        pool = venv.pool
        venv.reset()
        assert pool.request_move(source, target) == moving
        for _ in range(2):
            venv.step(np.zeros(4, dtype=np.int64))
        with pytest.raises(ValueError, match="boom in the reset after moving") as info:
            venv.step(np.zeros(4, dtype=np.int64))
        assert isinstance(info.value, EnvError) and info.value.env_index == moving
        assert pool.state.value == "idle" and moving in pool.envs_of(target)
        for _ in range(4):
            venv.step(np.zeros(4, dtype=np.int64))


def test_a_respawned_worker_makes_the_envs_it_owns_after_moves() -> None:
    import signal

    with SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        rng = np.random.default_rng(0)
        while venv.pool.moves_done == 0:
            venv.pool.request_move(1, 0)
            venv.step(rng.integers(0, 2, 4))
        assert venv.pool.shard_envs == [range(0, 3), range(3, 4)]
        os.kill(venv.pool.worker_pids[0], signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="died"):
            _, _, dones, infos = venv.step(np.zeros(4, np.int64))
        assert dones[3] and "fastvec.restarted" in infos[3]  # its envs: only env 3 now
        assert not any("fastvec.restarted" in info for info in infos[:3])
        pids = venv.env_method("pid")
        assert pids[:3] == [os.getpid()] * 3 and pids[3] != os.getpid()


@pytest.mark.parametrize(("source", "target", "moving"), [(1, 0, 2), (0, 1, 1)], ids=["to-the-caller", "to-a-worker"])
def test_an_env_that_cannot_arrive_breaks_the_pool_naming_it(tmp_path, source: int, target: int, moving: int) -> None:
    """Neither unpickled nor re-made from its factory where it arrives: the pool is broken, with an
    EnvError naming the env (it stayed usable with the env in no shard: a stale row, and env_method(i)
    reached another env; into the caller's shard, a bare RuntimeError)."""
    flag = tmp_path / "factories-fail"
    with SubprocVecEnv([partial(make_unpickled_nowhere, str(flag))] * 4, start_method="fork", num_workers=2) as venv:
        venv.reset()
        flag.touch()
        assert venv.pool.request_move(source, target) == moving
        with pytest.raises(EnvError, match=f"env {moving} raised RuntimeError during 'adopt") as info:
            for _ in range(600):
                venv.step(np.zeros(4, dtype=np.int64))
        assert "this factory no longer works" in str(info.value)
        with pytest.raises(ClosedError, match="adopt"):
            venv.step(np.zeros(4, dtype=np.int64))


@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_a_worker_that_dies_as_an_env_arrives(on_error: str) -> None:
    """Without on_error="restart" the pool is broken. With it, the worker is replaced in that step, the
    arrived env made from its factory, and the step returns its results with the worker's envs restarted
    (it raised WorkerDiedError, and the step's results were lost: the other shards' episode ends too)."""
    def short(kind: type = Where) -> gym.Env:  # every episode 5 steps: all end in the step env 3 moves
        return kind(gym.make("CartPole-v1", max_episode_steps=5))

    fns = [short] * 3 + [partial(short, DiesUnpickled)] + [short] * 2
    with SubprocVecEnv(fns, start_method="fork", num_workers=3, on_error=on_error) as venv:
        venv.reset()
        assert venv.pool.request_move(1, 2) == 3
        if on_error == "raise":
            with pytest.raises(WorkerDiedError, match="died during 'adopt'"):
                for _ in range(600):
                    venv.step(np.zeros(6, dtype=np.int64))
            with pytest.raises(ClosedError):
                venv.step(np.zeros(6, dtype=np.int64))
            return
        with pytest.warns(RuntimeWarning, match="died while an env moved into it"):
            for _ in range(600):
                _, rewards, dones, infos = venv.step(np.zeros(6, dtype=np.int64))
                if venv.pool.moves_done:
                    break
        assert venv.pool.moves_done == 1 and venv.pool.shard_envs[2] == range(3, 6)
        assert all(dones) and all("fastvec.restarted" in infos[i] for i in range(3, 6))  # the others' ends kept
        assert rewards.tolist() == [1.0] * 6  # the step's own, which the dead worker wrote (they were made 0)
        assert all(info["TimeLimit.truncated"] for info in infos)  # (5-step episodes: every one ended so)
        assert all("terminal_observation" in info for info in infos)
        pids = venv.env_method("pid")
        assert len(set(pids[3:])) == 1 and pids[3] not in pids[:3]
        venv.step(np.zeros(6, dtype=np.int64))


def test_a_worker_that_hangs_as_an_env_arrives_is_replaced_with_on_error_restart() -> None:
    """With on_error="restart" and step_timeout, a worker still unpickling an arriving env after step_timeout
    is ended and replaced in that step, as one that died there (it used to break the pool with StepTimeoutError)."""
    def short(kind: type = Where) -> gym.Env:
        return kind(gym.make("CartPole-v1", max_episode_steps=5))

    fns = [short] * 3 + [partial(short, HangsUnpickled)] + [short] * 2
    with SubprocVecEnv(fns, start_method="fork", num_workers=3, on_error="restart", step_timeout=1.0) as venv:
        venv.reset()
        assert venv.pool.request_move(1, 2) == 3
        began = time.monotonic()
        with pytest.warns(RuntimeWarning, match="worker 2 .* was ended while an env moved into it, still running after"):
            for _ in range(600):
                _, rewards, dones, infos = venv.step(np.zeros(6, dtype=np.int64))
                if venv.pool.moves_done:
                    break
        assert time.monotonic() - began < 20
        assert venv.pool.moves_done == 1 and venv.pool.shard_envs[2] == range(3, 6) and venv.pool.worker_restarts == 1
        assert all(infos[i]["fastvec.restarted"].startswith("worker hung: still running after step_timeout=1 s") for i in range(3, 6))
        venv.step(np.zeros(6, dtype=np.int64))


class Counts(gym.Env):
    """obs and reward: its step count; action 1 terminates; ``bomb``: its unpickling ends the process."""

    action_space = gym.spaces.Discrete(2)
    observation_space = gym.spaces.Box(0, 1000, (1,), np.float32)

    def __init__(self, bomb: bool = False):
        self.t, self.bomb = 0, bomb

    def __reduce__(self):
        return (os._exit, (3,)) if self.bomb else (Counts, (False,))

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), float(self.t), bool(action == 1), False, {}


def test_a_worker_that_dies_after_the_step_keeps_the_steps_results() -> None:
    """The worker had finished the step when an env moving into it killed it: that step's rewards, its
    terminations and its final observations stand (they were replaced as for a worker dying inside the step:
    rewards 0, the step before's observations final, a termination reported as a truncation)."""
    fns = [partial(Counts, i == 5) for i in range(9)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=3, on_error="restart") as venv:
        venv.reset()
        for _ in range(3):
            venv.step(np.zeros(9, np.int64))
        assert venv.pool.request_move(1, 2) == 5
        with pytest.warns(RuntimeWarning, match="died while an env moved into it"):
            obs, rewards, dones, infos = venv.step(np.eye(9, dtype=np.int64)[5])  # env 5 terminates, and moves
        assert rewards.tolist() == [4.0] * 9 and dones.tolist() == [False] * 5 + [True] * 4
        for i in (5, 6, 7, 8):  # the dead worker's envs, the arrived one included: new episodes
            assert infos[i]["terminal_observation"].tolist() == [4.0] and obs[i].tolist() == [0.0]
        assert infos[5]["TimeLimit.truncated"] is False and all(infos[i]["TimeLimit.truncated"] for i in (6, 7, 8))


def test_a_worker_that_dies_after_the_step_starts_the_episode_an_env_reset_in_it_once() -> None:
    """NEXT_STEP: env 7's episode ends in one step, and the next is its reset, which its worker finished before an
    env moving into it killed it. Env 7 was then marked truncated too, its reset observation for a final one: an
    episode of no steps. Its fresh env starts the new episode, not ended; the others, cut short, end truncated."""
    fns = [partial(Counts, i == 5) for i in range(9)]
    options = {"num_workers": 3, "on_error": "restart", "autoreset_mode": AutoresetMode.NEXT_STEP}
    with VectorEnv(fns, context="fork", **options) as venv:
        venv.reset()
        for _ in range(2):
            venv.step(np.zeros(9, np.int64))
        _, _, terminated, _, _ = venv.step(np.eye(9, dtype=np.int64)[7])  # env 7's episode ends
        assert terminated.tolist() == [i == 7 for i in range(9)]
        assert venv.pool.request_move(1, 2) == 5
        with pytest.warns(RuntimeWarning, match="died while an env moved into it"):
            obs, _, terminated, truncated, _ = venv.step(np.eye(9, dtype=np.int64)[5])  # env 5 ends, and moves
        assert terminated.tolist() == [i == 5 for i in range(9)] and truncated.tolist() == [i in (6, 8) for i in range(9)]
        assert obs[7].tolist() == [0.0] and obs[6].tolist() == [4.0]
        obs, _, terminated, truncated, _ = venv.step(np.zeros(9, np.int64))
        assert obs[7].tolist() == [1.0] and not terminated[7] and not truncated[7]  # (stepped, not reset again)


class ClosesLogged(Where):
    """... that logs each close() (an env that ends a helper process there)."""

    def __init__(self, log: str):
        super().__init__(gym.make("CartPole-v1"))
        self.log = log

    def close(self):
        with open(self.log, "a") as f:
            f.write("closed\n")
        super().close()


def test_the_copy_a_moved_env_leaves_behind_is_closed(tmp_path) -> None:
    """It was dropped without close(): a helper process it ran outlived the pool."""
    log = tmp_path / "closes"
    with SubprocVecEnv([partial(ClosesLogged, str(log))] * 4, start_method="fork", num_workers=2) as venv:
        venv.reset()
        assert venv.pool.request_move(1, 0) == 2 and venv.pool.request_move(0, 1) is None
        while not venv.pool.moves_done:
            venv.step(np.zeros(4, dtype=np.int64))
        assert log.read_text().split() == ["closed"]  # the copy left in worker 1
    assert log.read_text().split() == ["closed"] * 5  # and the four envs


def test_a_move_asked_while_a_worker_is_dead_does_not_fail_the_step() -> None:
    """on_error="restart": whether the env can move is asked of its worker inside the next step; a worker that
    died made that step raise WorkerDiedError (during 'movable') instead of replacing it."""
    import signal

    with SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        venv.pool.queue_move(1, 0)  # (as the monitor's thread asks)
        os.kill(venv.pool.worker_pids[0], signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="died"):
            _, _, dones, infos = venv.step(np.zeros(4, np.int64))
        assert dones[2:].all() and all("fastvec.restarted" in infos[i] for i in (2, 3))
        assert venv.pool.request_move(1, 0) == 2  # asked again of the replacement: it can move


class _KeepsItsResetInfo(gym.Env):
    """Episodes of 3 steps; its reset info (with a big-endian array) is a dict it keeps and changes as it steps."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t, self.info = 0, {}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.info = {"steps_since_reset": 0, "big_endian": np.arange(3, dtype=">f8")}
        return np.zeros(1, np.float32), self.info

    def step(self, action):
        self.t += 1
        self.info["steps_since_reset"] += 1
        return np.zeros(1, np.float32), 0.0, self.t >= 3, False, {}


def test_an_env_that_moved_into_the_calling_process_gives_a_copy_of_its_reset_info() -> None:
    """Reset where it arrives, its reset info went to the caller as the env's own dict (the one path the calling
    process's envs' copies missed): a later change the env made showed in it, and its array stayed big-endian."""
    with SubprocVecEnv([_KeepsItsResetInfo] * 4, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        venv.reset()
        assert venv.pool.request_move(1, 0) == 2  # (env 2, the worker's first, into this process's shard)
        for _ in range(3):
            venv.step(np.zeros(4, np.int64))
        assert venv.pool.moves_done == 1
        info = venv.reset_infos[2]
        assert info["big_endian"].dtype.isnative
        venv.step(np.zeros(4, np.int64))
        assert info["steps_since_reset"] == 0


class _TwoSteps(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 0.0, self.t >= 2, False, {}


def test_an_unpicklable_option_of_an_env_moved_around_the_ring_s_end_names_it() -> None:
    """Moved around the ring's end into the calling process (its shard is then two parts), env 3's option that
    cannot be pickled was named as one of "envs 0..1"."""
    with SubprocVecEnv([_TwoSteps] * 4, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        venv.reset()
        pool = venv.pool
        envs.wrap_last(pool, lambda: venv.step(np.zeros(4, np.int64)))
        assert list(pool.wrap_envs) == [3]
        venv.set_options([{}, {}, {}, {"callback": lambda: 0}])
        with pytest.raises(TypeError, match="reset options for env 3 cannot be pickled"):
            venv.reset()
        venv.set_options([{"callback": lambda: 0}, {}, {}, {}])
        with pytest.raises(TypeError, match="reset options for env 0 cannot be pickled"):
            venv.reset()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_env_that_moves_at_its_episode_s_end_gives_that_step_s_final_observation(dtype) -> None:
    """SAME_STEP: an env that changes its array in place, moving to another shard at its episode's end (its new
    shard resets it): its final observation is the step's, whatever its array's dtype (a cast one, its own object
    pickled later, showed what the env's close() wrote as it was packed: 99)."""
    fns = [partial(envs.ReusesItsArray, dtype)] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (float64 arrays cast to the space's float32: said)
        with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True) as venv:
            venv.reset()
            assert venv.pool.request_move(0, 1) == 1  # env 1 leaves the caller's shard at its episode's end
            venv.step(np.zeros(4, np.int64))
            infos = venv.step(np.zeros(4, np.int64))[3]
            assert venv.pool.moves_done == 1
    assert [info["terminal_observation"][0] for info in infos] == [-1.0, 2.0, -1.0, -1.0]
