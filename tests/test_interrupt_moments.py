"""Interrupts at exact moments (hunt99): what a signal handler raises (a KeyboardInterrupt, its own TimeoutError), or a
close() it calls, landing at one line of fastvec's code. A trace function stands in for the signal: it acts at the
line where CPython would run the handler (a function's first line, or right after a call returns)."""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import psutil
import pytest

import fastvec
from fastvec import ClosedError, SubprocVecEnv, VectorEnv, env_calls, shm
from fastvec.pool import Pool
from fastvec.remote import Remote
from fastvec.sb3_vec_env import SubprocVecEnv as SB3Front
from fastvec.shard import Shard
from tests import envs

PARENT = os.getpid()


@contextlib.contextmanager
def at_line(code: object, when: Callable, act: Callable) -> Iterator[list]:
    """While inside: at the first line of a frame running ``code`` (or one of a tuple of them) where ``when(frame)``
    holds, ``act()`` (which raises, or closes the pool, as a handler would there). Yields the list of line numbers it
    acted at (one at most)."""
    codes = code if isinstance(code, tuple) else (code,)
    fired: list = []

    def local(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "line" and not fired and when(frame):
            fired.append(frame.f_lineno)
            act()
        return local

    sys.settrace(lambda frame, event, arg: local if event == "call" and frame.f_code in codes else None)
    try:
        yield fired
    finally:
        sys.settrace(None)


def interrupt() -> None:
    raise KeyboardInterrupt


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


class Closing(gym.Wrapper):
    """Records its close() in the calling process (the envs the caller steps itself)."""

    def close(self) -> None:
        if os.getpid() == PARENT:
            self.was_closed = True
        super().close()


def make_closing() -> gym.Env:
    return Closing(envs.make_cartpole())


class Ending(gym.Env):
    """Episodes of 2 steps; the observation counts them; reset info counts the resets; ``bump`` counts its calls."""

    observation_space = gym.spaces.Box(-1e9, 1e9, (1,), np.float64)
    action_space = gym.spaces.Discrete(2)
    resets = bumps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        super().reset(seed=seed)
        self.t = 0
        self.resets += 1
        return np.array([0.0]), {"resets": self.resets}

    def step(self, action: object) -> tuple:
        self.t += 1
        return np.array([float(self.t)]), 1.0, self.t >= 2, False, {}

    def bump(self, by: int = 1) -> int:
        self.bumps += by
        return self.bumps


class SlowEnding(Ending):
    def step(self, action: object) -> tuple:
        time.sleep(0.25)
        return super().step(action)


def test_an_interrupt_as_close_begins_to_end_the_workers_leaves_none_running() -> None:
    """_terminate() said the pool closed before the try that stops the workers: an interrupt in between left them
    running, and every later close() returned at once."""
    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2)
    pids = list(venv.pool.worker_pids)
    venv.reset()
    with at_line(Pool._terminate.__code__, lambda f: f.f_locals["self"]._terminated, interrupt) as fired:
        with pytest.raises(KeyboardInterrupt):
            venv.close()
    venv.close()
    deadline = time.monotonic() + 5
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fired and not alive(pids)


def test_an_interrupt_as_close_begins_on_the_own_envs_leaves_them_to_the_next_close() -> None:
    """The calling process's own envs were counted closed before their close() began: an interrupt there left them
    open for good."""
    venv = SubprocVecEnv([make_closing] * 4, start_method="fork", num_workers=2)
    venv.reset()
    own = list(venv.pool._local_envs)
    with at_line(Shard.close.__code__, lambda f: True, interrupt) as fired:
        with pytest.raises(KeyboardInterrupt):
            venv.close()
    venv.close()
    assert fired and all(getattr(env, "was_closed", False) for env in own)


def test_an_interrupt_once_the_step_is_issued_leaves_that_steps_infos() -> None:
    """SB3's step_async made the step's infos after issuing it: interrupted in between, the step_wait() that collects
    it returned the previous step's infos, final observations and all."""
    with SubprocVecEnv([Ending] * 2, start_method="fork", num_workers=2) as venv:
        venv.reset()
        venv.step(np.zeros(2, np.int64))
        _, _, dones, before = venv.step(np.zeros(2, np.int64))  # (every episode ends)
        assert dones.all() and "terminal_observation" in before[0]
        with at_line(SB3Front.step_async.__code__, lambda f: f.f_locals["self"].pool.pending == "step", interrupt) as fired:
            with pytest.raises(KeyboardInterrupt):
                venv.step_async(np.zeros(2, np.int64))
        _, _, dones, infos = venv.step_wait()
        assert fired and not dones.any() and infos is not before
        assert infos == [{"TimeLimit.truncated": False}] * 2


def test_an_interrupt_once_the_resets_are_issued_leaves_their_reset_infos() -> None:
    """async_reset() recorded which envs it reset after issuing them: interrupted in between, recv() collected the
    resets and reset_infos kept the previous reset's."""
    with SubprocVecEnv([Ending] * 4, start_method="fork", batch_size=2) as venv:
        venv.async_reset()
        venv.recv()
        venv.recv()
        with at_line(SB3Front.async_reset.__code__, lambda f: f.f_locals["self"].pool._async.busy, interrupt) as fired:
            with pytest.raises(KeyboardInterrupt):
                venv.async_reset()
        venv.recv()
        venv.recv()
        assert fired and [info["resets"] for info in venv.reset_infos] == [2] * 4


@pytest.mark.parametrize(("on_error", "error"), [("raise", TimeoutError), ("restart", TimeoutError), ("raise", BrokenPipeError),
                                               ("raise", EOFError), ("raise", "own pipe")])  # fmt: skip
