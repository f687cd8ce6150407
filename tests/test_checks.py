"""Actions on the way into the shared block, env outputs on the way out (fastvec.checks)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from fastvec import kernels
from fastvec.checks import ActionWriter, OutputChecks
from fastvec.errors import ShardError
from fastvec.layout import action_buffer_dtype
from fastvec.pool import Pool
from fastvec.protocol import Extra
from fastvec.shard import _as_sent


class _Single:
    """An ActionWriter of a single-array space with its one buffer and tag; ``write`` returns the tag."""

    def __init__(self, space: spaces.Space, check: str | None) -> None:
        self.writer = ActionWriter(space, 2, kernels, check)
        self.dtype = action_buffer_dtype(np.dtype(space.dtype))
        self.tags = np.zeros(1, np.uint32)

    def write(self, actions, out) -> int:
        self.writer.write(actions, [out], self.tags)
        return int(self.tags[0])


def _writer(space: spaces.Space, check: str | None = None) -> tuple[_Single, np.ndarray]:
    writer = _Single(space, check)
    return writer, np.zeros((2, *space.shape), dtype=writer.dtype)


@pytest.mark.parametrize(
    "space, bad, message",
    [
        # whole numbers only into an integer space: checked before the cast, naming the env and the value
        (spaces.Box(0, 5, (1,), np.int64), [[3.7], [1.0]], r"env 0 is 3.7, which .* int64"),
        (spaces.MultiBinary(2), [[1, 0], [0.5, 0]], r"env 1 \(element \(0,\)\) is 0.5"),
        (spaces.Discrete(3), [np.nan, 1.0], r"env 0 is nan"),
        (spaces.Discrete(3), [1.0, np.inf], r"env 1 is inf"),
        (spaces.Discrete(3), np.array([2**63, 0], dtype=np.uint64), r"env 0 is 9223372036854775808"),
    ],
)
def test_values_the_buffer_cannot_hold_are_refused_with_check_raise(space, bad, message) -> None:
    writer, out = _writer(space, "raise")
    with pytest.raises(ValueError, match=message):
        writer.write(np.asarray(bad), out)


@pytest.mark.parametrize(
    "space, values, warned",
    [
        (spaces.Box(0, 5, (1,), np.int64), np.array([[3.7], [1.0]]), 1),
        (spaces.MultiBinary(2), np.array([[1, 0], [0.5, 0]], dtype=np.float32), 1),
        (spaces.Discrete(3), np.array([np.nan, np.inf]), 2),
        (spaces.Discrete(3), np.array([2**63, 0], dtype=np.uint64), 1),
        (spaces.Box(-1, 1, (1,), np.float32), np.array([[2**60 + 1], [0]], dtype=np.int64), 1),  # float64 would round it
        (spaces.Box(0, 1, (2,), bool), np.array([[0.5, 1.0], [2.0, 0.0]]), 2),  # (its buffer was one byte: refused)
    ],
)
def test_values_the_buffer_cannot_hold_reach_the_env_bit_for_bit(space, values, warned: int) -> None:
    """SB3 and gymnasium hand such actions to the env as sent (it was refused, a ValueError, with no check
    asked for): they travel in the buffer's bytes as the widest dtype of their kind; check="warn" warns
    once per env."""
    writer, out = _writer(space)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tag = writer.write(values, out)
    handed = _as_sent(out, tag)
    assert handed.dtype == values.dtype
    np.testing.assert_array_equal(handed, values.reshape(out.shape))
    writer, out = _writer(space, "warn")
    with pytest.warns(RuntimeWarning, match="cannot hold exactly; handed to the env as sent") as caught:
        writer.write(values, out)
    assert len(caught) == warned  # once per env whose action it cannot hold (the first such env's only, before)


def test_negative_zero_for_an_integer_space_keeps_its_sign() -> None:
    """-0.0 is a whole number, so it was cast into the int64 buffer, and the env got +0.0 (SB3 hands on -0.0)."""
    writer, out = _writer(spaces.Discrete(3), "warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (nothing to warn of)
        tag = writer.write(np.array([-0.0, 1.0]), out)
    handed = _as_sent(out, tag)
    assert handed.tolist() == [0.0, 1.0] and np.signbit(handed).tolist() == [True, False]




@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.clongdouble])
def test_complex_actions_with_no_imaginary_part_pass_a_raise_check(dtype: type) -> None:
    """check="raise" takes complex actions with no imaginary part as the real numbers they are (the README); a
    complex256 was refused as "not a real number" (its item() is no Python complex: hunt104 bug 3)."""
    space = spaces.Box(-2, 2, (2,), np.float32)
    writer, out = _writer(space, "raise")
    writer.write(np.array([[0.5, -1.5], [-2.0, 1.0]], dtype), out)
    np.testing.assert_array_equal(out, [[0.5, -1.5], [-2.0, 1.0]])
    with pytest.raises(ValueError, match=r"action for env 1 \(element \(0,\)\) is .*, not a real number"):
        writer.write(np.array([[0.5, -1.5], [1j, 1.0]], dtype), out)


def test_actions_no_8_bytes_hold_travel_pickled_as_sent() -> None:
    """float128 actions went through the float64 buffer rounded, silently, then were refused; complex, string and
    object actions were refused ("must be numbers"): SB3 and gymnasium hand the env each row as sent. Values float64
    holds reach the env through the buffer; the others travel pickled (TAG_PICKLED), each env's row as sent;
    check="raise" refuses what is not a number, and float128 values float64 would round (as it refuses them in an
    object array: hunt98 bug 1), and range-checks float128."""
    from fastvec.protocol import TAG_PICKLED

    space = spaces.Box(-2, 2, (2,), np.float32)
    for check in (None, "raise"):
        writer, out = _writer(space, check)
        exact = np.array([[0.5, -1.5], [-2.0, 1.0]] if check else [[0.5, np.nan], [-np.inf, 1.0]], np.longdouble)
        handed = _as_sent(out, writer.write(exact, out))
        assert handed.dtype == np.longdouble
        np.testing.assert_array_equal(handed, exact)
        finer = exact.copy()
        finer[1, 1] += np.longdouble(2) ** -60
        if check == "raise":
            with pytest.raises(ValueError, match=r"action for env 1 \(element \(1,\)\) is .*, which the action buffer's "
                               r"dtype float64 .* cannot hold exactly"):  # fmt: skip
                writer.writer.write(finer, [out], writer.tags)
            continue
        objects = writer.writer.write(finer, [out], writer.tags)
        assert writer.tags[0] == TAG_PICKLED and len(objects) == 1 and [row.dtype for row in objects[0]] == [np.longdouble] * 2
        np.testing.assert_array_equal(np.stack(objects[0]), finer)  # (not rounded)
    _, out = _writer(space, "raise")
    # (numpy 2's repr of the value, np.longdouble('3.0...09'), or numpy 1's, 3.0...09)
    with pytest.raises(ValueError, match=r"action for env 1 \(element \(1,\)\) is (np.longdouble\(')?3.0+9('\))?, outside Box"):
        _writer(space, "raise")[0].writer.write(np.array([[0, 0], [0, 3]], np.longdouble) + np.longdouble(2) ** -60, [out], np.zeros(1, np.uint32))
    for values in (np.array([[1j, 0], [0, 0]]), np.array([["a", "b"], ["c", "d"]]), [[None, 1.5], ["x", 2]]):
        writer, out = _writer(space)
        objects = writer.writer.write(values, [out], writer.tags)
        assert writer.tags[0] == TAG_PICKLED and [list(row) for row in objects[0]] == [list(row) for row in values]
        with pytest.raises(ValueError, match=r"action for env 0 \(element \(0,\)\) is .*, not a real number"):
            _writer(space, "raise")[0].write(values, out)
    # with check="raise", real numbers of another kind go through the rows, and the first env without them is named
    writer, out = _writer(space, "raise")
    writer.write(np.array([[0.5, 1], [1 + 0j, -1]], dtype=object), out)
    np.testing.assert_array_equal(out, [[0.5, 1], [1, -1]])
    with pytest.raises(ValueError, match=r"action for env 1 \(element \(1,\)\) is 'x', not a real number"):
        writer.write(np.array([[0.5, 1], [1, "x"]], dtype=object), out)
    with pytest.raises(ValueError, match=r"action for env 1 \(element \(1,\)\) is 'x', not a real number"):
        writer.write([[0.5, 1], [1, "x"]], out)  # (a list: numpy made every row strings, and env 0 was named)
    # ints past float64's precision, exact in the buffer or refused (they were rounded through float64, or past 64
    # bits passed unchecked)
    writer, out = _writer(spaces.Box(0, 2**64 - 1, (2,), np.uint64), "raise")
    writer.write(np.array([[2**64 - 1, 0], [2**63 + 1, 0]], dtype=object), out)
    assert out.tolist() == [[2**64 - 1, 0], [2**63 + 1, 0]]
    writer, out = _writer(spaces.Discrete(2), "raise")
    with pytest.raises(ValueError, match=r"action for env 0 is 1180591620717411303424, which the action buffer's"):
        writer.write(np.array([2**70, 0], dtype=object), out)


@pytest.mark.parametrize(
    "space, values",
    [
        (spaces.Discrete(3), np.array([1.0, 2.0])),  # whole floats are held exactly (and handed on as floats)
        (spaces.Discrete(3), np.array([7, -4])),  # out of range: the env decides, as in SB3 and gymnasium
        (spaces.Box(-2, 2, (1,), np.float32), np.array([[2.7], [-9.0]])),  # a Gaussian policy's samples
        (spaces.Box(-2, 2, (1,), np.float32), np.array([[np.nan], [0.0]])),
        (spaces.MultiBinary(2), np.array([[1, 0], [256, 0]], dtype=np.int64)),  # was cast to 0 before
        (spaces.Box(0, 255, (1,), np.uint8), np.array([[-1], [0]], dtype=np.int16)),  # was cast to 255 before
        (spaces.Box(-1, 1, (1,), np.float32), np.array([[0.1], [0.2]], dtype=np.float64)),  # not rounded to float32
    ],
)
def test_values_pass_through_unchanged_by_default(space, values) -> None:
    writer, out = _writer(space)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tag = writer.write(values, out)
    np.testing.assert_array_equal(out, values.reshape(out.shape))  # exactly, in the widened buffer
    handed = _as_sent(out, tag)
    assert handed.dtype == values.dtype  # the env gets them in the dtype they were sent in
    np.testing.assert_array_equal(handed, values.reshape(out.shape))


@pytest.mark.parametrize(
    "space, good, bad, message",
    [
        (spaces.MultiDiscrete([2, 3]), [[1, 2], [0, 0]], [[1, 2], [0, 3]], r"env 1 \(element \(1,\)\) is 3"),
        (spaces.MultiBinary(3), [[1, 0, 1], [0, 0, 0]], [[1, 0, 2], [0, 0, 0]], "env 0 .* is 2"),
        (spaces.Discrete(3, start=-1), [-1, 1], [-2, 0], "env 0 is -2"),
        (spaces.Box(-1, 1, (2,), np.float64), [[0.5, -1], [1, 1]], [[0.5, -1], [1, 1.5]], "env 1 .* is 1.5"),
        (spaces.Box(0, 10, (1,), np.int32), [[3], [10]], [[3], [11]], "env 1 is 11"),
        (spaces.Box(-1, 1, (1,), np.float32), [[0.0], [1.0]], [[np.nan], [0.0]], "env 0 is NaN"),
        # integer bounds past 2**53, compared as integers (float64 made 2**60 + 2 equal to a bound of 2**60 + 1)
        (spaces.Box(0, 2**60 + 1, (1,), np.int64), [[2**60 + 1], [0]], [[0], [2**60 + 2]], "env 1 is 1152921504606846978"),
        (spaces.Box(-(2**62), 0, (1,), np.int64), [[-(2**62)], [0]], [[-(2**62) - 1], [0]], "env 0 is -4611686018427387905"),
        (spaces.Box(0, 2**63 + 1, (1,), np.uint64), np.array([[2**63 + 1], [0]], np.uint64),
         np.array([[2**63 + 2], [0]], np.uint64), "env 0 is 9223372036854775810"),  # fmt: skip
        (spaces.Box(0, 2**63 + 1, (1,), np.uint64), np.array([[5], [0]], np.int64), np.array([[-1], [0]], np.int64),
         "env 0 is -1"),  # fmt: skip
    ],
)
def test_range_checks_when_asked(space, good, bad, message) -> None:
    writer, out = _writer(space, "raise")
    writer.write(np.asarray(good), out)
    np.testing.assert_array_equal(out, np.asarray(good, dtype=writer.dtype))
    with pytest.raises(ValueError, match=message):
        writer.write(np.asarray(bad), out)
    assert not space.contains(np.asarray(bad)[int(message.split()[1])].astype(space.dtype))  # (as gymnasium says)
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
    with pytest.raises(ValueError, match="action for env 0 is 'a', not a real number"):
        _writer(spaces.Discrete(2), "raise")[0].write(np.array(["a", "b"]), out)  # (unchecked, they go to the env)


def test_actions_whose_rows_differ_in_shape_name_the_env() -> None:
    """A list with one env's action of another shape: numpy's "inhomogeneous shape" error named no env."""
    box = spaces.Box(-1, 1, (3,), np.float32)
    writer = ActionWriter(box, 2, kernels)
    out, tags = np.zeros((2, 3), np.float64), np.zeros(1, np.uint32)
    with pytest.raises(ValueError, match=r"action for env 1 has shape \(2,\); Box.* takes \(3,\)"):
        writer.write([[0, 0, 0], [0, 0]], [out], tags)
    with pytest.raises(ValueError, match=r"action for env 7 has shape \(2,\)"):  # (a batch's rows: their env ids)
        writer.write([[0, 0, 0], [0, 0]], [out], tags, env_ids=[4, 7])
    # rows of different shapes that each hold the space's values are taken, as SB3 and gymnasium take them
    writer.write([[0.5, 0.25, 0.0], np.array([[0.1, 0.2, 0.3]])], [out], tags)
    np.testing.assert_array_equal(out, [[0.5, 0.25, 0.0], [0.1, 0.2, 0.3]])
    one = ActionWriter(spaces.Box(-1, 1, (1,), np.float32), 2, kernels)
    out1 = np.zeros((2, 1), np.float64)
    one.write([0.5, np.array([0.25])], [out1], tags[:1])
    np.testing.assert_array_equal(out1, [[0.5], [0.25]])
    space = spaces.Dict({"a": spaces.Discrete(2), "b": box})
    writer = ActionWriter(space, 2, kernels)
    buffers, tags = [np.zeros(2, np.int64), np.zeros((2, 3), np.float64)], np.zeros(2, np.uint32)
    per_env = [{"a": 0, "b": np.zeros(3)}, {"a": 1, "b": np.zeros(2)}]
    with pytest.raises(ValueError, match=r"action for env 1 \(part 'b'\) has shape \(2,\)"):
        writer.write(per_env, buffers, tags, per_env=True)


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


def test_structured_actions_batched_or_one_per_env() -> None:
    space = spaces.Dict({"move": spaces.Discrete(3), "aim": spaces.Box(-1, 1, (2,), np.float32), "say": spaces.Text(5)})
    writer = ActionWriter(space, 2, kernels)
    assert [leaf.name for leaf in writer.leaves] == ["aim", "move", "say"]  # gymnasium's Dict sorts its keys
    buffers, tags = [np.zeros((2, 2), np.float64), np.zeros(2, np.int64)], np.zeros(2, np.uint32)
    objects = writer.write(
        {"move": np.array([2, 0]), "aim": np.array([[0.5, -1], [9, 0]]), "say": ("hi", "yo")}, buffers, tags
    )
    assert buffers[1].tolist() == [2, 0] and buffers[0].tolist() == [[0.5, -1], [9, 0]] and objects == [["hi", "yo"]]
    per_env = [{"move": 1, "aim": np.zeros(2), "say": "a"}, {"move": 2, "aim": np.ones(2), "say": "b"}]
    assert writer.write(per_env, buffers, tags, per_env=True) == [["a", "b"]]
    assert buffers[1].tolist() == [1, 2] and buffers[0].tolist() == [[0, 0], [1, 1]]
    # a dict is never one action per env (SB3 would iterate its keys): gymnasium's batch, where SB3's layout is asked
    batched = {"move": np.array([0, 1]), "aim": np.array([[0.25, 0], [0, 0]]), "say": ("c", "d")}
    assert writer.write(batched, buffers, tags, per_env=True) == [["c", "d"]]
    assert buffers[1].tolist() == [0, 1] and buffers[0].tolist() == [[0.25, 0], [0, 0]]
    with pytest.raises(ValueError, match=r"env 1 \(part 'move'\) is 1.5"):
        ActionWriter(space, 2, kernels, "raise").write(
            {"move": np.array([2, 1.5]), "aim": np.zeros((2, 2)), "say": ("a", "b")}, buffers, tags
        )
    with pytest.raises(ValueError, match="no part 'say'") as missing:
        writer.write({"move": np.array([2, 1]), "aim": np.zeros((2, 2))}, buffers, tags)
    assert isinstance(missing.value, KeyError)  # (as gymnasium raises it)
    with pytest.raises(ValueError, match="expected 2 actions for part 'say'"):
        writer.write({"move": np.array([2, 1]), "aim": np.zeros((2, 2)), "say": ("a",)}, buffers, tags)
    # an action space that is one object part has no part to name (it was called 'obs', the root leaf's name)
    with pytest.raises(ValueError, match=r"^expected 2 actions \(Text\("):
        ActionWriter(spaces.Text(5), 2, kernels).write(("a",), [], tags)


class _CastAndNaN(gym.Env):
    """float64 observations for a float32 Box, and NaN rewards, from every env."""

    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        return np.zeros(2), {}

    def step(self, action):
        return np.zeros(2), float("nan"), False, False, {}


@pytest.mark.parametrize("check", [None, "warn"])
def test_every_env_is_warned_once_not_only_the_first_of_its_shard(check) -> None:
    """The kernels name the first cast observation and NaN reward of a step: the envs after it in the
    shard are looked at too (only the first env of each shard was ever warned)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Pool([_CastAndNaN] * 4, num_workers=2, start_method="fork", check=check) as pool:
            pool.reset()
            for _ in range(3):
                pool.step(np.zeros(4, np.int64))
    said = [str(w.message) for w in caught if "fastvec" in str(w.message)]
    for env in range(4):
        assert sum(f"env {env} returned a NaN reward" in m for m in said) == 1, said
        assert sum(f"env {env} returned an observation of dtype float64" in m for m in said) == 1, said


