"""How an env factory makes each of its envs: from a copy of its own, sharing with the caller only what
processes share.

SB3's SubprocVecEnv calls each factory in a process of its own: what the factory captures is the
process's own copy (fork copies the caller's memory, spawn unpickles it), so the envs share no Python
object with each other or with the caller, while what processes do share stays shared: an open file, a
pipe's end, a memory-mapped array, a ``multiprocessing`` lock or queue, shared memory, a torch tensor in
shared memory. fastvec steps several envs in one process, the caller's among them, so ``OwnFactory``
makes each env from a copy of its factory, made by pickling it here and loading it back at once, every
object of those kinds kept by reference rather than copied: a copy of a memory map or a file was a
detached private one (the envs' writes were lost), and a copy of a pipe's ``Connection`` closed the
caller's own pipe end when it was dropped.

A factory that cannot be copied even so (it captures a thread lock, say) is called as it is; an env it
returns that is the very object another env of the process is (``lambda: env``) is refused
(``same_env``): it would step twice per command, silently.
"""

from __future__ import annotations

import io
import mmap
import pickle
import socket
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["OwnFactory", "private_copy", "same_env"]


class OwnFactory:
    """An env factory whose every call runs a copy of it of its own (``private_copy``), so that its envs share
    no Python object it captured with each other or with the caller, as envs made in processes of their own
    do; a factory that cannot be copied is called as it is. Pickled (for a spawned worker, or with an env that
    moves), it is the factory itself: nothing is kept pickled here (a pickle per env of what every factory
    captures, a dataset say, stayed in the caller for the pool's life)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn

    def __call__(self) -> Any:
        try:
            fn = private_copy(self.fn)
        except Exception:  # (it cannot be pickled: called as it is)
            fn = self.fn
        return fn()

    def __reduce__(self) -> tuple:
        return (OwnFactory, (self.fn,))


def private_copy(obj: Any) -> Any:
    """A copy of ``obj`` (pickled with cloudpickle and loaded back) holding the very objects that processes
    share (``_shared``) rather than copies of them."""
    import cloudpickle

    kept: list = []

    class Keeping(cloudpickle.CloudPickler):
        def persistent_id(self, value: Any) -> int | None:
            if _shared(value):
                kept.append(value)
                return len(kept) - 1
            return None

    class Restoring(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return kept[pid]

    buffer = io.BytesIO()
    Keeping(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    buffer.seek(0)
    return Restoring(buffer).load()


def _shared(value: Any) -> bool:
    """Whether ``value`` is what a forked process shares with its parent rather than copies: an open file or
    socket, a memory map (or an array over one, or over shared memory), a ``multiprocessing`` pipe end, lock,
    queue or shared value, shared memory, a torch tensor in shared memory."""
    if isinstance(value, (int, float, str, bytes, bool, type(None), tuple, list, dict)):
        return False  # (the usual values: at once)
    if isinstance(value, np.ndarray):
        base = value
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        if isinstance(base, memoryview):
            base = base.obj
        return isinstance(base, mmap.mmap)
    if isinstance(value, io.IOBase):
        return not isinstance(value, (io.BytesIO, io.StringIO))  # (in memory: a copy, as a process's)
    if isinstance(value, (mmap.mmap, socket.socket)):
        return True
    multiprocessing_types = _multiprocessing_types()
    if isinstance(value, multiprocessing_types):
        return True
    wrapper = getattr(type(value), "__module__", "") == "multiprocessing.sharedctypes" or (
        "multiprocessing.heap" in sys.modules
        and isinstance(getattr(value, "_wrapper", None), sys.modules["multiprocessing.heap"].BufferWrapper)
    )
    if wrapper:  # (mp.Value / mp.Array, and their raw forms: ctypes objects in shared memory)
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        try:
            return bool(value.is_shared())
        except Exception:
            return False
    return False


_MP_TYPES: tuple | None = None


def _multiprocessing_types() -> tuple:
    """multiprocessing's objects that its processes share (made once; only those of modules imported: a
    factory cannot capture an object of a module not imported)."""
    global _MP_TYPES
    if _MP_TYPES is None:
        from multiprocessing import connection, queues, shared_memory, synchronize

        _MP_TYPES = (
            connection.Connection,
            shared_memory.SharedMemory,
            synchronize.SemLock,
            synchronize.Condition,
            synchronize.Event,
            synchronize.Barrier,
            queues.Queue,
            queues.SimpleQueue,
        )
    return _MP_TYPES


def same_env(env: Any, made: list, start: int, index: int) -> ValueError | None:
    """The error for env ``index`` when its factory returned the very object that one of ``made`` (the envs of its
    process made before it, env ``start`` first) is, else None (SB3's DummyVecEnv refuses it too)."""
    for k, other in enumerate(made):
        if other is env:
            return ValueError(
                f"the factory of env {index} returned the same env object as env {start + k}'s: the envs that one "
                "process steps must be distinct objects (this factory cannot be copied for each env, so it was "
                "called as it is). Make the env when the factory is called (lambda: gym.make(...), not lambda: env)."
            )
    return None
