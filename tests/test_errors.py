"""Failure behaviour: clear errors naming the env, no hangs, nothing left behind."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from functools import partial

import gymnasium as gym
import numpy as np
import psutil
import pytest

from fastvec import PoolState, SubprocVecEnv, shm
from fastvec.errors import BrokenPoolError, ClosedError, EnvError, StepTimeoutError, WorkerDiedError
from fastvec.pool import Pool
from tests import envs
from tests.conftest import ours


def _fns(n: int, bad_index: int, fail_in: str, after: int = 0) -> list:
    return [partial(envs.FailingEnv, fail_in if i == bad_index else None, after) for i in range(n)]


@pytest.mark.parametrize("bad_index", [0, 3])  # 0 is stepped in the parent, 3 in a worker
def test_constructor_error_names_env(bad_index: int) -> None:
    with pytest.raises(EnvError) as info:
        SubprocVecEnv(_fns(4, bad_index, "init"), start_method="fork", num_workers=2)
    err = info.value
    assert err.env_index == bad_index and "make" in err.command
    assert "boom in __init__" in str(err) and "Traceback" in err.remote_traceback
    assert f"env {bad_index}" in str(err)


class _LockedSpace(gym.spaces.Box):
    """A Box that holds a thread lock: it cannot be pickled."""

    def __init__(self):
        super().__init__(-1.0, 1.0, (2,), np.float32)
        self.lock = threading.Lock()


class _SpaceHolding(gym.Env):
    action_space = gym.spaces.Discrete(2)

    def __init__(self, locked: bool):
        self.observation_space = _LockedSpace() if locked else gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        return np.full(2, 0.5, np.float32), {}

    def step(self, action):
        return np.full(2, 0.25, np.float32), 1.0, False, False, {}


@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_an_env_whose_spaces_cannot_be_pickled_is_taken_unless_it_is_env_0(front: str) -> None:
    """SB3 reads env 0's spaces alone, and gymnasium's workers compare each env's with env 0's in the worker: an env
    whose spaces cannot be pickled was refused, the error naming its worker's first env. Env 0's are the pool's:
    where they cannot reach the caller, the error names env 0."""
    from fastvec import VectorEnv

    kind = partial(SubprocVecEnv, start_method="fork") if front == "sb3" else partial(VectorEnv, context="fork")
    fns = [partial(_SpaceHolding, i == 7) for i in range(8)]
    with kind(fns, num_workers=2, step_in_parent=False) as venv:
        venv.reset()
        obs = venv.step(np.zeros(8, np.int64))[0]
        assert np.array_equal(obs, np.full((8, 2), 0.25, np.float32))
    fns = [partial(_SpaceHolding, i == 0) for i in range(4)]
    with pytest.raises(EnvError, match=r"env 0 raised TypeError during 'make \(reporting spaces\)'.*lock"):
        kind(fns, num_workers=2, step_in_parent=False)


@pytest.mark.parametrize("bad_index", [1, 3])
def test_reset_error_is_a_value_error_too(bad_index: int) -> None:
    venv = SubprocVecEnv(_fns(4, bad_index, "reset"), start_method="fork", num_workers=2)
    try:
        with pytest.raises(ValueError, match="boom in reset") as info:
            venv.reset()
        assert isinstance(info.value, EnvError)
        assert info.value.env_index == bad_index and info.value.command == "reset"
    finally:
        venv.close()


@pytest.mark.parametrize("bad_index", [0, 2])
def test_step_error_then_clean_close(bad_index: int) -> None:
    venv = SubprocVecEnv(_fns(3, bad_index, "step", after=2), start_method="fork", num_workers=2)
    venv.reset()
    venv.step(np.zeros(3, dtype=np.int64))
    venv.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(EnvError, match=f"env {bad_index} raised ZeroDivisionError during 'step'") as info:
        venv.step(np.zeros(3, dtype=np.int64))
    assert "boom in step" in info.value.remote_traceback
    assert isinstance(info.value, ZeroDivisionError)
    venv.close()


def test_env_method_error_names_env_and_pool_survives() -> None:
    with SubprocVecEnv(_fns(4, -1, None), start_method="fork", num_workers=2) as venv:
        with pytest.raises(EnvError) as info:
            venv.env_method("explode", indices=[2])
        assert info.value.env_index == 2 and info.value.command == "env_method"
        assert isinstance(info.value, KeyError)
        pids = venv.env_method("pid")
        assert pids[0] == os.getpid() and pids[3] != os.getpid()  # env 0 lives in the parent
        venv.reset()
        venv.step(np.zeros(4, dtype=np.int64))


class _Leveled(gym.Env):
    """An env with a level that ``set_level`` changes; the envs in ``refuse`` raise there instead, and those in
    ``locked`` hold a value that cannot be pickled."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, index: int, refuse: tuple = (), locked: tuple = ()):
        self.index, self.refuse, self.level = index, refuse, 0
        self.thing = threading.Lock() if index in locked else index

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):  # (episodes of two steps: an env moves between episodes)
        self.t += 1
        return np.zeros(2, np.float32), 0.0, self.t >= 2, False, {}

    def set_level(self, level: int) -> None:
        if self.index in self.refuse:
            raise RuntimeError(f"env {self.index} refuses")
        self.level = level

    def take(self, items: list) -> None:
        items.append(self.index)
        self.items = items

    def add(self) -> None:
        self.items.append(self.index)


@pytest.mark.parametrize("step_in_parent", [True, False], ids=["parent-and-worker", "workers"])
@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_an_env_that_raises_in_a_call_stops_no_other_env(front: str, step_in_parent: bool) -> None:
    """Each env runs a call as in a process of its own (as SB3's and gymnasium's do): an env that raises stops
    none of the others, those of its own process after it included, and every error is reported (the lowest
    env's raised, the rest in ``others``)."""
    from fastvec import VectorEnv

    fns = [partial(_Leveled, i, refuse=(0, 2)) for i in range(4)]
    kind = SubprocVecEnv if front == "sb3" else VectorEnv
    with kind(fns, num_workers=2, step_in_parent=step_in_parent, **{"start_method" if front == "sb3" else "context": "fork"}) as venv:
        call = venv.env_method if front == "sb3" else venv.call
        with pytest.raises(EnvError, match="env 0 raised RuntimeError during") as raised:
            call("set_level", 7)
        assert [other.env_index for other in raised.value.others] == [2]
        assert list(venv.get_attr("level")) == [0, 7, 0, 7]