def test_asynchronous_batches_name_the_env_of_an_action() -> None:
    """send(actions, env_ids): a refused or out-of-range action names its env id (it named its row in the
    batch), and each env is warned once (warnings were kept per row)."""
    with Pool([_CastAndNaN] * 4, batch_size=2, num_workers=2, start_method="fork", check="warn") as pool:
        pool.async_reset()
        got = sorted([pool.recv().env_ids, pool.recv().env_ids], key=lambda ids: ids[0])
        with pytest.warns(RuntimeWarning, match="action for env 2 is 3.7"):  # (handed on: no check="raise")
            pool.send(np.array([3.7, 0.0]), got[1])
        pool.recv()
        with pytest.warns(RuntimeWarning) as caught:
            for ids in got:
                pool.send(np.array([0, 7]), ids)
        said = [str(w.message) for w in caught if "outside" in str(w.message)]
        assert any("action for env 1 is 7" in m for m in said) and any("action for env 3 is 7" in m for m in said)


# -- what check= promises, as the README says it (hunt98) -----------------------------------------
class _Observes(gym.Env):
    """Returns ``value`` as its observation; rewards ``reward``; records each action's dtype in its info."""

    observation_space = spaces.Discrete(3)
    action_space = spaces.Discrete(3)

    def __init__(self, value=0, reward=0.0, observation_space=None, action_space=None) -> None:
        self.value, self.reward = value, reward
        if observation_space is not None:
            self.observation_space = observation_space
        if action_space is not None:
            self.action_space = action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.value, {}

    def step(self, action):
        return self.value, self.reward, False, False, {"dtype": str(np.asarray(action).dtype)}


