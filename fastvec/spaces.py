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

__all__ = ["Leaf", "leaves", "assemble", "split", "is_single_array"]


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
