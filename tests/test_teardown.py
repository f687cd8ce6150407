"""Envs that run helper processes (a simulator, a game server) end them in close(). Every way a pool
can end must close such envs, or their helpers outlive the run: a worker killed before its envs
are closed leaves their helpers to init, where no test of child processes sees them.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
import weakref
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import psutil
import pytest

import fastvec.pool as pool_module
from fastvec import PoolState, SubprocVecEnv, VectorEnv, shm
from fastvec.errors import ClosedError, StepTimeoutError, WorkerDiedError
from fastvec.protocol import Command
from fastvec.worker import TERM_DEADLINE_S
from tests import envs


class WithHelper(envs.Counter):
    """A Counter that starts a helper process and ends it in close(). ``hang()`` makes its next step
    hang (in Python: a sleep). Writes ``<index>.pid`` and, when closed, ``<index>.closed`` to ``folder``."""

    def __init__(self, folder: str, index: int):
        super().__init__(index)
        self.folder = Path(folder)
        self.helper = subprocess.Popen(["sleep", "300"])
        (self.folder / f"{index}.pid").write_text(str(self.helper.pid))
        self.hanging = False

    def hang(self) -> None:
        self.hanging = True

    def stick(self) -> None:
        """Make the next step stick in native code holding the GIL (a mutex locked twice), where no
        Python signal handler can run: as a simulator binding that deadlocks."""
        self.hanging = "native"

    def step(self, action):
        if self.hanging == "native":
            lib = ctypes.PyDLL(None)  # (PyDLL: the call keeps the GIL)
            mutex = ctypes.create_string_buffer(64)  # zeroed: a default mutex (glibc)
            lib.pthread_mutex_lock(mutex)
            (self.folder / f"{self.index}.hanging").touch()  # (all made ready first: the next call sticks)
            lib.pthread_mutex_lock(mutex)
        if self.hanging:
            (self.folder / f"{self.index}.hanging").touch()
        if self.hanging:
            time.sleep(300)
        return super().step(action)

    def close(self):
        if self.helper.poll() is None:
            self.helper.kill()
            self.helper.wait()
            (self.folder / f"{self.index}.closed").touch()


def _fns(folder: Path, n: int = 4) -> list:
    return [partial(WithHelper, str(folder), i) for i in range(n)]


def _helpers(folder: Path) -> dict[int, int]:
    return {int(p.stem): int(p.read_text()) for p in folder.glob("*.pid")}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_every_env_closed(folder: Path, n: int = 4) -> None:
    helpers = _helpers(folder)
    assert sorted(helpers) == list(range(n))
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in helpers.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = {i: pid for i, pid in helpers.items() if _alive(pid)}
    for pid in alive.values():  # (the test's own clean-up)
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"helpers of envs {sorted(alive)} outlived the pool"
    assert sorted(int(p.stem) for p in folder.glob("*.closed")) == list(range(n))


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_close_after_a_step_timeout_closes_every_env(tmp_path, start_method: str) -> None:
    """A hung env breaks the pool: close() still closes every env, the hung one too (it hangs in
    Python, where the worker's SIGTERM handler can run)."""
    venv = SubprocVecEnv(_fns(tmp_path), start_method=start_method, num_workers=2)
    venv.pool.step_timeout = 0.5  # (once started: the limit bounds making the envs too, slow on a busy host)
    venv.reset()
    venv.env_method("hang", indices=[3])
    with pytest.raises(StepTimeoutError):
        venv.step(np.zeros(4, dtype=np.int64))
    venv.close()
    _assert_every_env_closed(tmp_path)


def test_terminate_closes_every_env(tmp_path) -> None:
    """gymnasium's close(terminate=True): workers stop at once, closing their envs as they go."""
    venv = VectorEnv(_fns(tmp_path), start_method="fork", num_workers=3)
    venv.reset(seed=0)
    venv.step(np.zeros(4, dtype=np.int64))
    venv.close(terminate=True)
    _assert_every_env_closed(tmp_path)


def test_a_worker_sent_sigterm_closes_its_envs_and_dies_of_the_signal(tmp_path) -> None:
    """A SIGTERM from outside (a job scheduler, a supervisor): the worker closes its envs and dies
    of the signal, and the pool names it as it would any other death."""
    venv = SubprocVecEnv(_fns(tmp_path), start_method="fork", num_workers=2)
    venv.reset()
    os.kill(venv.pool.worker_pids[-1], signal.SIGTERM)  # (not psutil's wait: it would reap the pool's child)
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob("*.closed"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(WorkerDiedError, match="SIGTERM"):
        venv.step(np.zeros(4, dtype=np.int64))
    closed = sorted(int(p.stem) for p in tmp_path.glob("*.closed"))
    assert closed == [2, 3]  # the worker's envs; the parent's still run
    venv.close()
    _assert_every_env_closed(tmp_path)


def test_a_hung_worker_replaced_under_restart_closes_its_envs_first(tmp_path) -> None:
    """on_error="restart" with a step limit: the worker of a hung env is ended and replaced, its envs'
    episodes end truncated, and the envs it held were closed (their helpers do not outlive them)."""
    venv = SubprocVecEnv(_fns(tmp_path), start_method="fork", num_workers=2, on_error="restart")
    venv.pool.step_timeout = 2.0  # (once started, as above; the replacement makes envs with helpers in that time too)
    try:
        venv.reset()
        first = _helpers(tmp_path)
        (old_pid,) = venv.pool.worker_pids
        venv.env_method("hang", indices=[3])
        # (named as hung, not as a worker that "died with exit code -15": the SIGTERM was the pool's own)
        with pytest.warns(RuntimeWarning, match=r"worker 1 .* was ended in 'step', still running after step_timeout=2 s"):
            _, _, dones, infos = venv.step(np.zeros(4, dtype=np.int64))
        assert dones.tolist() == [False, False, True, True] and infos[3]["TimeLimit.truncated"]
        assert infos[3]["fastvec.restarted"] == "worker hung: still running after step_timeout=2 s, ended and replaced"
        assert infos[2]["fastvec.restarted"] == infos[3]["fastvec.restarted"]
        assert venv.pool.worker_pids != [old_pid] and venv.pool.worker_restarts == 1
        assert sorted(int(p.stem) for p in tmp_path.glob("*.closed")) == [2, 3]  # the ended worker's envs
        assert not _alive(first[2]) and not _alive(first[3])
        replaced = _helpers(tmp_path)  # the replacement made envs 2 and 3 again, with helpers of their own
        assert replaced[2] != first[2] and _alive(replaced[2]) and _alive(replaced[3])
        _, _, dones, _ = venv.step(np.zeros(4, dtype=np.int64))
        assert not dones.any()  # and steps on
    finally:
        venv.close()
    _assert_every_env_closed(tmp_path)


PARENT = textwrap.dedent(
    """
    import sys, numpy as np
    from fastvec import SubprocVecEnv
    from tests.test_teardown import _fns
    from pathlib import Path
    venv = SubprocVecEnv(_fns(Path(sys.argv[1])), start_method="forkserver", num_workers=2, step_in_parent=False)
    venv.reset()
    if sys.argv[2] in ("hang", "stick"):
        venv.env_method(sys.argv[2], indices=[3])
    venv.step_async(np.zeros(4, dtype=np.int64))
    print(" ".join(map(str, venv.pool.worker_pids)), flush=True)
    sys.stdin.read()
    """
)


def _kill_parent_and_wait_for(tmp_path: Path, case: str, seconds: float) -> list[int]:
    """Start a parent with 2 workers of 2 envs each (a step pending), SIGKILL it; returns the
    workers still alive ``seconds`` later."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), case], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2
        deadline = time.monotonic() + 10
        while case != "pending" and not (tmp_path / "3.hanging").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # (until env 3 is stuck in its step)
        if case != "pending":
            time.sleep(0.2)  # (it signals just before it sticks: a loaded host may not have run that call yet)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + seconds
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [p for p in workers if _alive(p)]
    finally:
        parent.kill()
        parent.wait()
        parent.stdin.close()
        parent.stdout.close()


def test_a_parent_killed_with_sigkill_has_its_workers_close_their_envs(tmp_path) -> None:
    """The parent's death sends its workers SIGTERM (a thread watching it): they close their envs and end."""
    alive = _kill_parent_and_wait_for(tmp_path, "pending", 5)
    assert not alive, f"workers {alive} outlived their parent"
    _assert_every_env_closed(tmp_path)


@pytest.mark.parametrize(
    "case", ["hang", pytest.param("stick", marks=pytest.mark.compiled_only)], ids=["hung-in-python", "stuck-in-native"]
)
def test_a_stuck_worker_still_ends_with_its_parent(tmp_path, case: str) -> None:
    """A worker whose env hangs never reaches its wait loop, where it would notice its parent's death;
    under forkserver (here) its death signal follows the server, which outlives the parent. A thread
    watching the parent sends it SIGTERM. Hung in Python (a sleep), it closes its envs; stuck in
    native code holding the GIL, its handler never runs, and the compiled kernel's deadline, armed in C
    as the signal arrived, ends it (SIGALRM, TERM_DEADLINE_S later); the pure-Python twin's watching
    thread needs the GIL, so that case is the compiled kernels' only. The other worker closes its envs."""
    alive = _kill_parent_and_wait_for(tmp_path, case, TERM_DEADLINE_S + 3)
    helpers = _helpers(tmp_path)
    closed = sorted(int(p.stem) for p in tmp_path.glob("*.closed"))
    for pid in helpers.values():  # (clean-up: a stuck worker's envs have nobody left to end their helpers)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their parent"
    assert closed == ([0, 1, 2, 3] if case == "hang" else [0, 1])


class InterruptedClose(envs.Counter):
    """Touches ``<folder>/<index>.closed`` when closed; env 0's close() in the process that made ``main_pid``
    is cut short by a Ctrl-C (KeyboardInterrupt), as a second Ctrl-C during a slow shutdown would."""

    def __init__(self, folder: str, index: int, main_pid: int):
        super().__init__(index)
        self.folder, self.main_pid = Path(folder), main_pid

    def close(self):
        if self.index == 0 and os.getpid() == self.main_pid:
            raise KeyboardInterrupt
        (self.folder / f"{self.index}.closed").touch()


def test_a_ctrl_c_in_one_env_s_close_still_closes_this_process_s_other_envs(tmp_path) -> None:
    """The calling process's own envs: env 0's close() interrupted skipped env 1's for good (the pool counted
    them closed, so a second close() did nothing), and its helpers outlived the program."""
    fns = [partial(InterruptedClose, str(tmp_path), i, os.getpid()) for i in range(4)]
    venv = SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True)
    venv.reset()
    with pytest.raises(KeyboardInterrupt):
        venv.close()
    venv.close()  # (as a ``finally:`` would)
    assert sorted(int(p.stem) for p in tmp_path.glob("*.closed")) == [1, 2, 3]
    assert venv.pool._segment is None


# -- close() while another thread (or a signal handler) is inside a command -------------------------------
class SlowLogged(envs.Counter):
    """Appends its index to ``<folder>/steps`` on every step, which takes ``seconds``; touches
    ``<folder>/<index>.closed`` when closed."""

    def __init__(self, folder: str, index: int, seconds: float):
        super().__init__(index)
        self.folder, self.seconds = Path(folder), seconds

    def step(self, action):
        with open(self.folder / "steps", "a") as f:
            f.write(f"{self.index}\n")
        time.sleep(self.seconds)
        return super().step(action)

    def close(self):
        (self.folder / f"{self.index}.closed").touch()


def _steps_per_env(folder: Path, before: dict[int, int] | None = None) -> dict[int, int]:
    """How often each env was stepped (since ``before``, such counts taken earlier)."""
    path = folder / "steps"
    lines = path.read_text().split() if path.exists() else []
    counts = {i: lines.count(str(i)) - (before or {}).get(i, 0) for i in range(4)}
    return {i: n for i, n in counts.items() if n}


def _start(venv, batch: bool) -> None:
    """Reset; asynchronous batches: until both groups (this process's and the worker's) are stepping."""
    if not batch:
        venv.reset()
        return
    venv.async_reset()
    while True:
        _, _, _, _, info = venv.recv()
        venv.send(np.zeros(2, dtype=np.int64), info["env_id"])
        batches = venv.pool._async
        if not batches.ready and all(command is Command.STEP for command, _ in batches.inflight.values()):
            return


def _step_in_thread(venv, batch: bool) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(venv.recv() if batch else venv.step(np.zeros(4, dtype=np.int64)))
        except BaseException as exc:  # noqa: BLE001 (the test reads it)
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("batch", [False, True], ids=["step", "recv"])
def test_close_from_another_thread_lets_the_running_step_finish(tmp_path, batch: bool) -> None:
    """SB3's and gymnasium's close() during another thread's step only read the pipes. fastvec's used to
    run this process's shard a second time, beside the thread already stepping it."""
    fns = [partial(SlowLogged, str(tmp_path), i, 0.4) for i in range(4)]
    venv = VectorEnv(fns, start_method="fork", num_workers=2, step_in_parent=True, **({"batch_size": 2} if batch else {}))
    _start(venv, batch)
    before = _steps_per_env(tmp_path)
    thread, outcome = _step_in_thread(venv, batch)
    time.sleep(0.1)  # the thread is stepping this process's shard, or waiting for the worker's
    venv.close()
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome[0], tuple), outcome  # its results came back
    stepped = _steps_per_env(tmp_path, before)
    assert set(stepped.values()) == {1}, stepped  # never twice
    if not batch:  # (with batches, the worker may have begun its group before ``before`` was counted)
        assert stepped == {0: 1, 1: 1, 2: 1, 3: 1}
    assert sorted(int(p.stem) for p in tmp_path.glob("*.closed")) == [0, 1, 2, 3]


