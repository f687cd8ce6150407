"""Actions on the way into the shared block, env outputs on the way out (fastvec.checks)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium import spaces

from fastvec import kernels
from fastvec.checks import ActionWriter, OutputChecks
from fastvec.errors import ShardError
from fastvec.protocol import Extra


def _writer(space: spaces.Space, check: str | None = None) -> tuple[ActionWriter, np.ndarray]:
    writer = ActionWriter(space, 2, kernels, check)
    return writer, np.zeros((2, *space.shape), dtype=writer.dtype)


@pytest.mark.parametrize(
    "space, bad, message",
    [
        # the cases: validation before the cast, naming the env and the value
        (spaces.MultiBinary(2), [[1, 0], [256, 0]], r"env 1 \(element \(0,\)\) is 256, which .* int8"),
        (spaces.Box(0, 255, (1,), np.uint8), [[3], [-1]], r"env 1 is -1, which .* uint8"),
        (spaces.Box(0, 5, (1,), np.int64), [[3.7], [1.0]], r"env 0 is 3.7, which .* int64"),
        (spaces.Discrete(3), [np.nan, 1.0], r"env 0 is nan"),
        (spaces.Discrete(3), [1.0, np.inf], r"env 1 is inf"),
    ],
)
def test_values_the_buffer_cannot_hold_are_refused(space, bad, message) -> None:
    writer, out = _writer(space)
    with pytest.raises(ValueError, match=message):
        writer.write(np.asarray(bad), out)


@pytest.mark.parametrize(
    "space, values",
    [
        (spaces.Discrete(3), np.array([1.0, 2.0])),  # whole floats are held exactly
        (spaces.Discrete(3), np.array([7, -4])),  # out of range: the env decides, as in SB3 and gymnasium
        (spaces.Box(-2, 2, (1,), np.float32), np.array([[2.7], [-9.0]])),  # a Gaussian policy's samples
        (spaces.Box(-2, 2, (1,), np.float32), np.array([[np.nan], [0.0]])),
        (spaces.MultiBinary(2), np.array([[1, 0], [5, 0]], dtype=np.int64)),
        (spaces.Box(0, 255, (1,), np.uint8), np.array([[300.0], [0.0]], dtype=np.float32)[:, :] * 0 + [[255.0], [0]]),
    ],
)
def test_values_pass_through_unchanged_by_default(space, values) -> None:
    writer, out = _writer(space)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        writer.write(values, out)
    np.testing.assert_array_equal(out, values.reshape(out.shape).astype(out.dtype))


@pytest.mark.parametrize(
    "space, good, bad, message",
    [
        (spaces.MultiDiscrete([2, 3]), [[1, 2], [0, 0]], [[1, 2], [0, 3]], r"env 1 \(element \(1,\)\) is 3"),
        (spaces.MultiBinary(3), [[1, 0, 1], [0, 0, 0]], [[1, 0, 2], [0, 0, 0]], "env 0 .* is 2"),
        (spaces.Discrete(3, start=-1), [-1, 1], [-2, 0], "env 0 is -2"),
        (spaces.Box(-1, 1, (2,), np.float64), [[0.5, -1], [1, 1]], [[0.5, -1], [1, 1.5]], "env 1 .* is 1.5"),
        (spaces.Box(0, 10, (1,), np.int32), [[3], [10]], [[3], [11]], "env 1 is 11"),
        (spaces.Box(-1, 1, (1,), np.float32), [[0.0], [1.0]], [[np.nan], [0.0]], "env 0 is NaN"),
    ],
)
def test_range_checks_when_asked(space, good, bad, message) -> None:
    writer, out = _writer(space, "raise")
    writer.write(np.asarray(good), out)
    np.testing.assert_array_equal(out, np.asarray(good, dtype=writer.dtype))
    with pytest.raises(ValueError, match=message):
        writer.write(np.asarray(bad), out)
    warner, out = _writer(space, "warn")
    with pytest.warns(RuntimeWarning, match=message):
        warner.write(np.asarray(bad), out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warner.write(np.asarray(bad), out)  # once per env


def test_shapes_and_kinds_are_always_checked() -> None:
    writer, out = _writer(spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"expected actions of shape \(2,\)"):
        writer.write(np.zeros(3, np.int64), out)
    writer.write(np.array([[1], [0]]), out)  # (n, 1) from a policy head is accepted for Discrete
    np.testing.assert_array_equal(out, [1, 0])
    with pytest.raises(ValueError, match="must be numbers"):
        writer.write(np.array(["a", "b"]), out)


def test_output_checks_warn_once_per_env_and_kind_or_raise() -> None:
    checks = OutputChecks(None, start=4)
    checks.problem(1, "step", "nan-reward", "returned a NaN reward")
    checks.problem(1, "step", "nan-reward", "returned a NaN reward")
    checks.problem(0, "step", "nan-reward", "returned a NaN reward")
    assert checks.drain(None) == [
        (5, Extra.WARNING, "returned a NaN reward"),
        (4, Extra.WARNING, "returned a NaN reward"),
    ]
    assert checks.drain(None) is None
    raising = OutputChecks("raise", start=4)
    with pytest.raises(ShardError, match="env 6") as info:
        raising.problem(2, "step", "nan-reward", "returned a NaN reward")
    assert info.value.command == "step"
    assert not OutputChecks("off", 0).active
