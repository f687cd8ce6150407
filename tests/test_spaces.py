"""Space leaves and structure round trips."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from fastvec.spaces import assemble, is_dynamic, leaves, split


def test_leaves_of_nested_spaces() -> None:
    space = spaces.Dict(
        {"img": spaces.Box(0, 255, (2, 2), np.uint8), "pair": spaces.Tuple((spaces.Discrete(3), spaces.MultiBinary(2)))}
    )
    got = [(leaf.path, leaf.shape, leaf.dtype) for leaf in leaves(space)]
    assert got == [
        (("img",), (2, 2), np.dtype(np.uint8)),
        (("pair", 0), (), np.dtype(np.int64)),
        (("pair", 1), (2,), np.dtype(np.int8)),
    ]
    sample = space.sample()
    parts = [split(sample, leaf) for leaf in leaves(space)]
    rebuilt = assemble(space, parts)
    assert type(rebuilt) is dict and isinstance(rebuilt["pair"], tuple)  # as SB3's SubprocVecEnv and gymnasium
    np.testing.assert_array_equal(rebuilt["img"], sample["img"])


def test_spaces_without_a_fixed_size_are_object_leaves() -> None:
    class Custom(spaces.Space):
        pass

    space = spaces.Dict(
        {"text": spaces.Text(5), "pos": spaces.Box(-1, 1, (2,)), "graph": spaces.Graph(spaces.Discrete(3), None)}
    )
    got = [(leaf.name, leaf.array) for leaf in leaves(space)]
    assert got == [("graph", False), ("pos", True), ("text", False)]
    assert is_dynamic(space) and not is_dynamic(spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 1, (3,)))))
    (custom,) = leaves(Custom())
    assert not custom.array and isinstance(custom.space, Custom)
