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

import errno
import mmap
import os
import secrets
import tempfile
import warnings
from multiprocessing.shared_memory import SharedMemory

__all__ = ["PREFIX", "create", "create_block", "room", "FileBlock", "unlink", "close", "sweep_stale", "list_segments", "pid_alive"]

PREFIX = "fastvec-"
_CANNOT_RESERVE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)  # posix_fallocate unsupported there
_SHM_DIR = "/dev/shm"


def create(size: int) -> SharedMemory:
    """A new owner-only segment of ``size`` bytes, registered with this process's resource tracker."""
    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    try:
        return SharedMemory(name=name, create=True, size=max(size, 1))
    except BaseException:  # (an interrupt after shm_open made the name: it must not stay in /dev/shm)
        _forget(name)
        raise


def room() -> int:
    """The most bytes a block can have here: the free space of /dev/shm or of the temp directory (where
    ``create_block`` falls back), whichever is larger; 0 where neither can be read."""
    free = 0
    for folder in (_SHM_DIR, tempfile.gettempdir()):
        try:
            stat = os.statvfs(folder)
        except OSError:
            continue
        free = max(free, stat.f_bavail * stat.f_frsize)
    return free


def create_block(size: int) -> SharedMemory | FileBlock:
    """A new block of ``size`` bytes whose name is already gone (workers get its file descriptor): a
    shared-memory segment with its pages reserved, so that a full /dev/shm (Docker's default is 64 MiB)
    is found now rather than as a SIGBUS at the first write past its room; where /dev/shm has no room,
    an unlinked file in the temp directory (as multiprocessing.heap falls back), with a warning.
    Interrupted anywhere (Ctrl-C), it leaves no name behind."""
    segment = create(size)
    try:
        unlink(segment)
        try:
            _reserve(segment._fd, size)  # type: ignore[attr-defined]
            return segment
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EFBIG):
                raise
            close(segment)
        block = FileBlock(size)
    except BaseException:
        unlink(segment)
        close(segment)
        raise
    warnings.warn(
        f"fastvec: /dev/shm has no room for the pool's shared block of {size / 2**20:.1f} MiB; using a file in "
        f"{os.path.dirname(block.name)} instead (give the container more shared memory, e.g. docker run --shm-size)",
        RuntimeWarning,
        stacklevel=3,
    )
    return block


class FileBlock:
    """The shared block as an unlinked temp file: what ``create_block`` falls back to (it has the attributes
    of a SharedMemory that ``close`` and the pool use)."""

    def __init__(self, size: int):
        fd, self.name = tempfile.mkstemp(prefix=PREFIX)
        try:
            os.unlink(self.name)
            os.ftruncate(fd, max(size, 1))
            try:
                _reserve(fd, size)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"no room for the pool's shared block of {size / 2**20:.1f} MiB, neither in /dev/shm nor in "
                    f"{os.path.dirname(self.name)}",
                ) from exc
            self._mmap = mmap.mmap(fd, max(size, 1))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._buf: memoryview | None = memoryview(self._mmap)
        self.size = size

    @property
    def buf(self) -> memoryview | None:
        return self._buf

    def unlink(self) -> None:  # (unlinked when made)
        pass


def _reserve(fd: int, size: int) -> None:
    """Allocate the block's pages now (OSError ENOSPC when there is no room); where posix_fallocate is
    unsupported (a libc or filesystem without it), leave the block unreserved, as it was made."""
    try:
        os.posix_fallocate(fd, 0, max(size, 1))
    except OSError as exc:
        if exc.errno not in _CANNOT_RESERVE:
            raise


def _forget(name: str) -> None:
    """Remove segment ``name`` if it exists (its resource-tracker record, if it got one, only makes the
    tracker warn at exit: unregistering a name it never had would print a traceback instead)."""
    try:
        os.unlink(os.path.join(_SHM_DIR, name.lstrip("/")))
    except OSError:
        pass


def unlink(shm: SharedMemory | FileBlock) -> None:
    """Remove the segment's name (idempotent); mappings stay valid until closed."""
    if getattr(shm, "_fastvec_unlinked", False):
        return
    try:
        shm.unlink()  # also unregisters it from the resource tracker
    except FileNotFoundError:
        pass
    shm._fastvec_unlinked = True  # type: ignore[union-attr]  # (after: an interrupt inside leaves it to retry)


def close(shm: SharedMemory | FileBlock) -> None:
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
    shm._fd = -1  # type: ignore[attr-defined]  # (forgotten first: an interrupt just after os.close left it to close twice)
    if fd >= 0:
        os.close(fd)


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
