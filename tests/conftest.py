"""Shared fixtures: every test must leave no process, /dev/shm segment or fd behind."""

from __future__ import annotations

import gc
import os
import time

import psutil
import pytest

from fastvec import shm


def _fds() -> set[int]:
    try:
        return {int(fd) for fd in os.listdir("/proc/self/fd")}
    except FileNotFoundError:  # pragma: no cover
        return set()


@pytest.fixture(autouse=True)
def no_leaks(request):
    """After each test: no new fastvec /dev/shm segment, child process or file descriptor."""
    shm_before = set(shm.list_segments())
    fds_before = _fds()
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    yield
    gc.collect()
    deadline = time.monotonic() + 5.0
    while True:
        children = [
            p for p in me.children(recursive=True) if p.pid not in children_before and _is_ours(p)
        ]
        new_shm = ours(set(shm.list_segments()) - shm_before)
        if (not children and not new_shm) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not new_shm, f"shared-memory segments left behind: {sorted(new_shm)}"
    assert not children, f"child processes left behind: {[(p.pid, p.name()) for p in children]}"
    if getattr(request.node, "reference_may_leak_fds", False):
        return  # SB3's SubprocVecEnv never closes its Process objects' sentinel pipes
    leaked = {fd for fd in _fds() - fds_before if _is_leak(fd)}
    assert not leaked, f"file descriptors left open: {sorted(leaked)} -> {[_describe(fd) for fd in leaked]}"


def ours(segments: set[str]) -> set[str]:
    """``segments`` less those of another program's live processes (fastvec names a segment after the process that
    made it): a pool of a program running beside the suite is not this test's leak. Segments of this process, of
    its descendants, and of processes that have ended (a test's killed subprocess) remain."""
    me = os.getpid()
    kept = set()
    for name in segments:
        try:
            pid = int(name[len(shm.PREFIX) :].split("-")[0])
            owner = psutil.Process(pid)
            foreign = pid != me and me not in {p.pid for p in owner.parents()}
        except (ValueError, psutil.Error):  # (no pid in the name, or its process ended)
            foreign = False
        if not foreign:
            kept.add(name)
    return kept


def _is_ours(p: psutil.Process) -> bool:
    """Worker processes, not the long-lived forkserver / resource tracker helpers."""
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    return "forkserver" not in cmd and "resource_tracker" not in cmd


def _describe(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def _is_leak(fd: int) -> bool:
    # libraries may open files lazily; pipes, sockets and shared memory are what a pool opens
    return _describe(fd).startswith(("pipe:", "socket:", "/dev/shm/"))


def _cuda_context() -> None:
    """Where torch sees a GPU, make CUDA's context now: its driver opens a pipe the first time a
    process uses the GPU and keeps it for the process's life, which the leak check would blame on
    the first test that does (seen on the lent H200 machine: 'pipe:[85]' twice)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.zeros(1, device="cuda")


@pytest.fixture(autouse=True, scope="session")
def _helpers_running():
    """Start multiprocessing's long-lived helpers (resource tracker, forkserver) once, so
    their pipes are not mistaken for leaks of the first test that needs them."""
    import multiprocessing.forkserver as forkserver
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    forkserver.ensure_running()
    # what the test modules imported (torch, SB3, gymnasium) lives for the whole session: keep it
    # out of the collections the leak check runs after every test, which then take milliseconds
    for name in ("stable_baselines3", "torch"):  # (the engine's own tests need neither: those run without them)
        try:
            __import__(name)
        except ImportError:
            pass
    _cuda_context()

    gc.collect()
    gc.freeze()
    yield
