"""Shared-memory segments: create, attach without the resource tracker, sweep stale ones.

Segments are named ``fastvec-<owner pid>-<random hex>`` and created owner-only
(0600). A pool unlinks its segment as soon as every worker has mapped it, so
normally nothing stays in /dev/shm even if every process is killed; the
resource tracker covers the short start-up window, and ``sweep_stale`` removes
segments of this user whose owner process is gone (a crash during start-up).
"""

from __future__ import annotations

import os
import secrets
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

__all__ = ["PREFIX", "create", "attach", "unlink", "sweep_stale", "list_segments"]

PREFIX = "fastvec-"
_SHM_DIR = "/dev/shm"


def create(size: int) -> SharedMemory:
    """A new owner-only segment of ``size`` bytes, registered with this process's resource tracker."""
    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    return SharedMemory(name=name, create=True, size=max(size, 1))


def attach(name: str) -> SharedMemory:
    """Map an existing segment without registering it with the resource tracker.

    On Python < 3.13 every attach registers the name, and the tracker of a worker
    would unlink the parent's segment (or warn about a "leak") when the worker
    exits (cpython#82300). Only the creator tracks the segment.
    """
    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        return SharedMemory(name=name, create=False)
    finally:
        resource_tracker.register = register  # type: ignore[assignment]


def unlink(shm: SharedMemory) -> None:
    """Remove the segment's name (idempotent); mappings stay valid until closed."""
    if getattr(shm, "_fastvec_unlinked", False):
        return
    shm._fastvec_unlinked = True  # type: ignore[attr-defined]
    try:
        shm.unlink()  # also unregisters it from the resource tracker
    except FileNotFoundError:
        pass


def _pid_alive(pid: int) -> bool:
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
            if os.stat(os.path.join(_SHM_DIR, name)).st_uid != uid or _pid_alive(pid):
                continue
            os.unlink(os.path.join(_SHM_DIR, name))
            removed.append(name)
        except (ValueError, FileNotFoundError, PermissionError):
            continue
    return removed