def test_a_call_on_the_calling_process_s_two_parts_runs_on_each_with_arguments_of_its_own() -> None:
    """Env 3 moved around the ring's end into the calling process (its shard is then two parts): an env of the
    first part that raises stops not the second's, and the last env of each part has arguments of its own."""
    fns = [partial(_Leveled, i, refuse=(0,)) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        venv.reset()
        pool = venv.pool
        envs.wrap_last(pool, lambda: venv.step(np.zeros(4, np.int64)))
        assert list(pool.wrap_envs) == [3]
        with pytest.raises(EnvError, match="env 0 raised RuntimeError"):
            venv.env_method("set_level", 5)
        assert venv.get_attr("level") == [0, 5, 5, 5]
        venv.env_method("take", [])
        assert venv.get_attr("items") == [[0], [1], [2], [3]]
        venv.set_attr("items", [])  # (a value of its own, too)
        venv.env_method("add")
        assert venv.get_attr("items") == [[0], [1], [2], [3]]


def test_values_of_two_envs_of_a_worker_that_cannot_be_sent_name_both_lowest_first() -> None:
    """A value that cannot be pickled names its env (README); two in one worker's reply name both, the lowest
    raised (the worker's first env's value, pickled with the reply, is checked too)."""
    fns = [partial(_Leveled, i, locked=(2, 3)) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        with pytest.raises(EnvError, match=r"env 2 raised TypeError during 'get_attr \(sending the result\)'") as raised:
            venv.get_attr("thing")
        assert [other.env_index for other in raised.value.others] == [3]
        assert venv.get_attr("thing", [0, 1]) == [0, 1]


def test_close_error_is_reported_after_cleanup() -> None:
    venv = SubprocVecEnv(_fns(3, 2, "close"), start_method="fork", num_workers=2)
    with pytest.raises(EnvError, match="env 2 raised OSError during 'close'"):
        venv.close()
    venv.close()  # idempotent even after an error


def test_wrong_observation_shape_names_env() -> None:
    with SubprocVecEnv(_fns(3, 1, "bad_obs"), start_method="fork", num_workers=2, step_in_parent=False) as venv:
        venv.reset()
        with pytest.raises(EnvError, match=r"env 1 .*observation has shape \(3,\).*expected shape \(2,\)"):
            venv.step(np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize(
    "actions, message",
    [
        (np.zeros(3, dtype=np.int64), r"expected actions of shape \(4,\)"),
        (np.zeros((4, 2), dtype=np.int64), r"shape \(4,\)"),
    ],
)
def test_bad_discrete_actions(actions, message) -> None:
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2) as venv:
        venv.reset()
        with pytest.raises(ValueError, match=message):
            venv.step(actions)
        venv.step(np.array([0, 1, 0, 1]))  # nothing was sent: the pool is fine


def test_out_of_range_discrete_action_goes_to_the_env() -> None:
    """As SB3 and gymnasium: the env decides (CartPole asserts), and its error names the env; 0.5 too, unless
    check="raise" asks for it to be refused before anything is sent."""
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2) as venv:
        venv.reset()
        with pytest.raises(EnvError, match=r"env 2 raised AssertionError during 'step'"):
            venv.step(np.array([0, 1, 2, 0]))
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2) as venv:
        venv.reset()
        # (the value as the env's assertion shows it: numpy 2's repr, np.float64(0.0), or numpy 1's, 0.0)
        with pytest.raises(EnvError, match=r"env 0 raised AssertionError during 'step': (np.float64\()?0.0") as raised:
            venv.step(np.array([0.0, 0.5, 1.0, 0.0]))  # (CartPole takes no floats, as with SB3: every env raises)
        assert repr(np.float64(0.5)) in str(raised.value.others[0])
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2) as venv:  # (strings too, as SB3)
        venv.reset()
        with pytest.raises(EnvError, match=r"env 0 raised AssertionError during 'step': " + re.escape(repr(np.str_("a")))):
            venv.step(np.array(["a", "b", "c", "d"]))
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, check="raise") as venv:
        venv.reset()
        with pytest.raises(ValueError, match=r"action for env 1 is 0.5, which the action buffer's dtype int64"):
            venv.step(np.array([0.0, 0.5, 1.0, 0.0]))
        venv.step(np.array([0, 1, 0, 1]))  # nothing was sent: the pool is fine


def test_box_actions_pass_through_unless_checked() -> None:
    with SubprocVecEnv([envs.make_pendulum] * 3, start_method="fork", num_workers=2) as venv:
        venv.reset()
        venv.step(np.array([[0.0], [0.0], [3.5]]))  # outside Box(-2, 2): Pendulum clips it itself
        with pytest.raises(EnvError, match="env 0 raised TypeError during 'step'"):  # (as SB3: Pendulum decides)
            venv.step(np.array([[None], [None], [None]], dtype=object))
    with SubprocVecEnv([envs.make_pendulum] * 3, start_method="fork", num_workers=2, check="raise") as venv:
        venv.reset()
        with pytest.raises(ValueError, match="action for env 1 is NaN"):
            venv.step(np.array([[0.0], [np.nan], [0.0]], dtype=np.float32))
        with pytest.raises(ValueError, match=r"action for env 2 is 3.5.*outside Box"):
            venv.step(np.array([[0.0], [0.0], [3.5]]))
        with pytest.raises(ValueError, match="action for env 0 is None, not a real number"):
            venv.step(np.array([[None], [None], [None]], dtype=object))
        venv.step(np.zeros((3, 1)))


@pytest.mark.serial
def test_worker_killed_while_idle_is_reported_quickly() -> None:
    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2)
    try:
        venv.reset()
        (pid,) = venv.pool.worker_pids
        os.kill(pid, signal.SIGKILL)
        began = time.monotonic()
        with pytest.raises(WorkerDiedError, match=r"worker 1 \(envs 2..3\) died .*SIGKILL") as info:
            venv.step(np.array([0, 1, 0, 1]))
        assert time.monotonic() - began < 1.5
        assert info.value.exitcode == -signal.SIGKILL
        with pytest.raises(BrokenPoolError, match="WorkerDiedError: worker 1 .*close\\(\\) it") as broken:
            venv.step(np.array([0, 1, 0, 1]))
        assert isinstance(broken.value, ClosedError) and isinstance(broken.value.__cause__, WorkerDiedError)
    finally:
        venv.close()


@pytest.mark.serial
def test_worker_killed_during_step() -> None:
    fns = _fns(2, 1, "hang", after=0)
    venv = SubprocVecEnv(fns, start_method="fork", num_workers=2)
    try:
        venv.reset()
        venv.step_async(np.array([0, 0]))
        (pid,) = venv.pool.worker_pids
        os.kill(pid, signal.SIGKILL)
        began = time.monotonic()
        with pytest.raises(WorkerDiedError):
            venv.step_wait()
        assert time.monotonic() - began < 1.5
    finally:
        venv.close()


def test_worker_exiting_by_itself() -> None:
    with SubprocVecEnv(_fns(2, 1, "die"), start_method="fork", num_workers=2) as venv:
        venv.reset()
        with pytest.raises(WorkerDiedError, match="exit code 7"):
            venv.step(np.array([0, 0]))


def test_step_timeout_and_bounded_close() -> None:
    venv = SubprocVecEnv(_fns(2, 1, "hang"), start_method="fork", num_workers=2, step_timeout=0.5)
    venv.reset()
    with pytest.raises(StepTimeoutError, match=r"'step' did not finish within 0.5 s in worker 1 \(envs 1..1\)"):
        venv.step(np.array([0, 0]))
    began = time.monotonic()
    venv.close()
    assert time.monotonic() - began < 5


@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_step_timeout_shorter_than_the_first_wait_is_kept(on_error: str) -> None:
    """A step of 0.15 s with step_timeout=0.05: StepTimeoutError (or the worker replaced), however
    short the timeout (the first wait of a step used to run 0.1 s before any deadline was looked at,
    and steps up to about 0.2 s passed)."""
    with SubprocVecEnv(_fns(2, 1, "slow", 1), start_method="fork", num_workers=2, on_error=on_error) as venv:
        venv.reset()
        venv.step(np.array([0, 0]))
        venv.pool.step_timeout = 0.05  # (only now: on a loaded host, making the pool can take longer than that)
        if on_error == "raise":
            with pytest.raises(StepTimeoutError, match="within 0.05 s"):
                venv.step(np.array([0, 0]))
            return
        with pytest.warns(RuntimeWarning):
            _, _, dones, infos = venv.step(np.array([0, 0]))
        assert dones.tolist() == [False, True] and "fastvec.restarted" in infos[1]


def test_signals_during_the_wait_do_not_bring_step_timeout_forward() -> None:
    """A signal with a Python handler (a profiler's timer) cuts the kernel's wait short: the time-out
    counts the time waited, not the whole slice: it counted a first wait of 0.1 s, so these 0.15 s
    steps raised at 0.245 s (and 20 ms steps at a step_timeout of 0.05 s)."""
    with SubprocVecEnv(_fns(2, 1, "slow", 0), start_method="fork", num_workers=2, step_in_parent=False,
                       step_timeout=0.245) as venv:
        venv.reset()
        previous = signal.signal(signal.SIGALRM, lambda *_: None)
        signal.setitimer(signal.ITIMER_REAL, 0.003, 0.003)
        try:
            for _ in range(3):
                venv.step(np.array([0, 0]))  # 0.15 s each, in worker 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class LockInInfo(envs.FailingEnv):
    """Env ``bad`` returns an info that cannot be pickled (a lock) in its steps."""

    def __init__(self, bad: bool):
        super().__init__(None)
        self.bad = bad

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        return obs, reward, term, trunc, ({"handle": threading.Lock()} if self.bad else {"fine": 1})


