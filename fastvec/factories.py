"""How an env factory makes each of its envs: from a copy of its own, as in a process of its own.

SB3's SubprocVecEnv calls each factory in a process of its own: what the factory captures is that
process's copy (fork copies the caller's memory, spawn unpickles the factory), so its env shares no
Python object with the other envs or with the caller. fastvec steps several envs in one process, the
caller's among them, so ``OwnFactory`` makes each env from a copy of its factory, made by pickling it
and loading it back at once (``private_copy``), as the spawned workers get theirs.

Some objects a copy cannot stand for: under fork, what the processes share rather than copy (an open
file or socket, a pipe's end, a memory map or an array over one, over shared memory or over a
multiprocessing shared array, a torch tensor in shared memory): a copy of one is detached (the env's
writes are lost), or owns the caller's descriptor and closes it when dropped, and so does a copy of
any object that owns it (a NamedTemporaryFile's wrapper). A factory that holds one is called as it is,
as one that cannot be pickled is: its envs in one process share what it captured, the caller's
objects included, as DummyVecEnv's do. Under spawn and forkserver the workers' factories arrive
pickled, copies as SB3's are, and the calling process's envs get the same copies (one whose copy would
own the caller's pipe end is called as it is). Arrays no env can write (read-only, of numbers) are
kept by reference in every copy: a dataset captured read-only is held once per process, not once per
env.

An env a factory returns that is the very object (or wraps the very env) another env of the process
is (``lambda: env``) is made a copy of, where it can be; else it is refused (``Distinct``): it would step
twice per command, silently.
"""

from __future__ import annotations

import io
import itertools
import mmap
import pickle
import socket
import sys
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["OwnFactory", "Distinct", "private_copy", "travels"]


class OwnFactory:
    """An env factory whose every call runs a copy of it of its own (``private_copy``; called as it is where no
    copy can stand for it). ``fork``: its envs are made in this process or in processes forked from it (what
    processes share is then kept: see the module). With ``snapshot`` (on_error="restart": envs are made again
    later) the copy is taken now, so that an env made again is made as at first, as a worker's fork-time copy
    is, whatever the caller changed since; else nothing is kept pickled (a pickle per env of what every
    factory captures, a dataset say, stayed in the caller for the pool's life). Pickled (for a spawned worker,
    or with an env that moves), it is the factory itself."""

    __slots__ = ("fn", "fork", "_snapshot")

    def __init__(self, fn: Callable[[], Any], fork: bool = True, snapshot: bool = False):
        self.fn, self.fork = fn, fork
        self._snapshot: tuple | None = None
        if snapshot:
            try:
                self._snapshot = _dump(fn, fork)
                _load(*self._snapshot)  # (one whose copy cannot be loaded back: called as it is, as without)
            except Exception:
                self._snapshot = None

    def __call__(self) -> Any:
        if self._snapshot is not None:
            return _load(*self._snapshot)()
        try:
            fn = private_copy(self.fn, self.fork)
        except Exception:  # (it cannot be pickled, or holds what a copy cannot stand for: called as it is)
            fn = self.fn
        return fn()

    def __reduce__(self) -> tuple:
        # (with a snapshot, its copy travels: a replacement worker under spawn, or an env that moves, makes its env
        # again from the objects as they were when the pool was made, as the others do; the arrays it keeps by
        # reference are the ones the other factories' snapshots keep, so that one pickle of a worker's factories
        # carries a dataset they all capture once)
        if self._snapshot is None:
            return (OwnFactory, (self.fn, False, False))
        return (_from_snapshot, (self._snapshot,))


def _from_snapshot(snapshot: tuple) -> OwnFactory:
    """An OwnFactory (``__reduce__``) from the snapshot of another process's, its kept arrays read-only here too."""
    data, token, kept = snapshot
    for array in kept:
        if isinstance(array, np.ndarray) and array.flags.writeable:
            array.flags.writeable = False  # (it arrived as an array of its own)
    factory = OwnFactory.__new__(OwnFactory)
    factory.fork, factory._snapshot = False, (data, token, kept)
    factory.fn = _load(data, token, kept)
    return factory


def private_copy(obj: Any, fork: bool = True) -> Any:
    """A copy of ``obj`` (pickled with cloudpickle, loaded back), holding arrays no one can write by reference.
    Raises ``AsItIs`` where ``obj`` holds what a copy cannot stand for (the module's), and the pickler's error
    where it cannot be pickled."""
    return _load(*_dump(obj, fork, here=True))


class AsItIs(Exception):
    """The object holds what a copy cannot stand for: it is used as it is."""


_KEPT: dict[int, list] = {}  # the objects kept by reference in the copies being loaded now, by token
_TOKENS = itertools.count()


