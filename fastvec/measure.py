"""Measuring on this machine: one home for what the tuner and every benchmark share.

- ``run_child``: run a command in a child process in its own session, with a timeout,
  and kill the whole session when it returns (what a measured engine leaves behind must
  not load the next measurement);
- ``child_main`` / ``child_result``: the one-line ``RESULT <json>`` protocol between a
  measuring child and its parent (a hang or crash becomes a result with its status);
- ``time_steps``: the timed loop (warm-up, then the median of repeated runs) with the
  machine's other load recorded, so rates from the tuner and the benchmarks compare;
- ``tree_cpu_seconds`` / ``busy_cpu_seconds``: CPU accounting;
- ``cores`` and ``machine_facts``: what a result is printed beside.

Importing this module is light (standard library only); psutil is imported where used.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "ChildRun",
    "RESULT_PREFIX",
    "busy_cpu_seconds",
    "child_environ",
    "child_main",
    "child_result",
    "cores",
    "cpu_model",
    "ends_within",
    "kill_session",
    "machine_facts",
    "memory_gib",
    "physical_cores",
    "python_argv",
    "repository_root",
    "run_child",
    "time_steps",
    "tree_cpu_seconds",
]

RESULT_PREFIX = "RESULT "


# -- machine facts --------------------------------------------------------------------------------
def cores() -> int:
    """Cores this process may run on (its affinity, as it was started), not the machine's count: not the one core
    a pool's pin="spread" gives the calling thread while it is open (a search started beside such a pool
    planned for one core)."""
    from fastvec import placement

    return len(placement.allowed_cores())


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo, else ``lscpu``, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001 - a fact we cannot read is None
        return None


def memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001
        return None


def machine_facts(packages: Iterable[str] = ()) -> dict[str, Any]:
    """What a result is printed beside: host, cpu, cores (this process's affinity),
    physical_cores, memory_gib, python, platform, fastvec (version), kernels ("cython" or
    "python"), then ``packages``' versions (each imported; a package that fails to import
    is "not installed (<exception type>)")."""
    import fastvec

    facts: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": cores(),
        "physical_cores": physical_cores(),
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fastvec": fastvec.__version__,
        "kernels": fastvec.KERNELS,
    }
    for package in packages:
        try:
            module = __import__(package)
            facts[package] = getattr(module, "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - a missing peer is a fact too
            facts[package] = f"not installed ({type(exc).__name__})"
    return facts


# -- CPU accounting and the timed loop ------------------------------------------------------------
def tree_cpu_seconds(proc: Any) -> float:
    """CPU seconds used so far by ``proc`` (a psutil.Process) and all its descendants."""
    import psutil

    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all cores), counting as busy
    the time a virtual machine's hypervisor gave its cores to someone else (steal): a measurement
    that lost its cores to the host is as disturbed as one that shared them with a process."""
    import psutil

    t = psutil.cpu_times()
    return (
        t.user
        + t.system
        + getattr(t, "nice", 0.0)
        + getattr(t, "irq", 0.0)
        + getattr(t, "softirq", 0.0)
        + getattr(t, "steal", 0.0)
    )


def time_steps(step: Callable[[Any], Any], batches: Any, num_envs: int, seconds: float, repeats: int) -> dict:
    """Time ``step(batch)`` over pre-made action batches (``batches[k % len(batches)]``): a
    warm-up, then ``repeats`` runs of ``seconds`` each. Returns ``rate`` (env steps/s, the
    median), ``rates`` (each run), ``cpu_used_by_run`` (CPU seconds per wall second of this
    process's tree) and ``other_load`` (the share of the machine's CPU that processes outside
    this tree, or the hypervisor (steal), used meanwhile). The tuner and ``benchmarks.vec_env`` both measure with this,
    so their rates compare."""
    import psutil

    count = len(batches)
    k = 0
    end = time.perf_counter() + min(0.3, seconds / 3)
    while time.perf_counter() < end:  # warm-up
        step(batches[k % count])
        k += 1
    me = psutil.Process()
    cpu0, busy0, wall0 = tree_cpu_seconds(me), busy_cpu_seconds(), time.perf_counter()
    rates = []
    for _ in range(repeats):
        steps, start = 0, time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(8):
                step(batches[k % count])
                k += 1
            steps += 8
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(steps * num_envs / (now - start))
    wall = time.perf_counter() - wall0
    cpu_tree = tree_cpu_seconds(me) - cpu0
    return {
        "rate": statistics.median(rates),
        "rates": rates,
        "cpu_used_by_run": cpu_tree / wall,
        "other_load": max(0.0, (busy_cpu_seconds() - busy0 - cpu_tree) / (wall * psutil.cpu_count())),
    }


