"""Map gymnasium spaces to flat shared-memory buffers ("leaves") and back.

An observation space becomes a list of leaves, one per array: a Box is one leaf,
a Dict or Tuple has one leaf per sub-space (recursively). Each leaf has a fixed
shape and dtype, so its batch lives in one contiguous ``[num_envs, *shape]``
buffer. The conversion is by single dispatch on the space type, so a new space
is one registration, not another branch in an if-chain.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import singledispatch
from typing import Any

import numpy as np
from gymnasium import spaces

from fastvec.errors import UnsupportedSpaceError

__all__ = ["Leaf", "leaves", "assemble", "split", "is_single_array", "action_dtype", "ActionChecker"]


@dataclass(frozen=True)
class Leaf:
    """One array of an observation: where it sits in the structure, its shape and dtype."""

    path: tuple  # keys (Dict) or indices (Tuple) from the root; () for a plain array space
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def name(self) -> str:
        return "/".join(str(p) for p in self.path) or "obs"


@singledispatch
def _leaves(space: spaces.Space, path: tuple) -> list[Leaf]:
    raise UnsupportedSpaceError(
        f"fastvec cannot lay out {type(space).__name__} spaces in shared memory (got {space}); "
        "supported: Box, Discrete, MultiDiscrete, MultiBinary, and Dict/Tuple of them"
    )


@_leaves.register
def _(space: spaces.Box, path: tuple) -> list[Leaf]:
    return [Leaf(path, tuple(space.shape), np.dtype(space.dtype))]


@_leaves.register
def _(space: spaces.Discrete, path: tuple) -> list[Leaf]:
    return [Leaf(path, (), np.dtype(space.dtype))]


@_leaves.register
def _(space: spaces.MultiDiscrete, path: tuple) -> list[Leaf]:
    return [Leaf(path, tuple(space.shape), np.dtype(space.dtype))]


@_leaves.register
def _(space: spaces.MultiBinary, path: tuple) -> list[Leaf]:
    return [Leaf(path, tuple(space.shape), np.dtype(space.dtype))]


@_leaves.register
def _(space: spaces.Dict, path: tuple) -> list[Leaf]:
    return [leaf for key, sub in space.spaces.items() for leaf in _leaves(sub, path + (key,))]


@_leaves.register
def _(space: spaces.Tuple, path: tuple) -> list[Leaf]:
    return [leaf for i, sub in enumerate(space.spaces) for leaf in _leaves(sub, path + (i,))]


def leaves(space: spaces.Space) -> list[Leaf]:
    """The leaves of ``space`` in a fixed order (Dict key order, Tuple index order)."""
    return _leaves(space, ())


def is_single_array(obs_leaves: list[Leaf] | tuple[Leaf, ...]) -> bool:
    """True when the observation is one plain array (no Dict/Tuple structure around it)."""
    return len(obs_leaves) == 1 and obs_leaves[0].path == ()


def split(obs: Any, leaf: Leaf) -> Any:
    """Pick the part of one env's observation that belongs to ``leaf``."""
    for key in leaf.path:
        obs = obs[key]
    return obs


def assemble(space: spaces.Space, arrays: list[np.ndarray]) -> Any:
    """Rebuild the structure of ``space`` from its leaf arrays (same order as ``leaves``).

    A Dict becomes an OrderedDict and a Tuple a tuple, as SB3's DummyVecEnv returns them.
    """
    it = iter(arrays)

    def build(sub: spaces.Space) -> Any:
        if isinstance(sub, spaces.Dict):
            return OrderedDict((key, build(s)) for key, s in sub.spaces.items())
        if isinstance(sub, spaces.Tuple):
            return tuple(build(s) for s in sub.spaces)
        return next(it)

    return build(space)


def action_dtype(space: spaces.Space) -> np.dtype:
    """dtype of the shared action buffer for ``space``."""
    if isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return np.dtype(space.dtype)
    raise UnsupportedSpaceError(
        f"fastvec supports Box, Discrete, MultiDiscrete and MultiBinary action spaces, got {space}"
    )