@pytest.mark.serial
@pytest.mark.parametrize("batch", [False, True], ids=["step", "recv"])
def test_close_from_another_thread_gives_up_on_a_step_past_its_timeout(tmp_path, batch: bool) -> None:
    """The running step outlasts close()'s timeout: close() returns, the workers are stopped, and the
    stepping thread raises ClosedError once its own envs return, then lets go of them and the block."""
    # (env 0's step outlasts the timeout; this process's other env, stepped after it, takes none)
    fns = [partial(SlowLogged, str(tmp_path), i, 0.0 if i == 1 else 1.5) for i in range(4)]
    venv = VectorEnv(fns, start_method="fork", num_workers=2, step_in_parent=True, **({"batch_size": 2} if batch else {}))
    _start(venv, batch)
    before = _steps_per_env(tmp_path)
    thread, outcome = _step_in_thread(venv, batch)
    time.sleep(0.1)
    began = time.monotonic()
    venv.close(timeout=0.3)
    assert time.monotonic() - began < 1.2  # it did not wait for the 1.5 s step
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome[0], ClosedError), outcome
    assert "closed (by another thread" in str(outcome[0])
    assert max(_steps_per_env(tmp_path, before).values()) == 1
    assert {0, 1} <= {int(p.stem) for p in tmp_path.glob("*.closed")}  # this process's envs, after their step
    assert venv.pool._segment is None and venv.pool._control is None  # let go of, by the stepping thread


class SlowLoggedInfos(SlowLogged):
    def step(self, action):
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, {"at": self.t}