@pytest.mark.parametrize("bad", [0, 3])  # the calling process's env, a worker's
def test_unpicklable_info_names_its_env(bad: int) -> None:
    """The error names the env whose info could not be sent, not the first env of its worker. The calling
    process's own envs give the same error (their values travel as through a pipe): a lock in env 0's info
    was taken there, and refused when a worker stepped it (another layout, or after a move)."""
    fns = [partial(LockInInfo, i == bad) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        venv.reset()
        with pytest.raises(EnvError, match="during 'step \\(sending the result\\)'") as info:
            venv.step(np.zeros(4, dtype=np.int64))
        assert info.value.env_index == bad
        assert venv.get_attr("bad") == [i == bad for i in range(4)]  # the pool goes on
        with pytest.raises(EnvError, match="during 'env_method \\(sending the result\\)'") as info:
            venv.env_method("step", 0, indices=[bad])  # (its info holds the lock)
        assert info.value.env_index == bad
        with pytest.raises(TypeError, match="cannot be pickled"):  # (given: refused before anything runs)
            venv.set_attr("handle", threading.Lock(), indices=[bad])


@pytest.mark.parametrize("bad_index", [0, 2])  # the parent's shard, or a worker's (envs 2..3)
def test_an_autoreset_that_raises_does_not_stop_the_other_resets(bad_index: int) -> None:
    """SB3's autoreset: every env whose episode ended is reset, even after one of them raised."""
    fns = [partial(envs.SecondResetFails, i == bad_index) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        venv.reset()
        venv.step(np.zeros(4, dtype=np.int64))
        with pytest.raises(EnvError, match="boom in autoreset") as info:
            venv.step(np.zeros(4, dtype=np.int64))
        assert info.value.env_index == bad_index
        others = [i for i in range(4) if i != bad_index]
        assert venv.get_attr("resets", others) == [2, 2, 2] and venv.get_attr("steps", others) == [0, 0, 0]


def test_keyboard_interrupt_during_step_wait_then_close() -> None:
    venv = SubprocVecEnv(_fns(2, 1, "hang"), start_method="fork", num_workers=2)
    venv.reset()
    # Ctrl-C as Python handles it: a test run started in the background by a shell (`make test &`)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            venv.step(np.array([0, 0]))
    finally:
        timer.join()
        signal.signal(signal.SIGINT, previous)
    began = time.monotonic()
    venv.close()
    assert time.monotonic() - began < 5


def test_unpicklable_factory_under_spawn_says_how_to_fix() -> None:
    lock = threading.Lock()  # cannot be pickled

    def factory():
        assert lock is not None
        return envs.make_cartpole()

    with pytest.raises(TypeError, match="env factory 1 cannot be pickled.*start_method='fork'"):
        SubprocVecEnv([factory, factory], start_method="spawn", num_workers=2)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="at least one env"):
        SubprocVecEnv([])
    with pytest.raises(TypeError, match=r"env_fns\[1\] must be a callable"):
        SubprocVecEnv([envs.make_cartpole, "CartPole-v1"])
    with pytest.raises(ValueError, match="num_workers"):
        SubprocVecEnv([envs.make_cartpole], num_workers=0)
    with pytest.raises(ValueError, match="start_method"):
        SubprocVecEnv([envs.make_cartpole], start_method="threads")


def test_space_mismatch_names_env() -> None:
    with pytest.raises(ValueError, match="env 2 has observation space"):
        SubprocVecEnv([envs.make_cartpole, envs.make_cartpole, envs.make_pendulum], start_method="fork")


FORKING_SCRIPT = textwrap.dedent(
    """
    import os, sys, numpy as np
    from fastvec import SubprocVecEnv
    from tests import envs
    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method=sys.argv[1], num_workers=2)
    venv.reset()
    pid = os.fork()
    if pid == 0:  # a child doing other work: it uses the pool by mistake, then exits as usual (exit hooks run)
        try:
            venv.step(np.zeros(4, dtype=np.int64))
        except Exception as exc:
            print("child:", type(exc).__name__, str(exc).splitlines()[0], flush=True)
        venv.close()
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    print("child exit code:", os.waitstatus_to_exitcode(status), flush=True)
    for _ in range(3):
        venv.step(np.zeros(4, dtype=np.int64))
    print("parent: steps after the child's exit", flush=True)
    venv.close()
    """
)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_a_forked_child_leaves_the_pool_to_its_parent(start_method: str) -> None:
    """A child forked while a pool is open (os.fork) cannot use it, and its exit does not stop the
    parent's workers (the pool's exit hook closed its copy, sending CLOSE to them; multiprocessing's
    took them for the child's own daemonic children and sent SIGTERM)."""
    out = subprocess.run(
        [sys.executable, "-c", FORKING_SCRIPT, start_method],
        capture_output=True, text=True, timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("child: BrokenPoolError") and "is a fork of the process that made the pool" in lines[0]
    assert lines[1:] == ["child exit code: 0", "parent: steps after the child's exit"], out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr


PARENT_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np
    from fastvec import SubprocVecEnv
    from tests import envs
    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method=sys.argv[1], num_workers=3)
    venv.reset()
    venv.step(np.zeros(4, dtype=np.int64))
    print(" ".join(map(str, venv.pool.worker_pids)), flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_parent_killed_leaves_nothing(start_method: str) -> None:
    before = set(shm.list_segments())
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, start_method],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 3
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.05)
        assert not alive, f"workers {alive} outlived their parent"
        assert ours(set(shm.list_segments()) - before) == set()
    finally:
        parent.kill()
        parent.wait()
        parent.stdin.close()
        parent.stdout.close()


class _OldGymEnv(envs.FailingEnv):
    def step(self, action):  # the pre-gymnasium 4-tuple API
        return np.zeros(2, np.float32), 0.0, False, {}


def test_old_gym_step_api_is_named() -> None:
    with SubprocVecEnv([envs.FailingEnv, _OldGymEnv], start_method="fork", num_workers=2) as venv:
        venv.reset()
        with pytest.raises(EnvError, match=r"env 1 .*must return \(obs, reward, terminated, truncated, info\).*4-tuple"):
            venv.step(np.zeros(2, dtype=np.int64))


class _RewardOf(envs.FailingEnv):
    """Returns ``reward`` from every step."""

    def __init__(self, reward):
        super().__init__()
        self.reward = reward

    def step(self, action):
        obs, _, term, trunc, info = super().step(action)
        return obs, self.reward, term, trunc, info


@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_rewards_the_references_take_are_taken(front: str) -> None:
    """A one-element array, None and a numeric string are rewards gymnasium's AsyncVectorEnv takes
    (np.array(rewards, dtype=np.float64)) and SB3's SubprocVecEnv passes on: they were refused as "reward must be
    a number" (and with the compiled kernels a numeric string blamed env 0, showing its valid reward)."""
    import warnings

    from fastvec import VectorEnv

    rewards = [0.25, np.array([2.5]), None, "1.5", np.float32(3.0), np.array(4.0)]
    fns = [partial(_RewardOf, r) for r in rewards]
    make = SubprocVecEnv if front == "sb3" else VectorEnv
    with make(fns, start_method="fork", num_workers=2) as venv:  # (envs 0-2 in this process, 3-5 in a worker)
        venv.reset()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            got = venv.step(np.zeros(6, dtype=np.int64))[1]
        assert got.dtype == np.float64 and got.shape == (6,)
        assert np.array_equal(got, [0.25, 2.5, np.nan, 1.5, 3.0, 4.0], equal_nan=True)
        assert [str(w.message) for w in record] == ["fastvec: env 2 returned a NaN reward"]  # (None, as NaN)
    for bad, shown in [(np.array([1.0, 2.0]), r"array\(\[1\., 2\.\]\)"), ("abc", "'abc'")]:
        for index in (1, 4):  # (in this process's shard, in the worker's)
            fns = [partial(_RewardOf, bad if i == index else 0.5) for i in range(6)]
            with make(fns, start_method="fork", num_workers=2) as venv:
                venv.reset()
                with pytest.raises(EnvError, match=rf"env {index} raised TypeError during 'step': reward must be a "
                                                   rf"number, got {shown}"):  # fmt: skip
                    venv.step(np.zeros(6, dtype=np.int64))