def test_a_handlers_own_oserror_while_a_reply_is_read_is_not_the_workers_death(on_error: str, error: type | str) -> None:
    """A handler's TimeoutError (an OSError) inside the read of a worker's reply was taken for the worker's death: the
    pool broke, or with restart fastvec ended the healthy worker, its envs' state lost. So were a handler's exceptions of
    the types the pipe raises, a BrokenPipeError (a print() to a closed pipe) or an EOFError (hunt104 bug 6), and one
    raised by multiprocessing.connection's code for a pipe of the handler's own (hunt105 bug 3)."""
    venv = SubprocVecEnv([Ending] * 4, start_method="fork", num_workers=2, on_error=on_error)
    try:
        venv.reset()
        pids = list(venv.pool.worker_pids)

        def raising() -> None:
            if error == "own pipe":  # (a write to a pipe of the handler's own whose reader is gone)
                import multiprocessing

                mine, theirs = multiprocessing.Pipe()
                theirs.close()
                try:
                    mine.send("the handler's own")  # (a BrokenPipeError raised in multiprocessing.connection)
                finally:
                    mine.close()
            raise error("the handler's own")  # type: ignore[operator]

        def reading(frame: object) -> bool:
            import linecache

            return "recv_bytes" in linecache.getline(Remote.recv.__code__.co_filename, frame.f_lineno)  # type: ignore[attr-defined]

        began = time.monotonic()
        with at_line(Remote.recv.__code__, reading, raising) as fired:
            own = error == "own pipe"
            with pytest.raises(BrokenPipeError if own else error, match="Broken pipe" if own else "the handler's own"):  # type: ignore[arg-type]
                venv.env_method("bump")
        # (at once: a fix waited up to 1 s for the live worker to exit first; hunt103 bug 1)
        assert fired and time.monotonic() - began < 0.8
        assert alive(pids) == pids and venv.pool.worker_restarts == 0
    finally:
        venv.close()


@pytest.mark.parametrize("where", ["private", "pickled"])
def test_a_handlers_exception_while_arguments_are_copied_is_not_said_as_unpicklable(where: str) -> None:
    """A handler's TimeoutError while a call's arguments were copied reached the caller as "cannot be pickled": false,
    and not the handler's exception. The pool stays idle (nothing was issued)."""

    def raising() -> None:
        raise TimeoutError("the handler's own")

    from multiprocessing import reduction

    # (inside the copy the calling process's envs get, or inside the pickling of a worker's share)
    code = env_calls.private.__code__ if where == "private" else reduction.ForkingPickler.dumps.__func__.__code__
    with SubprocVecEnv([Ending] * 4, start_method="fork", num_workers=2) as venv:
        venv.reset()
        with at_line(code, lambda f: True, raising) as fired:
            with pytest.raises(TimeoutError, match="the handler's own"):
                venv.env_method("bump", 2)
        assert fired and venv.env_method("bump", 2) == [2] * 4
    with pytest.raises(TypeError, match=r"cannot be pickled"):  # (one that cannot be pickled is still said so)
        env_calls.private_payload(lambda: 0, "env_method arguments", range(0, 1))


@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_a_handlers_close_while_a_call_sends_its_arguments_is_closed_error(front: str) -> None:
    """close() from a handler while a call sent its arguments: a bare OSError ("handle is closed"); with VectorEnv the
    shared block and the calling process's own envs were then never let go of (gymnasium's close() returned at once)."""
    if front == "sb3":
        venv = SubprocVecEnv([make_closing] * 4, start_method="fork", num_workers=2)
        venv.reset()
    else:
        venv = fastvec.VectorEnv([make_closing] * 4, context="fork", num_workers=2)
        venv.reset(seed=0)
    own = list(venv.pool._local_envs)
    pids = list(venv.pool.worker_pids)
    with at_line(Remote.send_bytes.__code__, lambda f: True, venv.close) as fired:
        with pytest.raises(ClosedError, match="closed"):
            venv.env_method("bump", 2) if front == "sb3" else venv.call("bump", 2)
    venv.close()
    deadline = time.monotonic() + 5
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fired and venv.pool._segment is None and not alive(pids)
    assert all(getattr(env, "was_closed", False) for env in own)


def test_a_handlers_close_during_recv_is_closed_error() -> None:
    """close() from a handler while recv() checked its workers' lives: a bare ValueError ("process object is
    closed") from the released process."""

    with SubprocVecEnv([SlowEnding] * 4, start_method="fork", batch_size=2, step_in_parent=False) as venv:
        venv.async_reset()
        for _ in range(2):
            venv.send(np.zeros(2, np.int64), venv.recv()[-1])

        def checking(frame: object) -> bool:
            return "code" in frame.f_locals and frame.f_back.f_code.co_name == "_check_lives"  # type: ignore[attr-defined]

        with at_line(Remote.exitcode.fget.__code__, checking, venv.close) as fired:
            with pytest.raises(ClosedError):
                venv.recv()
    assert fired


