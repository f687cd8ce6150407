"""Which cores workers run on (fastvec.placement), applied and read back with psutil."""

from __future__ import annotations

import os

import psutil
import pytest

from fastvec import SubprocVecEnv
from fastvec.placement import plan
from tests import envs


def test_plans() -> None:
    cores = [0, 1, 2, 3]
    assert plan("auto", [1, 2, 3], True, cores) == ({1: [1], 2: [2], 3: [3]}, None)  # the learner's core kept free
    assert plan("auto", [1, 2, 3, 4, 5], True, cores)[0] == {1: [0], 2: [1], 3: [2], 4: [3], 5: [0]}  # oversubscribed
    assert plan("auto", [1], True, [4, 6]) == ({1: [6]}, None)  # the inherited affinity (taskset) is honoured
    assert plan("compact", [0, 1], False, cores)[0] == {0: [0], 1: [1]}
    assert plan("spread", [1], True, cores) == ({1: [2]}, [0])  # as far apart as the cores allow; the parent first
    assert plan("spread", [0, 1], False, cores)[0] == {0: [0], 1: [2]}
    assert plan([3], [1, 2], True, cores)[0] == {1: [3], 2: [3]}
    assert plan("none", [1], True, cores) == ({}, None)
    with pytest.raises(ValueError, match="pin must be"):
        plan("everywhere", [1], True, cores)
    with pytest.raises(ValueError, match=r"core\(s\) \[9\] are not among the cores this process may run on"):
        plan([2, 9], [1, 2], True, cores)  # (a core that does not exist, or outside taskset's: it was ignored)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_affinities_are_applied_and_restored() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2) as venv:  # pin="auto"
        (pid,) = venv.pool.worker_pids
        assert psutil.Process(pid).cpu_affinity() == [allowed[1]]
        assert psutil.Process().cpu_affinity() == allowed  # the learner is not pinned
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, pin=[allowed[0]]) as venv:
        assert psutil.Process(venv.pool.worker_pids[0]).cpu_affinity() == [allowed[0]]
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, pin="none") as venv:
        assert psutil.Process(venv.pool.worker_pids[0]).cpu_affinity() == allowed
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, pin_workers=True) as venv:
        assert psutil.Process().cpu_affinity() == [allowed[0]]  # "spread" pins the learner's shard too
    assert psutil.Process().cpu_affinity() == allowed  # ... and close() gives its affinity back


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_two_pools_that_pin_the_caller_give_its_affinity_back() -> None:
    """The second pool plans on the caller's own cores, not the first one's pin of it, and once both
    closed, in either order, the caller has its own affinity back (it stayed pinned to one core)."""
    allowed = sorted(os.sched_getaffinity(0))
    for order in ((0, 1), (1, 0)):
        venvs = [SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2, pin_workers=True)
                 for _ in range(2)]
        assert venvs[1].pool.cores == venvs[0].pool.cores  # (the same plan: on the caller's own cores)
        for k in order:
            venvs[k].close()
        assert psutil.Process().cpu_affinity() == allowed


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_pool_closed_from_another_thread_gives_the_pinned_thread_its_affinity_back() -> None:
    """An affinity is a thread's: close() from another thread (or a pool's __del__ in its monitor's thread) gave
    the closing thread the caller's affinity, and the thread the pool pinned stayed on one core (and a pool it
    made next, with default options, saw one core: one worker)."""
    import threading

    allowed = sorted(os.sched_getaffinity(0))
    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, pin="spread")
    assert sorted(os.sched_getaffinity(0)) == [allowed[0]]
    closer = threading.Thread(target=venv.close)
    closer.start()
    closer.join()
    assert sorted(os.sched_getaffinity(0)) == allowed


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_each_thread_s_pin_is_its_own() -> None:
    """Pins are per thread: a thread closing its own pinned pool while another thread's is open stayed on one
    core (one count for the process), and a thread restricted to a core of its own was pinned to the first
    thread's core, then given the first thread's affinity back (one saved affinity for the process)."""
    import threading

    allowed = sorted(os.sched_getaffinity(0))
    seen: dict[str, list] = {}

    def evaluation() -> None:  # an evaluation thread beside the training pool
        with SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2, pin="spread"):
            seen["eval pinned"] = sorted(os.sched_getaffinity(0))
        seen["eval after"] = sorted(os.sched_getaffinity(0))

    def restricted() -> None:  # a thread the user keeps on a core of its own: the one the main thread is pinned to
        os.sched_setaffinity(0, [allowed[0]])  # (it existed before that pin: its choice, not an inherited pin)
        with SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2, pin="spread"):
            seen["restricted pinned"] = sorted(os.sched_getaffinity(0))
        seen["restricted after"] = sorted(os.sched_getaffinity(0))

    go = [threading.Event(), threading.Event()]
    # (started before the main thread is pinned: a thread starts with its creator's affinity)
    threads = [threading.Thread(target=lambda k=k, run=run: (go[k].wait(), run())) for k, run in enumerate((evaluation, restricted))]
    for thread in threads:
        thread.start()
    with SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", num_workers=2, pin="spread"):
        for event, thread in zip(go, threads):
            event.set()
            thread.join()
        assert sorted(os.sched_getaffinity(0)) == [allowed[0]]
    assert sorted(os.sched_getaffinity(0)) == allowed
    assert seen == {"eval pinned": [allowed[0]], "eval after": allowed,
                    "restricted pinned": [allowed[0]], "restricted after": [allowed[0]]}  # fmt: skip


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_pool_made_while_another_pins_the_caller_plans_on_the_process_s_cores() -> None:
    """While a pool pins the calling thread (pin="spread"), another pool: default_num_workers() read the pinned
    thread's one core (one worker, no own shard, "oversubscribed"), and with pin="none" its workers inherited the
    pin (with forkserver, the fork server kept it for good)."""
    from fastvec.options import default_num_workers

    allowed = sorted(os.sched_getaffinity(0))
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, pin="spread"):
        assert sorted(os.sched_getaffinity(0)) == [allowed[0]]
        assert default_num_workers() == len(allowed)
        import threading  # (a thread started now, and a child forked now, inherit the pin: it is not theirs either)

        seen = []
        thread = threading.Thread(target=lambda: seen.append(default_num_workers()))
        thread.start()
        thread.join()
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # (a child, and its own child: it held for one fork only)
            grandchild = os.fork()
            os.write(write, bytes([default_num_workers()]))
            if grandchild:
                os.waitpid(grandchild, 0)
            os._exit(0)
        os.waitpid(child, 0)
        in_children = list(os.read(read, 2))
        os.close(read)
        os.close(write)
        assert seen + in_children == [len(allowed)] * 3
        with SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", pin="none") as other:
            assert other.pool.num_workers == min(2, len(allowed))
            for pid in other.pool.worker_pids:
                assert psutil.Process(pid).cpu_affinity() == allowed


