"""The rare calls a pool makes on single envs: attributes, methods, render, wrapper checks.

They travel on a worker's pipe (pickled request, pickled reply) and never touch the
hot path. Each request name maps to one function of (env, *args); ``set_attr`` gets
one value per env.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing import reduction
from typing import Any

import gymnasium as gym

__all__ = ["CALLS", "run_call", "is_wrapped", "private"]


def private(value: Any) -> Any:
    """A copy of ``value`` of its own, exactly as a value pickled through a worker's pipe arrives (SB3's and
    gymnasium's envs in processes each get theirs, and their callers get copies back): the pipe's pickling
    (multiprocessing's ForkingPickler), so the envs the calling process steps give and get what a worker's
    do, whichever process steps them: arrays in native byte order, and a value that cannot be pickled (a
    lock, a lambda) refused as a worker's is. Raises what pickling raised; the callers name the env."""
    return reduction.ForkingPickler.loads(reduction.ForkingPickler.dumps(value))


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
