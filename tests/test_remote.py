"""A worker process seen from the pool (fastvec.remote): death and hangs are noticed, never waited on for ever."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time

import pytest

from fastvec.errors import StepTimeoutError, WorkerDiedError
from fastvec.remote import Remote, pickle_factories

pytestmark = pytest.mark.one_pass  # a worker's process, pipe and start (the forkserver's preloads): no kernel


def _sleep_then_exit(conn, seconds: float, code: int) -> None:
    time.sleep(seconds)
    os._exit(code)


def _start(seconds: float, code: int) -> Remote:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_sleep_then_exit, args=(child, seconds, code))
    process.start()
    child.close()
    return Remote(3, range(6, 8), process, parent)


def test_recv_reports_a_dead_worker_with_its_exit_code() -> None:
    remote = _start(0.0, 7)
    try:
        with pytest.raises(WorkerDiedError, match=r"worker 3 \(envs 6..7\) died during 'step' with exit code 7"):
            remote.recv("step")
    finally:
        remote.end()
        remote.release()


@pytest.mark.serial
def test_recv_times_out_on_a_silent_worker() -> None:
    remote = _start(30.0, 0)
    try:
        began = time.monotonic()
        with pytest.raises(StepTimeoutError, match="did not finish within 0.2 s"):
            remote.recv("reset", timeout=0.2)
        assert time.monotonic() - began < 2.0
    finally:
        remote.end()
        remote.release()


def test_unpicklable_factories_are_named() -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(TypeError, match="env factory 5 cannot be pickled for start_method='spawn'") as raised:
        pickle_factories([lambda: None, lambda: lock], 4, "spawn")
    # (the advice is where the cause is: what the factory captures; a lambda itself pickles)
    assert "lock" in str(raised.value) and "create it inside the factory" in str(raised.value)


def test_forkserver_preloads_the_worker_s_modules_where_it_finds_the_program_s_copies() -> None:
    from fastvec import remote

    assert remote._forkserver_finds_the_program_s_copies()  # (this checkout, as the suite runs it)
    assert set(remote._PRELOAD) == {"numpy", "gymnasium", "fastvec._forkserver"}


_FORKSERVER_PROGRAM = textwrap.dedent(
    """
    import sys
    if sys.argv[1] != "-":
        sys.path.insert(0, sys.argv[1])  # the program's own gymnasium, first on its path
    import gymnasium as gym
    import numpy as np

    class Where(gym.Wrapper):
        def __init__(self):
            super().__init__(gym.make("CartPole-v1"))

        def where(self):
            return gym.__file__, float(np.random.rand())

        def forks_keep_a_seeded_state(self):
            import os
            np.random.seed(123)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # (a helper process the env forks: it draws what its parent would)
                os.write(w, repr(float(np.random.rand())).encode())
                os._exit(0)
            os.waitpid(pid, 0)
            return float(os.read(r, 100)) == float(np.random.rand())

    if __name__ == "__main__":
        for front in sys.argv[2:]:  # (pools made one after another, forkserver's workers each)
            if front == "sb3":
                from stable_baselines3.common.vec_env import SubprocVecEnv
                venv = SubprocVecEnv([Where] * 2, start_method="forkserver")
            else:
                from fastvec import SubprocVecEnv
                venv = SubprocVecEnv([Where] * 2, start_method="forkserver", num_workers=2, step_in_parent=False)
            print(repr([*venv.env_method("where"), *venv.env_method("forks_keep_a_seeded_state")]))
            venv.close()
    """
)


def _forkserver_program(tmp_path, *fronts: str, vendor: str | None = None) -> list:
    """What each env of each front's forkserver pool says (its gymnasium's file, a draw from np.random), the pools
    made one after another in one program; ``vendor``: a folder the program puts first on its path."""
    script = tmp_path / "program.py"
    script.write_text(_FORKSERVER_PROGRAM)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, str(script), vendor or "-", *fronts], capture_output=True, text=True, timeout=120, cwd=root,
        env={**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [eval(line) for line in done.stdout.strip().splitlines()]


def test_forkserver_workers_and_later_pools_draw_from_numpy_generators_of_their_own() -> None:
    """The forkserver preloads numpy, which seeds its global generator once, as it is imported: every worker forked
    from it drew the same numbers, and so did those of an SB3 forkserver pool made later in the program (whose
    workers, with nothing preloaded, import numpy themselves: each seeded anew). A process a worker's env forks
    keeps its parent's state, np.random.seed(123) included (the first fix reseeded it too)."""
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        ours, sb3s = _forkserver_program(pathlib.Path(folder), "fastvec", "sb3")
    draws = [draw for _, draw in ours[:2]] + [draw for _, draw in sb3s[:2]]
    assert len(set(draws)) == 4, draws
    # (only the forkserver's own children get a state of their own: a process an env forks keeps its parent's)
    assert ours[2:] == sb3s[2:] == [True, True]


def test_forkserver_workers_run_the_program_s_own_gymnasium(tmp_path) -> None:
    """A program whose path puts its own gymnasium first (a vendored copy): the forkserver, started with the
    interpreter's default path before CPython 3.13.1, preloaded the other one, and the workers ran it (SB3's
    forkserver workers, which preload nothing, run the program's)."""
    import shutil

    import gymnasium

    vendor = tmp_path / "vendor"
    shutil.copytree(os.path.dirname(gymnasium.__file__), vendor / "gymnasium", ignore=shutil.ignore_patterns("__pycache__"))
    (ours,) = _forkserver_program(tmp_path, "fastvec", vendor=str(vendor))
    assert [file for file, _ in ours[:2]] == [str(vendor / "gymnasium" / "__init__.py")] * 2


def test_the_forkserver_imports_the_program_s_own_fastvec(tmp_path) -> None:
    """A program that puts a copy of fastvec first on its sys.path: the forkserver (started without the program's
    path before CPython 3.13.1) preloaded the worker's modules from wherever the default path found fastvec, and
    the workers ran another copy than the program's (with another version, the pool failed to start, unclearly)."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "fastvec", tmp_path / "fastvec", ignore=shutil.ignore_patterns("__pycache__"))
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import fastvec, gymnasium as gym

        class Where(gym.Wrapper):
            def __init__(self):
                super().__init__(gym.make("CartPole-v1"))

            def where(self):
                return sys.modules["fastvec.worker"].__file__

        if __name__ == "__main__":
            with fastvec.SubprocVecEnv([Where] * 2, num_workers=2, step_in_parent=False) as venv:  # (forkserver)
                print(fastvec.__file__, *venv.env_method("where"))
        """
    )
    script = tmp_path / "program.py"
    script.write_text(code)
    # (run from "/", no PYTHONPATH: the forkserver's own path, a -c program's, starts with its working directory)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120, cwd="/", env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = done.stdout.split()
    assert files[0] == str(tmp_path / "fastvec" / "__init__.py")
    assert files[1:] == [str(tmp_path / "fastvec" / "worker.py")] * 2