# -- child processes ------------------------------------------------------------------------------
def kill_session(session_id: int) -> None:
    """SIGKILL every process of session ``session_id``: its process group, and any process
    of the session that moved to a group of its own. What an engine failed to stop must not
    load the next measurement. A session already gone is not an error."""
    if session_id <= 1 or session_id == os.getsid(0):
        raise ValueError(f"refusing to kill session {session_id}: it is this process's own (or init's)")
    try:
        os.killpg(session_id, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in _session_members(session_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _session_members(session_id: int) -> list[int]:
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - not Linux: the process group is all we can reach
        return members
    for entry in entries:
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session_id:
                    members.append(int(entry))
            except OSError:
                pass
    return members


@dataclass(frozen=True)
class ChildRun:
    """How a child process ended: its exit status (negative: killed by that signal; a child
    killed on timeout reads -9), its output, its wall seconds, whether it ran past the timeout."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    def stderr_tail(self, lines: int = 3) -> str:
        return " | ".join(self.stderr.strip().splitlines()[-lines:])


def child_environ(*paths: str | os.PathLike, **variables: str | None) -> dict[str, str]:
    """This process's environment with ``paths`` put first on PYTHONPATH and ``variables`` set
    (a variable given as None is removed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*map(str, paths), env.get("PYTHONPATH", "")) if p)
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_child(
    argv: Sequence[str],
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> ChildRun:
    """Run ``argv`` in a child process in its own session; wait for it at most ``timeout``
    seconds; then SIGKILL the whole session, whatever the outcome (also on KeyboardInterrupt).

    Output goes to temporary files, not pipes, so a grandchild that keeps the child's stdout
    open cannot make a finished child look hung. ``env``: the child's environment (default:
    this process's, see ``child_environ``); ``cwd``: its working directory."""
    from fastvec import placement

    previous = _raise_on_termination()
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            began = time.perf_counter()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_dies_with(os.getpid(), placement.allowed_cores()),
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                seconds = time.perf_counter() - began
                kill_session(proc.pid)
                proc.wait()
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
    except _Terminated as stop:  # the session is killed: now end as the signal would have ended us
        _restore(previous)
        os.kill(os.getpid(), stop.args[0])
        raise SystemExit(128 + stop.args[0]) from None
    finally:
        _restore(previous)
    return ChildRun(proc.returncode, stdout, stderr, seconds, timed_out)


class _Terminated(BaseException):
    """SIGTERM or SIGHUP while ``run_child`` waited (its ``finally`` must kill the child's session)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(signum)


def _raise_on_termination() -> dict:
    """A job scheduler's SIGTERM, a closed terminal's SIGHUP: where they would kill this process outright
    (no handler of the caller's own), they raise instead, so the child's session is killed first (it is
    a session of its own: neither signal reaches it)."""
    previous: dict = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, _raise_terminated)
    return previous


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    previous.clear()


def _dies_with(parent: int, cores: list[int] | None = None) -> Callable[[], None] | None:
    """The child's SIGKILL when this process dies, however (a SIGKILL too): Linux's parent-death signal; and
    ``cores``, this process's as it was started (a pool's pin="spread" gives the calling thread one core, which a
    child would inherit: the tuner's candidates measured on one core)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None

    def set_it() -> None:
        prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # (the parent died before that)
            os._exit(1)
        if cores:
            try:
                os.sched_setaffinity(0, cores)
            except OSError:
                pass

    return set_it


def child_result(run: ChildRun, timeout: float | None = None) -> dict:
    """The last ``RESULT <json>`` line a child printed, or a result saying why there is none:
    ``{"status": "timeout", ...}`` or ``{"status": "crashed", "reason": "exit code N: <stderr tail>"}``. A result
    printed by a child that then outlived its time (closing what it measured) stands, with a note saying so."""
    limit = f"{timeout:g} s" if timeout is not None else "the time limit"
    lines = [line for line in run.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        if run.timed_out:
            return {"status": "timeout", "reason": f"no result within {limit}"}
        return {"status": "crashed", "reason": f"exit code {run.returncode}: {run.stderr_tail()}"}
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if run.timed_out and "note" not in result:
        result["note"] = f"the measuring process did not end within {limit} after its result (closing what it measured)"
    return result


CLOSE_WAIT = 10.0  # seconds a child waits for what it measured to close, once its result is printed


def ends_within(call: Callable[[], Any], seconds: float) -> bool:
    """Whether ``call()``, run in a daemon thread, returned within ``seconds`` (one that hangs is left there)."""
    running = threading.Thread(target=call, daemon=True)
    running.start()
    running.join(seconds)
    return not running.is_alive()


def child_main(compute: Callable[[dict], dict], argument: str) -> NoReturn:
    """The child's side: ``compute(json.loads(argument))``, printed as one ``RESULT`` line (an
    exception becomes ``{"status": "error", "reason", "traceback"}``, its reason the message's first line);
    then exit at once, waiting on nothing an engine leaked (the parent kills the session). A result's ``"then"``
    (a callable: closing what was measured) runs after the line is printed, for at most CLOSE_WAIT seconds; one
    that does not return by then is said in a second line, with the result (an env whose ``close()`` hangs
    cost the measurement it had made)."""
    spec = json.loads(argument)
    then = None
    try:
        result = compute(spec)
        then = result.pop("then", None)
    except Exception as exc:  # noqa: BLE001 - a failing measurement is a result
        message = next((line for line in str(exc).splitlines() if line.strip()), "")
        result = {"status": "error", "reason": f"{type(exc).__name__}: {message}".rstrip(": "),
                  "traceback": traceback.format_exc()}  # fmt: skip
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    if then is not None and not ends_within(then, CLOSE_WAIT):
        note = f"closing what was measured did not end within {CLOSE_WAIT:g} s (an env's close() that hangs?)"
        print(RESULT_PREFIX + json.dumps({**result, "note": note}), flush=True)
    os._exit(0)


def python_argv(module: str, *args: str) -> list[str]:
    """``python -W ignore -m module args...`` with this interpreter."""
    return [sys.executable, "-W", "ignore", "-m", module, *args]


def repository_root() -> Path:
    """The folder holding this fastvec package (a source checkout's root)."""
    return Path(__file__).resolve().parent.parent
