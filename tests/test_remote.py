"""A worker process seen from the pool (fastvec.remote): death and hangs are noticed, never waited on for ever."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from fastvec.errors import StepTimeoutError, WorkerDiedError
from fastvec.remote import Remote, pickle_factories, preload_forkserver


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


def test_forkserver_preloads_the_worker_module() -> None:
    from multiprocessing import forkserver

    preload_forkserver()
    assert "fastvec.worker" in forkserver._forkserver._preload_modules
