"""Checks on what crosses the shared block: actions on the way in, env outputs on the way out.

Actions (``ActionWriter``, in the parent): the shared action buffer has the action
space's dtype and shape, so those are checked, and a value the buffer cannot hold
exactly (256 into a MultiBinary's int8, -1 into uint8, 3.7 into an integer space) is an
error naming the env: the check runs before the cast. Values are otherwise passed
through as SB3 and gymnasium pass them (a Gaussian policy samples outside its Box; the
env or its ClipAction wrapper decides), unless ``check`` asks for range checks.

Env outputs (``OutputChecks``, in each shard): an observation cast to the space's dtype
and a NaN reward are reported once per env and kind, or raised, per ``check``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from gymnasium import spaces

from fastvec.errors import ShardError, UnsupportedSpaceError
from fastvec.protocol import Extra

__all__ = ["ActionWriter", "OutputChecks", "action_dtype"]


def action_dtype(space: spaces.Space) -> np.dtype:
    """dtype of the shared action buffer for ``space``."""
    if isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return np.dtype(space.dtype)
    raise UnsupportedSpaceError(
        f"fastvec supports Box, Discrete, MultiDiscrete and MultiBinary action spaces, got {space}"
    )


def _bounds(space: spaces.Space, per_env: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat per-element [low, high] of an array space (int64 for discrete spaces, float64 for Box)."""
    if isinstance(space, spaces.Discrete):
        return np.array([space.start], np.int64), np.array([space.start + space.n - 1], np.int64)
    if isinstance(space, spaces.MultiDiscrete):
        start = np.asarray(space.start, dtype=np.int64).reshape(-1)
        return start, start + np.asarray(space.nvec, dtype=np.int64).reshape(-1) - 1
    if isinstance(space, spaces.MultiBinary):
        return np.zeros(per_env, np.int64), np.ones(per_env, np.int64)
    low = np.broadcast_to(np.asarray(space.low, dtype=np.float64), space.shape).reshape(-1).copy()
    high = np.broadcast_to(np.asarray(space.high, dtype=np.float64), space.shape).reshape(-1).copy()
    return low, high


