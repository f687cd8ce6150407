"""Map gymnasium spaces to leaves: fixed-size arrays in shared memory, or pickled objects.

A space becomes a list of leaves. Box, Discrete, MultiDiscrete and MultiBinary are
*array* leaves: a fixed shape and dtype, so a batch of them lives in one contiguous
``[num_envs, *shape]`` buffer of the shared block. Dict and Tuple contribute one leaf
per sub-space, recursively. Anything else (Text, Sequence, Graph, OneOf, a custom
Space subclass) has no fixed size: it is an *object* leaf, pickled per env on the
worker's pipe, as SB3's SubprocVecEnv and gymnasium's AsyncVectorEnv(shared_memory=False)
send whole observations. The conversion is by single dispatch on the space type, so a
new space is one registration, not another branch in an if-chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import singledispatch
from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = [
    "Leaf",
    "leaves",
    "assemble",
    "split",
    "is_single_array",
    "array_leaves",
    "object_leaves",
    "is_dynamic",
]


@dataclass(frozen=True)
class Leaf:
    """One part of an observation or action: where it sits in the structure, and how it travels.

    ``array``: a fixed ``shape`` and ``dtype`` (a buffer in the shared block); otherwise an
    object leaf (``shape`` () and dtype object), pickled.
    """

    path: tuple  # keys (Dict) or indices (Tuple) from the root; () for a space that is one leaf
    shape: tuple[int, ...]
    dtype: np.dtype
    array: bool = True
    space: spaces.Space | None = field(default=None, compare=False)  # the sub-space

    @property
    def name(self) -> str:
        return "/".join(str(p) for p in self.path) or "obs"


def _canonical(dtype: Any) -> np.dtype:
    """numpy's own object for a plain dtype: a space's dtype that came through a pickle or a deepcopy (a worker's
    spaces, the copies of env 0's) is an equal but other object, and numpy takes its slower paths for it, which cost
    the learner about 600 instructions a step of 8 envs. A structured or byte-swapped dtype is kept as it is."""
    dtype = np.dtype(dtype)
    if dtype.fields is None and dtype.subdtype is None and dtype.isnative:
        canonical = np.dtype(dtype.char)  # (by its character: 'q', longlong, is int64 as 'l' is, but its own type)
        if canonical == dtype and canonical.type is dtype.type:
            return canonical
    return dtype


@singledispatch
def _leaves(space: spaces.Space, path: tuple) -> list[Leaf]:
    # Text, Sequence, Graph, OneOf, custom spaces: no fixed size, pickled per env
    return [Leaf(path, (), np.dtype(object), array=False, space=space)]


@_leaves.register
def _(space: spaces.Box, path: tuple) -> list[Leaf]:
    return [Leaf(path, tuple(space.shape), _canonical(space.dtype), space=space)]


@_leaves.register
def _(space: spaces.Discrete, path: tuple) -> list[Leaf]:
    return [Leaf(path, (), _canonical(space.dtype), space=space)]


@_leaves.register
def _(space: spaces.MultiDiscrete, path: tuple) -> list[Leaf]:
    return [Leaf(path, tuple(space.shape), _canonical(space.dtype), space=space)]


@_leaves.register
def _(space: spaces.MultiBinary, path: tuple) -> list[Leaf]:
    return [Leaf(path, tuple(space.shape), _canonical(space.dtype), space=space)]


@_leaves.register
def _(space: spaces.Dict, path: tuple) -> list[Leaf]:
    return [leaf for key, sub in space.spaces.items() for leaf in _leaves(sub, path + (key,))]


@_leaves.register
def _(space: spaces.Tuple, path: tuple) -> list[Leaf]:
    return [leaf for i, sub in enumerate(space.spaces) for leaf in _leaves(sub, path + (i,))]


def leaves(space: spaces.Space) -> list[Leaf]:
    """The leaves of ``space`` in a fixed order (Dict key order, Tuple index order)."""
    return _leaves(space, ())


def array_leaves(all_leaves: list[Leaf] | tuple[Leaf, ...]) -> tuple[Leaf, ...]:
    return tuple(leaf for leaf in all_leaves if leaf.array)


def object_leaves(all_leaves: list[Leaf] | tuple[Leaf, ...]) -> tuple[Leaf, ...]:
    return tuple(leaf for leaf in all_leaves if not leaf.array)


def is_dynamic(space: spaces.Space) -> bool:
    """True when some part of ``space`` has no fixed size (it cannot live in a static buffer)."""
    return any(not leaf.array for leaf in leaves(space))


def is_single_array(all_leaves: list[Leaf] | tuple[Leaf, ...]) -> bool:
    """True when the space is one plain array (no Dict/Tuple structure, no object part)."""
    return len(all_leaves) == 1 and all_leaves[0].path == () and all_leaves[0].array


def split(value: Any, leaf: Leaf) -> Any:
    """Pick the part of one env's observation (or a batched structure) that belongs to ``leaf``."""
    for key in leaf.path:
        value = value[key]
    return value


def same_form(space: spaces.Space, value: Any) -> bool:
    """Whether rebuilding ``value`` from its array parts (``assemble``) gives back its own form: plain
    dicts with the space's keys in its order, tuples, numpy arrays (not lists, scalars or subclasses)."""
    if isinstance(space, spaces.Dict):
        return (
            type(value) is dict
            and list(value) == list(space.spaces)
            and all(same_form(sub, value[key]) for key, sub in space.spaces.items())
        )
    if isinstance(space, spaces.Tuple):
        return (
            type(value) is tuple
            and len(value) == len(space.spaces)
            and all(same_form(sub, part) for sub, part in zip(space.spaces, value))
        )
    return type(value) is np.ndarray


def assemble(space: spaces.Space, parts: list) -> Any:
    """Rebuild the structure of ``space`` from its leaf parts (same order as ``leaves``).

    A Dict becomes a dict and a Tuple a tuple, as SB3's SubprocVecEnv and gymnasium
    return them; a space that is one leaf is its part.
    """
    it = iter(parts)

    def build(sub: spaces.Space) -> Any:
        if isinstance(sub, spaces.Dict):
            return {key: build(s) for key, s in sub.spaces.items()}
        if isinstance(sub, spaces.Tuple):
            return tuple(build(s) for s in sub.spaces)
        return next(it)

    return build(space)
