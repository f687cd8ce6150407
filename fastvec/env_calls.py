"""The rare calls a pool makes on single envs: attributes, methods, render, wrapper checks.

They travel on a worker's pipe (pickled request, pickled reply) and never touch the
hot path. Each request name maps to one function of (env, *args); ``set_attr`` gets
one value per env.
"""

from __future__ import annotations

import copy as copy_module
from collections.abc import Callable, Sequence
from multiprocessing import reduction
from typing import Any

import gymnasium as gym
import numpy as np

from fastvec.errors import ShardError
from fastvec.protocol import Extra, dumps_payload, unloadable

__all__ = ["CALLS", "run_call", "is_wrapped", "private", "private_payload"]


# values a pickle round trip gives back equal and immutable: returned as they are (exact types: a subclass may pickle
# otherwise, or not at all)
_IMMUTABLE = frozenset(
    (str, int, float, bool, complex, bytes, type(None), *(np.dtype(c).type for c in "?bBhHiIlLqQefdgFDG"))
)
_NUMBERS = frozenset("biufc")  # (array kinds copied here; others, objects and records among them, are pickled)


class _Pickle(Exception):
    """A part ``_copy`` leaves to pickle."""


def _copy(value: Any, memo: dict, depth: int) -> Any:
    """``value`` as a pickle round trip gives it, for the values envs usually give (dicts, lists, tuples,
    numbers, strings, arrays of numbers) in a fraction of its time (numpy scalars pickle at about 3 us
    each: a MuJoCo env's info of four took 11 us to pickle and load, 2.8 us to deep-copy, 1 us here); any
    other part raises _Pickle. Objects met twice are copied once, as pickle's memo does."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if depth > 32:
        raise _Pickle
    known = memo.get(id(value))
    if known is not None:
        return known[1]
    if kind is dict:
        copy: Any = {}
        memo[id(value)] = (value, copy)  # (the value kept alive, so its id is not reused meanwhile)
        for key, item in value.items():
            if type(key) not in _IMMUTABLE:
                raise _Pickle
            copy[key] = _copy(item, memo, depth + 1)
        return copy
    if kind is list:
        copy = []
        memo[id(value)] = (value, copy)
        copy.extend(_copy(item, memo, depth + 1) for item in value)
        return copy
    if kind is tuple:
        copy = tuple(_copy(item, memo, depth + 1) for item in value)
        memo[id(value)] = (value, copy)
        return copy
    if kind is np.ndarray and value.dtype.kind in _NUMBERS:
        # (as numpy's pickle: native byte order, Fortran order kept where the array is only that, else C)
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        copy = np.array(value, dtype=value.dtype.newbyteorder("="), order=order)
        memo[id(value)] = (value, copy)
        return copy
    raise _Pickle


def private(value: Any) -> Any:
    """A copy of ``value`` of its own, exactly as a value pickled through a worker's pipe arrives (SB3's and
    gymnasium's envs in processes each get theirs, and their callers get copies back), so the envs the calling
    process steps give and get what a worker's do, whichever process steps them: arrays in native byte order,
    and a value that cannot be pickled (a lock, a lambda) refused as a worker's is. The usual values are copied
    directly (``_copy``), the others by the pipe's pickling (multiprocessing's ForkingPickler). Raises what
    pickling raised; the callers name the env."""
    try:
        return _copy(value, {}, 0)
    except _Pickle:
        return reduction.ForkingPickler.loads(reduction.ForkingPickler.dumps(value))


def copied(value: Any) -> Any:
    """A copy of what an env returned that other envs of its process may write over (a buffer their class shares:
    fastvec.shard's ``Shard.copies_obs``): its arrays copied as they are (dtype and byte order kept: the buffers'
    checks see what the env returned), its dicts, lists and tuples rebuilt around copies of their parts, each of its
    own type (a tuple type of the env's own as ``private`` copies it), the rest kept as it is; objects met twice copied
    once. Never raises: what cannot be copied is kept as it is."""
    return _copied_parts(value, {})


def _copied_parts(value: Any, memo: dict) -> Any:
    known = memo.get(id(value))
    if known is not None:
        return known[1]
    kind = type(value)
    try:
        if isinstance(value, np.ndarray):
            copy = value.copy()
        elif isinstance(value, (dict, list)):
            try:
                copy = copy_module.copy(value)  # (its own type and attributes)
            except Exception:
                copy = {} if isinstance(value, dict) else []
            memo[id(value)] = (value, copy)  # (before its parts: one of them may be itself)
            if isinstance(value, dict):
                for key, item in value.items():
                    copy[key] = _copied_parts(item, memo)
            else:
                copy[:] = [_copied_parts(item, memo) for item in value]
            return copy
        elif isinstance(value, tuple):
            items = [_copied_parts(item, memo) for item in value]
            if kind is tuple:
                copy = tuple(items)
            elif hasattr(kind, "_make") and hasattr(kind, "_fields"):  # (a named tuple)
                copy = kind._make(items)
                state = getattr(value, "__dict__", None)  # (a subclass's attributes of its own: a pickle keeps them)
                if state:
                    memo[id(value)] = (value, copy)  # (before its attributes: one of them may be itself)
                    copy.__dict__.update(_copied_parts(dict(state), memo))
            else:  # (a tuple type whose constructor may take its items one by one)
                try:
                    copy = private(value)
                except Exception:
                    copy = tuple(items)
        else:
            return value
    except Exception:
        return value
    memo[id(value)] = (value, copy)  # (the value kept alive, so its id is not reused meanwhile)
    return copy


def private_payload(obj: Any, what: str, envs: range | str) -> Any:
    """What the calling process's own envs ``envs`` get of ``obj`` (reset options, call arguments, object parts of
    actions): the copy a worker's envs get (``private``), and for one that cannot be pickled the error a worker's
    payload gets (``dumps_payload``'s, naming the envs), wherever the envs are."""
    try:
        return private(obj)
    except Exception as exc:
        try:  # (once more: an exception a signal handler raised into the copy, a TimeoutError, is no fault of obj's)
            private(obj)
        except Exception:
            dumps_payload(obj, what, envs)  # (raises, naming the envs, where it cannot be pickled)
            # (it pickles, but its unpickling raised: as it would in a worker, which then named its first env)
            raise unloadable(what, envs, exc) from exc
        raise  # (it copies: the first try's exception came from outside, and goes on as it is)


def private_shares(values: list, envs: Sequence[int], what: str, named: range | str) -> list:
    """The copy the envs ``envs`` get of their own ``values`` (one each, in order), as ``private_payload`` gives it;
    where it cannot be made, the error names the env whose value cannot be pickled or loaded (else ``named``)."""
    try:
        return private(values)
    except Exception:
        try:  # (once more, as private_payload: an exception raised into the copy from outside goes on as it is)
            private(values)
        except Exception:
            pass
        else:
            raise
        for i, value in zip(envs, values):
            private_payload(value, what, range(i, i + 1))  # (raises, naming the env whose value it is)
        return private_payload(values, what, named)  # (raises, naming them together)


def is_wrapped(env: gym.Env, wrapper_class: type) -> bool:
    """True when ``wrapper_class`` appears in ``env``'s wrapper chain (as SB3's env_util.is_wrapped)."""
    current = env
    while isinstance(current, gym.Wrapper):
        if isinstance(current, wrapper_class):
            return True
        current = current.env
    return False


def _get_attr(env: gym.Env, name: str) -> Any:
    return env.get_wrapper_attr(name)


def _has_attr(env: gym.Env, name: str) -> bool:
    try:
        env.get_wrapper_attr(name)
    except AttributeError:
        return False
    return True


def _env_method(env: gym.Env, name: str, args: tuple, kwargs: dict) -> Any:
    return env.get_wrapper_attr(name)(*args, **kwargs)


def _call(env: gym.Env, name: str, args: tuple, kwargs: dict) -> Any:
    """gymnasium's VectorEnv.call: call a method, or return a non-callable attribute."""
    function = env.get_wrapper_attr(name)
    return function(*args, **kwargs) if callable(function) else function


def _set_attr(env: gym.Env, name: str, value: Any, use_wrapper_setter: bool) -> None:
    if use_wrapper_setter:  # gymnasium: set it where the wrapper chain defines it
        env.set_wrapper_attr(name, value)
    else:  # SB3: on the outermost wrapper
        setattr(env, name, value)


CALLS: dict[str, Callable[..., Any]] = {
    "get_attr": _get_attr,
    "has_attr": _has_attr,
    "env_method": _env_method,
    "call": _call,
    "set_attr": _set_attr,
    "is_wrapped": is_wrapped,
    "render": lambda env: env.render(),
}


def run_call(env: gym.Env, request: str, args: tuple, value: Any = None) -> Any:
    """Run one rare call on one env (``value``: this env's value for set_attr)."""
    if request == "set_attr":
        name, use_wrapper_setter = args
        return _set_attr(env, name, value, use_wrapper_setter)
    return CALLS[request](env, *args)


_COPIED_EXTRAS = frozenset(int(kind) for kind in (Extra.INFO, Extra.RESET_INFO, Extra.OBJECTS, Extra.FINAL_OBS))


def own_copies(extras: list, command: str) -> list:
    """The extras of the calling process's own envs, their values copied (infos, object observations),
    as a worker's are by pickling: a later step of an env that reuses its info dict, or SB3's
    front-end adding ``terminal_observation`` to an info, does not change what another holds; arrays
    come in native byte order; a value that cannot be pickled is the env's error, as a worker reports
    it (ShardError, naming the env and "``command`` (sending the result)")."""
    copies = []
    for i, kind, value in extras:
        if kind in _COPIED_EXTRAS:
            try:
                value = private(value)
            except Exception as exc:
                raise ShardError(i, f"{command} (sending the result)", exc) from None
        copies.append((i, kind, value))
    return copies
