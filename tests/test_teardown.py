"""Envs that run helper processes (a simulator, a game server) end them in close(). Every way a pool
can end must close such envs, or their helpers outlive the run: a worker killed before its envs
are closed leaves their helpers to init, where no test of child processes sees them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import pytest

from fastvec import SubprocVecEnv, VectorEnv
from fastvec.errors import StepTimeoutError, WorkerDiedError
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

    def step(self, action):
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
    venv.pool.step_timeout = 0.5  # (once started, as above)
    try:
        venv.reset()
        first = _helpers(tmp_path)
        (old_pid,) = venv.pool.worker_pids
        venv.env_method("hang", indices=[3])
        with pytest.warns(RuntimeWarning, match="worker 1 .* died .*restarted"):
            _, _, dones, infos = venv.step(np.zeros(4, dtype=np.int64))
        assert dones.tolist() == [False, False, True, True] and infos[3]["TimeLimit.truncated"]
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