@pytest.mark.parametrize("infos", [False, True], ids=["no-infos", "worker-infos"])
def test_close_from_another_thread_gives_up_while_only_this_process_s_envs_run(tmp_path, infos: bool) -> None:
    """The worker's envs finished at once; this process's own envs outlast close()'s timeout: the stepping
    thread raises ClosedError when they return (not a TypeError from the released block, nor, with infos
    waiting on the worker's pipe, "process object is closed"), and the pool stays closed (its state went back
    to idle, and every later call failed the same way)."""
    kind = SlowLoggedInfos if infos else SlowLogged
    fns = [partial(kind, str(tmp_path), i, 1.5 if i == 0 else 0.0) for i in range(4)]  # (env 0: this process's)
    venv = VectorEnv(fns, start_method="fork", num_workers=2, step_in_parent=True)
    venv.reset()
    thread, outcome = _step_in_thread(venv, False)
    time.sleep(0.2)
    venv.close(timeout=0.3)
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome[0], ClosedError), outcome
    assert venv.pool.state is PoolState.CLOSED and venv.pool._segment is None
    with pytest.raises(ClosedError):
        venv.step(np.zeros(4, dtype=np.int64))


def test_close_in_a_signal_handler_during_the_step(tmp_path) -> None:
    """A handler that closes the pool while the step runs (here inside this process's shard), then
    returns: the step raises ClosedError when it gets back, and no env is stepped twice."""
    fns = [partial(SlowLogged, str(tmp_path), i, 0.3) for i in range(4)]
    venv = VectorEnv(fns, start_method="fork", num_workers=2)
    venv.reset()
    previous = signal.signal(signal.SIGALRM, lambda *_: venv.close())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(ClosedError):
            venv.step(np.zeros(4, dtype=np.int64))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert venv.closed and max(_steps_per_env(tmp_path).values()) == 1
    assert sorted(int(p.stem) for p in tmp_path.glob("*.closed")) == [0, 1, 2, 3]


# -- the shared block: a full /dev/shm, an interrupt while it is made ------------------------------------
def test_a_full_dev_shm_falls_back_to_a_file_block(monkeypatch) -> None:
    """Docker's /dev/shm is 64 MiB by default: a block past its room used to be a SIGBUS at the first
    write. The room is now reserved when the block is made; without it, the block is an unlinked temp
    file (as multiprocessing.heap does), with a warning, and the pool works as usual."""
    real = os.posix_fallocate

    def no_room_in_dev_shm(fd: int, offset: int, length: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/shm/"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, offset, length)

    monkeypatch.setattr(shm.os, "posix_fallocate", no_room_in_dev_shm)
    with pytest.warns(RuntimeWarning, match="/dev/shm has no room"):
        venv = VectorEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2)
    with venv:
        assert venv.pool._segment.folder != "/dev/shm"  # (a file in the temp directory)
        reference = gym.vector.SyncVectorEnv([envs.make_cartpole] * 4)
        obs, _ = venv.reset(seed=3)
        np.testing.assert_array_equal(obs, reference.reset(seed=3)[0])
        for _ in range(30):
            got, want = venv.step(np.ones(4, dtype=np.int64)), reference.step(np.ones(4, dtype=np.int64))
            np.testing.assert_array_equal(got[0], want[0])
        reference.close()
    assert not [n for n in shm.list_segments() if n.startswith(f"{shm.PREFIX}{os.getpid()}-")]


@pytest.mark.parametrize("where", ["before its name is gone", "as its pages are reserved"])
def test_an_interrupt_while_the_block_is_made_leaves_no_segment(monkeypatch, where: str) -> None:
    """Ctrl-C inside the block's creation, after its file was made: the name must not stay in /dev/shm, nor
    its file descriptor open."""
    real_unlink = os.unlink
    unlinked_once = []

    def interrupt(*_) -> None:
        raise KeyboardInterrupt

    def unlink_interrupted(path, *args, **kwargs):  # (the first: the block's own, cut short before it runs)
        if not unlinked_once and os.path.basename(str(path)).startswith(shm.PREFIX):
            unlinked_once.append(path)
            raise KeyboardInterrupt
        return real_unlink(path, *args, **kwargs)

    if where == "before its name is gone":
        monkeypatch.setattr(shm.os, "unlink", unlink_interrupted)
    else:
        monkeypatch.setattr(shm.os, "posix_fallocate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        VectorEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2)
    assert not [n for n in shm.list_segments() if n.startswith(f"{shm.PREFIX}{os.getpid()}-")]


def _describe_fd(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def test_a_fallback_block_whose_warning_is_an_error_is_let_go_of(monkeypatch) -> None:
    """-W error: the warning that the block is a file in the temp directory raised, and the file stayed open (the
    leak check after the test sees it)."""
    real = os.posix_fallocate

    def no_room_in_dev_shm(fd: int, offset: int, length: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/shm/"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, offset, length)

    def blocks() -> list[str]:  # (files of fastvec blocks this process holds open)
        return [path for path in (_describe_fd(fd) for fd in os.listdir("/proc/self/fd")) if f"{shm.PREFIX}" in path]

    monkeypatch.setattr(shm.os, "posix_fallocate", no_room_in_dev_shm)
    before = blocks()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning, match="/dev/shm has no room"):
            VectorEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2)
    gc.collect()
    assert blocks() == before


def test_no_dev_shm_falls_back_to_the_temp_directory(monkeypatch) -> None:
    """/dev/shm missing (or not writable): the pool failed with a bare FileNotFoundError naming no folder."""
    monkeypatch.setattr(shm, "_SHM_DIR", "/nonexistent-dev-shm")
    with pytest.warns(RuntimeWarning, match="/dev/shm cannot hold") as warned:
        venv = VectorEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2)
    assert "--shm-size" not in str(warned[0].message)  # (more shared memory is no remedy here)
    assert warned[0].filename == __file__  # (the program's line: it pointed into fastvec)
    with venv:
        assert venv.pool._segment.folder == tempfile.gettempdir()
        venv.reset(seed=0)
        venv.step(np.ones(2, dtype=np.int64))


def test_a_block_the_calling_process_cannot_map_is_said_with_its_size_and_no_tracker_traceback(tmp_path) -> None:
    """An address-space limit (ulimit -v) the block does not fit in: a bare "[Errno 12] Cannot allocate memory",
    and multiprocessing's resource tracker printed a KeyError traceback (SharedMemory unregistered a name it never
    registered); a worker that could not map it died with exit code 1, the cause on its stderr only."""
    code = textwrap.dedent(
        """
        import mmap, resource, sys
        import numpy as np, gymnasium as gym
        from fastvec import SubprocVecEnv

        who = sys.argv[1]

        class Big(gym.Env):
            observation_space = gym.spaces.MultiBinary((60, 1000, 1000))  # (no bounds arrays of its size)
            action_space = gym.spaces.Discrete(2)

            def __init__(self):  # (a simulator's address space, in its worker)
                self.reserved = mmap.mmap(-1, 300 * 2**20) if who == "worker" else None

        factories = [Big] * 4
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        # the calling process: room for its workers' start only; a worker: the caller maps the block first; or files
        # of 50 MB at most
        if who == "file-size":
            resource.setrlimit(resource.RLIMIT_FSIZE, (50 * 2**20,) * 2)
        else:
            resource.setrlimit(resource.RLIMIT_AS, (size + (200 if who == "caller" else 1100) * 2**20,) * 2)
        try:
            SubprocVecEnv(factories, start_method="fork", num_workers=2, step_in_parent=False)
        except OSError as exc:
            print(type(exc).__name__, exc)
        """
    )
    for who, said, limit in [
        ("caller", "this process could not make or map the pool's shared block of ", "ulimit -v"),
        ("worker", "worker 0 (envs 0..1) could not make or map the pool's shared block of ", "ulimit -v"),
        ("file-size", "this process could not make or map the pool's shared block of ", "ulimit -f"),  # (not "no room")
    ]:  # fmt: skip
        root = Path(__file__).resolve().parents[1]
        done = subprocess.run([sys.executable, "-c", code, who], capture_output=True, text=True, timeout=120, cwd=root)
        assert said in done.stdout and limit in done.stdout and "no room" not in done.stdout, (who, done.stdout, done.stderr[-3000:])
        assert "Traceback" not in done.stderr, (who, done.stderr[-3000:])


