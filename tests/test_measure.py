"""fastvec.measure: the child runner leaves nothing behind, the result protocol, the timed loop, machine facts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from fastvec import measure
from fastvec.measure import ChildRun, child_result, run_child

pytestmark = pytest.mark.one_pass  # the measuring helpers (children, clocks, machine facts): no kernels


def _gone(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` has exited (a zombie waiting for init to reap it counts as exited)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def test_run_child_on_timeout_kills_the_child_and_its_grandchild():
    # the shell starts a grandchild in the background, prints its pid, then outlives the timeout
    run = run_child(["sh", "-c", "sleep 60 & echo $!; sleep 60"], timeout=2.0)
    assert run.timed_out and run.returncode == -9
    assert 2.0 <= run.seconds < 10.0
    grandchild = int(run.stdout.split()[0])
    assert _gone(grandchild), "the grandchild outlived run_child"
    assert child_result(run, 2.0) == {"status": "timeout", "reason": "no result within 2 s"}


def test_run_child_kills_a_grandchild_in_its_own_process_group_and_does_not_wait_on_its_output():
    # the grandchild moves to a process group of its own (so killpg misses it) and keeps the
    # child's stdout open: the child's exit must still end the run at once, and the session sweep kill it
    code = textwrap.dedent(
        """
        import os, subprocess, sys
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=os.setpgrp)
        print(p.pid, flush=True)
        """
    )
    run = run_child([sys.executable, "-c", code], timeout=60.0)
    assert not run.timed_out and run.returncode == 0, run
    assert run.seconds < 30.0
    assert _gone(int(run.stdout.split()[0])), "the grandchild in its own process group outlived run_child"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_run_childs_session_does_not_outlive_its_parent(tmp_path, signum):
    """A scheduler's SIGTERM, a closed terminal's SIGHUP, a SIGKILL of the tuner: the child runs in a
    session of its own, which none of them reaches; it (and, but for SIGKILL, its own children) went on."""
    pids = tmp_path / "pids"
    child = f"import os, subprocess, sys, time; g = subprocess.Popen(['sleep', '60']); open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{g.pid}}'); time.sleep(60)"
    parent = subprocess.Popen(
        # (the signals' default action, whatever this process inherited: under nohup, SIGHUP is ignored)
        [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
         f"signal.signal(signal.SIGTERM, signal.SIG_DFL); from fastvec.measure import run_child; run_child([sys.executable, '-c', {child!r}], 60.0)"],
        env=measure.child_environ(measure.repository_root()),
    )
    try:
        deadline = time.monotonic() + 30
        while not (pids.exists() and len(pids.read_text().split()) == 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        child_pid, grandchild = map(int, pids.read_text().split())
        parent.send_signal(signum)
        assert parent.wait(10) == -signum  # (it still ends of the signal)
        assert _gone(child_pid), "the measuring child outlived its parent"
        if signum != signal.SIGKILL:
            assert _gone(grandchild), "the child's session outlived its parent"
    finally:
        parent.kill()
        for pid in map(int, pids.read_text().split()) if pids.exists() else ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_run_child_passes_environment_and_working_directory(tmp_path):
    env = measure.child_environ(tmp_path, FASTVEC_MEASURE_TEST="yes", PYTHONWARNINGS=None)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path) and "PYTHONWARNINGS" not in env
    code = "import os, sys; print(os.environ['FASTVEC_MEASURE_TEST'], os.getcwd()); sys.exit(3)"
    run = run_child([sys.executable, "-c", code], timeout=60.0, env=env, cwd=tmp_path)
    assert run.returncode == 3 and not run.timed_out
    assert run.stdout.split() == ["yes", str(tmp_path)]


def test_result_protocol_end_to_end():
    ok = "from fastvec.measure import child_main; child_main(lambda spec: {'status': 'ok', 'twice': 2 * spec['x']}, '{\"x\": 21}')"
    run = run_child([sys.executable, "-c", ok], timeout=60.0)
    assert child_result(run, 60.0) == {"status": "ok", "twice": 42}
    failing = "from fastvec.measure import child_main; child_main(lambda spec: 1 / 0, '{}')"
    result = child_result(run_child([sys.executable, "-c", failing], timeout=60.0), 60.0)
    assert result["status"] == "error" and result["reason"].startswith("ZeroDivisionError")
    assert "ZeroDivisionError" in result["traceback"]


def test_a_child_without_a_result_line_is_crashed_with_its_stderr_tail():
    run = ChildRun(returncode=-11, stdout="noise\n", stderr="a\nb\nc\nd\n", seconds=0.1, timed_out=False)
    assert child_result(run) == {"status": "crashed", "reason": "exit code -11: b | c | d"}
    last = ChildRun(0, 'RESULT {"n": 1}\nRESULT {"n": 2}\n', "", 0.1, False)
    assert child_result(last) == {"n": 2}


def test_kill_session_refuses_this_process_session():
    with pytest.raises(ValueError, match="own"):
        measure.kill_session(os.getsid(0))
    measure.kill_session(2**22 + 12345)  # no such session: nothing to do, no error


def test_time_steps_rate_is_steps_times_envs_per_second():
    def one_ms_step(batch):  # a step that takes at least 1 ms, whatever the load
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass

    batches = np.zeros((4, 3), dtype=np.int64)
    timing = measure.time_steps(one_ms_step, batches, num_envs=3, seconds=0.1, repeats=2)
    assert len(timing["rates"]) == 2 and timing["rate"] == pytest.approx(np.median(timing["rates"]))
    assert 0 < timing["rate"] <= 3 * 1000  # never more than num_envs per 1 ms step
    assert timing["rate"] > 3 * 1000 / 20  # and not absurdly slow
    assert 0.0 <= timing["other_load"] <= 1.0
    assert timing["cpu_used_by_run"] > 0.0

    noop = measure.time_steps(lambda batch: None, batches, num_envs=3, seconds=0.05, repeats=1)
    assert noop["rate"] > 3 * 10_000  # a no-op step runs far faster than 10k calls/s


def test_cpu_accounting_sees_work_done():
    me = psutil.Process()
    tree0, busy0 = measure.tree_cpu_seconds(me), measure.busy_cpu_seconds()
    end = time.process_time() + 0.1
    while time.process_time() < end:
        pass
    assert measure.tree_cpu_seconds(me) - tree0 >= 0.05
    assert measure.busy_cpu_seconds() - busy0 >= 0.05


def test_machine_facts_have_the_keys():
    import fastvec

    facts = measure.machine_facts(("numpy", "no_such_package_for_fastvec"))
    assert list(facts)[:9] == [
        "host",
        "cpu",
        "cores",
        "physical_cores",
        "memory_gib",
        "python",
        "platform",
        "fastvec",
        "kernels",
    ]
    assert facts["cores"] == measure.cores() == len(os.sched_getaffinity(0))
    assert facts["cpu"] and facts["cpu"] != "unknown"
    assert facts["fastvec"] == fastvec.__version__ and facts["kernels"] == fastvec.KERNELS
    assert facts["numpy"] == np.__version__
    assert facts["no_such_package_for_fastvec"] == "not installed (ModuleNotFoundError)"
    assert facts["memory_gib"] > 0
    json.dumps(facts)  # written into result files as is


def test_time_stolen_by_the_hypervisor_counts_as_busy(monkeypatch) -> None:
    """On a VM the host can take the cores (steal time): that disturbs a measurement as much as
    another process does, so other_load counts it."""
    import collections

    import psutil

    Times = collections.namedtuple("Times", "user system nice idle irq softirq steal")
    monkeypatch.setattr(psutil, "cpu_times", lambda: Times(10.0, 2.0, 0.0, 50.0, 0.5, 0.5, 3.0))
    assert measure.busy_cpu_seconds() == 16.0


def test_cores_counts_the_process_s_cores_while_a_spread_pool_pins_the_caller() -> None:
    """pin="spread" pins the calling thread to one core while its pool is open: cores() (and machine_facts,
    and the tuner's search planned on it) read that thread's affinity and counted one core."""
    from fastvec import SubprocVecEnv
    from tests import envs

    allowed = len(os.sched_getaffinity(0))
    if allowed < 2:
        pytest.skip("needs two cores")
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, pin="spread") as venv:
        assert len(os.sched_getaffinity(0)) == 1  # (the caller's thread, pinned: the situation)
        assert measure.cores() == allowed and measure.machine_facts()["cores"] == allowed
        # (and the children it runs, the tuner's candidates: they inherited the one core)
        child = measure.run_child([sys.executable, "-c", "import os; print(len(os.sched_getaffinity(0)))"], 60)
        assert child.stdout.split() == [str(allowed)], child
        venv.reset()


def test_a_failing_child_s_reason_is_one_line_and_its_close_comes_after_its_result():
    """An env's error carries its remote traceback: the reason printed it twice, 10 lines in all (hunt90 bug 3). A
    result's closing ran before the RESULT line, so a close() that hung lost the measurement (hunt90 bug 6): it
    runs after, bounded, and a result whose child then outlived its time still stands, with a note."""
    failing = "from fastvec.measure import child_main\ndef f(spec): raise RuntimeError('\\nboom\\nRemote traceback: ...')\nchild_main(f, '{}')"
    result = child_result(run_child([sys.executable, "-c", failing], timeout=60.0), 60.0)
    assert result["reason"] == "RuntimeError: boom" and "Remote traceback" in result["traceback"]
    hangs = (
        "import time\nfrom fastvec import measure\nmeasure.CLOSE_WAIT = 0.2\n"
        "measure.child_main(lambda spec: {'status': 'ok', 'then': lambda: time.sleep(60)}, '{}')"
    )
    result = child_result(run_child([sys.executable, "-c", hangs], timeout=60.0), 60.0)
    assert result["status"] == "ok" and "did not end within 0.2 s" in result["note"]
    late = ChildRun(-9, 'RESULT {"status": "ok"}\n', "", 5.0, True)
    assert child_result(late, 5.0)["status"] == "ok" and "did not end within 5 s" in child_result(late, 5.0)["note"]
    assert child_result(ChildRun(-9, "", "", 5.0, True), 5.0)["status"] == "timeout"
    assert child_result(ChildRun(-9, "", "", 0.5, True), 0.5)["reason"] == "no result within 0.5 s"  # (said "0 s")