def test_a_given_spin_ns_is_never_the_workers_adaptive_poll() -> None:
    """spin_ns=1 (poll 1 ns, then sleep) was the value that told workers to adapt their poll (200 us to 2 ms)."""
    from fastvec.pool import Pool
    from fastvec.protocol import ADAPTIVE_POLL

    with Pool([envs.make_cartpole] * 2, start_method="fork", num_workers=2, step_in_parent=False, spin_ns=1) as pool:
        assert pool._worker_spin_ns == 1 and pool._worker_spin_ns is not ADAPTIVE_POLL


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_respawned_worker_gets_its_core_back() -> None:
    import signal

    import numpy as np

    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        venv.pool.repin(1, [0])
        os.kill(venv.pool.worker_pids[0], signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="died"):
            venv.step(np.zeros(4, np.int64))
        assert psutil.Process(venv.pool.worker_pids[0]).cpu_affinity() == [0]


def test_a_pin_the_host_refuses_is_said_once_and_repin_names_what_is_wrong(monkeypatch) -> None:
    """A pin the host refused (AccessDenied: a sandbox) was dropped without a word (hunt89 bug 3); repin of a shard
    that is no worker's raised a bare StopIteration, and of a core outside the process's, nothing (bug 4); after
    close(), request_move wrote into the released block (TypeError) where ClosedError is due (bug 2)."""
    import warnings

    from fastvec.errors import ClosedError

    def refuse(self, cpus=None):
        if cpus is None:
            return [0, 1]
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "cpu_affinity", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=3, step_in_parent=True, pin=[0])
    told = [str(w.message) for w in caught if "could not be pinned" in str(w.message)]
    assert len(told) == 1 and "pin=[0]" in told[0] and "AccessDenied" in told[0], told
    with venv:
        pool = venv.pool
        assert pool.cores == {}
        for shard, cores, named in ((0, [0], "shard 0 is not a worker's"), (7, [0], "shard 7"), (1, [99], r"\[99\]")):
            with pytest.raises(ValueError, match=named):
                pool.repin(shard, cores)
    for call in (lambda: pool.request_move(1, 0), lambda: pool.request_move(1, 0, around=True)):
        with pytest.raises(ClosedError):
            call()