def test_an_interrupt_once_the_blocks_file_exists_leaves_no_file() -> None:
    """An interrupt inside tempfile.mkstemp, once it had made the file and before it returned the name, left
    /dev/shm/fastvec-<pid>-* behind for the process's life. The name is now known before the file exists."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")

    def files() -> set[str]:
        return {name for name in os.listdir("/dev/shm") if name.startswith(f"{shm.PREFIX}{os.getpid()}-")}

    import tempfile

    before = files()
    # (at the first line run once the file exists: inside mkstemp, where it was made so, or in the block's own code)
    codes = (shm.Block.__init__.__code__, tempfile._mkstemp_inner.__code__)
    with at_line(codes, lambda f: files() != before, interrupt) as fired:
        with pytest.raises(KeyboardInterrupt):
            shm.Block(4096, "/dev/shm")
    assert fired and files() == before


def test_an_interrupt_as_the_blocks_file_is_opened_leaves_no_descriptor() -> None:
    """A signal handler's exception landing just as ``os.open`` returned the block's descriptor, before it was
    recorded (the interpreter runs handlers right after a call returns), left that descriptor open for the process's
    life. Staged with a profile function raising at the open's return, which drops the returned descriptor as the
    handler's exception does."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")

    def blocks() -> set[str]:  # (this process's descriptors of block files; the listing's own one gone when read)
        paths = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        return {path for path in paths if shm.PREFIX in path}

    fired = []

    def at_return(frame: object, event: str, arg: object) -> None:
        if event == "c_return" and arg is os.open and frame.f_code is shm.Block.__init__.__code__ and not fired:  # type: ignore[attr-defined]
            fired.append(True)
            raise KeyboardInterrupt

    before = blocks()
    sys.setprofile(at_return)
    try:
        with pytest.raises(KeyboardInterrupt):
            shm.Block(4096, "/dev/shm")
    finally:
        sys.setprofile(None)
    assert fired and blocks() == before
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(f"{shm.PREFIX}{os.getpid()}-")]


def test_a_handlers_interrupt_inside_the_forks_hook_reaches_the_caller() -> None:
    """A handler's KeyboardInterrupt (a SIGALRM's) landing in fastvec's at-fork hook was only printed by CPython
    ("Exception ignored in: <function _after_fork_in_parent>") and the pool was made as if nothing had happened."""
    import signal

    from fastvec import remote

    with at_line(remote._after_fork_in_parent.__code__, lambda f: True, interrupt) as fired:
        with pytest.raises(KeyboardInterrupt):
            SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2)
    # (and the signals the start held are not left blocked: Ctrl-C stopped working; hunt100 bug 6)
    assert fired and signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_handlers_interrupt_as_the_forks_hook_blocks_signals_reaches_the_caller_and_leaves_none_blocked() -> None:
    """A handler's KeyboardInterrupt landing as the fork's before-hook had blocked SIGINT and SIGTERM (handlers run
    as a call returns), before it saved the mask to restore: SIGINT stayed blocked for the process's life (Ctrl-C
    ignored), and CPython only printed the interrupt. Staged with a profile function raising at that return."""
    import signal

    from fastvec import remote

    fired = []

    def at_return(frame: Any, event: str, arg: object) -> None:
        if (  # (signal.pthread_sigmask is a Python function around _signal's)
            event == "return" and frame.f_code is signal.pthread_sigmask.__code__
            and frame.f_back.f_code is remote._before_fork.__code__
            and signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, ())
        ):
            fired.append(True)
            sys.setprofile(None)  # (once: the forked worker does not inherit it)
            raise KeyboardInterrupt

    sys.setprofile(at_return)
    try:
        with pytest.raises(KeyboardInterrupt):
            SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2)
    finally:
        sys.setprofile(None)
    assert fired and signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, ())