def _take(token: int, index: int) -> Any:
    # (a view of its own for each copy: the kept array is one object for every copy in the process, and an env
    # that set its view's shape in place set the other envs' too)
    kept = _KEPT[token][index]
    return kept.view() if isinstance(kept, np.ndarray) else kept


def _dump(obj: Any, fork: bool, moving: bool = False, here: bool = False) -> tuple[bytes, int, list]:
    """``obj`` pickled, the token its pickle looks the objects kept by reference up under, and those objects.
    ``moving``: for another process (``travels``): an array over a memory map, read-only too, cannot go.
    ``here``: loaded back in this process only. There, or in processes forked from it (``fork``), a class is kept
    by reference (as arrays no one can write are): the copy's class is that very class."""
    import cloudpickle

    kept: list = []
    token = next(_TOKENS)

    class Copying(cloudpickle.CloudPickler):
        # (reducer_override, not persistent_id: the pickler calls it for objects other than numbers, strings,
        # lists, tuples and dicts only, so a captured list of a million floats costs no Python call per item)
        def reducer_override(self, value: Any) -> Any:
            if (here or fork) and not moving and isinstance(value, type):
                # the class itself, kept as the arrays are: loaded here, or in a fork, it is that very class (by
                # value, loading it set the class's attributes anew from copies, a class-level frame or registry of
                # the caller's replaced once per env made: hunt88 bug 7, hunt91 bug 10; by name, a snapshot
                # loaded later took a class the script had rebound since: hunt91 bug 6)
                kept.append(value)
                return _take, (token, len(kept) - 1)
            if isinstance(value, io.IOBase):
                if moving:  # (a move pickles with cloudpickle itself, migrate.pack: the current streams, by name)
                    if value is sys.stdout or value is sys.stderr:
                        return super().reducer_override(value)
                else:
                    for name in ("stdout", "stderr", "__stdout__", "__stderr__"):  # (the process's own, whatever it is)
                        if value is getattr(sys, name):
                            return getattr, (sys, name)
            kind = _kind(value, fork, moving)
            if kind is _KEEP:  # (a read-only view: an env cannot make it writable again, as it could the array)
                kept.append(_frozen(value))
                return _take, (token, len(kept) - 1)
            if kind is _AS_IT_IS:
                raise AsItIs(f"it holds a {type(value).__name__}, which processes share rather than copy")
            return super().reducer_override(value)

    buffer = io.BytesIO()
    Copying(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue(), token, kept


def _load(data: bytes, token: int, kept: list) -> Any:
    """A copy from what ``_dump`` made (again, for a snapshot: the kept objects under the token its pickle holds)."""
    _KEPT[token] = kept
    try:
        return pickle.loads(data)
    finally:
        del _KEPT[token]


_KEEP, _AS_IT_IS = object(), object()



def _kind(value: Any, fork: bool, moving: bool = False) -> object | None:
    """_KEEP: shared by reference in every copy (an array no one can write); _AS_IT_IS: no copy can stand for
    it (under fork, what processes share; else a pipe's end, whose copy would own the caller's descriptor);
    None: copied. (A probe that fails, an attribute lookup a class answers oddly: copied.)"""
    try:
        return _kind_of(value, fork, moving)
    except Exception:
        return None


def _kind_of(value: Any, fork: bool, moving: bool) -> object | None:
    if isinstance(value, np.ndarray):
        if moving and _over_shared_memory(value, read_only_too=True):
            return _AS_IT_IS
        if _read_only(value):
            return _KEEP
        return _AS_IT_IS if fork and _over_shared_memory(value) else None
    if isinstance(value, io.IOBase):
        if isinstance(value, (io.BytesIO, io.StringIO)):
            return None  # (in memory: a copy, as a process's)
        return _AS_IT_IS if fork else None
    mp_types = _multiprocessing_types()
    if isinstance(value, mp_types[0]):  # a pipe's end: a copy owns the caller's descriptor
        return _AS_IT_IS
    if not fork:
        return None
    if isinstance(value, (mmap.mmap, socket.socket, *mp_types)) or _shared_ctypes(value) or _shared_tensor(value):
        return _AS_IT_IS
    return None


def _read_only(array: np.ndarray) -> bool:
    """Whether no one can write ``array``'s numbers through it or what it views (an object array's items can
    change: not)."""
    if array.dtype.hasobject:
        return False
    base: Any = array
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        base = base.base
    if isinstance(base, memoryview):
        return base.readonly
    return base is None or isinstance(base, (bytes, mmap.mmap))  # (a memory map read only through these views)


def _over_shared_memory(array: np.ndarray, read_only_too: bool = False) -> bool:
    """Whether ``array`` views memory processes share: a shared memory map (not a copy-on-write one, unless
    ``read_only_too``: any map), shared memory, a multiprocessing shared array, a torch tensor in shared memory."""
    base: Any = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap) and base.mode == "c" and not read_only_too:  # (copy-on-write: a process's own)
            return False
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap) or _shared_ctypes(base) or _shared_tensor(base)


