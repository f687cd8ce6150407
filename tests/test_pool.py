"""The pool's state machine: every command completes or breaks the pool; nothing stale, nothing stuck.

Each test here reproduces a desync or corruption path of the first engine (issue 9):
it failed before the redesign and must keep passing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from fastvec import SubprocVecEnv, VectorEnv, kernels
from fastvec.errors import (
    AlreadyPendingCallError,
    BrokenPoolError,
    ClosedError,
    EnvError,
    NoAsyncCallError,
    WorkerDiedError,
)
from fastvec.pool import Pool, PoolState
from fastvec.remote import Remote
from tests import envs

ZEROS = np.zeros(4, dtype=np.int64)


def _counters(n: int = 4) -> list:
    return [partial(envs.Counter, i) for i in range(n)]


# 1 ------------------------------------------------------------------------------------------------
def test_unpicklable_call_argument_leaves_the_pool_usable() -> None:
    with SubprocVecEnv(_counters(), start_method="fork", num_workers=2) as venv:
        venv.reset()
        with pytest.raises(TypeError, match=r"env_method arguments for env 3 cannot be pickled"):  # (the env called)
            venv.env_method("reset", options=lambda: 0, indices=[3])
        # given to every env: said for every env called (the first worker's were named, as if the caller's were fine;
        # then the lowest shard's, as if the others had taken it: hunt80 bug 11)
        with pytest.raises(TypeError, match=r"set_attr arguments for envs 0, 1, 2, 3 cannot be pickled"):
            venv.set_attr("x", lambda: 0, indices=[3, 2, 1, 0])
        with pytest.raises(TypeError, match=r"env_method arguments for envs 1, 2 cannot be pickled"):
            venv.env_method("reset", options=lambda: 0, indices=[2, 1])
        assert venv.pool.state is PoolState.IDLE
        assert venv.env_method("pid", indices=[3])[0] != os.getpid()
        venv.step(ZEROS)
        with pytest.raises(TypeError, match="reset options"):
            venv.pool.reset(options=[{"f": lambda: 0}] * 4)
        venv.reset()


# 2 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_index", [0, 3])  # the parent's shard, a worker's
@pytest.mark.skipif(envs.WRAPS_OUT_OF_RANGE_INTS, reason="numpy 1 wraps out-of-range Python ints")
def test_observation_the_row_cannot_hold_names_the_env(bad_index: int) -> None:
    fns = [partial(envs.OverflowEnv, i == bad_index) for i in range(4)]
    for step_in_parent in (True, False):
        with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=step_in_parent) as venv:
            venv.reset()
            with pytest.raises(
                EnvError, match=rf"env {bad_index} raised OverflowError during 'step'.*cannot be stored as uint8"
            ) as info:
                venv.step(ZEROS)
            assert "300" in str(info.value)
            assert isinstance(info.value, OverflowError)  # numpy's type, as SB3's and gymnasium's vector envs raise
            assert venv.pool.state is PoolState.IDLE  # an env error completes the command: the pool goes on
            assert venv.reset().shape == (4, 4)  # and the worker survived


# 3 ------------------------------------------------------------------------------------------------
def test_big_endian_observations_are_converted() -> None:
    with SubprocVecEnv([envs.BigEndianEnv] * 4, start_method="fork", num_workers=2) as venv:
        obs = venv.reset()
        assert obs.dtype == np.float32
        np.testing.assert_array_equal(obs, [[1.5, -2.25, 0]] * 4)
        obs, *_ = venv.step(ZEROS)
        np.testing.assert_array_equal(obs, [[1.5, -2.25, 1]] * 4)


class BigEndianSpace(envs.BigEndianEnv):
    """... whose space is big-endian too (Box(dtype=">f4")), and whose episodes are one step."""

    def __init__(self):
        super().__init__()
        self.observation_space = gym.spaces.Box(-10, 10, (3,), ">f4")

    def step(self, action):
        obs, reward, _, truncated, info = super().step(action)
        return obs, reward, True, truncated, info


@pytest.mark.parametrize("batches", [False, True], ids=["step", "recv"])
def test_a_big_endian_space_gives_sb3_native_arrays_as_sb3_does(batches: bool) -> None:
    """SB3's pipe and np.stack hand a '>f4' space's observations back in native order, which its obs_as_tensor
    (PPO's rollouts) needs; fastvec handed the ring's '>f4' rows on, and PPO failed with fastvec only."""
    from stable_baselines3.common.utils import obs_as_tensor
    from stable_baselines3.common.vec_env import SubprocVecEnv as SB3SubprocVecEnv

    ref = SB3SubprocVecEnv([BigEndianSpace] * 2, start_method="fork")
    try:
        want = [ref.reset().dtype, ref.step(ZEROS[:2])[0].dtype]
    finally:
        ref.close()
    assert want == [np.float32, np.float32]
    with SubprocVecEnv([BigEndianSpace] * 4, start_method="fork", **({"batch_size": 2} if batches else {})) as venv:
        if batches:
            venv.async_reset()
            first = venv.recv()
            venv.recv()
            obs = first[0]
            venv.send(np.zeros(2, np.int64), first[4])
            step, _, _, infos, _ = venv.recv()
        else:
            obs = venv.reset()
            step, _, _, infos = venv.step(ZEROS)
        assert obs.dtype == step.dtype == infos[0]["terminal_observation"].dtype == np.float32
        obs_as_tensor(step, "cpu")


class BigEndianValues(envs.BigEndianEnv):
    """Gives '>f4' / '>f8' arrays in everything it returns (its episodes are one step) and echoes what it is given."""

    def reset(self, *, seed=None, options=None):
        obs, _ = super().reset(seed=seed)
        return obs, {"given": options["a"].dtype.str} if options else {"r": np.arange(2, dtype=">f8")}

    def step(self, action):
        obs, reward, _, _, _ = super().step(action)
        return obs, reward, False, True, {"arr": np.arange(2, dtype=">f8")}

    def echo(self, value):
        return value.dtype.str, value


@pytest.mark.parametrize("batches", [False, True], ids=["step", "recv"])
def test_the_caller_s_envs_exchange_native_arrays_as_a_worker_s_do(batches: bool) -> None:
    """What an env returns and what it is given travel as through a pipe (SB3's SubprocVecEnv): arrays arrive in
    native byte order. The calling process's own envs got deep copies, which keep '>f4': env 0's
    terminal_observation then failed SB3's obs_as_tensor (PPO's bootstrap), a worker's env's did not."""
    from stable_baselines3.common.utils import obs_as_tensor

    with SubprocVecEnv([BigEndianValues] * 4, start_method="fork", num_workers=2, step_in_parent=True,
                       **({"batch_size": 2} if batches else {})) as venv:  # fmt: skip
        if batches:
            venv.async_reset()
            taken = [venv.recv()[4] for _ in range(2)]
            for ids in taken:
                venv.send(np.zeros(2, np.int64), ids)
            infos = {int(i): info for _ in range(2) for i, info in zip(*(lambda r: (r[4], r[3]))(venv.recv()))}
            infos = [infos[i] for i in range(4)]
        else:
            venv.reset()
            infos = venv.step(ZEROS)[3]
        assert [info["terminal_observation"].dtype.str for info in infos] == ["<f4"] * 4
        assert [info["arr"].dtype.str for info in infos] == ["<f8"] * 4
        assert [info["r"].dtype.str for info in venv.reset_infos] == ["<f8"] * 4
        obs_as_tensor(infos[0]["terminal_observation"][None], "cpu")
        if not batches:
            assert [kind for kind, _ in venv.env_method("echo", np.ones(2, ">f4"))] == ["<f4"] * 4  # given
            assert [value.dtype.str for _, value in venv.env_method("echo", np.ones(2, ">f4"))] == ["<f4"] * 4
            venv.set_options({"a": np.ones(2, ">f4")})
            venv.reset()
            assert [info["given"] for info in venv.reset_infos] == ["<f4"] * 4


class _SeedEnv(envs.BigEndianEnv):
    """Keeps the seed of its last reset."""

    last_seed = None

    def reset(self, *, seed=None, options=None):
        self.last_seed = seed
        return super().reset(seed=seed)


def test_a_reset_refused_for_an_option_of_the_caller_s_envs_leaves_no_seed_pending() -> None:
    """Seeds past int64 go to their envs before the reset; the calling process's envs' options were copied (and
    refused, unpicklable) after that, so the next reset took the refused reset's seeds."""
    with SubprocVecEnv([_SeedEnv] * 4, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        venv.reset()
        venv.seed(2**70)
        venv.set_options([{"callback": lambda: 0}, {}, {}, {}])  # (env 0's: the calling process's)
        with pytest.raises(TypeError, match="reset options for env 0 cannot be pickled"):
            venv.reset()
        venv.seed(7)
        venv.set_options(None)
        venv.reset()
        assert venv.get_attr("last_seed") == [7, 8, 9, 10]


STATIC_INFO = {"source": "simulator"}  # one info every env returns


class _EndsAt3(envs.BigEndianEnv):
    """Its episode ends at step 3 (truncated, or terminated), with the one STATIC_INFO dict for an info."""

    def __init__(self, truncates: bool):
        super().__init__()
        self.truncates = truncates

    def step(self, action):
        obs, reward, _, _, _ = super().step(action)
        end = self.t >= 3
        return obs, reward, end and not self.truncates, end and self.truncates, STATIC_INFO


def test_envs_of_a_worker_that_return_one_info_object_get_an_info_each() -> None:
    """A worker's extras go back in one message, where pickle's memo made one dict of the info two envs returned:
    SB3's front-end then wrote env 1's TimeLimit.truncated and terminal_observation into env 0's info too (SB3's
    SubprocVecEnv, a pipe per env, gives each its own), and SB3's PPO did not bootstrap env 0's truncation."""
    fns = [partial(_EndsAt3, True), partial(_EndsAt3, False)] * 2
    with SubprocVecEnv(fns, start_method="fork", num_workers=1, step_in_parent=False) as venv:
        venv.reset()
        for _ in range(3):
            _, _, dones, infos = venv.step(ZEROS)
    assert dones.tolist() == [True] * 4
    assert [info["TimeLimit.truncated"] for info in infos] == [True, False, True, False]
    assert len({id(info) for info in infos}) == 4 and STATIC_INFO == {"source": "simulator"}
    # an object inside each env's own info: each env its own too
    with SubprocVecEnv([partial(_InnerShared, k) for k in range(4)], start_method="fork", num_workers=1,
                       step_in_parent=False) as venv:  # fmt: skip
        venv.reset()
        infos = venv.step(ZEROS)[3]
    assert len({id(info["inner"]) for info in infos}) == 4
    infos[0]["inner"]["mine"] = 0
    assert all("mine" not in info["inner"] for info in infos[1:])


SHARED_INNER = {"level": 1}


class _InnerShared(envs.BigEndianEnv):
    """An info of its own, with the one SHARED_INNER dict inside."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def step(self, action):
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, {"env": self.index, "inner": SHARED_INNER}


class _TwoStepEpisodes(gym.Env):
    """obs = [episode, t], reward 10 t; every episode is 2 steps long."""

    observation_space = gym.spaces.Box(-1e9, 1e9, (2,), np.float64)
    action_space = gym.spaces.Discrete(2)
    episode = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.array([self.episode, 0.0]), {}

    def step(self, action):
        self.t += 1
        return np.array([self.episode, self.t], np.float64), 10.0 * self.t, self.t >= 2, False, {}


@pytest.mark.parametrize("step_in_parent", [True, False])
def test_a_masked_reset_leaves_the_step_the_caller_holds_as_it_was(step_in_parent: bool) -> None:
    """A masked reset rewrote the latest slot in place: a DISABLED loop's step Batch (step, reset the ended envs,
    then store the step) lost each episode's last reward and its done flag, and its observations changed. It
    writes into the next slot now, as any reset does (the step's views last S - 1 commands)."""
    from gymnasium.vector import AutoresetMode

    with Pool([_TwoStepEpisodes] * 2, ring_slots=3, num_workers=2, step_in_parent=step_in_parent, start_method="fork",
              autoreset_mode=AutoresetMode.DISABLED) as pool:  # fmt: skip
        pool.reset()
        for _ in range(3):  # (the ring wraps round)
            pool.step(np.zeros(2, np.int64))
            step = pool.step(np.zeros(2, np.int64))  # both episodes end
            held = step.observations(copy=False)
            before = (step.rewards.copy(), step.terminated.copy(), held.copy())
            reset = pool.reset(mask=np.array([True, False]))  # env 0 starts again, env 1 stays ended
            assert step.rewards.tolist() == before[0].tolist() == [20.0, 20.0]
            assert step.terminated.tolist() == before[1].tolist() == [True, True]
            np.testing.assert_array_equal(held, before[2])
            now = reset.observations()
            assert now[0].tolist() == [before[2][0][0] + 1, 0.0] and now[1].tolist() == before[2][1].tolist()
            pool.reset(mask=np.array([False, True]))
    with Pool([_TwoStepEpisodes] * 2, ring_slots=1, num_workers=1, step_in_parent=True,
              autoreset_mode=AutoresetMode.DISABLED) as pool:  # fmt: skip
        pool.reset()
        pool.step(np.zeros(2, np.int64))
        pool.step(np.zeros(2, np.int64))
        assert pool.reset(mask=np.array([True, False])).observations()[:, 1].tolist() == [0.0, 2.0]  # (in place)


def test_a_kept_batch_refuses_final_observations_a_later_command_overwrote() -> None:
    """The final observations of an array space are in one buffer, the latest step's: a Batch kept across later
    episode ends returned another episode's, silently. It refuses once a later step completed (a reset, which
    does not write the buffer, leaves it valid)."""
    with Pool([_TwoStepEpisodes] * 2, ring_slots=4, num_workers=1, step_in_parent=True) as pool:
        pool.reset()
        pool.step(np.zeros(2, np.int64))
        ended = pool.step(np.zeros(2, np.int64))
        assert ended.terminal_observation(0).tolist() == [0.0, 2.0]
        assert [o.tolist() for o in ended.terminal_observations([0, 1])] == [[0.0, 2.0], [0.0, 2.0]]
        pool.reset(mask=np.array([True, False]))  # (a reset leaves the buffer as it was)
        assert ended.terminal_observation(1).tolist() == [0.0, 2.0]
        pool.step(np.zeros(2, np.int64))
        with pytest.raises(ValueError, match="overwritten by a later step"):
            ended.terminal_observation(0)
        with pytest.raises(ValueError, match="overwritten by a later step"):
            ended.terminal_observations([0, 1])
        assert pool.step(np.zeros(2, np.int64)).terminal_observation(1).tolist() == [1.0, 2.0]


def test_an_unknown_call_and_a_closed_pool_s_ring_are_named() -> None:
    """A typo in a call's request ("get_atr") came back as env 0's KeyError; pool.ring after close() was None (an
    AttributeError on None), where every other read of a closed pool raises ClosedError."""
    from fastvec.errors import ClosedError

    pool = Pool(_counters(), start_method="fork", num_workers=2)
    try:
        pool.reset()
        with pytest.raises(ValueError, match="unknown request 'get_atr': one of call, env_method, get_attr"):
            pool.call("get_atr", [0, 1], ("index",))
        assert pool.state is PoolState.IDLE and pool.call("get_attr", [0, 1], ("index",)) == [0, 1]
        batch = pool.step(ZEROS)
        assert pool.ring.obs[0].shape[1] == 4 and batch.ring is pool.ring
    finally:
        pool.close()
    for read in (lambda: pool.ring, lambda: batch.ring):
        with pytest.raises(ClosedError, match="its ring"):
            read()


# 5 ------------------------------------------------------------------------------------------------
def test_interrupt_while_the_parent_steps_its_envs_breaks_the_pool() -> None:
    venv = SubprocVecEnv(_counters(), start_method="fork", num_workers=2)
    try:
        venv.reset()
        envs.Counter.interrupt_at = 1  # env 0 ( the parent's) raises KeyboardInterrupt in its next step
        venv.step_async(ZEROS)
        with pytest.raises(KeyboardInterrupt):
            venv.step_wait()
        with pytest.raises(BrokenPoolError, match="interrupted") as info:  # never the rows of an earlier step
            venv.step_wait()
        assert isinstance(info.value.__cause__, KeyboardInterrupt)
        with pytest.raises(BrokenPoolError):
            venv.reset()
    finally:
        envs.Counter.interrupt_at = None
        envs.Counter.closed.clear()
        venv.close()
    assert sorted(i for pid, i in envs.Counter.closed if pid == os.getpid()) == [0, 1]  # the parent's envs closed


class _InterruptOnce:
    """Wraps a function: the ``at``-th call raises KeyboardInterrupt instead of running."""

    def __init__(self, function, at: int = 1):
        self.function, self.calls, self.at = function, 0, at

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.function(*args, **kwargs)


def test_interrupt_while_waiting_for_workers_resumes_with_the_right_rows(monkeypatch) -> None:
    """Nothing was consumed while waiting: the retry step_wait() returns this step's rows."""
    reference = DummyVecEnv(_counters())
    venv = SubprocVecEnv(_counters(), start_method="fork", num_workers=2)
    try:
        reference.seed(5)
        venv.seed(5)
        np.testing.assert_array_equal(venv.reset(), reference.reset())
        for t in range(6):
            actions = np.array([t % 5, 1, 2, 3])
            expected = reference.step(actions)
            venv.step_async(actions)
            if t % 2 == 0:
                monkeypatch.setattr(kernels, "wait_remaining", _InterruptOnce(kernels.wait_remaining))
                with pytest.raises(KeyboardInterrupt):
                    venv.step_wait()
                monkeypatch.undo()
                assert venv.pool.state is PoolState.PENDING
            obs, rewards, dones, _ = venv.step_wait()
            np.testing.assert_array_equal(obs, expected[0])
            np.testing.assert_array_equal(rewards, expected[1])
    finally:
        venv.close()
        reference.close()


def test_interrupt_while_reading_a_message_breaks_the_pool_instead_of_hanging(monkeypatch) -> None:
    with VectorEnv([envs.make_dict] * 4, num_workers=2, start_method="fork") as venv:  # DictEnv: infos on the pipe
        venv.reset(seed=0)
        monkeypatch.setattr(Remote, "recv", _InterruptOnce(Remote.recv))
        with pytest.raises(KeyboardInterrupt):
            for _ in range(10):  # every third step has infos
                venv.step(np.zeros((4, 2), np.float32))
        monkeypatch.undo()
        with pytest.raises(BrokenPoolError, match="KeyboardInterrupt"):
            venv.step(np.zeros((4, 2), np.float32))


@pytest.mark.parametrize("api", ["reset", "env_method"])
def test_interrupted_reset_or_call_completes_on_the_next_call(api: str, monkeypatch) -> None:
    with SubprocVecEnv(_counters(), start_method="fork", num_workers=2) as venv:
        venv.reset()
        venv.step(np.ones(4, dtype=np.int64))
        monkeypatch.setattr(kernels, "wait_remaining", _InterruptOnce(kernels.wait_remaining))
        with pytest.raises(KeyboardInterrupt):
            venv.reset() if api == "reset" else venv.env_method("pid")
        monkeypatch.undo()
        assert venv.pool.pending is not None
        # the same call again: the interrupted one is finished first, then this one runs
        if api == "reset":
            venv.seed(3)
            np.testing.assert_array_equal(venv.reset()[:, 0], [3000, 4000, 5000, 6000])
        else:
            assert venv.env_method("pid")[3] != os.getpid()
        with pytest.raises(AlreadyPendingCallError):  # an explicit async call is never finished behind one's back
            venv.pool.step_async(ZEROS)
            venv.pool.reset_async()
        venv.pool.step_wait()
        with pytest.raises(NoAsyncCallError):
            venv.pool.step_wait()


# 7 ------------------------------------------------------------------------------------------------
def test_worker_dying_in_a_reset_is_replaced_with_the_requested_seeds(tmp_path) -> None:
    marker = tmp_path / "die"
    fns = [partial(envs.DieOnceOnReset, i, str(marker)) for i in range(4)]
    with VectorEnv(fns, num_workers=2, start_method="fork", on_error="restart") as venv:
        (tmp_path / "die.3").touch()
        with pytest.warns(RuntimeWarning, match="worker 1 .* died during 'reset'"):
            obs, infos = venv.reset(seed=[1, 2, 3, 4])
        np.testing.assert_array_equal(obs[:, 0], [1000, 2000, 3000, 4000])  # the replacement used the seeds
        assert infos["_fastvec_restarted"].tolist() == [False, False, True, True]


def test_worker_dying_in_a_reset_gets_the_options_too(tmp_path) -> None:
    marker = tmp_path / "die"
    fns = [partial(envs.DieOnceOnReset, i, str(marker)) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv:
        (tmp_path / "die.2").touch()
        venv.seed(7)
        venv.set_options({"level": 3})
        with pytest.warns(RuntimeWarning, match="died during 'reset'"):
            obs = venv.reset()
        np.testing.assert_array_equal(obs[:, 0], [7000, 8000, 9000, 10000])
        assert [info.get("options") for info in venv.reset_infos] == [{"level": 3}] * 4


def test_worker_dying_in_a_masked_reset_leaves_the_other_rows_current(tmp_path) -> None:
    marker = tmp_path / "die"
    fns = [partial(envs.DieOnceOnReset, i, str(marker)) for i in range(4)]
    with VectorEnv(fns, num_workers=2, start_method="fork", on_error="restart") as venv:
        venv.reset(seed=[1, 2, 3, 4])
        for _ in range(3):
            obs, *_ = venv.step(np.array([1, 1, 1, 1]))
        np.testing.assert_array_equal(obs[:, 0], [1006, 2006, 3006, 4006])
        (tmp_path / "die.2").touch()
        mask = np.array([False, False, True, False])
        with pytest.warns(RuntimeWarning, match="died during 'reset'"):
            obs, infos = venv.reset(seed=[1, 2, 9, 4], options={"reset_mask": mask})
        np.testing.assert_array_equal(obs[:2, 0], [1006, 2006])  # the live worker's rows: current, not older
        assert obs[2, 0] == 9000  # the masked env: reset with its seed
        assert obs[3, 0] < 1000  # the dead worker's other env: a fresh episode, reported
        assert infos["_fastvec_restarted"].tolist() == [False, False, True, True]


# 8 ------------------------------------------------------------------------------------------------
def test_close_after_a_dead_worker_still_closes_the_parents_envs() -> None:
    envs.Counter.closed.clear()
    venv = SubprocVecEnv(_counters(), start_method="fork", num_workers=2)
    venv.reset()
    os.kill(venv.pool.worker_pids[0], signal.SIGKILL)
    with pytest.raises(WorkerDiedError):
        venv.step(ZEROS)
    venv.close()
    assert sorted(i for pid, i in envs.Counter.closed if pid == os.getpid()) == [0, 1]
    envs.Counter.closed.clear()


@pytest.mark.parametrize("bad_index", [0, 3])
def test_restart_covers_an_env_failing_in_its_autoreset(bad_index: int) -> None:
    key = f"autoreset-{bad_index}-{os.getpid()}"
    fns = [
        partial(envs.FailingAutoreset, i, f"{key}-{i}") if i == bad_index else partial(envs.Counter, i)
        for i in range(4)
    ]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        for _ in range(2):
            venv.step(ZEROS)
        obs, _, dones, infos = venv.step(ZEROS)  # t = 3: terminated; its autoreset raises
        assert dones[bad_index] and "RuntimeError: autoreset failed" in infos[bad_index]["fastvec.restarted"]
        assert obs[bad_index, 0] == 0  # the fresh env's first observation
        assert venv.pool.shard_restarts() == 1


def test_counters_survive_a_respawn() -> None:
    key = f"counters-{os.getpid()}"
    from tests.test_restart import FlakyEnv

    fns = [partial(FlakyEnv, f"{key}-{i}", 1 if i == 3 else 10**9) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        for _ in range(3):
            venv.step(ZEROS)
        assert venv.pool.shard_restarts() == 1
        steps_before = venv.pool.worker_stats()[0]["env_steps"]
        os.kill(venv.pool.worker_pids[0], signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="died"):
            venv.step(ZEROS)
        assert venv.pool.shard_restarts() == 1  # the dead worker's count is neither lost nor counted twice
        venv.step(ZEROS)
        assert venv.pool.worker_stats()[0]["env_steps"] >= steps_before + 2  # counts go on, never back


def test_close_with_views_still_alive_frees_every_descriptor() -> None:
    venv = SubprocVecEnv(_counters(), start_method="fork", num_workers=2, copy=False)
    venv.reset()
    obs, *_ = venv.step(ZEROS)
    venv.close()  # the leak guard (conftest) checks that no /dev/shm fd is left open
    assert obs[:, 1].tolist() == [0, 1, 2, 3]  # the mapping lives as long as the view
    del obs


# 9 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_workers_import_neither_sb3_nor_torch(start_method: str) -> None:
    """Workers import only the engine: no front-end, no Stable-Baselines3, no torch."""
    code = textwrap.dedent(
        f"""
        import sys
        from functools import partial
        import fastvec
        assert "torch" not in sys.modules and "stable_baselines3" not in sys.modules, "import fastvec"
        from tests import envs
        from fastvec import VectorEnv
        with VectorEnv([partial(envs.Counter, i) for i in range(2)], num_workers=2, step_in_parent=False,
                       start_method={start_method!r}) as venv:
            for name in ("torch", "stable_baselines3", "fastvec.sb3_vec_env", "fastvec.gym_vector_env"):
                assert not any(venv.call("imported", name)), name
        print("ok")
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# the state machine itself --------------------------------------------------------------------------
def test_states_and_misuse_errors() -> None:
    pool = Pool(_counters(), num_workers=2, start_method="fork")
    try:
        assert pool.state is PoolState.IDLE and pool.pending is None
        pool.reset_async(seeds=[0, 1, 2, 3])
        assert pool.state is PoolState.PENDING and pool.pending == "reset"
        with pytest.raises(AlreadyPendingCallError, match=r"reset_wait\(\)") as info:
            pool.call_async("pid", [0])
        assert info.value.name == "reset"  # gymnasium's name of the pending call
        with pytest.raises(NoAsyncCallError, match=r"without any prior call to `step_async`.*reset_wait\(\)"):
            pool.step_wait()
        batch = pool.reset_wait()
        assert batch.ring.obs[0][batch.slot][2, 0] == 2000
        pool.call_async("env_method", [3, 0], ("pid", (), {}))
        pids = pool.call_wait()
        assert pids[1] == os.getpid() and pids[0] != os.getpid()
        with pytest.raises(NoAsyncCallError):
            pool.call_wait()
    finally:
        pool.close()
    assert pool.state is PoolState.CLOSED
    pool.close()


class _KeepsActions(gym.Env):
    """Keeps every action it was given (as some envs keep their last action)."""

    def __init__(self, space: gym.Space) -> None:
        self.observation_space = spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = space
        self.kept: list = []

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.kept.append(action)
        return np.zeros(2, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize(
    "space, batches",
    [
        (spaces.Discrete(5), [np.array([0, 1, 2]), np.array([3, 4, 0]), np.array([1, 1, 1])]),
        (spaces.Box(-1, 1, (2,), np.float32), [np.full((3, 2), v, np.float32) for v in (0.1, 0.2, 0.3)]),
    ],
)
def test_an_env_that_keeps_its_actions_keeps_what_it_was_sent(space, batches) -> None:
    """The actions an env gets are its own: later steps, which reuse the shared action buffer, do
    not change an action it kept; Discrete actions arrive as numpy integer scalars, as in SB3."""
    with Pool(
        [partial(_KeepsActions, space)] * 3, num_workers=2, start_method="fork"
    ) as pool:  # the parent's shard and a worker's
        pool.reset()
        for actions in batches:
            pool.step(actions)
        kept = pool.call("get_attr", [0, 1, 2], ("kept",))
    for i in range(3):
        assert [np.asarray(a).tolist() for a in kept[i]] == [b[i].tolist() for b in batches]
        if isinstance(space, spaces.Discrete):
            assert all(isinstance(a, np.integer) for a in kept[i])


def test_a_batch_read_after_close_says_the_pool_is_closed() -> None:
    """Its observations went with the shared block: ClosedError, not an internal TypeError."""
    pool = Pool([envs.make_cartpole] * 2, num_workers=2, start_method="fork")
    batch = pool.reset(seeds=[0, 1])
    pool.close()
    with pytest.raises(ClosedError, match="closed"):
        batch.observations()
    with pytest.raises(ClosedError, match="closed"):
        batch.terminal_observation(0)


_POOLS_FROM_THREADS = textwrap.dedent(
    """
    import threading
    import gymnasium as gym
    import fastvec

    gym.make("CartPole-v1").close()  # (the env's own modules imported before the threads start)

    def make():
        return gym.make("CartPole-v1")

    barrier = threading.Barrier(4)

    def work():
        barrier.wait()
        venv = fastvec.SubprocVecEnv([make] * 4, start_method="fork", num_workers=4)
        venv.reset()
        venv.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    print("done")
    """
)


@pytest.mark.one_pass  # (modules a forked worker imports: no kernel)
def test_fork_pools_made_from_several_threads_at_once_start() -> None:
    """A worker forked while another thread of the caller imported a module fastvec imports lazily (cloudpickle, as
    its first pool started) waited for ever on that module's lock, held by a thread the child does not have; SB3's
    and gymnasium's fork pools start from 4 threads at once."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen(
        [sys.executable, "-c", _POOLS_FROM_THREADS], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # (its workers die with it: their parent-death signal)
        child.communicate()
        raise AssertionError("the pools did not start within 60 s") from None
    assert child.returncode == 0 and out.strip() == "done", err[-3000:]


def test_an_older_batchs_final_observation_in_a_mode_that_keeps_none_says_the_mode() -> None:
    """On a NEXT_STEP pool, terminal_observation() of a Batch one step old said it was "overwritten by a later step",
    advice that cannot help there: the mode is the reason (hunt98 bug 9)."""
    from fastvec.protocol import NEXT_STEP

    with Pool([envs.make_cartpole] * 2, {"start_method": "fork", "num_workers": 2}, autoreset_mode=NEXT_STEP) as pool:
        pool.reset()
        old = pool.step(np.zeros(2, dtype=np.int64))
        pool.step(np.zeros(2, dtype=np.int64))
        for ask in (lambda: old.terminal_observation(0), lambda: old.terminal_observations([0])):
            with pytest.raises(ValueError, match="kept apart only with autoreset SAME_STEP: with NEXT_STEP"):
                ask()