def _said(check, fns, act) -> str:
    """What ``act(venv)`` gave with ``check``: "raised: ...", "warned: ..." or "silent"."""
    from fastvec import SubprocVecEnv

    with SubprocVecEnv(fns, start_method="fork", num_workers=2, check=check) as venv:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                act(venv)
            except (ValueError, OverflowError) as exc:
                return f"raised: {str(exc).splitlines()[0]}"
    said = [str(w.message) for w in caught if "fastvec" in str(w.message)]
    return f"warned: {said[0]}" if said else "silent"


def test_float128_actions_float64_would_round_are_refused_or_warned_of() -> None:
    """check="raise" / "warn" let a float128 Box action that float64 would round through without a word (hunt98 bug 1),
    where the same value in an object array was refused."""
    if np.longdouble(1) / 3 == np.float64(np.longdouble(1) / 3):
        pytest.skip("longdouble is float64 here")
    box = spaces.Box(-1, 1, (2,), np.float32)
    fns = [lambda: _Observes(np.zeros(1, np.float32), 0.0, spaces.Box(-1, 1, (1,), np.float32), box)] * 2
    actions = np.array([[1, 2], [1, 2]], dtype=np.longdouble) / 3

    def step(venv) -> None:
        venv.reset()
        venv.step(actions)

    assert _said("raise", fns, step).startswith("raised: action for env 0 (element (0,)) is np.longdouble(")
    assert "cannot hold exactly; handed to the env as sent" in _said("warn", fns, step)
    assert _said(None, fns, step) == "silent"  # (unchecked: pickled, as the references hand it on)