class ActionWriter:
    """Checks a batch of actions and writes it into the shared action buffer.

    ``check``: None or "off" pass values through; "warn" warns once per env about a value
    outside the space's bounds (or NaN), "raise" raises ValueError naming the env.
    Shape, kind (numbers) and what the buffer can hold exactly are always checked.
    """

    def __init__(self, space: spaces.Space, num_envs: int, kernels: Any, check: str | None = None):
        self.space = space
        self.num_envs = num_envs
        self.kernels = kernels
        self.dtype = action_dtype(space)
        self.shape = (num_envs, *space.shape)
        self.per_env = int(np.prod(space.shape, dtype=np.int64))
        self.discrete = not isinstance(space, spaces.Box)
        self.exact = self.dtype.kind in "iub"  # an integer buffer holds only whole numbers in its range
        self.check_range = check in ("warn", "raise")
        self.raise_out_of_range = check == "raise"
        self._warned: set[int] = set()
        self.low, self.high = _bounds(space, self.per_env)
        if self.dtype == np.int64:
            self._first_outside = kernels.first_outside_int
        elif self.dtype in (np.float32, np.float64):
            self._first_outside = kernels.first_outside_float
        else:
            self._first_outside = _first_outside_generic

    def write(self, actions: Any, out: np.ndarray) -> None:
        """Check ``actions`` (shape ``[num_envs, *space.shape]``) and copy them into ``out``."""
        a = actions if type(actions) is np.ndarray else np.asarray(actions)
        if a.shape != self.shape:
            if self.discrete and a.shape == self.shape + (1,):  # (n, 1) for Discrete, as some policies emit
                a = a.reshape(self.shape)
            else:
                raise ValueError(
                    f"expected actions of shape {self.shape} ({self.num_envs} envs x {self.space}), got shape {a.shape}"
                )
        if a.dtype != self.dtype:
            self._check_cast(a)
        np.copyto(out, a, casting="unsafe")
        if self.check_range:
            self._check_range(out.reshape(-1), a)

    def _check_cast(self, a: np.ndarray) -> None:
        """Refuse what the buffer's dtype cannot hold exactly (checked before the cast)."""
        if a.dtype.kind not in "fiub":
            raise ValueError(f"actions for {self.space} must be numbers, got dtype {a.dtype}")
        if not self.exact or np.can_cast(a.dtype, self.dtype, "safe"):
            return  # into a float buffer, or a cast that always keeps the value
        with np.errstate(invalid="ignore", over="ignore"):
            held = a.astype(self.dtype, casting="unsafe")
            lost = held != a
            if a.dtype.kind == "f":
                lost |= ~np.isfinite(a)
        if lost.any():
            env, pos = divmod(int(np.flatnonzero(lost.reshape(-1))[0]), self.per_env)
            value = a.reshape(self.num_envs, -1)[env, pos]
            raise ValueError(
                f"action for env {env}{self._element(pos)} is {value.item()!r}, which the action buffer's "
                f"dtype {self.dtype} ({self.space}) cannot hold exactly; send whole numbers in its range"
            )

    def _check_range(self, flat: np.ndarray, a: np.ndarray) -> None:
        bad = self._first_outside(flat, self.low, self.high)
        if bad < 0:
            return
        if self.raise_out_of_range:
            raise ValueError(self._out_of_range(a, *divmod(int(bad), self.per_env)))
        values = flat.reshape(self.num_envs, -1).astype(np.float64)
        outside = ~((values >= self.low) & (values <= self.high))
        for env in np.flatnonzero(outside.any(axis=1)).tolist():
            if env not in self._warned:  # once per env
                self._warned.add(env)
                pos = int(np.flatnonzero(outside[env])[0])
                warnings.warn(f"fastvec: {self._out_of_range(a, env, pos)}", RuntimeWarning, stacklevel=4)

    def _out_of_range(self, a: np.ndarray, env: int, pos: int) -> str:
        value = np.asarray(a).reshape(self.num_envs, -1)[env, pos]
        what = "NaN" if isinstance(value, (float, np.floating)) and np.isnan(value) else repr(value.item())
        return (
            f"action for env {env}{self._element(pos)} is {what}, outside {self.space} "
            f"(allowed {self.low[pos].item()!r}..{self.high[pos].item()!r})"
        )

    def _element(self, pos: int) -> str:
        if self.per_env == 1:
            return ""
        return f" (element {tuple(int(x) for x in np.unravel_index(pos, self.space.shape))})"


def _first_outside_generic(flat: np.ndarray, low: np.ndarray, high: np.ndarray) -> int:
    values = flat.reshape(-1, low.shape[0]).astype(np.float64)
    idx = np.flatnonzero(~((values >= low) & (values <= high)))
    return int(idx[0]) if idx.size else -1


class OutputChecks:
    """What a shard does about suspicious env outputs, per the pool's ``check`` setting.

    "raise": ShardError naming the env. None / "warn": one warning per env and kind, sent
    to the parent as a WARNING extra. "off": ``active`` is False and nothing is looked at.
    """

    def __init__(self, check: str | None, start: int):
        self.active = check != "off"
        self.raising = check == "raise"
        self.start = start
        self._warned: set[tuple[int, str]] = set()
        self._pending: list = []

    def problem(self, j: int, command: str, kind: str, message: str) -> None:
        """Env ``start + j`` produced something the checks look at."""
        if self.raising:
            raise ShardError(self.start + j, command, ValueError(message))
        if (j, kind) not in self._warned:
            self._warned.add((j, kind))
            self._pending.append((self.start + j, Extra.WARNING, message))

    def drain(self, extras: list | None) -> list | None:
        """``extras`` with the warnings gathered since the last call appended."""
        if self._pending:
            extras = (extras or []) + self._pending
            self._pending = []
        return extras


def emit_warnings(extras: list) -> list | None:
    """Parent side: turn WARNING extras into Python warnings naming the env; return the rest."""
    rest = []
    for entry in extras:
        if entry[1] == Extra.WARNING:
            warnings.warn(f"fastvec: env {entry[0]} {entry[2]}", RuntimeWarning, stacklevel=5)
        else:
            rest.append(entry)
    return rest or None