@pytest.mark.parametrize("bad_index", [0, 2])
def test_check_warns_once_naming_env(bad_index: int) -> None:
    fns = [envs.SloppyEnv if i == bad_index else envs.FailingEnv for i in range(3)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        venv.reset()
        with pytest.warns(RuntimeWarning, match=f"env {bad_index} returned an observation of dtype float64"):
            obs, _, _, _ = venv.step(np.zeros(3, dtype=np.int64))
        assert obs.dtype == np.float32 and obs[bad_index, 0] == 0.25
        with pytest.warns(RuntimeWarning, match=f"env {bad_index} returned a NaN reward") as record:
            venv.step(np.zeros(3, dtype=np.int64))
        assert not any("dtype" in str(w.message) for w in record), "each problem is reported once per env"


def test_check_raise_and_off() -> None:
    import warnings

    with SubprocVecEnv([envs.FailingEnv, envs.SloppyEnv], start_method="fork", num_workers=2, check="raise") as venv:
        venv.reset()
        with pytest.raises(EnvError, match="env 1 raised ValueError during 'step': returned an observation of dtype float64"):
            venv.step(np.zeros(2, dtype=np.int64))
    with SubprocVecEnv([envs.FailingEnv, envs.SloppyEnv], start_method="fork", num_workers=2, check="off") as venv:
        venv.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            venv.step(np.zeros(2, dtype=np.int64))
            venv.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="check must be"):
        SubprocVecEnv([envs.make_cartpole], check="maybe")


def test_render_error_names_env() -> None:
    fns = [envs.FailingEnv, envs.FailingEnv, envs.RenderFailEnv]
    with SubprocVecEnv([partial(_with_render_mode, f) for f in fns], start_method="fork", num_workers=2) as venv:
        with pytest.raises(EnvError, match="env 2 raised RuntimeError during 'render': boom in render"):
            venv.get_images()
        venv.reset()  # still usable


def _with_render_mode(factory):
    env = factory()
    env.render_mode = "rgb_array"
    return env


def test_env_error_pickles_and_reads_plainly() -> None:

    from fastvec.errors import env_error

    err = env_error(3, "env_method", "KeyError", "'missing'", "Traceback ...")
    assert isinstance(err, KeyError) and str(err).startswith("env 3 raised KeyError during 'env_method'")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and again.env_index == 3 and str(again) == str(err)


@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_env_error_is_also_the_envs_own_exception_type(front: str) -> None:
    """gymnasium's AsyncVectorEnv re-raises the env's own type: ``except MyEnvError`` and
    ``except gymnasium.error.ResetNeeded`` must catch fastvec's error too."""
    from fastvec import VectorEnv
    from tests.envs import EnvOwnError, EnvOwnErrorKeepingItsMessage, EnvOwnErrorWithCode, OwnErrorEnv

    if front == "sb3":
        venv = SubprocVecEnv([OwnErrorEnv] * 3, start_method="fork", num_workers=2)
        step = lambda: venv.step(np.zeros(3, dtype=np.int64))  # noqa: E731
        call = lambda name: venv.env_method(name, indices=[2])  # noqa: E731
    else:
        venv = VectorEnv([OwnErrorEnv] * 3, context="fork", num_workers=2)
        step = lambda: venv.step(np.zeros(3, dtype=np.int64))  # noqa: E731
        call = lambda name: venv.call(name)  # noqa: E731
    try:
        venv.reset()
        with pytest.raises(EnvOwnError, match="env 0 raised tests.envs.EnvOwnError during 'step'") as info:
            step()
        assert isinstance(info.value, EnvError) and "own error in step" in str(info.value)
        again = pickle.loads(pickle.dumps(info.value))
        assert type(again) is type(info.value) and str(again) == str(info.value)
        # a type that keeps its message itself: the error still reads as fastvec's, naming env and command
        with pytest.raises(EnvOwnErrorKeepingItsMessage) as info:
            call("explode_keeping_message")
        assert str(info.value).startswith(f"env {2 if front == 'sb3' else 0} raised") and "kept message" in str(info.value)
        # a type that cannot be built from a message stays a plain EnvError, as the README says (made without its own
        # constructor it lacks what that sets: urllib's HTTPError could not even be printed; hunt101 bugs 1, 2)
        with pytest.raises(EnvError, match="EnvOwnErrorWithCode") as info:
            call("explode_with_code")
        assert not isinstance(info.value, EnvOwnErrorWithCode)
        from urllib.error import HTTPError

        from fastvec.errors import env_error

        for name in ("UnicodeDecodeError", "urllib.error.HTTPError"):
            error = env_error(1, "step", name, "m", "")
            assert type(error) is EnvError and repr(error) and str(error) == f"env 1 raised {name} during 'step': m"
        assert HTTPError  # (the module is imported, so its class could be found)
    finally:
        venv.close()


def test_env_error_is_gymnasiums_own_error_type() -> None:
    from fastvec import VectorEnv

    with VectorEnv([envs.make_cartpole] * 2, context="fork", num_workers=2) as venv:
        with pytest.raises(gym.error.ResetNeeded) as info:  # gymnasium's OrderEnforcing wrapper
            venv.step(np.zeros(2, dtype=np.int64))
        assert isinstance(info.value, EnvError) and info.value.env_index == 0


def test_env_error_of_an_unknown_type_is_a_plain_env_error() -> None:
    from fastvec.errors import env_error

    for name in ("no_such_module.Error", "tests.envs.NoSuchError", "tests.envs.make_cartpole", "f.<locals>.E"):
        assert type(env_error(1, "step", name, "m", "")) is EnvError


@pytest.mark.parametrize("handler", ["ignore", "reap"])
@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_a_worker_reaped_elsewhere_is_still_found_dead(handler: str, on_error: str) -> None:
    """With SIGCHLD ignored, or a handler that reaps children itself, the worker's exit status never
    reaches multiprocessing: its death must still be noticed (the step waited for ever)."""

    def reap(*_) -> None:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass

    venv = SubprocVecEnv(_fns(4, -1, None), start_method="fork", num_workers=2, on_error=on_error)
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN if handler == "ignore" else reap)
    try:
        venv.reset()
        pid = venv.pool.worker_pids[-1]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        if on_error == "raise":
            with pytest.raises(WorkerDiedError, match="reaped elsewhere"):
                venv.step(np.zeros(4, dtype=np.int64))
        else:
            with pytest.warns(RuntimeWarning, match="unread exit status"):
                infos = venv.step(np.zeros(4, dtype=np.int64))[3]
            assert all("fastvec.restarted" in infos[i] for i in (2, 3)) and venv.pool.worker_pids[-1] != pid
            venv.step(np.zeros(4, dtype=np.int64))
    finally:
        venv.close()
        signal.signal(signal.SIGCHLD, previous)


def _cartpole_with_a_helper(pid_file: str) -> gym.Env:
    """CartPole whose maker forks a helper process (as an env that runs a simulator does): the helper
    inherits every descriptor of the worker, its sentinel pipe's end too."""
    helper = os.fork()
    if helper == 0:
        time.sleep(30)
        os._exit(0)
    with open(pid_file, "w") as f:
        f.write(str(helper))
    return gym.make("CartPole-v1")