def test_an_interrupt_during_closes_teardown_still_closes_this_processs_envs(monkeypatch) -> None:
    """A second Ctrl-C while close() waits for a worker to exit: the rest of the teardown still runs (the
    workers left are killed, this process's envs closed, the block let go of), then the interrupt goes on.
    It used to skip it all, and a later close() did nothing (the pool already said closed)."""
    from fastvec import remote

    envs.Counter.closed = []
    venv = SubprocVecEnv([partial(envs.Counter, i) for i in range(4)], start_method="fork", num_workers=2)
    venv.reset()
    workers = [psutil.Process(pid) for pid in venv.pool.worker_pids]
    real = remote.Remote.reap

    def interrupted(self) -> None:
        monkeypatch.setattr(remote.Remote, "reap", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(remote.Remote, "reap", interrupted)
    with pytest.raises(KeyboardInterrupt):
        venv.close()
    assert sorted(envs.Counter.closed) == [(os.getpid(), 0), (os.getpid(), 1)]
    assert venv.pool._segment is None
    for worker in workers:  # each worker was told to end (SIGTERM: it closes its envs), or had ended
        try:
            assert worker.wait(5) in (None, 0, -signal.SIGTERM, -signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    multiprocessing.active_children()  # (reaps them)


def test_close_from_another_thread_between_step_async_and_step_wait(tmp_path) -> None:
    """close() finishes the pending step itself (its workers' part: this process's own envs are closed as they
    are, not stepped only to drop the results); the stepping thread's step_wait() then waits for it and raises
    ClosedError (it ran this process's shard a second time beside close(), then a TypeError)."""
    fns = [partial(SlowLogged, str(tmp_path), i, 0.3) for i in range(4)]
    venv = VectorEnv(fns, start_method="fork", num_workers=2)
    venv.reset()
    outcome: list = []
    sent = threading.Event()

    def run() -> None:
        venv.step_async(np.zeros(4, dtype=np.int64))
        sent.set()
        time.sleep(0.15)  # close() starts meanwhile, and is inside the step
        try:
            outcome.append(venv.step_wait())
        except BaseException as exc:  # noqa: BLE001 (the test reads it)
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    sent.wait(5)
    venv.close()
    thread.join(10)
    assert isinstance(outcome[0], ClosedError), outcome
    assert _steps_per_env(tmp_path) == {2: 1, 3: 1}  # (the workers' envs once; this process's never, nor twice)


class SlowToClose(SlowLogged):
    def close(self):
        time.sleep(0.6)  # (a simulator shutting down)
        super().close()


@pytest.mark.parametrize("call", ["step", "reset", "get_attr"])
def test_a_command_while_another_thread_closes_the_pool_raises_closed_error(tmp_path, call: str) -> None:
    """It raised AlreadyPendingCallError ("complete it first with close()"), which a loop stopping on
    gymnasium's ClosedEnvironmentError does not catch."""
    venv = VectorEnv([partial(SlowToClose, str(tmp_path), i, 0.0) for i in range(4)], start_method="fork", num_workers=2)
    venv.reset()
    closer = threading.Thread(target=venv.close)
    closer.start()
    time.sleep(0.3)  # close() is closing the envs
    commands = {"step": lambda: venv.step(np.zeros(4, dtype=np.int64)), "reset": venv.reset, "get_attr": lambda: venv.get_attr("index")}
    with pytest.raises(ClosedError):
        commands[call]()
    closer.join(10)
    assert sorted(int(p.stem) for p in tmp_path.glob("*.closed")) == [0, 1, 2, 3]


@pytest.mark.parametrize("grace", [None, 0.1], ids=["quick-close", "close-past-the-grace"])
def test_close_from_two_threads_at_once_closes_once(tmp_path, monkeypatch, grace: float | None) -> None:
    """close() is idempotent from any thread: a second close() while the first closes the envs waits for it
    and returns (it tore the released pool down again: ValueError 'process object is closed'); a first
    close() longer than the grace a pending step gets must not be taken for a stuck command either."""
    if grace is not None:
        monkeypatch.setattr(pool_module, "PENDING_STEP_GRACE_S", grace)
    venv = SubprocVecEnv([partial(SlowToClose, str(tmp_path), i, 0.0) for i in range(4)], start_method="fork", num_workers=2)
    venv.reset()
    errors: list = []

    def close() -> None:
        try:
            venv.close()
        except BaseException as exc:  # noqa: BLE001 (the test reads it)
            errors.append(exc)

    threads = [threading.Thread(target=close) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert venv.pool.state.value == "closed"
    assert sorted(int(p.stem) for p in tmp_path.glob("*.closed")) == [0, 1, 2, 3]


class CountsCloses(SlowLogged):
    """... whose close() takes 0.6 s and is counted in ``<folder>/<index>.closes``."""

    def close(self):
        with open(self.folder / f"{self.index}.closes", "a") as f:
            f.write("x")
        time.sleep(0.6)


def _closes(folder) -> dict[int, int]:
    return {int(p.stem): len(p.read_text()) for p in sorted(folder.glob("*.closes"))}


@pytest.mark.parametrize("step_s", [0.3, 1.2], ids=["step-within-grace", "step-past-grace"])
def test_close_from_two_threads_while_a_third_steps_closes_once(tmp_path, monkeypatch, step_s: float) -> None:
    """Two closers while another thread's step runs: both waited for the step, and the one that gave up
    (or came second) tore the pool down again beside the other: ValueError, an env closed twice, one never.
    (One env of each process takes the step's time.)"""
    monkeypatch.setattr(pool_module, "PENDING_STEP_GRACE_S", 0.7)
    fns = [partial(CountsCloses, str(tmp_path), i, step_s if i % 2 == 0 else 0.0) for i in range(4)]
    venv = SubprocVecEnv(fns, start_method="fork", num_workers=2)
    venv.reset()
    errors: list = []

    def run(call) -> None:
        try:
            call()
        except ClosedError:  # (the step, when the closers gave up on it)
            pass
        except BaseException as exc:  # noqa: BLE001 (the test reads it)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(lambda: venv.step(np.zeros(4, dtype=np.int64)),))]
    threads += [threading.Thread(target=run, args=(venv.close,)) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(15)
    venv.close()
    assert errors == [] and _closes(tmp_path) == {0: 1, 1: 1, 2: 1, 3: 1}


def test_close_in_a_signal_handler_during_close_closes_once(tmp_path) -> None:
    """A graceful-stop handler calling close() while the program's close() closes the envs: the inner one
    returns, the outer one finishes (the pool was torn down twice: ValueError, an env closed twice)."""
    venv = SubprocVecEnv([partial(CountsCloses, str(tmp_path), i, 0.0) for i in range(4)], start_method="fork", num_workers=2)
    venv.reset()
    errors: list = []

    def handler(*_) -> None:
        try:
            venv.close()
        except BaseException as exc:  # noqa: BLE001 (the test reads it)
            errors.append(exc)

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # while close() closes the envs
        venv.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert errors == [] and venv.pool.state.value == "closed"
    assert _closes(tmp_path) == {0: 1, 1: 1, 2: 1, 3: 1}


@pytest.mark.serial
def test_a_close_interrupted_before_it_tore_down_leaves_the_next_close_whole(tmp_path, monkeypatch) -> None:
    """Ctrl-C in close() before it tore anything down: the next close() closes the pool, and another thread's
    close() meanwhile waits for that one (it returned at once, the pool still open: the first close() had set
    'done' for good). A close ticket lost to an interrupt at the wrong bytecode is found and made again
    (every later close(), the atexit hook's too, waited its timeout and left the pool open)."""
    venv = SubprocVecEnv([partial(CountsCloses, str(tmp_path), i, 0.0) for i in range(4)], start_method="fork", num_workers=2)
    pool = venv.pool
    venv.reset()
    calls = []

    def interrupted(timeout, entering):  # (as Ctrl-C while close() waits for another thread's step)
        calls.append(timeout)
        raise KeyboardInterrupt

    monkeypatch.setattr(pool, "_enter_to_close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        venv.close()
    monkeypatch.undo()
    assert calls and pool.state.value == "idle"
    closer = threading.Thread(target=pool.close)
    closer.start()
    time.sleep(0.2)  # it closes the envs (0.6 s each)
    pool.close()
    assert pool.state.value == "closed"
    closer.join(10)
    assert _closes(tmp_path) == {0: 1, 1: 1, 2: 1, 3: 1}

    venv = SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2)
    venv.pool._close_ticket.pop()  # (lost, as by an interrupt between its pop and the try that gives it back)
    began = time.monotonic()
    venv.close()
    assert venv.pool.state.value == "closed" and time.monotonic() - began < 3


@pytest.mark.parametrize("front", ["sb3", "gym", "batches"])
def test_close_in_a_signal_handler_anywhere_in_the_loop_raises_closed_error(front: str) -> None:
    """A handler that closes the pool (a graceful stop on SIGTERM, SIGALRM) lands anywhere in a stepping
    loop: in the pool's code, the front-end's, the caller's. The loop must end with ClosedError, never a
    raw TypeError, IndexError or WorkerDiedError from the structures close() let go of."""
    rng = np.random.default_rng(5)
    outcomes = []
    for _ in range(12):
        fns = [partial(envs.Counter, i) for i in range(4)]
        if front == "sb3":
            venv = SubprocVecEnv(fns, start_method="fork", num_workers=2)
        else:
            venv = VectorEnv(fns, start_method="fork", num_workers=2, step_in_parent=True, **({"batch_size": 2} if front == "batches" else {}))
        previous = signal.signal(signal.SIGALRM, lambda *_, venv=venv: venv.close())
        try:
            venv.async_reset() if front == "batches" else venv.reset()
            signal.setitimer(signal.ITIMER_REAL, float(rng.uniform(0.002, 0.03)))
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                if front == "batches":
                    ids = venv.recv()[-1]["env_id"]
                    venv.send(np.zeros(len(ids), dtype=np.int64), ids)
                else:
                    venv.step(np.zeros(4, dtype=np.int64))
            outcomes.append("not closed")
        except ClosedError:
            outcomes.append("ClosedError")
        except Exception as exc:  # noqa: BLE001 (the test reads it)
            outcomes.append(f"{type(exc).__name__}: {exc}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            venv.close()
        assert venv.pool._segment is None  # let go of by now
    assert outcomes == ["ClosedError"] * 12, outcomes


def test_a_dev_shm_without_fallocate_is_used_unreserved(monkeypatch) -> None:
    """posix_fallocate unsupported (a libc or filesystem without it: EOPNOTSUPP, EINVAL): the segment is
    used as before, unreserved (every pool failed to start with a bare OSError)."""

    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(shm.os, "posix_fallocate", unsupported)
    with VectorEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2) as venv:
        assert venv.pool._segment.folder == "/dev/shm"
        venv.reset(seed=0)
        venv.step(np.ones(2, dtype=np.int64))


def _block_fds() -> int:
    """File descriptors of this process open on a fastvec shared-memory block."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "fastvec" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return count


def test_a_broken_pool_closed_lets_go_of_its_block_while_the_object_lives() -> None:
    """What broke the pool (kept to name it) held views of the block through its traceback: close() left the
    mapping, and a file descriptor, open for as long as the venv object lived."""
    before = _block_fds()
    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2)
    venv.reset()
    os.kill(venv.pool.worker_pids[0], signal.SIGKILL)
    raised = None
    try:  # (not pytest.raises: the error it keeps holds the same frames; a caller that keeps it keeps the mapping)
        venv.step(np.zeros(4, dtype=np.int64))
    except WorkerDiedError as exc:
        raised = type(exc)
    assert raised is WorkerDiedError
    venv.close()
    gc.collect()  # (an error raised through a frame that caught it as a name is in a reference cycle with it)
    assert _block_fds() == before and venv.pool._segment is None


_DROPPED = """
import gc, sys, time
import psutil  # (as a user's script might: it changes the order the collector meets the cycle's objects in)
import gymnasium as gym
import numpy as np
from fastvec import SubprocVecEnv, VectorEnv
from fastvec.pool import Pool

def make():
    return gym.make("CartPole-v1")

kind = sys.argv[1]
kw = {"batch_size": 2, "step_in_parent": False} if kind.endswith("batches") else {}
# the pool, dropped unclosed, is in a reference cycle of the user's (its own make none): the collector frees it
if kind.startswith("sb3"):  # (a front-end's __del__ closes its pool: it, too, met the block unmapped)
    made = SubprocVecEnv([make] * 4, start_method="fork", num_workers=2, **kw)
elif kind == "gym":
    made = VectorEnv([make] * 4, context="fork", num_workers=2)
else:
    made = Pool([make] * 4, start_method="fork", num_workers=2, **kw)
pool = getattr(made, "pool", made)
if kind.endswith("batches"):  # (a batch in flight: close() drains it first)
    (made.async_reset(), made.send(np.zeros(2, dtype=np.int64), made.recv()[4] if made is not pool else made.recv().env_ids))
holder = {"made": made}
holder["self"] = holder
workers = [psutil.Process(pid) for pid in pool.worker_pids]
del holder, made, pool
time.sleep(0.5)  # (the workers wait on their futexes)
gc.collect()
gone, alive = psutil.wait_procs(workers, timeout=10)
print("collected", len(gone), len(alive), flush=True)
"""


@pytest.mark.parametrize("kind", ["steps", "batches", "sb3", "sb3-batches", "gym"])
def test_a_pool_dropped_unclosed_is_collected_without_a_crash(kind: str) -> None:
    """A Pool (or front-end) dropped without close() in a reference cycle, freed by the cyclic garbage collector:
    its workers end and the process goes on. The collector could finalize the shared block's SharedMemory first
    (unmapping it), and the pool's __del__, or a front-end's, then wrote its CLOSE command into the unmapped block:
    SIGSEGV. (The pool's own __del__ checked; close(), which the front-ends' call, did not.)"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.run([sys.executable, "-c", _DROPPED, kind], cwd=root, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": root})  # fmt: skip
    gone = child.stdout.split()[1:3] if child.stdout.startswith("collected") else None  # (workers ended, still alive)
    assert child.returncode == 0 and gone is not None and int(gone[0]) >= 1 and gone[1] == "0", (
        child.returncode, child.stdout, child.stderr[-2000:]
    )


class _SlowClose(envs.FailingEnv):
    """An env whose close() takes 0.6 s (a simulator shutting down) and then leaves a mark in ``marks``."""

    def __init__(self, marks: str, index: int):
        super().__init__()
        self.marks, self.index = marks, index

    def close(self):
        time.sleep(0.6)
        Path(self.marks, f"closed-{self.index}").touch()


def test_a_collected_pool_with_batches_in_flight_closes_its_envs(tmp_path) -> None:
    """A pool in the user's reference cycle, freed by the collector with a batch in flight: its __del__ drains the
    batch and closes every env. The collector clears weak references before it runs finalizers, so the batches'
    weak reference to the pool was None by then: the drain raised, the CLOSE command was never sent, and the
    workers, terminated instead, were killed in the middle of their envs' close() (3 of 4 envs closed)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        fns = [partial(_SlowClose, str(tmp_path), i) for i in range(4)]
        pool = pool_module.Pool(fns, num_workers=2, step_in_parent=False, batch_size=2, start_method="fork")
        pool.async_reset()
        pool.send(np.zeros(2, dtype=np.int64), pool.recv().env_ids)  # a batch in flight when the pool is dropped
        holder = {"pool": pool}
        holder["self"] = holder
        del pool, holder
        gc.collect()
    finally:
        if enabled:
            gc.enable()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"closed-{i}" for i in range(4)]


class _DiesUnpickled(gym.Wrapper):
    """An env whose arrival kills the process it moves into (its unpickling crashes it)."""

    def __setstate__(self, state):
        os._exit(3)


def test_a_pool_that_replaced_a_worker_an_env_moved_into_is_freed_at_once() -> None:
    """on_error="restart": a worker that died as an env moved into it is replaced and the step returns; the
    error, kept in a local of the frame its traceback holds, kept the pool in a reference cycle from then on."""
    import warnings

    def short(kind=gym.Wrapper):
        return kind(gym.make("CartPole-v1", max_episode_steps=5))

    enabled = gc.isenabled()
    gc.disable()
    try:
        fns = [short] * 3 + [partial(short, _DiesUnpickled)] + [short] * 2
        venv = SubprocVecEnv(fns, start_method="fork", num_workers=3, on_error="restart")
        venv.reset()
        assert venv.pool.request_move(1, 2) == 3  # env 3 moves into worker 2, whose process dies unpickling it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # (the restart's)
            for _ in range(600):
                venv.step(np.zeros(6, dtype=np.int64))
                if venv.pool.moves_done:
                    break
        assert venv.pool.moves_done == 1 and venv.pool.worker_restarts >= 1
        workers = [psutil.Process(pid) for pid in venv.pool.worker_pids]
        pool = weakref.ref(venv.pool)
        del venv
        assert pool() is None
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive
    finally:
        if enabled:
            gc.enable()


def _dropped_pool(kind: str) -> pool_module.Pool:
    """A Pool of ``kind``, stepped: synchronously with the monitor on, or in batches."""
    fns = [envs.make_cartpole] * 4
    if kind == "monitor":
        made = pool_module.Pool(fns, start_method="fork", num_workers=2, monitor=True, monitor_interval=0.02)
        made.reset()
        made.step(np.zeros(4, dtype=np.int64))
    else:
        made = pool_module.Pool(fns, start_method="fork", num_workers=2, batch_size=2)
        made.async_reset()
        made.send(np.zeros(2, dtype=np.int64), made.recv().env_ids)
    made.stats()
    return made


def _raise_through(case: str) -> tuple:
    """A SubprocVecEnv one of whose calls raised (``case``), caught as a user would; and the error's type."""
    fail = {"own-env": {1: "step"}, "worker-env": {3: "step"}, "hang": {3: "hang"}}.get(case.split(":")[-1], {})
    fns = [partial(envs.FailingEnv, fail.get(i)) for i in range(4)]
    options = {"step_timeout": 0.3} if case.endswith("hang") else {}
    batches = case.startswith("batches")
    if batches:
        options.update(batch_size=2, step_in_parent=False)
    if case.startswith("gym"):  # (its step logs each env's error as gymnasium does, in a frame that held it)
        venv = VectorEnv(fns, context="fork", num_workers=2, **options)
        venv.reset()
        try:
            venv.step(np.zeros(4, dtype=np.int64))
        except Exception as exc:
            return venv, type(exc)
        venv.close()
        raise AssertionError(f"{case}: nothing raised")
    venv = SubprocVecEnv(fns, start_method="fork", num_workers=2, **options)
    try:
        if batches:
            venv.async_reset()
            if case.endswith("kill"):
                os.kill(venv.pool.worker_pids[-1], signal.SIGKILL)
            end = time.monotonic() + 10  # (a hung worker is found while the other group keeps coming)
            while time.monotonic() < end:
                ids = venv.recv()[4]
                venv.send(np.zeros(2, dtype=np.int64), ids)
        else:
            venv.reset()
            if case.endswith("kill"):
                os.kill(venv.pool.worker_pids[-1], signal.SIGKILL)
                time.sleep(0.2)
            venv.step(np.zeros(4, dtype=np.int64))
    except Exception as exc:
        return venv, type(exc)
    venv.close()
    raise AssertionError(f"{case}: nothing raised")


@pytest.mark.parametrize(
    "case", ["own-env", "worker-env", "kill", "hang", "batches:worker-env", "batches:kill", "batches:hang", "gym:own-env"]
)
def test_a_pool_dropped_after_an_error_is_closed_at_once(case: str) -> None:
    """The error a call raised (an env's, a dead or hung worker's, the pool broken or not), caught and gone: the
    pool dropped unclosed is freed at once, with the cyclic collector off. Frames in the error's traceback held it
    (their ``self``) while a local of theirs, or the broken pool's kept cause, held the error: reference cycles
    that kept its workers and block until the collector ran."""
    from tests.test_async_batches import _mapped_blocks

    enabled = gc.isenabled()
    gc.disable()
    try:
        before = _mapped_blocks()
        venv, raised = _raise_through(case)
        assert raised is {"kill": WorkerDiedError, "hang": StepTimeoutError}.get(case.split(":")[-1], raised)
        block = _mapped_blocks() - before
        workers = [psutil.Process(pid) for pid in venv.pool.worker_pids if psutil.pid_exists(pid)]
        pool = weakref.ref(venv.pool)
        del venv
        assert pool() is None
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive and not (_mapped_blocks() & block)
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize("kind", ["monitor", "batches"])
def test_a_pool_dropped_unclosed_is_closed_at_once(kind: str) -> None:
    """A Pool dropped without close(), in no cycle of the user's, is freed when its last reference goes (as the
    front-ends, and gymnasium's AsyncVectorEnv, are): its workers end and its block is unmapped then, with the
    cyclic garbage collector off. Its stats sampler and asynchronous batches held it in reference cycles (only the
    collector freed it, whenever it next ran), and the monitor's thread kept it, its workers and its block, until
    the process exited."""
    from tests.test_async_batches import _mapped_blocks

    enabled = gc.isenabled()
    gc.disable()
    try:
        before = _mapped_blocks()
        pool = _dropped_pool(kind)
        block = _mapped_blocks() - before
        workers = [psutil.Process(pid) for pid in pool.worker_pids]
        del pool
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert (len(gone), len(alive)) == (len(workers), 0)
        assert block and not (_mapped_blocks() & block)
    finally:
        if enabled:
            gc.enable()


class _SlowToMake(envs.Counter):
    """Envs of the second worker (2, 3) take ``seconds`` to make, as a simulator loading."""

    seconds = 20.0

    def __init__(self, index: int = 0):
        super().__init__(index)
        if index >= 2:
            time.sleep(self.seconds)


def _ctrl_c_after_worker_starts(monkeypatch, pick=lambda process: True) -> Any:
    """A real SIGINT to this process just as multiprocessing's start() of the next fastvec worker ``pick`` takes
    returns: the worker exists, the pool has not recorded it yet. Returns the SIGINT handler it replaced."""
    import multiprocessing.process as mpp

    original = mpp.BaseProcess.start

    def start_then_ctrl_c(process):
        original(process)
        if process.name.startswith("fastvec-worker") and pick(process):
            monkeypatch.setattr(mpp.BaseProcess, "start", original)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(mpp.BaseProcess, "start", start_then_ctrl_c)
    return signal.signal(signal.SIGINT, signal.default_int_handler)  # (a background `make test &` ignores it)


def test_a_ctrl_c_just_after_a_worker_started_ends_that_worker(monkeypatch) -> None:
    """The worker existed, the pool had not recorded it: the constructor raised KeyboardInterrupt and the worker
    ran on, making its envs; the program's exit waited for it (workers are not daemonic), for good with an env
    that hangs. (The leak check fails the test on a worker left.)"""
    previous = _ctrl_c_after_worker_starts(monkeypatch, lambda process: process.name.endswith("-1"))
    try:
        began = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            SubprocVecEnv([partial(_SlowToMake, i) for i in range(4)], start_method="fork", num_workers=2)
        assert time.monotonic() - began < 10  # (its envs' 40 s were not waited for)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_in_a_worker_s_replacement_leaves_close_whole(monkeypatch) -> None:
    """on_error="restart": an interrupt as the dead worker's replacement starts left the dead (released) worker
    listed, and close() raised ValueError("process object is closed"); the replacement ran on."""
    venv = SubprocVecEnv([partial(_SlowToMake, i) for i in range(2)] + [envs.Counter] * 2, start_method="fork",
                         num_workers=2, on_error="restart")  # fmt: skip
    try:
        venv.reset()
        dead = venv.pool._remotes[0]
        os.kill(dead.pid, signal.SIGKILL)
        dead.process.join(5)
        previous = _ctrl_c_after_worker_starts(monkeypatch)
        try:
            with pytest.raises(KeyboardInterrupt):  # (the pool breaks: its state is unknown)
                venv.step(np.zeros(4, np.int64))
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        venv.close()  # (raised ValueError; the leak check fails the test on the replacement left running)
    assert venv.closed


def test_a_ctrl_c_as_a_worker_s_pidfd_is_closed_never_closes_it_twice(monkeypatch, tmp_path) -> None:
    """The pidfd was closed, then forgotten: an interrupt in between left its number to close() again, which
    raised EBADF, or closed a file the program had opened since under that number."""
    import fastvec.remote as remote_module

    venv = SubprocVecEnv([envs.Counter] * 4, start_method="fork", num_workers=2, on_error="restart")
    try:
        venv.reset()
        dead = venv.pool._remotes[0]
        if dead.pidfd < 0:
            pytest.skip("no pidfds here (Linux before 5.3)")
        target = dead.pidfd

        def close_then_ctrl_c(fd: int) -> None:
            os.close(fd)
            if fd == target:
                monkeypatch.setattr(remote_module, "os", os)
                os.kill(os.getpid(), signal.SIGINT)

        import types

        fake = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
        fake.close = close_then_ctrl_c
        os.kill(dead.pid, signal.SIGKILL)
        dead.process.join(5)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        monkeypatch.setattr(remote_module, "os", fake)
        try:
            with pytest.raises(KeyboardInterrupt):
                venv.step(np.zeros(4, np.int64))
        finally:
            monkeypatch.setattr(remote_module, "os", os)
            signal.signal(signal.SIGINT, previous)
        files = [open(tmp_path / f"f{k}", "wb") for k in range(4)]  # (the lowest free numbers: the pidfd's among them)
    finally:
        venv.close()
    for f in files:
        os.fstat(f.fileno())  # (EBADF: closed by close())
        f.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_worker_s_fork_is_held_until_the_pool_holds_the_worker(monkeypatch, signum) -> None:
    """A SIGINT (or a SIGTERM whose handler raises, as ppo.train's) just after os.fork() in multiprocessing's
    start(), before it recorded the child: no handle was left to end the worker, which ran on (and a pidfd opened
    for it then leaked). The signal is held until the pool has recorded the worker, and then handled: the worker is
    ended. (The leak checks fail the test on a worker or a descriptor left.)"""
    import multiprocessing.popen_fork as popen_fork

    forked: list[int] = []

    class ForkThenCtrlC:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fork(self) -> int:
            pid = os.fork()
            if pid:  # (the parent, just after the fork)
                forked.append(pid)
                monkeypatch.setattr(popen_fork, "os", os)
                os.kill(os.getpid(), signum)
            return pid

    def stop(signum: int, frame: Any) -> None:  # (as ppo.train's SIGTERM handler: end the run)
        raise SystemExit(f"signal {signum}")

    previous = signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else stop)
    monkeypatch.setattr(popen_fork, "os", ForkThenCtrlC())
    try:
        with pytest.raises(KeyboardInterrupt if signum == signal.SIGINT else SystemExit):
            SubprocVecEnv([partial(_SlowToMake, i) for i in range(4)], start_method="fork", num_workers=2)
    finally:
        signal.signal(signum, previous)
    assert forked  # (and the worker ended: the leak check)


def test_every_ctrl_c_held_during_a_worker_s_start_reaches_the_handler(monkeypatch) -> None:
    """Two Ctrl-Cs while a worker starts reached a handler that does not raise (a program counting them) once."""
    import multiprocessing.process as mpp

    original, seen = mpp.BaseProcess.start, []

    def start_then_two_ctrl_cs(process):
        original(process)
        if process.name.startswith("fastvec-worker"):
            monkeypatch.setattr(mpp.BaseProcess, "start", original)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(mpp.BaseProcess, "start", start_then_two_ctrl_cs)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with SubprocVecEnv([envs.Counter] * 4, start_method="fork", num_workers=2) as venv:
            venv.reset()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIGINT] * 2