@pytest.mark.parametrize("kind", ["object", "complex"])
def test_warn_says_what_raise_refuses_in_object_and_complex_actions(kind: str) -> None:
    """check="raise" refused [1, 5] for Discrete(3) sent as an object or complex array; "warn" said nothing (hunt98
    bug 5)."""
    actions = np.array([1, 5], dtype=object) if kind == "object" else np.array([1 + 0j, 5 + 0j])
    fns = [_Observes] * 2

    def step(venv) -> None:
        venv.reset()
        venv.step(actions)

    assert "action for env 1 is 5, outside Discrete(3)" in _said("raise", fns, step)
    assert _said("warn", fns, step).startswith("warned: fastvec: action for env 1 is 5, outside Discrete(3)")
    odd = np.array([1, "x"], dtype=object)
    assert "action for env 1 is 'x', not a real number" in _said("warn", fns, lambda v: (v.reset(), v.step(odd)))


@pytest.mark.parametrize("check", [None, "raise"])
def test_a_numpy_scalar_observation_of_another_dtype_is_said_as_an_arrays_is(check) -> None:
    """np.float64(2.5) for a Discrete space was stored as 2 without a word, even with check="raise", where
    np.array(2.5) was warned of or refused (hunt98 bug 2)."""
    for value in (np.array(2.5), np.float64(2.5)):
        said = _said(check, [lambda value=value: _Observes(value)] * 2, lambda venv: venv.reset())
        if check == "raise":
            assert said.startswith("raised: ") and "of dtype float64; the observation space says int64 (which check='raise' refuses)" in said
        else:
            assert said.startswith("warned: ") and "of dtype float64; the observation space says int64 (values were cast)" in said
    assert _said(check, [lambda: _Observes(np.int64(2))] * 2, lambda venv: venv.reset()) == "silent"


