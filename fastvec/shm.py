"""Shared-memory blocks: create, hand to workers without a name, sweep stale ones.

A pool's block is a file made owner-only (0600) in /dev/shm, named ``fastvec-<owner pid>-<random>``,
and unlinked at once: the pool hands workers its file descriptor (SCM_RIGHTS over the worker's socket
pair), so nothing stays in /dev/shm even if every process is killed, and no process attaches by name.
It is not a ``multiprocessing.shared_memory.SharedMemory``: that registers the name with a resource
tracker (a process of its own, started for it), and where its mapping fails (an address-space limit)
unregisters a name it never registered, which the tracker answers with a KeyError traceback.
``sweep_stale`` removes blocks of this user whose owner process died between create and unlink.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import tempfile
import warnings

__all__ = ["PREFIX", "Block", "create_block", "mapping_error", "amount", "room", "unlink", "close", "sweep_stale", "list_segments", "pid_alive"]

PREFIX = "fastvec-"
_CANNOT_RESERVE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)  # posix_fallocate unsupported there
_SHM_DIR = "/dev/shm"


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


def create_block(size: int) -> Block:
    """A new block of ``size`` bytes whose name is already gone (workers get its file descriptor), in /dev/shm with
    its pages reserved, so that a full /dev/shm (Docker's default is 64 MiB) is found now rather than as a SIGBUS
    at the first write past its room; where /dev/shm has no room (or is missing, or not writable here), in the
    temp directory (as multiprocessing.heap falls back), with a warning. Interrupted anywhere (Ctrl-C), it leaves
    no name behind."""
    try:
        return Block(size, _SHM_DIR)
    except OSError as exc:
        if exc.errno not in _FALL_BACK:
            raise
        full = exc.errno in (errno.ENOSPC, errno.EFBIG)
        why = "has no room for" if full else f"cannot hold ({exc.strerror})"
    temp = tempfile.gettempdir()
    try:
        block = Block(size, temp)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise OSError(exc.errno, f"no room for the pool's shared block of {amount(size)}, neither in /dev/shm nor in {temp}") from exc
    try:
        from fastvec.errors import user_stacklevel  # (here: shm imports nothing of fastvec's at its import)

        advice = " (give the container more shared memory, e.g. docker run --shm-size)" if full else ""
        warnings.warn(
            f"fastvec: /dev/shm {why} the pool's shared block of {amount(size)}; using a file in {temp} instead{advice}",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
    except BaseException:  # (warnings made errors, -W error: the block made goes)
        close(block)
        raise
    return block


# (/dev/shm full, or past a file-size limit; missing, read-only or not writable here: the temp directory instead)
_FALL_BACK = (errno.ENOSPC, errno.EFBIG, errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS)


def mapping_error(exc: OSError, size: int, who: str) -> OSError:
    """``exc`` (of the same errno), raised as ``who`` (the calling process, a worker) made or mapped the pool's shared
    block of ``size`` bytes, saying so (a bare ENOMEM or EFBIG named nothing), with the limit that is the usual cause."""
    hint = {
        errno.ENOMEM: " (out of memory, or an address-space limit: ulimit -v)",
        errno.EFBIG: " (a file-size limit: ulimit -f)",
    }.get(exc.errno or 0, "")
    return OSError(exc.errno, f"{who} could not make or map the pool's shared block of {amount(size)}: {exc.strerror or exc}{hint}")


def amount(size: int) -> str:
    """A size in bytes as people read it: KiB below a MiB, MiB below a GiB (a container's /dev/shm is 64 MiB), else
    GiB."""
    if size < 2**20:
        return f"{size / 2**10:,.1f} KiB"
    return f"{size / 2**20:,.1f} MiB" if size < 2**30 else f"{size / 2**30:,.2f} GiB"


class Block:
    """The shared block: a file made owner-only in ``folder`` (/dev/shm, or the temp directory where /dev/shm has
    no room), its name removed at once, its pages reserved, mapped. (It has the attributes of a SharedMemory that
    ``close`` and the pool use.) Interrupted while it is made, it leaves neither its name nor its descriptor."""

    def __init__(self, size: int, folder: str):
        self._fd, self._mmap, self._buf = -1, None, None  # (so that __del__ finds them, whatever happens below)
        self.folder, self.size = folder, size
        name = ""
        try:
            while True:  # (mkstemp's way, with the name known before the file exists: an interrupt inside
                # mkstemp, once it had made the file, left the file, whose name it had not returned yet)
                name = os.path.join(folder, f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
                try:
                    self._fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
                    break
                except FileExistsError:
                    name = ""
            os.unlink(name)
            name = ""
            os.ftruncate(self._fd, max(size, 1))
            _reserve(self._fd, size)
            self._mmap = mmap.mmap(self._fd, max(size, 1))
            self._buf = memoryview(self._mmap)
        except BaseException:
            if name:
                if self._fd < 0:  # (a signal handler's exception just as os.open returned: its descriptor unrecorded)
                    _close_descriptors_of(name)
                _forget(name)  # (an interrupt before the unlink above: the name must not stay)
            close(self)
            raise
        self.name = name

    def __del__(self) -> None:
        # (a block dropped without ``close``: one that failed as it was made, after its descriptor was taken, or a
        # half-made pool's)
        if getattr(self, "_fd", -1) >= 0:
            close(self)

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


def _close_descriptors_of(path: str) -> None:
    """Close this process's descriptors of the file ``path`` (found by /proc/self/fd's links, before the file's
    name is removed): one ``os.open`` returned as an interrupt landed, before the caller recorded it."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    paths = {path, os.path.realpath(path)}
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") in paths:
                os.close(int(fd))
        except (OSError, ValueError):  # (the listing's own descriptor, gone by now)
            pass


def _forget(path: str) -> None:
    """Remove the file ``path`` if it is still there."""
    try:
        os.unlink(path)
    except OSError:
        pass


def unlink(block: Block) -> None:
    """Remove the block's name (made without one: nothing to do; the pool's teardown calls it, as for any block)."""
    block.unlink()


def close(block: Block) -> None:
    """Close this process's handle without pulling the mapping from under live views.

    numpy arrays made over the block hold the mmap object itself (not a buffer export), so
    unmapping it (as ``SharedMemory.close()`` does) would crash the next read of ``copy=False``
    results the caller kept. Instead the handle lets go of the mapping: it is unmapped when the
    last array over it is freed. The file descriptor is closed now.
    """
    buf, block._buf = block._buf, None
    if buf is not None:
        try:
            buf.release()
        except BufferError:
            pass  # something exported the memoryview itself: it is freed with that
    block._mmap = None  # type: ignore[assignment]
    fd = block._fd
    block._fd = -1  # (forgotten first: an interrupt just after os.close left it to close twice)
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