def _shared_ctypes(value: Any) -> bool:
    """mp.Value / mp.Array and their raw forms (ctypes objects in multiprocessing's shared heap)."""
    if type(value).__module__ == "multiprocessing.sharedctypes":
        return True
    heap = sys.modules.get("multiprocessing.heap")
    if heap is None or not isinstance(value, _ctypes_types()):
        return False
    return isinstance(getattr(value, "_wrapper", None), heap.BufferWrapper)


def _ctypes_types() -> tuple:
    import ctypes

    return (ctypes._SimpleCData, ctypes.Array, ctypes.Structure, ctypes.Union)


def _frozen(array: np.ndarray) -> np.ndarray:
    """A view of ``array`` no one can make writable (its base, ``array``, is read-only): one per array while copies
    hold it, so that the copies of several factories (each snapshot of on_error="restart" too) hold one object,
    which a pickle of them all (a spawned worker's factories) sends once. (Held weakly here: the view holds the
    array's memory.)"""
    key = id(array)
    entry = _FROZEN.get(key)
    if entry is not None:
        view = entry[1]()
        if view is not None and entry[0]() is array:
            return view
    view = array.view()
    view.flags.writeable = False
    try:
        _FROZEN[key] = (weakref.ref(array), weakref.ref(view, lambda ref, key=key: _forget_frozen(key, ref)))
    except TypeError:  # (an array type without weak references: a view of its own)
        pass
    return view


def _forget_frozen(key: int, ref: weakref.ref) -> None:
    entry = _FROZEN.get(key)
    if entry is not None and entry[1] is ref:
        del _FROZEN[key]


_FROZEN: dict[int, tuple] = {}  # id of a read-only array -> weak references to it and to its frozen view


def _shared_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor in shared memory (torch is not imported for it)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(value, torch.Tensor):
        return False
    try:
        return bool(value.is_shared())
    except Exception:
        return False


_MP_TYPES: tuple | None = None


def _multiprocessing_types() -> tuple:
    """multiprocessing's objects that its processes share, the pipe end first (made once)."""
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


def travels(obj: Any) -> bool:
    """Whether ``obj`` can go to another process pickled, keeping what it holds: it pickles, and holds nothing a
    copy cannot stand for (under fork: the module's; a memory map, read-only too: a moving env whose state would
    arrive detached, or owning the caller's descriptor, does not move)."""
    try:
        _dump(obj, True, moving=True)
    except Exception:  # (AsItIs, or it cannot be pickled at all)
        return False
    return True


class Distinct:
    """The envs one process steps, made one after another: each must be an object of its own (``own``).
    ``fork``: the pool's start method is fork (what a copy cannot stand for: the module's)."""

    def __init__(self, fork: bool = True):
        self.fork = fork
        self._seen: dict[int, tuple[int, Any]] = {}  # id of an env, or of the env it wraps -> (its index, it)

    def own(self, env: Any, index: int) -> Any:
        """Env ``index`` as its process steps it: ``env``, or, where it is the very object an env made before is, or
        wraps the same env (the factory returns an env it holds: ``lambda: env``), a copy of it, as a process of
        its own would have; ValueError where no copy can be made (SB3's DummyVecEnv refuses such factories)."""
        inner = _inner(env)
        twin = self._twin(env, inner)
        if twin is not None:
            try:
                env = private_copy(env, self.fork)
            except Exception as exc:
                why = str(exc) if isinstance(exc, AsItIs) else f"{type(exc).__name__}: {exc}"
                raise ValueError(
                    f"the factory of env {index} returned the env that env {twin}'s did (or one around the same env), "
                    f"and it cannot be copied ({why}): the envs that one process steps must be distinct objects. "
                    "Make the env when the factory is called (lambda: gym.make(...), not lambda: env)."
                ) from exc
            inner = _inner(env)
        for obj in (env, inner):
            self._seen[id(obj)] = (index, obj)  # (the object too: its id stays its own while it is held)
        return env

    def _twin(self, env: Any, inner: Any) -> int | None:
        for obj in (env, inner):
            seen = self._seen.get(id(obj))
            if seen is not None and seen[1] is obj:
                return seen[0]
        return None


def _inner(env: Any) -> Any:
    """The env ``env`` wraps (gymnasium's ``unwrapped``), or ``env`` where it says none."""
    try:
        return env.unwrapped
    except Exception:
        return env