def test_a_reward_or_an_action_past_float64_is_named_without_its_digits() -> None:
    """A reward of 10**400 was "not a number", printed whole; 10**5000 (or an action of it with check="raise") gave
    Python's refusal to print it (hunt98 bug 6). gymnasium and SB3 raise numpy's OverflowError."""
    from fastvec import EnvError, SubprocVecEnv

    for exponent in (400, 5000):
        with SubprocVecEnv([_Observes, lambda e=exponent: _Observes(0, 10**e)], start_method="fork", num_workers=2) as venv:
            venv.reset()
            with pytest.raises(EnvError) as info:
                venv.step(np.zeros(2, np.int64))
        first = str(info.value).splitlines()[0]
        assert isinstance(info.value, OverflowError) and info.value.env_index == 1, first
        assert "does not fit a float64" in first and "0" * 90 not in first and "digits" not in first, first
    actions = np.empty(2, dtype=object)
    actions[:] = [1, 10**5000]
    said = _said("raise", [_Observes] * 2, lambda v: (v.reset(), v.step(actions)))
    assert said.startswith("raised: action for env 1 is an int of 16,610 bits"), said


class _Spaceless(_Observes):
    @property
    def observation_space(self):  # (a space built lazily from a config that is missing)
        raise RuntimeError("observation space not configured")