class _DiesWhileSent:
    """A reply whose pickling, in the worker, writes a message's header and first bytes, closes the pipe, and dies
    a moment later: its exit status comes after the pipe ended mid-message."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import signal
        import struct

        frame = sys._getframe()
        while frame is not None and "conn" not in frame.f_locals:
            frame = frame.f_back
        if frame is None or os.getpid() == PARENT:
            return (_DiesWhileSent, ())
        fd = frame.f_locals["conn"].fileno()
        os.write(fd, struct.pack("!i", 1000) + b"x" * 10)
        os.close(fd)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)


class _Replying(gym.Wrapper):
    def __init__(self) -> None:
        super().__init__(envs.make_cartpole())

    def reply_and_die(self) -> _DiesWhileSent:
        return _DiesWhileSent()


@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_a_worker_that_dies_in_the_middle_of_its_reply_is_a_dead_worker(on_error: str) -> None:
    """A pipe that ends inside a message is multiprocessing's OSError("got end of file during message"), and the
    worker's exit status comes a moment later: the filter for a signal handler's own OSError (above) took it for one,
    and the pool broke instead of saying the worker died (hunt100 bug 1)."""
    from fastvec import WorkerDiedError

    with SubprocVecEnv([_Replying] * 2, start_method="fork", num_workers=2, step_in_parent=False, on_error=on_error) as venv:
        venv.reset()
        with pytest.raises(WorkerDiedError):
            venv.env_method("reply_and_die", indices=[1])
        if on_error == "restart":  # (replaced at the next step)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                venv.step(np.zeros(2, np.int64))
            venv.step(np.zeros(2, np.int64))


def test_starting_pools_from_threads_leaves_the_programs_unraisablehook() -> None:
    """Each start swapped sys.unraisablehook for its own and put back the one it found: starts in several threads at
    once left one of fastvec's installed (hunt100 bug 9). Only the main thread, which runs signal handlers, swaps it."""
    import threading

    def own(unraisable: object) -> None:
        pass

    previous = sys.unraisablehook
    sys.unraisablehook = own
    try:
        made: list = []

        def start() -> None:
            made.append(SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2, step_in_parent=False))

        threads = [threading.Thread(target=start) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for venv in made:
            venv.close()
        assert len(made) == 3 and sys.unraisablehook is own
    finally:
        sys.unraisablehook = previous


def test_a_handlers_close_while_the_pool_closes_its_own_envs_returns() -> None:
    """terminate() closing the calling process's own envs holds the release's lock; a signal handler's close() there
    waited for that lock for good (hunt100 bug 11): it returns, and the release it cut short finishes."""
    with at_line(Closing.close.__code__, lambda f: True, lambda: venv.close()) as fired:
        venv = SubprocVecEnv([make_closing] * 4, start_method="fork", num_workers=2)
        own = list(venv.pool._local_envs)
        venv.reset()
        venv.pool.terminate()
    assert fired and venv.pool._segment is None and all(getattr(env, "was_closed", False) for env in own)


def test_a_ctrl_c_while_workers_close_their_envs_closes_each_once(tmp_path) -> None:
    """A Ctrl-C in close() while the workers closed their envs: SIGTERMed in their CLOSE command, they closed every env
    again (hunt100 bug 12); and a SIGTERM landing as a worker entered an env's close() left that env unclosed, one run in
    eight under load (hunt104 bug 1). Each env's close() runs to its end; once, but for the one a SIGTERM lands in
    after its last line ran and before it returned (cut short, as far as the worker can tell: called again; README)."""
    from functools import partial

    log = str(tmp_path / "closes")
    venv = SubprocVecEnv([partial(_LoggedCloseEnds, i, log) for i in range(4)], start_method="fork", num_workers=2,
                         step_in_parent=False)  # fmt: skip
    venv.reset()
    pids = venv.pool.worker_pids
    with pytest.raises(KeyboardInterrupt), envs.ctrl_c_after(0.2):
        venv.close()
    venv.close()
    _wait_for_exit(pids)  # (a worker closing an env again as it dies of the SIGTERM: its log line comes after)
    ends = collections.Counter(line for line in _lines(log) if line.endswith("-done"))
    assert sorted(ends) == ["0-done", "1-done", "2-done", "3-done"]
    assert sum(count - 1 for count in ends.values()) <= 1, ends  # (a second end: the window above, one env at most)


class _LoggedCloseEnds(gym.Wrapper):
    """Appends "<index>-start" to the file ``log`` as its close() begins and "<index>-done" as it ends, 0.4 s later."""

    def __init__(self, index: int, log: str) -> None:
        super().__init__(envs.make_cartpole())
        self.index, self.log = index, log

    def close(self) -> None:
        with open(self.log, "a") as f:
            f.write(f"{self.index}-start\n")
        time.sleep(0.4)
        super().close()
        with open(self.log, "a") as f:  # (last: the window between the end and the return as small as it gets)
            f.write(f"{self.index}-done\n")


def _wait_for_exit(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.01)


class _StuckOrLoggedClose(_LoggedCloseEnds):
    """Env 0's close() in a worker is stuck (30 s); the others' log as _LoggedCloseEnds'."""

    def close(self) -> None:
        if self.index == 0 and os.getpid() != PARENT:
            time.sleep(30)
        super().close()


def test_a_close_with_a_timeout_past_an_env_stuck_closing_still_closes_its_workers_other_envs(tmp_path) -> None:
    """close(timeout) where a worker's env 0 is stuck in its close(): the SIGTERM after the timeout was ignored while the
    CLOSE command ran, so the worker sat in env 0's close() until it was killed, and its env 1 was never closed
    (hunt106 bug 1). The SIGTERM cuts the stuck close() short; env 1 is closed."""
    from functools import partial

    log = str(tmp_path / "closes")
    venv = SubprocVecEnv([partial(_StuckOrLoggedClose, i, log) for i in range(2)], start_method="fork", num_workers=1,
                         step_in_parent=False)  # fmt: skip
    venv.reset()
    pids = venv.pool.worker_pids
    venv.pool.close(timeout=0.5)
    _wait_for_exit(pids)
    assert "1-done" in _lines(log)


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def test_sigterms_while_a_worker_closes_its_envs_leave_none_unclosed(tmp_path) -> None:
    """SIGTERMs (an interrupted close()'s stop(), and its second Ctrl-C's kill_all) reaching a worker inside its CLOSE
    command: the first, landing as an env's close() began, left that env unclosed for good (counted closed); a second
    cut the next env's close() short, and that env stayed so (hunt104 bugs 1 and 2). A SIGTERM still cuts the close()
    it lands in (one stuck there would keep the worker: hunt106 bug 1), and each env cut short is closed again, after
    the others: each env's close() runs to its end once."""
    import signal
    import threading
    from functools import partial

    log = str(tmp_path / "closes")
    venv = SubprocVecEnv([partial(_LoggedCloseEnds, i, log) for i in range(2)], start_method="fork", num_workers=1,
                         step_in_parent=False)  # fmt: skip
    venv.reset()
    pid = venv.pool.worker_pids[0]

    def sigterm_at(line: str) -> None:
        deadline = time.monotonic() + 10
        while line not in _lines(log) and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(pid, signal.SIGTERM)

    killer = threading.Thread(target=lambda: (sigterm_at("0-start"), sigterm_at("1-start")))
    killer.start()
    venv.close()
    killer.join(30)
    _wait_for_exit([pid])  # (the worker closing the envs cut short again, as it dies of the SIGTERM)
    assert sorted(line for line in _lines(log) if line.endswith("-done")) == ["0-done", "1-done"]


def test_workers_whose_envs_are_closed_end_quietly_on_a_late_sigterm(capfd) -> None:
    """A worker that had closed its envs and was leaving, SIGTERMed by an interrupted close(), printed a traceback of
    fastvec.worker._Terminated from multiprocessing's exit (hunt100 bug 10)."""
    import multiprocessing.util

    from fastvec import pool as pool_module

    class Lingering(gym.Wrapper):
        def close(self) -> None:  # (an exit-time finalizer, as a multiprocessing.Pool inside an env registers)
            multiprocessing.util.Finalize(None, time.sleep, args=(0.5,), exitpriority=10)
            super().close()

    venv = SubprocVecEnv([lambda: Lingering(envs.make_cartpole())] * 2, start_method="fork", num_workers=2, step_in_parent=False)
    venv.reset()
    real = pool_module.stop

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        pool_module.stop = real
        time.sleep(0.1)
        raise KeyboardInterrupt

    pool_module.stop = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            venv.close()
    finally:
        pool_module.stop = real
    venv.close()
    assert "_Terminated" not in capfd.readouterr().err


class _BreakingClosing(Closing):
    armed = False

    def __init__(self) -> None:
        super().__init__(envs.make_cartpole())

    def step(self, action: object) -> tuple:
        if _BreakingClosing.armed and os.getpid() == PARENT:
            _BreakingClosing.armed = False
            raise KeyboardInterrupt
        return self.env.step(action)


def test_a_close_interrupted_twice_is_finished_by_the_next_close(monkeypatch) -> None:
    """A Ctrl-C in stop()'s waits, then a second on the way into kill_all in the finally: nothing was signalled or
    recorded, every later close() returned at once, the workers ran on and the own envs stayed open (hunt100 bug 3)."""
    from fastvec import pool as pool_module
    from fastvec import remote as remote_module

    venv = SubprocVecEnv([_BreakingClosing] * 4, start_method="fork", num_workers=2)
    venv.reset()
    pids = list(venv.pool.worker_pids)
    own = list(venv.pool._local_envs)
    _BreakingClosing.armed = True  # (a Ctrl-C in the calling process's own env: the pool breaks, its workers wait on)
    with pytest.raises(KeyboardInterrupt):
        venv.step(np.zeros(4, np.int64))
    fired: list = []

    def once(fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            if fn.__name__ not in fired:
                fired.append(fn.__name__)
                raise KeyboardInterrupt
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(pool_module, "stop", once(remote_module.stop))
    monkeypatch.setattr(pool_module, "kill_all", once(remote_module.kill_all))
    with pytest.raises(KeyboardInterrupt):
        venv.close()
    monkeypatch.undo()
    venv.close()
    deadline = time.monotonic() + 5
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fired == ["stop", "kill_all"] and not alive(pids) and all(getattr(env, "was_closed", False) for env in own)


# -- another thread at an exact moment (hunt102): the calling thread paused at a line while another acts -----------------
def _paused(code: object, when: Callable, run: Callable) -> tuple:
    """Start ``run()`` in a thread that pauses at the first line of a frame running ``code`` where ``when(frame)``
    holds; returns (the thread, a function that resumes it and returns what ``run`` returned or raised)."""
    import threading

    paused, go, out = threading.Event(), threading.Event(), {}

    def target() -> None:
        try:
            with at_line(code, when, lambda: (paused.set(), go.wait(30))):
                out["result"] = run()
        except BaseException as exc:  # (handed to the test)
            out["result"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert paused.wait(30), "the thread never reached the line"

    def resume() -> object:
        go.set()
        thread.join(30)
        return out.get("result")

    return thread, resume


def test_a_step_completed_by_another_threads_close_raises_closed_error() -> None:
    """close() from another thread as step_wait() began to complete the step: close completed it and let go of the
    block, and the step then raised a bare TypeError from the released words (hunt102 bug 1)."""
    from fastvec.pool import Pool as PoolClass

    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, step_in_parent=False)
    venv.reset()
    _, resume = _paused(PoolClass._complete_step.__code__, lambda f: True, lambda: venv.step(np.zeros(4, np.int64)))
    venv.close()
    assert isinstance(resume(), ClosedError)


def test_a_recv_whose_pool_another_thread_closes_as_it_makes_the_batch_raises_closed_error() -> None:
    """recv() gave the pool back before it made the batch: a close() from another thread then emptied its ready groups
    and let go of the ring under it, a bare IndexError (hunt102 bug 2)."""
    from fastvec.async_batches import AsyncBatches

    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", batch_size=2)
    venv.async_reset()
    _, resume = _paused(AsyncBatches._take.__code__, lambda f: True, venv.recv)
    venv.close()
    assert isinstance(resume(), ClosedError)


def test_close_and_terminate_from_two_threads_at_once_raise_nothing() -> None:
    """close() in one thread and terminate() in another at once: the one that listed the workers first joined a
    Process the other had closed, a bare ValueError "process object is closed" (hunt102 bug 7)."""
    import linecache

    from fastvec import remote as remote_module

    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, step_in_parent=False)
    venv.reset()
    pids = list(venv.pool.worker_pids)
    code = remote_module.stop.__code__

    def reaping(frame: object) -> bool:
        return "remote.reap()" in linecache.getline(code.co_filename, frame.f_lineno)  # type: ignore[attr-defined]

    from fastvec.pool import Pool as PoolClass

    # terminate() past its check, paused; close() then lists the same workers in stop() and pauses before reaping them;
    # terminate() goes on and releases them; close() goes on
    _, terminated = _paused(PoolClass._terminate.__code__, lambda f: True, venv.pool.terminate)
    _, closed = _paused(code, reaping, venv.close)
    assert terminated() is None and closed() is None
    deadline = time.monotonic() + 5
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pids)