class _InterruptedClose(WithHelper):
    """Env 2's close() raises its own KeyboardInterrupt, after ending its helper."""

    def close(self):
        super().close()
        if self.index == 2:
            raise KeyboardInterrupt("the env's own, in close")


def test_a_worker_sent_sigterm_closes_its_envs_after_one_s_keyboard_interrupt(tmp_path) -> None:
    """On SIGTERM a worker closes its envs quietly: an env's KeyboardInterrupt there ended the loop, the envs after
    it were never closed (their helpers ran on), and the worker died with exit code 1, not of the signal."""
    venv = SubprocVecEnv([partial(_InterruptedClose, str(tmp_path), i) for i in range(4)], start_method="fork",
                         num_workers=2)  # fmt: skip
    venv.reset()
    os.kill(venv.pool.worker_pids[-1], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob("*.closed"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(WorkerDiedError, match="SIGTERM"):
        venv.step(np.zeros(4, dtype=np.int64))
    assert sorted(int(p.stem) for p in tmp_path.glob("*.closed")) == [2, 3]
    venv.close()
    _assert_every_env_closed(tmp_path)


def test_signals_held_during_a_worker_s_start_all_reach_their_handlers_and_let_the_pool_go(monkeypatch) -> None:
    """A Ctrl-C and a SIGTERM held while a worker started: the Ctrl-C's KeyboardInterrupt ended the re-delivery,
    and the SIGTERM's handler (ppo.train's writes its stop message) never ran; the held frames kept the pool in a
    reference cycle, so a pool dropped unclosed was not closed at once."""
    import multiprocessing.process as mpp

    original, seen = mpp.BaseProcess.start, []

    def start_then(*signums):
        def start(process):
            original(process)
            if process.name.startswith("fastvec-worker"):
                monkeypatch.setattr(mpp.BaseProcess, "start", original)
                for signum in signums:
                    os.kill(os.getpid(), signum)

        return start

    int_before = signal.signal(signal.SIGINT, signal.default_int_handler)
    term_before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        monkeypatch.setattr(mpp.BaseProcess, "start", start_then(signal.SIGINT, signal.SIGTERM))
        with pytest.raises(KeyboardInterrupt):
            SubprocVecEnv([envs.Counter] * 4, start_method="fork", num_workers=2)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [])  # (the interpreter's next look at its signals)
        assert seen == [signal.SIGTERM]
        # a signal whose handler does not raise: the pool, dropped unclosed with the collector off, closes at once
        monkeypatch.setattr(mpp.BaseProcess, "start", start_then(signal.SIGTERM))
        gc.disable()
        try:
            venv = SubprocVecEnv([envs.Counter] * 4, start_method="fork", num_workers=2)
            pool = weakref.ref(venv.pool)
            del venv
            assert pool() is None
        finally:
            gc.enable()
        assert seen == [signal.SIGTERM] * 2
        # both handlers are this test's again (one left holding swallowed every later signal of its kind)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [])
        assert seen == [signal.SIGTERM] * 3
    finally:
        signal.signal(signal.SIGINT, int_before)
        signal.signal(signal.SIGTERM, term_before)


def test_a_worker_ended_in_its_start_dies_of_sigterm_under_a_sigterm_handler(monkeypatch) -> None:
    """With a Python SIGTERM handler in the program (ppo.train has one), a forked worker inherited the handler that
    holds signals during the start: the SIGTERM that ends a worker whose start a Ctrl-C cut short was swallowed,
    and the worker died of SIGKILL a second later."""
    import multiprocessing.process as mpp

    original, original_kill, started, killed = mpp.BaseProcess.start, mpp.BaseProcess.kill, [], []

    def start_then_ctrl_c(process):
        original(process)
        if process.name.startswith("fastvec-worker"):
            started.append(process)
            monkeypatch.setattr(mpp.BaseProcess, "start", original)
            os.kill(os.getpid(), signal.SIGINT)

    def kill(process):
        killed.append(process.name)
        original_kill(process)

    monkeypatch.setattr(mpp.BaseProcess, "start", start_then_ctrl_c)
    monkeypatch.setattr(mpp.BaseProcess, "kill", kill)
    int_before = signal.signal(signal.SIGINT, signal.default_int_handler)
    term_before = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        with pytest.raises(KeyboardInterrupt):
            SubprocVecEnv([envs.Counter] * 4, start_method="fork", num_workers=2)
    finally:
        signal.signal(signal.SIGINT, int_before)
        signal.signal(signal.SIGTERM, term_before)
    assert started and killed == []  # (SIGTERM ended it: no SIGKILL a second later)


class _Forking(envs.Counter):
    def forking(self) -> list:
        from fastvec import remote

        return list(remote._FORKING)


def test_a_worker_does_not_carry_its_start_s_fork_flag(monkeypatch) -> None:
    """The fork hooks act while Remote.spawn is in Process.start, flagged in a module list that the forked worker
    got a copy of, still set: a process its env forked later had its signal handlers reset by the hooks."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (a Python handler: the start holds it)
    try:
        with SubprocVecEnv([_Forking] * 4, start_method="fork", num_workers=2) as venv:
            assert venv.env_method("forking") == [[]] * 4
    finally:
        signal.signal(signal.SIGINT, previous)


_KEPT_IN_A_CHILD: list = []


def _leaves_a_pool_open(how: str) -> None:
    """A multiprocessing child's target that ends with a pool still open: kept in a global (a cache of envs), or a
    local of a frame the target's exception keeps."""
    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2)
    venv.reset()
    if how == "global":
        _KEPT_IN_A_CHILD.append(venv)
        return
    raise RuntimeError("training failed (the pool is a local of this frame)")


