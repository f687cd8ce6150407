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


def test_leaves_of_copied_spaces_have_numpy_s_own_dtypes() -> None:
    """A space that came through a pickle or a deepcopy (a worker's, the pool's copy of env 0's) has dtypes equal to
    numpy's own but other objects, for which numpy takes slower paths: the leaves hold numpy's own."""
    import copy
    import pickle

    space = spaces.Dict({"a": spaces.Box(-1, 1, (3,), np.float32), "b": spaces.Discrete(3), "c": spaces.MultiBinary(2),
                         "d": spaces.Box(0, 1, (2,), ">f4")})  # fmt: skip
    for copied in (copy.deepcopy(space), pickle.loads(pickle.dumps(space))):
        assert copied["a"].dtype is not np.dtype(np.float32)  # (what makes this test necessary)
        dtypes = {leaf.path[0]: leaf.dtype for leaf in leaves(copied)}
        assert dtypes["a"] is np.dtype(np.float32) and dtypes["b"] is np.dtype(np.int64)
        assert dtypes["c"] is np.dtype(np.int8) and dtypes["d"] == np.dtype(">f4")


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