class _SlowToExit(gym.Wrapper):
    """Its close() in a worker leaves a thread that keeps the worker from exiting for 2 s, then writes its index to
    the file ``log`` (a helper flushing its output, say)."""

    def __init__(self, index: int, log: str) -> None:
        super().__init__(envs.make_cartpole())
        self.index, self.log = index, log

    def close(self) -> None:
        import threading

        def later() -> None:
            time.sleep(2.0)
            with open(self.log, "a") as f:
                f.write(f"{self.index}\n")

        if os.getpid() != PARENT:
            threading.Thread(target=later).start()  # (not a daemon: the worker's exit waits for it)
        super().close()


def test_a_second_close_while_the_first_stops_the_workers_leaves_them_to_it(tmp_path) -> None:
    """A close() (another thread's, or a signal handler's) while the first close() waited for its workers to exit took
    the workers over and SIGTERMed them a second later: what they still did on their way out was cut short (hunt103
    bug 2)."""
    import threading
    from functools import partial

    log = str(tmp_path / "exited")
    venv = SubprocVecEnv([partial(_SlowToExit, i, log) for i in range(2)], start_method="fork", num_workers=2,
                         step_in_parent=False)  # fmt: skip
    venv.reset()
    first = threading.Thread(target=venv.close)
    first.start()
    time.sleep(0.5)
    began = time.monotonic()
    venv.close()  # (returns at once: the first close is stopping the workers)
    assert time.monotonic() - began < 0.5
    first.join(30)
    time.sleep(0.5)
    with open(log) as f:
        assert sorted(int(line) for line in f.read().split()) == [0, 1]


