"""Shared-memory segments: create, attach without the resource tracker, sweep stale ones.

Segments are named ``fastvec-<owner pid>-<random hex>`` and created owner-only
(0600). A pool unlinks its segment right after creating it and hands workers the
file descriptor (SCM_RIGHTS over the worker's socket pair), so nothing stays in
/dev/shm even if every process is killed, and no worker ever attaches by name
(which on Python < 3.13 registers the segment with the worker's resource tracker,
cpython#82300). ``sweep_stale`` removes segments of this user whose owner process
died between create and unlink.
"""

from __future__ import annotations

import os
import secrets
from multiprocessing.shared_memory import SharedMemory

__all__ = ["PREFIX", "create", "unlink", "close", "sweep_stale", "list_segments", "pid_alive"]

PREFIX = "fastvec-"
_SHM_DIR = "/dev/shm"


def create(size: int) -> SharedMemory:
    """A new owner-only segment of ``size`` bytes, registered with this process's resource tracker."""
    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    return SharedMemory(name=name, create=True, size=max(size, 1))


def unlink(shm: SharedMemory) -> None:
    """Remove the segment's name (idempotent); mappings stay valid until closed."""
    if getattr(shm, "_fastvec_unlinked", False):
        return
    shm._fastvec_unlinked = True  # type: ignore[attr-defined]
    try:
        shm.unlink()  # also unregisters it from the resource tracker
    except FileNotFoundError:
        pass


def close(shm: SharedMemory) -> None:
    """Close this process's handle without pulling the mapping from under live views.

    numpy arrays made over the block hold the mmap object itself (not a buffer export), so
    ``SharedMemory.close()`` would unmap it while ``copy=False`` results the caller kept still
    point into it (a crash on the next read). Instead the handle lets go of the mapping: it
    is unmapped when the last array over it is freed. The file descriptor is closed now.
    """
    buf, shm._buf = shm._buf, None  # type: ignore[attr-defined]
    if buf is not None:
        try:
            buf.release()
        except BufferError:
            pass  # something exported the memoryview itself: it is freed with that
    shm._mmap = None  # type: ignore[attr-defined]
    fd = getattr(shm, "_fd", -1)
    if fd >= 0:
        os.close(fd)
        shm._fd = -1  # type: ignore[attr-defined]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (possibly another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_segments() -> list[str]:
    """Names of fastvec segments currently in /dev/shm."""
    try:
        return sorted(n for n in os.listdir(_SHM_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def sweep_stale() -> list[str]:
    """Unlink fastvec segments of this user whose owner process is dead; return their names."""
    removed = []
    uid = os.getuid()
    for name in list_segments():
        try:
            pid = int(name[len(PREFIX) :].split("-", 1)[0])
            if os.stat(os.path.join(_SHM_DIR, name)).st_uid != uid or pid_alive(pid):
                continue
            os.unlink(os.path.join(_SHM_DIR, name))
            removed.append(name)
        except (ValueError, FileNotFoundError, PermissionError):
            continue
    return removed