@pytest.mark.parametrize("how", ["global", "raised"])
def test_a_multiprocessing_child_ending_with_a_pool_open_exits(how: str) -> None:
    """A multiprocessing child ends by joining its non-daemonic children, and skips atexit, where fastvec closed the
    pools left open: the child's workers waited for a command, and the child for them, for good (hunt109 bug 2; SB3's
    and gymnasium's exit at once). The open pools are now closed among multiprocessing's own exit finalizers."""
    child = multiprocessing.get_context("fork").Process(target=_leaves_a_pool_open, args=(how,))
    child.start()
    child.join(20)
    if child.exitcode is None:
        for process in psutil.Process(child.pid).children(recursive=True):
            process.kill()
        child.kill()
        child.join()
    assert child.exitcode == (0 if how == "global" else 1)


def test_a_pool_a_fork_closes_before_its_hook_disowned_it_is_left_to_its_process() -> None:
    """The cyclic collector can free a pool in a forked child inside the fork's hooks, before fastvec's disowned the
    child's copy: its close() then stopped the parent's workers and closed the child's copies of the parent's envs
    (hunt109 bug 1). Staged by undoing the disowning in the child; a copy in another process than the one that made
    the pool is left alone, whatever the hook did."""
    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2)
    try:
        venv.reset()
        pid = os.fork()
        if pid == 0:  # (the child: ends with os._exit whatever happens)
            try:
                venv.pool._foreign = False  # (as before the fork's hook ran)
                venv.pool.close()
                venv.pool._foreign = False
                venv.pool.terminate()
                venv.pool._foreign = False
                venv.pool.__del__()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        venv.step(np.zeros(4, np.int64))  # (its workers were SIGTERMed by the child's close())
    finally:
        venv.close()