class _CountedClose(gym.Wrapper):
    """Appends "<index> <pid>" to the file ``log`` at each close()."""

    def __init__(self, index: int, log: str, slow: float = 0.0) -> None:
        super().__init__(envs.make_cartpole())
        self.index, self.log, self.slow = index, log, slow

    def close(self) -> None:
        with open(self.log, "a") as f:
            f.write(f"{self.index} {os.getpid()}\n")
        time.sleep(self.slow)
        super().close()


def _closes(log: str) -> list[tuple[int, int]]:
    words = _lines(log)
    return sorted(zip(map(int, words[::2]), map(int, words[1::2])))


def test_a_ctrl_c_once_close_has_closed_the_envs_closes_none_twice(tmp_path) -> None:
    """A Ctrl-C as close()'s CLOSE command had closed every env (at the first line of the teardown): the pool stayed
    open, and the next close() ran the CLOSE command again, closing the calling process's own envs a second time
    (hunt104 bug 5)."""
    from functools import partial

    log = str(tmp_path / "closes")
    venv = SubprocVecEnv([partial(_CountedClose, i, log) for i in range(4)], start_method="fork", num_workers=2)
    venv.reset()
    with at_line(Pool._terminate.__code__, lambda f: True, interrupt) as fired, pytest.raises(KeyboardInterrupt):
        venv.close()
    venv.close()
    assert fired and [i for i, pid in _closes(log) if pid == PARENT] == [0, 1]


def test_a_child_forked_while_the_pool_stops_its_workers_closes_none_of_its_envs(tmp_path) -> None:
    """A child forked while terminate() waited for the workers (closing their envs, slowly) copied the release that
    close() then ran: its close() closed its copies of the calling process's own envs (a fork's copy of the pool is
    only marked closed; hunt104 bug 7)."""
    import threading
    from functools import partial

    log = str(tmp_path / "closes")
    venv = SubprocVecEnv([partial(_CountedClose, i, log, 0.5) for i in range(4)], start_method="fork", num_workers=2)
    venv.reset()
    stopper = threading.Thread(target=venv.pool.terminate)
    stopper.start()
    deadline = time.monotonic() + 10
    while not venv.pool._stopping and time.monotonic() < deadline:
        time.sleep(0.001)
    assert venv.pool._stopping  # (the workers are closing their envs, 0.5 s each)
    child = os.fork()
    if child == 0:
        try:
            venv.close()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    stopper.join(30)
    venv.close()
    assert [i for i, pid in _closes(log) if pid == child] == []
    assert [i for i, pid in _closes(log) if pid == PARENT] == [0, 1]


_FORK_ELSEWHERE = """
import logging  # (first: its fork hook, which holds a lock over a fork, runs after fastvec's, not before it)
import os, signal, sys, threading
# (a handler of SIGINT's own, as a program has: a test run started in the background inherits SIGINT ignored, and a
# worker's start then holds no signal, nor blocks any for its fork)
signal.signal(signal.SIGINT, signal.default_int_handler)
from fastvec import SubprocVecEnv, remote
from tests import envs

go, done = threading.Event(), threading.Event()

def fork_elsewhere():  # (a library forking from a thread of its own)
    go.wait(120)
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    done.set()

other = threading.Thread(target=fork_elsewhere, daemon=True)
other.start()
forked = []

def tracer(frame, event, arg):
    if frame.f_code is remote._before_fork.__code__ and event == "return" and not forked and remote._MASK:
        go.set()  # (the main thread's mask saved, its signals blocked: the other thread forks now)
        forked.append(done.wait(60))
    return tracer if frame.f_code is remote._before_fork.__code__ else None

before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
sys.settrace(tracer)
try:
    venv = SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2, step_in_parent=False)
finally:
    sys.settrace(None)
venv.close()
print(forked, sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, []) - before))
"""


