"""Space leaves, structure round trips and the action checker."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from gymnasium import spaces

from fastvec import kernels
from fastvec.errors import UnsupportedSpaceError
from fastvec.spaces import ActionChecker, assemble, leaves, split


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


@pytest.mark.parametrize(
    "space, good, bad, message",
    [
        (spaces.MultiDiscrete([2, 3]), [[1, 2], [0, 0]], [[1, 2], [0, 3]], r"env 1 is 3 \(element \(1,\)\)"),
        (spaces.MultiBinary(3), [[1, 0, 1], [0, 0, 0]], [[1, 0, 2], [0, 0, 0]], "env 0 is 2"),
        (spaces.Discrete(3, start=-1), [-1, 1], [-2, 0], "env 0 is -2"),
        (spaces.Box(-1, 1, (2,), np.float64), [[0.5, -1], [1, 1]], [[0.5, -1], [1, 1.5]], "env 1 is 1.5"),
        (spaces.Box(0, 10, (1,), np.int32), [[3], [10]], [[3], [11]], "env 1 is 11"),
    ],
)
def test_action_checker(space, good, bad, message) -> None:
    checker = ActionChecker(space, 2, kernels)
    out = np.zeros((2, *space.shape), dtype=checker.dtype)
    checker.write(np.asarray(good), out)
    np.testing.assert_array_equal(out, np.asarray(good, dtype=checker.dtype))
    with pytest.raises(ValueError, match=message):
        checker.write(np.asarray(bad), out)