class _HoldsALock:
    """A factory that captures what cannot be pickled (a threading lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self) -> gym.Env:
        return envs.make_cartpole()


@pytest.mark.parametrize("step_in_parent", [True, False])
def test_an_unpicklable_factory_is_refused_under_forkserver_whichever_process_steps_its_env(step_in_parent: bool) -> None:
    """Under spawn and forkserver a worker's factory must pickle (as SB3's and gymnasium's must); one of the calling
    process's envs was called as it is, so that the same program started where the default layout steps env 0 in
    the calling process and not where a worker does (one core; hunt109 bug 3)."""
    with pytest.raises(TypeError, match="env factory 0 cannot be pickled for start_method='forkserver'"):
        SubprocVecEnv([_HoldsALock(), envs.make_cartpole], start_method="forkserver", num_workers=1 + step_in_parent,
                      step_in_parent=step_in_parent)  # fmt: skip


_SIMULATOR_DOWN = [False]  # (read in the calling process: its envs are 0 and 1)


class _FailsWhileDown(envs.FailingEnv):
    def __init__(self) -> None:
        if _SIMULATOR_DOWN[0]:
            raise RuntimeError("cannot make the env now (a simulator is down)")
        super().__init__()

    def step(self, action):  # type: ignore[no-untyped-def]
        if _SIMULATOR_DOWN[0]:
            raise ValueError("step failed")
        return super().step(action)


def test_a_pool_whose_own_envs_could_not_be_made_again_is_freed_without_the_collector() -> None:
    """Two of the calling process's envs raise in one step and cannot be made again (on_error="restart", NEXT_STEP):
    the error's tracebacks held a list of the earlier env's errors, a cycle through the pool's frames, so that the
    pool (its block, its workers) waited for the cyclic collector, after close() too (hunt109 bug 4)."""
    gc.collect()
    gc.disable()
    try:
        _SIMULATOR_DOWN[0] = False
        venv = VectorEnv([_FailsWhileDown] * 4, context="fork", num_workers=2, on_error="restart")
        venv.reset(seed=0)
        assert venv.pool._local is not None and venv.pool.shard_envs[0] == range(0, 2)
        _SIMULATOR_DOWN[0] = True
        with pytest.raises(Exception, match="cannot make the env now"):
            venv.step(np.zeros(4, np.int64))
        ref = weakref.ref(venv.pool)
        venv.close()
        del venv
        assert ref() is None
    finally:
        _SIMULATOR_DOWN[0] = False
        gc.enable()


def test_the_exit_hook_closes_the_calling_process_s_own_envs(tmp_path) -> None:
    """fastvec's exit hook (atexit, and multiprocessing's finalizer) closing a pool left open: its frame has no `self`,
    and was taken for the pool's own code, so that close() took itself for a signal handler's and left this process's
    envs unclosed and the block mapped (hunt113 bug 2)."""
    venv = SubprocVecEnv([partial(CountsCloses, str(tmp_path), i, 0.0) for i in range(4)], start_method="fork",
                         num_workers=2)  # fmt: skip
    venv.reset()
    pool_module._close_live_pools()
    assert venv.pool.closed and venv.pool._segment is None
    assert _closes(tmp_path) == {0: 1, 1: 1, 2: 1, 3: 1}