def test_a_fork_from_another_thread_inside_a_workers_start_leaves_sigint_to_the_main_thread() -> None:
    """Another thread's fork while the main thread started a worker (between its fork hooks, which block SIGINT and
    SIGTERM for the fork) took the mask the main thread saved: SIGINT stayed blocked in the main thread for the
    process's life, Ctrl-C did nothing (hunt104 bug 3). In a fresh interpreter, logging imported before fastvec: where
    it is imported after (pytest's), its fork hook runs first and holds a lock over the main thread's fork, for which
    the other thread's then waits."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastvec.__file__)))
    out = subprocess.run([sys.executable, "-c", _FORK_ELSEWHERE], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "[True] []", out.stdout  # (forked inside the start; nothing left blocked)


class _HangsInClose(gym.Wrapper):
    """CartPole whose close() in a worker takes 30 s (stuck), once it has written the file ``started``."""

    def __init__(self, started: str) -> None:
        super().__init__(envs.make_cartpole())
        self.started = started

    def close(self) -> None:
        if os.getpid() != PARENT:
            with open(self.started, "w"):
                pass
            time.sleep(30)
        super().close()


@pytest.mark.parametrize("repeated", [False, True], ids=["one-sigterm", "sigterm-every-half-second"])
def test_sigterms_to_a_worker_stuck_closing_its_envs_end_it_within_the_deadline(tmp_path, repeated: bool) -> None:
    """SIGTERMs (a job scheduler's, again and again) reaching a worker whose CLOSE command is stuck in its envs'
    close(): it ends within the 2 s deadline of the first, of SIGALRM. With the pure-Python kernels, which cannot arm it
    inside the signal, nothing armed it once the SIGTERM stopped cutting the close short (hunt105 bug 1), nor once it
    cut the first of two stuck ones (hunt107 bug 1); the compiled kernel armed it again at each SIGTERM, each cutting one
    more close() short (hunt107 bug 6)."""
    import signal
    import threading
    from functools import partial

    started = tmp_path / "started"
    venv = SubprocVecEnv([partial(_HangsInClose, str(started))] * 2, start_method="fork", num_workers=1,
                         step_in_parent=False)  # fmt: skip
    venv.reset()
    (pid,) = venv.pool.worker_pids
    closer = threading.Thread(target=venv.pool.close, kwargs={"timeout": 20})
    closer.start()
    deadline = time.monotonic() + 10
    while not started.exists() and time.monotonic() < deadline:  # (until the CLOSE command is in env 0's close())
        time.sleep(0.005)
    sent = time.monotonic()
    while alive([pid]) and time.monotonic() - sent < 10:
        if time.monotonic() - sent < (3 if repeated else 0.1):
            os.kill(pid, signal.SIGTERM)  # (every 0.5 s, or once)
        time.sleep(0.5)
    took = time.monotonic() - sent
    closer.join(30)
    assert venv.pool.closed and took < 3, f"the worker ended {took:.1f} s after its first SIGTERM"


def test_a_token_lost_to_an_interrupt_is_made_again_while_two_threads_wait_for_it() -> None:
    """A Ctrl-C between step_async's taking the pool's token and the ``try`` that gives it back lost the token; then a
    step and another thread's park request both waited for it for good, each taking the other for its holder (hunt105
    bug 2)."""
    import linecache
    import threading

    venv = SubprocVecEnv([envs.make_cartpole] * 6, start_method="fork", num_workers=3)
    try:
        venv.reset()
        code = Pool.step_async.__code__

        def after_the_pop(frame: object) -> bool:
            previous = linecache.getline(code.co_filename, frame.f_lineno - 1)  # type: ignore[attr-defined]
            return "tokens.pop()" in previous

        with at_line(code, after_the_pop, interrupt) as fired, pytest.raises(KeyboardInterrupt):
            venv.step(np.zeros(6, np.int64))
        assert fired and not venv.pool._token  # (lost)
        done: dict = {}

        def park() -> None:
            done["park"] = venv.pool.request_park(2)

        def step() -> None:
            for _ in range(20):
                venv.step(np.zeros(6, np.int64))
            done["steps"] = True

        threads = [threading.Thread(target=park, daemon=True), threading.Thread(target=step, daemon=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert done.get("steps") and "park" in done and len(venv.pool._token) == 1
    finally:
        venv.pool.terminate()


class _AlarmHandler:
    """A signal handler that is an object (a callable instance)."""

    def __call__(self, signum: int, frame: object) -> None:
        raise TimeoutError("the program's own alarm: time is up")


def _on_alarm(signum: int, frame: object, where: str = "") -> None:
    raise TimeoutError("the program's own alarm: time is up")


@pytest.mark.parametrize("kind", ["function", "partial", "object"])
def test_a_handlers_exception_while_a_reply_is_unpickled_is_the_handlers(kind: str) -> None:
    """A signal handler's exception (a timeout alarm's) raised while a worker's reply is unpickled (the loading runs
    Python code, where a handler runs) was taken for the env's value failing to load: an EnvTypeError naming env 0
    (hunt106 bug 5), and still so for a handler made with functools.partial or an object (hunt107 bug 3). It reaches the
    caller as it is."""
    import functools
    import inspect
    import linecache
    import signal

    on_alarm = {"function": _on_alarm, "partial": functools.partial(_on_alarm, where="here"), "object": _AlarmHandler()}[kind]

    lines, first = inspect.getsourcelines(Remote.recv)
    loading = next(first + k for k, text in enumerate(lines) if "ForkingPickler.loads(data)" in text)
    assert "loads" in linecache.getline(Remote.recv.__code__.co_filename, loading)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    venv = SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2, step_in_parent=False)
    try:
        venv.reset()
        with at_line(Remote.recv.__code__, lambda f: f.f_lineno == loading, lambda: on_alarm(signal.SIGALRM, None)) as fired:
            with pytest.raises(TimeoutError, match="the program's own alarm"):
                venv.get_attr("spec")
        assert fired
    finally:
        signal.signal(signal.SIGALRM, previous)
        venv.close()


def test_an_interrupt_while_a_thread_waits_for_the_pool_leaves_it_no_waiter() -> None:
    """A Ctrl-C landing in a thread waiting for the pool's token, just after it recorded itself as a waiter (holding
    nothing): the record stayed, and the pool's recovery of a lost token, passing over that thread for good, could make
    a second token while it held the pool later (hunt107 bug 2)."""
    import threading

    from tests.test_park import _SlowActions

    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, step_in_parent=False)
    try:
        venv.reset()
        pool = venv.pool
        me: list = []

        def waiting(frame: object) -> bool:  # (at the first line after it recorded itself)
            return bool(me) and me[0] in pool._token_waiters

        out: dict = {}

        def other() -> None:
            me.append(threading.get_ident())
            with at_line(Pool._take_token.__code__, waiting, interrupt) as fired:
                try:
                    pool.request_park(1)
                except KeyboardInterrupt:
                    out["interrupted"] = bool(fired)

        thread = threading.Thread(target=other, daemon=True)
        threading.Timer(0.1, thread.start).start()  # (while step_async below holds the pool, converting its actions)
        venv.step_async(_SlowActions(4, 0.3))
        venv.step_wait()
        thread.join(10)
        assert out.get("interrupted") and not pool._token_waiters and len(pool._token) == 1
    finally:
        venv.close()


def test_a_token_given_back_and_taken_again_during_a_recovery_s_look_makes_no_second_one() -> None:
    """A thread waiting for the pool looks for a lost token: it reads the other threads' frames (the holder had given
    the token back and left the pool: no holder), then the list (the holder had taken it again for its next command:
    empty), and made a second token; the two threads then held the pool at once (hunt108 bug 1). The thread switches
    are staged as pauses of the looking thread; the recovery now makes none where a token was given back meanwhile."""
    import inspect
    import threading

    from tests.test_park import _SlowActions

    lines, first = inspect.getsourcelines(Pool._recover_lost_token)
    walk = next(first + i for i, text in enumerate(lines) if "sys._current_frames()" in text)
    check = next(first + i for i, text in enumerate(lines) if text.strip().startswith("if self._token or"))
    from functools import partial

    # (each step takes 0.15 s: step_wait holds the pool while it waits for the workers)
    venv = SubprocVecEnv([partial(envs.FailingEnv, "slow")] * 4, start_method="fork", num_workers=2, step_in_parent=False)
    try:
        venv.reset()
        pool = venv.pool
        main = threading.get_ident()
        issued = threading.Event()
        paused: list = []
        most = [1]

        def until(condition: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 5
            while not condition() and time.monotonic() < deadline:
                time.sleep(0.0005)

        def main_holds() -> bool:  # (in step_wait's completion, not waiting: it holds the token)
            frame = sys._current_frames().get(main)
            while frame is not None:
                if frame.f_code is Pool._complete_step.__code__:
                    return main not in pool._token_waiters and not pool._token
                frame = frame.f_back
            return False

        def local(frame: Any, event: str, arg: object) -> Any:
            if event == "line" and frame.f_lineno == walk and not paused:
                paused.append("walk")
                until(issued.is_set)  # (the holder gave the token back and left the pool)
            elif event == "line" and frame.f_lineno == check and paused == ["walk"]:
                paused.append("check")
                until(main_holds)  # (and took it again for its step_wait)
            return local

        def park() -> None:
            sys.settrace(lambda frame, event, arg: local if frame.f_code is Pool._recover_lost_token.__code__ else None)
            try:
                pool.request_unpark(1)
            finally:
                sys.settrace(None)

        def sample() -> None:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                most.append(len(pool._token))
                time.sleep(0.0005)

        threads = [threading.Timer(0.1, park), threading.Thread(target=sample)]
        for thread in threads:
            thread.daemon = True
            thread.start()
        venv.step_async(_SlowActions(4, 0.3))  # (holding the pool while its actions convert)
        issued.set()
        time.sleep(0.05)  # (the learner's own work between the two calls)
        venv.step_wait()
        for thread in threads:
            thread.join(10)
        assert paused == ["walk", "check"] and max(most) == 1 and len(pool._token) == 1
    finally:
        venv.close()


def test_a_handlers_terminate_inside_a_step_leaves_the_block_to_the_step() -> None:
    """gymnasium's close(terminate=True) from a signal handler landing inside step() where the thread held no token
    (building the Batch): it let go of the shared block at once, and the step failed with a bare TypeError (hunt111
    bug 4); a handler's close() there left the block to the step, as terminate() now does."""
    from fastvec.batch import Batch

    venv = VectorEnv([envs.make_cartpole] * 4, num_workers=2, step_in_parent=True, context="fork")
    venv.reset(seed=0)
    venv.step(np.zeros(4, np.int64))
    with at_line(Batch.__init__.__code__, lambda frame: True, lambda: venv.close(terminate=True)) as fired:
        try:
            venv.step(np.zeros(4, np.int64))
        except ClosedError:
            pass
    assert fired and venv.pool.closed
    venv.close()  # (the block is let go of at the pool's next use, as after a handler's close())
    assert venv.pool._segment is None


def test_a_handlers_interrupt_in_the_placement_fork_hook_reaches_the_caller() -> None:
    """fastvec's other before-fork hook (placement's, saving the caller's cores) runs in the parent too: a handler's
    exception there was only printed by CPython, and the pool made as if nothing had happened (hunt111 bug 5)."""
    from fastvec import placement, remote

    def starting(frame: object) -> bool:
        return bool(remote._FORKING)  # (a worker's start, not another fork)

    with at_line(placement._before_fork.__code__, starting, interrupt) as fired:
        with pytest.raises(KeyboardInterrupt):
            SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2, step_in_parent=False)
    assert fired
