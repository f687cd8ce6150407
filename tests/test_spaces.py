"""Space leaves and structure round trips."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from gymnasium import spaces

from fastvec.errors import UnsupportedSpaceError
from fastvec.spaces import assemble, leaves, split


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
    assert isinstance(rebuilt, OrderedDict) and isinstance(rebuilt["pair"], tuple)
    np.testing.assert_array_equal(rebuilt["img"], sample["img"])


def test_unsupported_space_is_named() -> None:
    with pytest.raises(UnsupportedSpaceError, match="Text"):
        leaves(spaces.Text(5))