class ActionChecker:
    """Validates a batch of actions and writes it into the shared action buffer.

    Wrong shape or dtype, NaN, and values outside the space raise ValueError
    naming the env, before anything is sent to a worker.
    """

    def __init__(self, space: spaces.Space, num_envs: int, kernels: Any):
        self.space = space
        self.num_envs = num_envs
        self.kernels = kernels
        self.dtype = action_dtype(space)
        self.shape = (num_envs, *space.shape)
        self.per_env = int(np.prod(space.shape, dtype=np.int64))
        self.discrete = not isinstance(space, spaces.Box)
        if isinstance(space, spaces.Discrete):
            low = np.array([space.start], dtype=np.int64)
            high = np.array([space.start + space.n - 1], dtype=np.int64)
        elif isinstance(space, spaces.MultiDiscrete):
            low = np.asarray(space.start, dtype=np.int64).reshape(-1)
            high = (np.asarray(space.start, dtype=np.int64) + np.asarray(space.nvec, dtype=np.int64) - 1).reshape(-1)
        elif isinstance(space, spaces.MultiBinary):
            low = np.zeros(self.per_env, dtype=np.int64)
            high = np.ones(self.per_env, dtype=np.int64)
        else:
            low = np.broadcast_to(np.asarray(space.low, dtype=np.float64), space.shape).reshape(-1).copy()
            high = np.broadcast_to(np.asarray(space.high, dtype=np.float64), space.shape).reshape(-1).copy()
        self.low, self.high = low, high
        if self.dtype == np.int64:
            self.check_kind = "int"
        elif self.dtype in (np.float32, np.float64):
            self.check_kind = "float"
        else:
            self.check_kind = "other"

    def write(self, actions: Any, out: np.ndarray) -> None:
        """Check ``actions`` and copy them into ``out`` (the shared buffer, shape ``[num_envs, *space.shape]``)."""
        a = actions if type(actions) is np.ndarray else np.asarray(actions)
        if a.shape != self.shape:
            if self.discrete and a.shape == self.shape + (1,):  # (n, 1) for Discrete, as some policies emit
                a = a.reshape(self.shape)
            elif a.ndim == 0 or a.shape[0] != self.num_envs:
                raise ValueError(
                    f"expected actions for {self.num_envs} envs with shape {self.shape} for {self.space}, "
                    f"got shape {a.shape}"
                )
            else:
                raise ValueError(
                    f"expected actions of shape {self.shape} ({self.num_envs} envs x {self.space}), got shape {a.shape}"
                )
        kind = a.dtype.kind
        if self.discrete:
            if kind not in "iub":
                raise ValueError(
                    f"actions for {self.space} must be integers, got dtype {a.dtype} "
                    "(convert with .astype(np.int64) after checking they are whole numbers)"
                )
        elif kind not in "fiub":
            raise ValueError(f"actions for {self.space} must be numbers, got dtype {a.dtype}")
        np.copyto(out, a, casting="unsafe")
        flat = out.reshape(-1)
        if self.check_kind == "int":
            bad = self.kernels.first_outside_int(flat, self.low, self.high)
        elif self.check_kind == "float":
            bad = self.kernels.first_outside_float(flat, self.low, self.high)
        else:
            bad = _first_outside_generic(flat, self.low, self.high)
        if bad >= 0:
            env, pos = divmod(int(bad), self.per_env)
            value = np.asarray(a).reshape(self.num_envs, -1)[env, pos]
            element = tuple(int(x) for x in np.unravel_index(pos, self.space.shape))
            where = "" if self.per_env == 1 else f" (element {element})"
            what = "NaN" if isinstance(value, (float, np.floating)) and np.isnan(value) else repr(value.item())
            raise ValueError(
                f"action for env {env} is {what}{where}, outside {self.space} "
                f"(allowed {self.low[pos].item()!r}..{self.high[pos].item()!r})"
            )


def _first_outside_generic(flat: np.ndarray, low: np.ndarray, high: np.ndarray) -> int:
    k = low.shape[0]
    values = flat.reshape(-1, k).astype(np.float64)
    bad = ~((values >= low) & (values <= high))
    idx = np.flatnonzero(bad)
    return int(idx[0]) if idx.size else -1