@pytest.mark.parametrize("culprit", [1, 3])
def test_an_env_whose_spaces_cannot_be_read_is_named(culprit: int) -> None:
    """Env 3's observation_space raising was said as env 2's (its worker's first env); env 1's, stepped by the calling
    process, as a bare RuntimeError naming no env (hunt98 bug 3). A factory returning None: the same."""
    from fastvec import EnvError, SubprocVecEnv

    fns = [_Spaceless if i == culprit else _Observes for i in range(4)]
    with pytest.raises(EnvError, match=rf"^env {culprit} raised RuntimeError during 'make \(reporting spaces\)': "
                       "observation space not configured") as info:  # fmt: skip
        SubprocVecEnv(fns, start_method="fork", num_workers=2)
    assert isinstance(info.value, RuntimeError) and info.value.env_index == culprit
    fns = [(lambda: None) if i == culprit else _Observes for i in range(4)]
    with pytest.raises(EnvError, match=rf"^env {culprit} raised TypeError during 'make \(reporting spaces\)': its factory "
                       r"returned None \(NoneType\), not a gymnasium env"):  # fmt: skip
        SubprocVecEnv(fns, start_method="fork", num_workers=2)


def test_a_nan_action_in_an_object_array_is_no_value_float64_cannot_hold() -> None:
    """NaN in an object or complex array was "a value the buffer's dtype float64 cannot hold exactly", refused with
    check="raise" and warned of with "warn" (hunt101 bug 4): float64 holds NaN. Outside a Box's bounds it is not."""
    box = spaces.Box(-1, 1, (2,), np.float64)
    for kind in (object, complex):
        actions = np.array([[0.5, 0.0], [np.nan, 0.0]], dtype=kind)
        writer, out = _writer(box, "raise")
        with pytest.raises(ValueError, match=r"action for env 1 \(element \(0,\)\) is NaN, outside Box"):
            writer.write(actions, out)