def test_a_worker_reaped_elsewhere_is_found_dead_while_its_envs_helper_still_runs(tmp_path) -> None:
    """With SIGCHLD ignored, a killed worker is reaped by the kernel, and a helper forked by its env still
    holds the sentinel pipe open: only a pidfd tells that the worker is gone (the step waited for the helper)."""
    pid_file = str(tmp_path / "helper.pid")
    fns = [partial(gym.make, "CartPole-v1")] * 3 + [partial(_cartpole_with_a_helper, pid_file)]
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    venv = None
    try:
        venv = SubprocVecEnv(fns, start_method="fork", num_workers=2)
        venv.reset()
        os.kill(venv.pool.worker_pids[-1], signal.SIGKILL)
        began = time.monotonic()
        with pytest.raises(WorkerDiedError, match="reaped elsewhere"):
            venv.step(np.zeros(4, dtype=np.int64))
        assert time.monotonic() - began < 10  # (not when the helper exits, 30 s later)
    finally:
        if venv is not None:
            venv.close()
        signal.signal(signal.SIGCHLD, previous)
        try:
            os.kill(int(open(pid_file).read()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def test_a_forkserver_late_to_report_still_gives_the_exit_code() -> None:
    """A forkserver's worker is the forkserver's child, whose status it reports over the sentinel a moment
    after the worker exited: a forkserver late to do so (a loaded host; here stopped for 0.3 s) turned
    "exit code -9" into "an exit status this process could not read (it was reaped elsewhere ...)"."""
    venv = SubprocVecEnv([partial(gym.make, "CartPole-v1")] * 4, start_method="forkserver", num_workers=2)
    forkserver = None
    try:
        venv.reset()
        worker = venv.pool.worker_pids[-1]
        forkserver = psutil.Process(worker).ppid()
        assert forkserver != os.getpid()
        os.kill(forkserver, signal.SIGSTOP)
        resume = threading.Timer(0.3, os.kill, (forkserver, signal.SIGCONT))
        resume.start()
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(WorkerDiedError, match=r"exit code -9 \(killed by SIGKILL\)"):
            venv.step(np.zeros(4, dtype=np.int64))
        resume.join()
    finally:
        if forkserver is not None:
            os.kill(forkserver, signal.SIGCONT)  # (the forkserver serves the whole session's pools)
        venv.close()


class _Episodes(gym.Env):
    """obs = [episode, t]; an episode is ``length`` steps (truncated); step number ``fail_at`` raises."""

    def __init__(self, length: int, fail_at: int | None = None):
        self.observation_space = gym.spaces.Box(-1e9, 1e9, (2,), np.float64)
        self.action_space = gym.spaces.Discrete(2)
        self.length, self.fail_at = length, fail_at
        self.episode, self.t, self.steps = -1, 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.array([self.episode, 0.0]), {}

    def step(self, action):
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError("boom")
        self.t += 1
        return np.array([self.episode, self.t], np.float64), 0.0, False, self.t >= self.length, {}


@pytest.mark.parametrize("api", ["sync", "batches"])
def test_an_env_whose_episode_ended_beside_an_env_that_raised_is_reset(api: str) -> None:
    """SAME_STEP: env 0's episode ends in the step in which env 1, in the same shard, raises. Each would be
    on its own in the references' processes: env 0 is reset then, and its next step is its new episode's
    first (it went on stepping its finished episode: t=2 of a 1-step episode)."""
    from fastvec.pool import Pool
    from fastvec.protocol import SAME_STEP

    fns = [partial(_Episodes, 1), partial(_Episodes, 100, 1), partial(_Episodes, 100), partial(_Episodes, 100)]
    options = {"num_workers": 2, "step_in_parent": False, "start_method": "fork", "autoreset_mode": SAME_STEP}
    with Pool(fns, **options, **({"batch_size": 2} if api == "batches" else {})) as pool:
        if api == "sync":
            pool.reset()
            with pytest.raises(EnvError, match="env 1 raised RuntimeError"):
                pool.step(np.zeros(4, np.int64))
            batch = pool.step(np.zeros(4, np.int64))
            obs, truncated, final = batch.observations(True)[0], batch.truncated[0], batch.terminal_observation(0)
        else:
            pool.async_reset()
            for _ in range(2):
                pool.recv()
            pool.send(np.zeros(2, np.int64), [0, 1])
            with pytest.raises(EnvError, match="env 1 raised RuntimeError"):
                pool.recv()
            pool.send(np.zeros(2, np.int64), [0, 1])
            got = pool.recv()
            assert got.env_ids.tolist() == [0, 1]
            obs, truncated, final = got.obs[0], got.truncated[0], got.terminal_observation(0)
        # episode 1's only step (not a second step of episode 0), then episode 2's reset
        assert truncated and final.tolist() == [1.0, 1.0] and obs.tolist() == [2.0, 0.0]


_CLOSED_HERE: list[int] = []


class _RenderModeFails(gym.Wrapper):
    @property
    def render_mode(self):
        raise RuntimeError("no render mode here")

    def close(self):
        _CLOSED_HERE.append(os.getpid())
        super().close()


def test_a_constructor_that_fails_after_making_its_pool_closes_it_at_once() -> None:
    """SB3's VecEnv.__init__ asks the envs for their render_mode; when that raises, the front-end closes
    its pool. That close() took the constructor's frame for code a signal handler had interrupted, and
    left this process's envs open and the block mapped until the exception and its traceback were gone."""
    _CLOSED_HERE.clear()
    fns = [lambda: _RenderModeFails(gym.make("CartPole-v1"))] * 2
    with pytest.raises(EnvError, match="no render mode here") as info:
        SubprocVecEnv(fns, start_method="fork", num_workers=2)
    assert info.value.__traceback__ is not None  # (still held: its frames hold the pool)
    assert _CLOSED_HERE == [os.getpid()]  # env 0, stepped in this process, is closed


@pytest.mark.parametrize("command", ["call", "reset", "reset-with-a-big-seed"])
def test_an_interrupt_right_after_a_call_or_reset_was_issued_is_finished_by_the_next_command(monkeypatch, command) -> None:
    """A Ctrl-C between issuing the command and marking it as reset()'s or call()'s own (a window of two
    bytecodes, hit by the stress test on a loaded host) left it pending: every later step raised
    AlreadyPendingCallError."""
    from fastvec.pool import Pool

    with SubprocVecEnv([partial(gym.make, "CartPole-v1")] * 4, start_method="fork", num_workers=2) as venv:
        venv.reset()
        issue = Pool._issue

        def interrupted(self, p):
            issue(self, p)
            if p.name in ("env_method", "reset"):
                raise KeyboardInterrupt

        monkeypatch.setattr(Pool, "_issue", interrupted)
        if command == "reset-with-a-big-seed":  # (its seeds go first by a call(), nested in the reset)
            venv.seed(2**70)
        with pytest.raises(KeyboardInterrupt):
            venv.env_method("reset") if command == "call" else venv.reset()
        monkeypatch.setattr(Pool, "_issue", issue)
        venv.step(np.zeros(4, dtype=np.int64))
        assert venv.pool.state.value == "idle"


def test_a_pool_works_past_file_descriptor_1023() -> None:
    """Its liveness check used select.select, which refuses descriptors past 1023: a process holding that
    many (about 240 workers' worth) could not make a pool (a raw ValueError)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("needs a descriptor limit above 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200) if hard == resource.RLIM_INFINITY else min(max(soft, 1200), hard), hard))
    held = []
    try:
        while not held or held[-1] < 1030:
            held.append(os.open(os.devnull, os.O_RDONLY))
        with SubprocVecEnv(_fns(2, 1, "slow", 0), start_method="fork", num_workers=2) as venv:
            venv.reset()
            venv.step(np.zeros(2, dtype=np.int64))  # (a slow step: the waits look at the live worker)
            os.kill(venv.pool.worker_pids[0], signal.SIGKILL)
            with pytest.raises(WorkerDiedError):
                for _ in range(100):
                    venv.step(np.zeros(2, dtype=np.int64))
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class _Preempted(BaseException):
    """A BaseException whose message comes from a __slots__ attribute."""

    __slots__ = ("signum",)

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum

    def __str__(self) -> str:
        return f"preempted by signal {self.signum}"


class _Evicted(Exception):
    """An exception whose __new__ and __init__ take other arguments than the args it keeps."""

    def __new__(cls, node, reason):
        return super().__new__(cls, f"evicted from {node}: {reason}")

    def __init__(self, node, reason):
        super().__init__(f"evicted from {node}: {reason}")


def _raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as exc:  # (with a traceback, as a pool's _break gets it)
        return exc


@pytest.mark.parametrize(
    "error",
    [
        WorkerDiedError(1, range(2, 4), -9, "step"),
        StepTimeoutError(1, range(2, 4), "step", 5.0),
        KeyboardInterrupt(),
        FileNotFoundError(2, "No such file or directory", "/data/level.bin"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        _Preempted(10),
        _Evicted("node-7", "maintenance"),
        AttributeError("no attribute 'x'", name="x", obj=3),
        ImportError("no module", name="simulator", path="/opt/sim.so"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_detached_cause_keeps_its_type_and_message_but_not_its_traceback(error: BaseException) -> None:
    """A broken pool keeps the error that broke it as a copy without a traceback (its frames hold the pool): the
    copy lost a __slots__ message (the next call raised AttributeError, not BrokenPoolError), became RuntimeError
    for an unusual __new__, lost UnicodeError's fields and OSError's file name."""
    from fastvec.errors import detached

    original = _raised(error)
    copy = detached(original)
    assert type(copy) is type(original) and str(copy) == str(original) and copy.args == original.args
    assert original.__traceback__ is not None and copy.__traceback__ is None
    for field in ("filename", "name", "obj", "path", "signum"):  # (fields outside args: they were lost)
        assert getattr(copy, field, None) == getattr(original, field, None)


class RaisesBase(envs.FailingEnv):
    """Env ``bad`` raises ``kind`` (a BaseException that is no Exception) in the method ``where``."""

    def __init__(self, bad: bool, kind: type, where: str):
        super().__init__(None)
        self.bad, self.kind, self.where = bad, kind, where

    def reset(self, *, seed=None, options=None):
        if self.bad and self.where == "reset":
            raise self.kind("simulator aborted the reset")
        return super().reset(seed=seed)

    def step(self, action):
        if self.bad and self.where == "step":
            raise self.kind("simulator aborted the episode")
        return super().step(action)

    def poke(self):
        if self.bad:
            raise self.kind("simulator aborted the call")
        return "ok"


@pytest.mark.parametrize("kind", [KeyboardInterrupt, GeneratorExit])
@pytest.mark.parametrize("where", ["step", "reset", "poke"])
def test_an_env_in_a_worker_raising_a_base_exception_is_named_as_that_env_s_error(kind: type, where: str) -> None:
    """A worker ignores SIGINT, so a KeyboardInterrupt there is the env's own (a library turning its interrupt into
    one), as is a GeneratorExit: it killed the worker, and the caller learnt "worker 1 died with exit code 1", naming
    neither the env nor the exception (gymnasium's AsyncVectorEnv names the env). It is that env's error now, of its
    type, and the pool goes on."""
    fns = [partial(RaisesBase, i == 3, kind, where) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        if where != "reset":
            venv.reset()
        with pytest.raises(EnvError, match=f"env 3 raised {kind.__name__} during '.*simulator aborted") as info:
            if where == "step":
                venv.step(np.zeros(4, dtype=np.int64))
            elif where == "reset":
                venv.reset()
            else:
                venv.env_method("poke")
        # (an EnvError, not a KeyboardInterrupt: the caller's handlers of Ctrl-C, ppo.train's among them, must not
        # take an env's error for the user's interrupt)
        assert not isinstance(info.value, kind) and info.value.env_index == 3
        assert venv.pool.state is PoolState.IDLE
        assert venv.env_method("poke", indices=[0, 1, 2]) == ["ok"] * 3  # the worker lives on


@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_step_timeout_counts_every_wait_of_a_caller_that_polls(on_error: str) -> None:
    """A caller polling step_wait(timeout) shorter than step_timeout (the README's way to wait with a bound): each
    call restarted the step_timeout clock, so a hung env was never reported, nor, with on_error="restart",
    replaced: the loop polled for good."""
    fns = [partial(envs.FailingEnv, None)] * 2 + [partial(envs.FailingEnv, "hang", 1)] * 2
    pool = Pool(fns, start_method="fork", num_workers=2, step_in_parent=True, step_timeout=1.0, on_error=on_error)
    try:
        pool.reset()
        pool.step(np.zeros(4, np.int64))
        pool.step_async(np.zeros(4, np.int64))  # (envs 2 and 3 hang in this step)
        began, polls = time.monotonic(), 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the restart's warning)
            while True:
                polls += 1
                try:
                    pool.step_wait(timeout=0.2)
                    break
                except multiprocessing.TimeoutError:
                    assert time.monotonic() - began < 20, f"still pending after {polls} polls"
                except StepTimeoutError:
                    assert on_error == "raise"
                    break
        assert polls >= 3  # (several polls timed out before)
        if on_error == "restart":
            assert pool.state is PoolState.IDLE and pool.worker_restarts == 1
    finally:
        pool.close()


class _RaisesIn(gym.Env):
    """Env ``bad`` raises ``kind`` in ``where`` ("make", "reset", "close"); its reset infos are one dict."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)
    INFO = {"source": "simulator"}  # (the one reset info every env returns)

    def __init__(self, bad: bool, kind: type, where: str):
        self.bad, self.kind, self.where = bad, kind, where
        if bad and where == "make":
            raise kind("the env's own, in its constructor")

    def reset(self, *, seed=None, options=None):
        if self.bad and self.where == "reset":
            raise self.kind("the env's own, in reset")
        return np.zeros(1, np.float32), self.INFO

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}

    def close(self):
        if self.bad and self.where == "close":
            raise self.kind("the env's own, in close")


@pytest.mark.parametrize("kind", [KeyboardInterrupt, GeneratorExit])
def test_an_env_s_base_exception_is_its_error_in_every_command_of_a_worker(kind: type) -> None:
    """A KeyboardInterrupt or GeneratorExit of an env in a worker was its EnvError in step, reset and calls only: in
    its constructor, a restart's reset of its re-made copy, or close() it killed the worker ("exit code 1", no env
    named), or was dropped (close)."""
    fns = [partial(_RaisesIn, i == 3, kind, "make") for i in range(4)]
    with pytest.raises(EnvError, match=f"env 3 raised {kind.__name__} during 'make"):
        SubprocVecEnv(fns, start_method="fork", num_workers=2)
    fns = [partial(_RaisesIn, i == 3, kind, "reset") for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(EnvError, match=f"env 3 raised {kind.__name__} during 'reset"):
            venv.reset()  # (its reset raises, and so does its re-made copy's)
        assert venv.env_method("reset", indices=[0, 1, 2])[0][0].shape == (1,)  # the worker lives on
    fns = [partial(_RaisesIn, i == 3, kind, "close") for i in range(4)]
    venv = SubprocVecEnv(fns, start_method="fork", num_workers=2)
    venv.reset()
    with pytest.raises(EnvError, match=f"env 3 raised {kind.__name__} during 'close'"):
        venv.close()
    assert venv.closed


def test_an_env_s_generator_exit_is_its_error_in_the_calling_process_too() -> None:
    """It was the env's error in a worker, and broke the pool (a bare GeneratorExit) where the caller stepped or
    made it."""
    fns = [partial(_RaisesIn, i == 0, GeneratorExit, "make") for i in range(4)]
    with pytest.raises(EnvError, match="env 0 raised GeneratorExit during 'make"):
        SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True)
    fns = [partial(RaisesBase, i == 0, GeneratorExit, "step") for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        venv.reset()
        with pytest.raises(EnvError, match="env 0 raised GeneratorExit during 'step'"):
            venv.step(np.zeros(4, dtype=np.int64))
        assert venv.pool.state is PoolState.IDLE


def test_a_replacement_worker_s_envs_get_a_reset_info_each() -> None:
    """A worker's envs that return one info object get one each (pickle's memo joined them in one message); the
    replacement of a dead worker (on_error="restart") sends its first results otherwise, and they still shared it."""
    with SubprocVecEnv([partial(_RaisesIn, False, None, "")] * 4, start_method="fork", num_workers=2,
                       on_error="restart") as venv, warnings.catch_warnings():  # fmt: skip
        warnings.simplefilter("ignore")
        venv.reset()
        assert venv.reset_infos[2] is not venv.reset_infos[3]
        remote = venv.pool._remotes[0]
        os.kill(remote.pid, signal.SIGKILL)
        remote.process.join(5)
        venv.reset()  # (its replacement resets envs 2 and 3)
        assert venv.reset_infos[2] is not venv.reset_infos[3]
        assert venv.reset_infos[2] == {"source": "simulator", "fastvec.restarted": "worker process died"}


class _CloseRaisesOnRestart(_RaisesIn):
    """Env ``bad``'s first step raises ValueError; its close() then raises ``kind`` (a restart closes it first)."""

    failed = False

    def step(self, action):
        if self.bad and not self.failed:  # (its re-made copy steps on)
            self.failed = True
            raise ValueError("boom in step")
        return super().step(action)

    def close(self):
        if self.failed:
            raise self.kind("the env's own, in the close before its restart")


@pytest.mark.parametrize("bad", [0, 3])  # the calling process's env, a worker's
@pytest.mark.parametrize("kind", [KeyboardInterrupt, GeneratorExit])
def test_a_restart_closes_the_failed_env_quietly_whatever_its_close_raises(kind: type, bad: int) -> None:
    """on_error="restart" closes the env that raised before making it again: a KeyboardInterrupt (a worker's env's)
    or GeneratorExit from that close escaped, killed the worker (its other env restarted too) or broke the pool."""
    if kind is KeyboardInterrupt and bad == 0:
        pytest.skip("a KeyboardInterrupt in the calling process is the user's Ctrl-C")
    fns = [partial(_CloseRaisesOnRestart, i == bad, kind, "") for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True, on_error="restart") as venv:
        venv.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            infos = venv.step(np.zeros(4, dtype=np.int64))[3]
        assert [i for i, info in enumerate(infos) if "fastvec.restarted" in info] == [bad]
        assert venv.pool.state is PoolState.IDLE and venv.pool.worker_restarts == 0


_PARENT_PID = os.getpid()


def _load_in_a_worker_only(value: int) -> _WorkerOnly:
    if os.getpid() == _PARENT_PID:
        raise ValueError("cannot be loaded in the calling process")
    return _WorkerOnly(value)


class _WorkerOnly:
    """Pickles, and loads only in a worker (``how``: its loader raises, or its class is a module's that only the
    worker has)."""

    def __init__(self, value: int):
        self.value = value

    def __reduce__(self):
        return _load_in_a_worker_only, (self.value,)


class _ReturnsWorkerOnly(gym.Env):
    """Env ``bad``'s first step returns a value the calling process cannot load, in its info or observation."""

    def __init__(self, index: int, bad: int, how: str):
        self.index, self.bad, self.how, self.t = index, bad, how, 0
        self.observation_space = gym.spaces.Dict({"a": gym.spaces.Box(-1e9, 1e9, (1,)), "t": gym.spaces.Text(8)})
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return {"a": np.zeros(1, np.float32), "t": "0"}, {}

    def step(self, action):
        self.t += 1
        value: object = {}
        if self.index == self.bad and self.t == 1:
            if self.how == "loader raises":
                value = _WorkerOnly(1)
            elif self.how == "cannot be pickled":
                value = threading.Lock()
            elif self.how == "beside a list that holds itself":
                loop: list = []
                loop += [loop, loop]
                value = {"loop": loop, "bad": _WorkerOnly(1)}
            else:  # a class of a module that exists in this worker only
                import types

                module = sys.modules.setdefault("fastvec_test_worker_only", types.ModuleType("fastvec_test_worker_only"))
                module.Thing = type("Thing", (), {"__module__": module.__name__})
                value = module.Thing()
        return {"a": np.full(1, self.t, np.float32), "t": str(self.t)}, 0.0, False, False, {"x": value}


@pytest.mark.parametrize("how", ["loader raises", "class unknown here"])
def test_a_worker_s_values_that_cannot_be_loaded_here_name_their_env(how: str) -> None:
    """A worker's reply that cannot be unpickled in the calling process raised the loader's bare error, naming no
    env or command, and broke the pool; the calling process's own envs' values already named their env."""
    fns = [partial(_ReturnsWorkerOnly, i, 3, how) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=False) as venv:
        venv.reset()
        with pytest.raises(EnvError, match=r"the 'step' results of env 3 cannot be unpickled in this process") as raised:
            venv.step(np.zeros(4, np.int64))
        assert raised.value.env_index == 3 and raised.value.command == "step (reading the result)"
        obs, *_ = venv.step(np.zeros(4, np.int64))  # the pool goes on
        assert obs["a"][:, 0].tolist() == [2.0] * 4
    assert "fastvec_test_worker_only" not in sys.modules


@pytest.mark.parametrize("how", ["class unknown here", "cannot be pickled"])
def test_a_step_whose_reply_fails_keeps_the_object_parts_its_rows_hold(how: str) -> None:
    """The worker's envs' Text parts came with the reply that could not be loaded (or pickled): a masked reset after it
    gave the envs it left out their rows' newer array parts beside older Text parts."""
    from fastvec import VectorEnv

    fns = [partial(_ReturnsWorkerOnly, i, 3, how) for i in range(4)]
    with VectorEnv(fns, context="fork", num_workers=2, step_in_parent=False) as venv:
        venv.reset()
        with pytest.raises(EnvError, match="env 3"):
            venv.step(np.zeros(4, np.int64))
        obs, _ = venv.reset(options={"reset_mask": np.array([True, False, False, False])})
        assert [(float(a), t) for a, t in zip(obs["a"][:, 0], obs["t"])] == [(0.0, "0")] + [(1.0, "1")] * 3


@pytest.mark.one_pass
def test_a_reply_that_cannot_be_loaded_is_searched_once_per_value() -> None:
    """Its values were walked without a record of those seen: an info holding a list that holds itself twice took
    2**33 steps, and the step hung."""
    fns = [partial(_ReturnsWorkerOnly, i, 3, "beside a list that holds itself") for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=False) as venv:
        venv.reset()
        with pytest.raises(EnvError, match="the 'step' results of env 3 cannot be unpickled"):
            venv.step(np.zeros(4, np.int64))


@pytest.mark.one_pass
def test_an_interrupt_while_a_reply_that_cannot_be_loaded_is_read_again_breaks_the_pool(monkeypatch) -> None:
    """The reply was read, and not recorded: the pool stayed pending, and the next wait hung."""
    from fastvec.remote import ReplyNotLoaded

    def interrupted(self):
        raise KeyboardInterrupt

    fns = [partial(_ReturnsWorkerOnly, i, 3, "loader raises") for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=False) as venv:
        venv.reset()
        monkeypatch.setattr(ReplyNotLoaded, "reply", interrupted)
        with pytest.raises(KeyboardInterrupt):
            venv.step(np.zeros(4, np.int64))
        assert venv.pool.state == PoolState.BROKEN
        with pytest.raises(BrokenPoolError):
            venv.step(np.zeros(4, np.int64))


class _SlowMarking(envs.Counter):
    """A Counter whose step takes ``seconds`` and leaves a file in ``marks`` (env index, its step count)."""

    def __init__(self, index: int, marks: str, seconds: float):
        super().__init__(index)
        self.marks, self.seconds = marks, seconds

    def step(self, action):
        time.sleep(self.seconds)
        result = super().step(action)
        open(os.path.join(self.marks, f"{self.index}-{self.t}"), "w").close()
        return result


@pytest.mark.parametrize("autoreset", ["next", "same"])
def test_a_wait_given_a_timeout_stops_between_this_process_s_envs_and_goes_on_from_there(tmp_path, autoreset) -> None:
    """step_wait(timeout) stepped this process's own envs to the end before it looked at the timeout (0.1 s asked,
    1.2 s taken with 0.6 s envs; gymnasium's AsyncVectorEnv raises at 0.1 s): it stops between them now (an env's
    step cannot be cut: it runs past the timeout by one at most), and the next wait goes on from the next env,
    none stepped twice, with results as a serial run's."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    fns = [partial(_SlowMarking, i, str(tmp_path), 0.3) for i in range(4)]
    from fastvec.protocol import NEXT_STEP, SAME_STEP

    mode = {"next": NEXT_STEP, "same": SAME_STEP}[autoreset]
    pool = Pool(fns, start_method="fork", num_workers=2, step_in_parent=True, autoreset_mode=mode)
    reference = DummyVecEnv([partial(envs.Counter, i) for i in range(4)])
    try:
        assert pool.shard_envs[0] == range(0, 2)  # (envs 0 and 1: this process's)
        np.testing.assert_array_equal(pool.reset(seeds=[1, 2, 3, 4]).observations(), (reference.seed(1), reference.reset())[1])
        actions = np.array([1, 0, 2, 1])
        pool.step_async(actions)
        with pytest.raises(multiprocessing.TimeoutError, match="own envs took longer"):
            pool.step_wait(timeout=0.05)
        assert (tmp_path / "0-2").exists() and not (tmp_path / "1-1").exists()  # (env 1 not yet stepped: the wait stopped after env 0)
        obs = pool.step_wait().observations()
        np.testing.assert_array_equal(obs, reference.step(actions)[0])
        assert sorted(name for name in os.listdir(tmp_path) if name[0] in "01") == ["0-2", "1-1"]  # (each once)
        np.testing.assert_array_equal(pool.step(actions).observations(), reference.step(actions)[0])
    finally:
        pool.close()
        reference.close()


def test_close_of_a_pending_step_does_not_step_this_process_s_envs_only_to_drop_them(tmp_path) -> None:
    """close(timeout) after step_async stepped this process's own envs first, unbounded: an env of theirs that hangs
    in step hung close() for good (gymnasium's AsyncVectorEnv closes within the timeout). They are closed as they
    are now, their step never begun; the workers' part is waited for within the grace, as before."""
    fns = [partial(envs.FailingEnv, "hang", 1)] + [partial(envs.FailingEnv, None)] * 3
    pool = Pool(fns, start_method="fork", num_workers=2, step_in_parent=True)
    try:
        pool.reset()
        pool.step(np.zeros(4, np.int64))
        pool.step_async(np.zeros(4, np.int64))  # (env 0, this process's, would hang in this step)
        began = time.monotonic()
        pool.close(timeout=0.5)
        assert time.monotonic() - began < 10
        assert pool.state is PoolState.CLOSED
    finally:
        pool.close()


class _SlowWhenFlagged(envs.Counter):
    """A Counter whose step takes 0.3 s while the file ``flag`` exists, leaving a file in its folder per step then."""

    def __init__(self, index: int, flag: str):
        super().__init__(index)
        self.flag = flag

    def step(self, action):
        slow = os.path.exists(self.flag)
        if slow:
            time.sleep(0.3)
        result = super().step(action)
        if slow:
            open(f"{self.flag}-{self.index}-{self.t}", "w").close()
        return result


def test_a_wait_given_a_timeout_stops_between_the_envs_of_a_shard_wrapped_around_the_ring_s_end(tmp_path) -> None:
    """With an env moved to this process around the ring's end (its shard in two parts), the wait stepped every one
    of its envs before it looked at the timeout."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    flag = str(tmp_path / "slow")
    pool = Pool([partial(_SlowWhenFlagged, i, flag) for i in range(4)], start_method="fork", num_workers=2, step_in_parent=True)
    reference = DummyVecEnv([partial(envs.Counter, i) for i in range(4)])
    try:
        reference.seed(1)
        np.testing.assert_array_equal(pool.reset(seeds=[1, 2, 3, 4]).observations(), reference.reset())
        actions = np.array([4, 4, 4, 4])

        def step() -> None:
            np.testing.assert_array_equal(pool.step(actions).observations(), reference.step(actions)[0])

        envs.wrap_last(pool, step)
        assert sorted(pool.envs_of(0)) == [0, 1, 3]
        open(flag, "w").close()
        pool.step_async(actions)
        with pytest.raises(multiprocessing.TimeoutError, match="own envs took longer"):
            pool.step_wait(timeout=0.05)
        stepped = [name[len(flag) + 1 :].split("-")[0] for name in map(str, tmp_path.iterdir()) if name.startswith(flag + "-")]
        assert sorted(set(stepped) - {"2"}) == ["0"], stepped  # (of this process's envs, the first only: 0.3 s > 0.05 s)
        np.testing.assert_array_equal(pool.step_wait().observations(), reference.step(actions)[0])
        stepped = [name for name in map(str, tmp_path.iterdir()) if name.startswith(flag + "-")]
        assert len(stepped) == 4  # (every env once: this process's three and the worker's one)
    finally:
        pool.close()
        reference.close()


def _slow_to_make() -> gym.Env:
    time.sleep(3)
    return gym.make("CartPole-v1")


def test_a_constructor_past_step_timeout_says_no_pool_was_made() -> None:
    """Making a worker's envs counts against step_timeout: the constructor's StepTimeoutError said "the pool must be
    closed", though the caller holds no pool and its workers were stopped (hunt80 bug 10)."""
    fns = [partial(gym.make, "CartPole-v1")] * 3 + [_slow_to_make]
    with pytest.raises(StepTimeoutError, match=r"'make' did not finish within 1 s in worker 1 \(envs 2..3\); the pool "
                       r"was not made \(its workers were stopped\)"):
        SubprocVecEnv(fns, num_workers=2, step_timeout=1, start_method="fork", step_in_parent=False)


def test_worker_died_and_step_timeout_errors_pickle_and_copy() -> None:
    """They took their arguments, not their message, and could not be pickled or copied (a TypeError naming the
    missing arguments), so they could not cross a process (hunt82 bug 3); a constructor's says so in ``made``."""
    import copy

    died = WorkerDiedError(1, range(2, 4), -9, "step", replaced_later=True, ended_after=2.0)
    late = StepTimeoutError(1, range(2, 4), "make", 1.0, made=False)
    for error in (died, late):
        for again in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
            assert type(again) is type(error) and str(again) == str(error) and vars(again) == vars(error)
    assert late.made is False and "the pool was not made" in str(late)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this error cannot be printed")


class _RaisesUnprintably(envs.FailingEnv):
    """Env ``bad``'s second step raises an error whose str() raises."""

    def __init__(self, index: int, bad: int) -> None:
        super().__init__()
        self.bad = index == bad

    def step(self, action):  # type: ignore[no-untyped-def]
        if self.bad and self.steps == 1:
            self.steps += 1
            raise _Unprintable("step failed")
        return super().step(action)


@pytest.mark.parametrize("bad", [0, 3])  # (the calling process's env; a worker's second env)
@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_an_env_error_that_cannot_be_printed_still_names_its_env(bad: int, on_error: str) -> None:
    """An env's exception whose __str__ raises: the second error was reported instead, blaming the worker's first env
    or no env at all (a bare RuntimeError), and with on_error="restart" the env was never made again (hunt111 bug
    2). The env's own error is named, its message said to be unprintable."""
    fns = [partial(_RaisesUnprintably, i, bad) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error=on_error) as venv:
        venv.reset()
        venv.step(np.zeros(4, np.int64))
        if on_error == "raise":
            with pytest.raises(EnvError, match=rf"env {bad} raised .*_Unprintable during 'step': <its message could not"):
                venv.step(np.zeros(4, np.int64))
        else:
            infos = venv.step(np.zeros(4, np.int64))[3]
            assert "_Unprintable" in str(infos[bad]["fastvec.restarted"])
            venv.step(np.zeros(4, np.int64))
