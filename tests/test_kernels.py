"""The compiled kernels and their pure-Python twin, checked against numpy and each other."""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from multiprocessing import shared_memory

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastvec import _kernels_py
from fastvec.protocol import Control
from tests import envs

try:
    from fastvec import _kernels as _compiled
except ImportError:  # pragma: no cover - unbuilt checkout
    _compiled = None

pytestmark = pytest.mark.one_pass  # both twins are tested here whichever the engine loads

IMPLS = [pytest.param(_kernels_py, id="python")]
IMPLS.append(
    pytest.param(_compiled, id="cython", marks=pytest.mark.skipif(_compiled is None, reason="extension not built"))
)

DTYPES = [np.float32, np.float64, np.uint8, np.int64, np.int8, np.bool_]


@pytest.mark.parametrize("k", IMPLS)
@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    row_shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
    rows=st.integers(1, 6),
    data=st.data(),
)
def test_gather_rows_matches_numpy(k, dtype, row_shape, rows, data) -> None:
    dst = np.zeros((rows + 2, *row_shape), dtype=dtype)
    start = data.draw(st.integers(0, 2))
    items = [data.draw(hnp.arrays(dtype, row_shape)) for _ in range(rows)]
    # some items arrive as another dtype or non-contiguous: they must be cast like numpy casts
    if rows > 1 and np.dtype(dtype).kind == "f":
        items[0] = items[0].astype(np.float64)
    elif rows > 1 and np.dtype(dtype).kind in "iu":
        items[0] = items[0].astype(np.int16 if dtype != np.uint8 else np.uint16)
    if len(row_shape) >= 2:
        items[-1] = np.asfortranarray(items[-1])
    expected = dst.copy()
    expected[start : start + rows] = np.stack([np.asarray(x, dtype=dtype) for x in items])
    assert k.gather_rows(items, dst, start) == -1
    np.testing.assert_array_equal(dst, expected)


@pytest.mark.parametrize("k", IMPLS)
def test_gather_rows_reports_first_bad_shape(k) -> None:
    dst = np.zeros((4, 3), dtype=np.float32)
    assert k.gather_rows([np.ones(3), np.ones(2), np.ones(3)], dst, 0) == 1
    assert k.gather_rows([1.0, 2.0], np.zeros((2,), np.float32), 0) == -1  # scalars into 0-d rows
    with pytest.raises(IndexError):
        k.gather_rows([np.ones(3)] * 3, dst, 2)
    f32 = np.ones(3, np.float32)
    assert k.gather_rows([f32, f32, np.ones(3)], dst, 0, True) == -2 - 2  # cast reported, rows still written
    np.testing.assert_array_equal(dst[:3], 1)
    assert k.gather_rows([f32, np.ones(3)], dst, 0, False) == -1
    # the same type in the other byte order is another dtype too (final observations stay the env's own)
    big = np.zeros((2, 3), dtype=">i2")
    assert k.gather_rows([np.arange(3, dtype=">i2"), np.arange(3, dtype="<i2")], big, 0, True) == -2 - 1
    np.testing.assert_array_equal(big, [[0, 1, 2], [0, 1, 2]])
    assert k.gather_rows([np.arange(3, dtype=">i2")] * 2, big, 0, True) == -1


@pytest.mark.parametrize("k", IMPLS)
def test_first_nan(k) -> None:
    values = np.array([0.0, np.nan, 1.0, np.nan])
    assert k.first_nan(values, 0, 4) == 1
    assert k.first_nan(values, 2, 4) == 3
    assert k.first_nan(values, 2, 3) == -1


@pytest.mark.parametrize("k", IMPLS)
@given(values=st.lists(st.one_of(st.floats(width=32, allow_nan=False), st.integers(-1000, 1000), st.booleans()), max_size=20))
def test_store_floats_and_bools(k, values) -> None:
    dst = np.zeros(len(values) + 1, dtype=np.float64)
    k.store_floats(values, dst, 1)
    np.testing.assert_array_equal(dst[1:], np.asarray([float(v) for v in values], dtype=np.float64))
    flags = np.zeros(len(values) + 1, dtype=np.uint8)
    k.store_bools(values, flags, 1)
    np.testing.assert_array_equal(flags[1:], np.asarray([bool(v) for v in values], dtype=np.uint8))


@pytest.mark.parametrize("k", IMPLS)
@given(flags=hnp.arrays(np.bool_, st.tuples(st.integers(1, 40), st.just(2))), data=st.data())
def test_done_flags_match_numpy(k, flags, data) -> None:
    terminated, truncated = flags[:, 0].copy(), flags[:, 1].copy()
    rewards = data.draw(hnp.arrays(np.float64, len(flags), elements=st.floats(allow_nan=True, width=64)))
    dones, copied, ended = k.done_flags(terminated, truncated, rewards)
    np.testing.assert_array_equal(dones, terminated | truncated)
    assert dones.dtype == np.bool_ and copied.dtype == np.float64
    np.testing.assert_array_equal(copied, rewards)
    assert ended == np.flatnonzero(terminated | truncated).tolist()
    # new arrays, not views of the ring: the next step must not change what the caller holds
    rewards[:] = 7.0
    terminated[:] = True
    assert not np.shares_memory(copied, rewards) and (dones == (flags[:, 0] | flags[:, 1])).all()


@pytest.mark.parametrize("k", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, ">f4", np.int64])
def test_row_copies_are_each_their_own_copy(k, dtype) -> None:
    src = np.arange(5 * 2 * 3).reshape(5, 2, 3).astype(dtype)
    rows = k.row_copies(src, [3, 0, 3])
    assert len(rows) == 3
    for row, i in zip(rows, [3, 0, 3]):
        np.testing.assert_array_equal(row, src[i])
        assert row.dtype == src.dtype and row.shape == (2, 3) and row.flags.owndata
    rows[0][...] = 99  # nothing shared: not the source, not the other copy of the same row
    assert src[3, 0, 0] == 18 and rows[2][0, 0] == 18
    assert k.row_copies(src, []) == []
    np.testing.assert_array_equal(k.row_copies(src[:, 0], [4])[0], src[4, 0])  # a strided source
    # rows of 1-D: numpy scalars, as src[i].copy() gives (the compiled kernel made 0-d arrays: hunt86 bug 1)
    for src in (np.arange(4.0), np.arange(4), np.arange(8)[::2]):
        row = k.row_copies(src, [2])[0]
        assert type(row) is type(src[2]) and row == src[2]
    with pytest.raises(IndexError, match="row 5"):
        k.row_copies(src, [5])
    with pytest.raises(IndexError, match="row -1"):
        k.row_copies(src, [-1])


@pytest.mark.parametrize("k", IMPLS)
def test_copy_same_copies_only_an_exact_match(k) -> None:
    out = np.zeros((4, 2), np.int64)
    actions = np.arange(8, dtype=np.int64).reshape(4, 2)
    assert k.copy_same(out, actions) is True and out.tolist() == actions.tolist()
    assert k.copy_same(out, out) is True and out.tolist() == actions.tolist()  # (the buffer itself)
    np.testing.assert_array_equal(k.copy_same(np.zeros(3, np.longlong), np.ones(3, np.int64)), True)  # equivalent types
    for other in (
        np.ones((4, 2), np.int32),  # another dtype: the caller checks and casts
        np.ones((2, 4), np.int64),  # another shape
        np.ones((4, 1), np.int64),
        np.ones((4, 4), np.int64)[:, :2],  # not contiguous
        np.ones((4, 2), ">i8"),  # swapped
        np.ones((4, 2), np.int64).view(np.matrix),  # a subclass
        [[1, 1]] * 4,  # not an array
    ):
        before = out.copy()
        assert k.copy_same(out, other) is False, other
        assert out.tolist() == before.tolist()  # nothing copied
    readonly = np.zeros((4, 2), np.int64)
    readonly.flags.writeable = False
    assert k.copy_same(readonly, actions) is False
    floats = np.zeros(3)
    assert k.copy_same(floats, np.array([0.5, np.nan, -1.0])) and np.isnan(floats[1])


@pytest.mark.parametrize("k", IMPLS)
def test_done_flags_refuse_wrong_dtypes_and_lengths(k) -> None:
    flags, rewards = np.zeros(4, np.bool_), np.zeros(4)
    with pytest.raises(ValueError, match="terminated"):
        k.done_flags(np.zeros(4, np.uint8), flags, rewards)
    with pytest.raises(ValueError, match="rewards"):
        k.done_flags(flags, flags, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="3 rewards"):
        k.done_flags(flags, flags, np.zeros(3))


@pytest.mark.parametrize("k", IMPLS)
def test_step_into_steps_in_order_and_stops_at_the_env_that_raised(k) -> None:
    calls = []

    def env(i):
        def step(action):
            calls.append((i, action))
            if action == 99:
                raise RuntimeError(f"env {i}")
            return (i, action)

        return step

    results: list = []
    k.step_into(results, [env(i) for i in range(3)], np.array([5, 6, 7]))
    assert results == [(0, 5), (1, 6), (2, 7)] and [type(a) for _, a in calls] == [np.int64] * 3
    results, calls[:] = [], []
    with pytest.raises(RuntimeError, match="env 1"):
        k.step_into(results, [env(i) for i in range(3)], [5, 99, 7])
    assert results == [(0, 5)] and calls == [(0, 5), (1, 99)]  # env 2 not stepped: the caller resumes
    k.step_into(results, [env(i) for i in range(3)], [5, 99, 7], 2)
    assert results == [(0, 5), (2, 7)]


@pytest.mark.parametrize("k", IMPLS)
def test_step_into_times_each_env_when_given_the_timing_array(k) -> None:
    """The monitor's per-env timing: each env's step time (ns, times ``scale``) is added at
    ``offset + j``; the others' entries stay; an env that raised adds nothing."""

    def sleeper(seconds):
        def step(action):
            if action == 99:
                raise RuntimeError("boom")
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
            return action

        return step

    env_ns = np.full(6, 5.0)
    results: list = []
    k.step_into(results, [sleeper(0.002), sleeper(0.0)], np.array([1, 2]), 0, env_ns, 3, 8.0)
    assert results == [1, 2]
    assert env_ns[[0, 1, 2, 5]].tolist() == [5.0] * 4
    assert 8 * 2e6 <= env_ns[3] - 5.0 < 8 * 50e6 and 0 <= env_ns[4] - 5.0 < env_ns[3] - 5.0
    with pytest.raises(RuntimeError, match="boom"):
        k.step_into([], [sleeper(0.0), sleeper(0.0)], [1, 99], 0, env_ns, 0, 1.0)
    assert env_ns[1] == 5.0 and env_ns[0] > 5.0
    with pytest.raises(IndexError, match="outside a timing array"):
        k.step_into([], [sleeper(0.0)] * 2, [1, 2], 0, env_ns, 5, 1.0)


@pytest.mark.parametrize("k", IMPLS)
def test_info_dicts_are_each_their_own(k) -> None:
    infos = k.info_dicts(3, "TimeLimit.truncated", False)
    assert infos == [{"TimeLimit.truncated": False}] * 3
    infos[0]["x"] = 1
    assert infos[1] == {"TimeLimit.truncated": False}
    assert k.info_dicts(0, "a", 1) == []


@pytest.mark.parametrize("k", IMPLS)
@given(
    per_env=st.integers(1, 4),
    envs=st.integers(1, 8),
    data=st.data(),
)
def test_range_checks_match_numpy(k, per_env, envs, data) -> None:
    low = np.array(data.draw(st.lists(st.integers(-5, 0), min_size=per_env, max_size=per_env)), dtype=np.int64)
    high = low + np.array(data.draw(st.lists(st.integers(0, 5), min_size=per_env, max_size=per_env)), dtype=np.int64)
    values = data.draw(hnp.arrays(np.int64, envs * per_env, elements=st.integers(-7, 7)))
    bad = np.flatnonzero((values.reshape(-1, per_env) < low) | (values.reshape(-1, per_env) > high))
    assert k.first_outside_int(values, low, high) == (int(bad[0]) if bad.size else -1)
    for dtype in (np.float32, np.float64):
        fvalues = data.draw(hnp.arrays(dtype, envs * per_env, elements=st.floats(-7, 7, width=32)))
        if data.draw(st.booleans()):
            fvalues[data.draw(st.integers(0, fvalues.size - 1))] = np.nan
        flow, fhigh = low.astype(np.float64), high.astype(np.float64)
        v = fvalues.reshape(-1, per_env)
        fbad = np.flatnonzero(~((v >= flow) & (v <= fhigh)))
        assert k.first_outside_float(fvalues, flow, fhigh) == (int(fbad[0]) if fbad.size else -1)


@pytest.mark.serial
@pytest.mark.parametrize("k", IMPLS)
def test_wait_returns_at_once_when_done_and_times_out_otherwise(k) -> None:
    words = np.zeros(64, dtype=np.uint32)
    words[0] = 5
    words[16] = 5
    index = np.array([0, 16], dtype=np.intp)
    assert k.wait_all(words, index, 5, 0, 1_000_000) == -1
    words[16] = 4
    began = time.monotonic()
    assert k.wait_all(words, index, 5, 10_000, 50_000_000) == 1  # the second word is pending
    assert 0.04 < time.monotonic() - began < 1.0
    assert words[17] == 0, "the waiting flag is cleared on return"
    k.publish(words, 16, 5)
    assert words[16] == 5
    k.publish(words, 16, 2**32 - 1)
    assert k.wait_all(words, index[1:], 2**32 - 1, 0, 0) == -1


@pytest.mark.serial
@pytest.mark.parametrize("k", IMPLS)
@pytest.mark.parametrize("spin_ns", [10_000_000_000, -10_000_000_000, 2**63 - 1])
def test_a_poll_longer_than_the_wait_ends_with_the_wait(k, spin_ns: int) -> None:
    """A wait polls for |spin_ns|, but never past its own timeout: with spin_ns=10 s a wait of 50 ms (the
    step_timeout and liveness checks behind it) took 10 s; near 2**63 the poll's end overflowed."""
    words = np.zeros(3 * 32, dtype=np.uint32)
    remaining, done, seqs = 64, np.array([16], dtype=np.intp), np.array([1], np.uint32)
    for wait, timed_out in (
        (lambda: k.wait_all(words, np.array([16], dtype=np.intp), 1, spin_ns, 50_000_000), 0),  # (the word pending)
        (lambda: k.wait_remaining(words, remaining, done, seqs, spin_ns, 50_000_000), 0),
        (lambda: k.wait_any(words, remaining, done, seqs, spin_ns, 50_000_000), -1),  # (nobody done)
    ):
        began = time.monotonic()
        assert wait() == timed_out
        assert time.monotonic() - began < 2.0


def _publisher(impl_name: str, name: str, rounds: int) -> None:
    from multiprocessing import shared_memory

    from fastvec import _kernels_py

    k = _kernels_py
    if impl_name == "cython":
        from fastvec import _kernels as k
    block = shared_memory.SharedMemory(name=name)
    words = np.ndarray((64,), dtype=np.uint32, buffer=block.buf)
    index = np.array([0], dtype=np.intp)
    for r in range(1, rounds + 1):  # ping-pong: wait for the parent's r, answer with r
        assert k.wait_all(words, index, r, 0, 5_000_000_000) == -1
        k.publish(words, 16, r)
    del words
    block.close()


@pytest.mark.parametrize("k", IMPLS)
@pytest.mark.parametrize("spin_ns", [0, 20_000, -20_000])  # sleep at once, busy-poll, yield-poll
def test_cross_process_ping_pong_through_futex(k, spin_ns) -> None:
    """Two processes hand a sequence number back and forth 2,000 times: no lost wake-up."""
    rounds = 2000
    block = shared_memory.SharedMemory(create=True, size=256)
    try:
        words = np.ndarray((64,), dtype=np.uint32, buffer=block.buf)
        words[:] = 0
        child = mp.get_context("fork").Process(target=_publisher, args=(k.IMPLEMENTATION, block.name, rounds))
        child.start()
        done = np.array([16], dtype=np.intp)
        for r in range(1, rounds + 1):
            k.publish(words, 0, r)
            assert k.wait_all(words, done, r, spin_ns, 5_000_000_000) == -1, f"round {r} lost"
        child.join(5)
        assert child.exitcode == 0
        child.close()
        del words
    finally:
        block.close()
        block.unlink()


@pytest.mark.parametrize("k", IMPLS)
def test_issue_finish_and_countdown(k) -> None:
    """issue() writes every worker's command and arms the countdown; finish() by each worker releases the parent."""
    words = np.zeros(3 * 32, dtype=np.uint32)
    bases = np.array([0, 32], dtype=np.intp)
    remaining, done = 64, np.array([16, 48], dtype=np.intp)
    seqs = np.array([8, 8], np.uint32)
    k.issue(words, bases, 1, 3, 4, seqs, remaining)
    assert seqs.tolist() == [9, 9]  # issue counts the command
    assert words[[0, 2, 3, 4, 32, 34, 35, 36]].tolist() == [9, 1, 3, 4, 9, 1, 3, 4]
    assert k.wait_remaining(words, remaining, done, NINE, 0, 1_000_000) == 0  # nobody finished: worker 0 pending
    k.finish(words, 16, 9, remaining)
    assert k.wait_remaining(words, remaining, done, NINE, 0, 1_000_000) == 1
    k.finish(words, 48, 9, remaining)
    assert k.wait_remaining(words, remaining, done, NINE, 0, 1_000_000) == -1


@pytest.mark.parametrize("k", IMPLS)
def test_sync_kernels_refuse_words_outside_the_array(k) -> None:
    """With bounds checking off, the compiled sync kernels wrote or read past the words they were given (a segfault,
    a corrupted heap, or a store into another's memory: hunt86 bug 2); both twins refuse such indices, and seqs
    shorter than the workers (the twin's wait_any found every worker done: hunt86 bug 3)."""
    words = np.zeros(3 * 32, dtype=np.uint32)
    bases, done, seqs = np.array([0, 32], np.intp), np.array([16, 48], np.intp), np.array([8, 8], np.uint32)
    for call in (
        lambda: k.publish(words, len(words), 1),
        lambda: k.publish(words, len(words) - 1, 1),  # (its waiting word is the next one)
        lambda: k.publish(words, -1, 1),
        lambda: k.wait_all(words, np.array([0, 10**7], np.intp), 0, 0, 1000),
        lambda: k.issue(words, np.array([0, 90], np.intp), 1, 0, 0, seqs, 64),
        lambda: k.issue(words, bases, 1, 0, 0, seqs, -1),
        lambda: k.finish(words, len(words), 1, 64),
        lambda: k.finish(words, 16, 1, len(words) - 1),
        lambda: k.wait_remaining(words, 64, np.array([16, 10**7], np.intp), seqs, 0, 1000),
        lambda: k.wait_any(words, -1, done, seqs, 0, 1000),
        lambda: k.step_into([], [lambda a: a], [0], first=-1),
    ):
        with pytest.raises(IndexError, match="outside 96 words|first env -1"):
            call()
    assert not words.any()  # (nothing written before the refusal)
    for wait in (k.wait_remaining, k.wait_any):
        with pytest.raises(ValueError, match="seqs has 1 words for 2 workers"):
            wait(words, 64, done, np.array([8], np.uint32), 0, 1000)


@pytest.mark.parametrize("k", IMPLS)
def test_countdown_is_only_a_hint_completion_is_every_done_word(k) -> None:
    """A worker that published DONE but decremented the countdown late (after the parent moved
    on) must not make the next command complete one worker early."""
    words = np.zeros(3 * 32, dtype=np.uint32)
    bases = np.array([0, 32], dtype=np.intp)
    remaining, done = 64, np.array([16, 48], dtype=np.intp)
    k.issue(words, bases, 1, 0, 0, np.array([8, 8], np.uint32), remaining)
    k.finish(words, 16, 9, remaining)
    k.publish(words, 48, 9)  # worker 1: DONE published, its countdown decrement not yet made
    assert k.wait_remaining(words, remaining, done, NINE, 0, 2_000_000) == -1  # every DONE word says 9
    k.issue(words, bases, 1, 1, 0, np.array([9, 9], np.uint32), remaining)
    words[remaining] -= 1  # worker 1's late decrement for command 9 lands on command 10's countdown
    k.finish(words, 16, 10, remaining)  # worker 0 finishes 10: the countdown reads 0 ...
    assert k.wait_remaining(words, remaining, done, TEN, 0, 2_000_000) == 1  # ... but worker 1 has not
    k.finish(words, 48, 10, remaining)
    assert k.wait_remaining(words, remaining, done, TEN, 0, 2_000_000) == -1


@pytest.mark.parametrize("k", IMPLS)
def test_workers_count_their_own_commands(k) -> None:
    """Asynchronous batches give commands to some workers only: each worker has its own sequence."""
    words = np.zeros(3 * 32, dtype=np.uint32)
    bases = np.array([0, 32], dtype=np.intp)
    remaining, done = 64, np.array([16, 48], dtype=np.intp)
    seqs = np.array([0, 6], np.uint32)
    k.issue(words, bases[1:], 1, 2, 0, seqs[1:], remaining)  # worker 1 only
    assert words[[0, 32]].tolist() == [0, 7] and words[remaining] == 1 and seqs.tolist() == [0, 7]
    k.finish(words, 48, 7, remaining)
    assert k.wait_remaining(words, remaining, done, np.array([0, 7], np.uint32), 0, 1_000_000) == -1
    assert k.wait_remaining(words, remaining, done, np.array([1, 7], np.uint32), 0, 1_000_000) == 0


@pytest.mark.parametrize("k", IMPLS)
def test_issue_sequence_wraps_as_uint32(k) -> None:
    """The command count wraps at 2**32 as the workers' uint32 words do."""
    words = np.zeros(2 * 32, dtype=np.uint32)
    seqs = np.array([0xFFFFFFFF], np.uint32)
    k.issue(words, np.array([0], np.intp), 1, 0, 0, seqs, 32)
    assert seqs.tolist() == [0] and words[0] == 0


@pytest.mark.parametrize("k", IMPLS)
def test_wait_any_returns_the_first_worker_done(k) -> None:
    words = np.zeros(3 * 32, dtype=np.uint32)
    remaining, done = 64, np.array([16, 48], dtype=np.intp)
    seqs = np.array([3, 5], np.uint32)
    assert k.wait_any(words, remaining, done, seqs, 0, 1_000_000) == -1  # nobody: the timeout
    k.finish(words, 48, 5, remaining)
    assert k.wait_any(words, remaining, done, seqs, 0, 1_000_000) == 1
    k.finish(words, 16, 3, remaining)
    assert k.wait_any(words, remaining, done, seqs, 0, 1_000_000) == 0


@pytest.mark.serial
@pytest.mark.parametrize("k", IMPLS)
def test_wait_any_wakes_when_two_workers_finish_together(k) -> None:
    """Two workers finishing while the parent sleeps take the countdown from 1 past 0: the
    parent must return on the first wake-up, not sleep to its timeout waiting for the word to read 0."""
    block = shared_memory.SharedMemory(create=True, size=3 * 32 * 4)
    try:
        words = np.ndarray((3 * 32,), dtype=np.uint32, buffer=block.buf)
        words[:] = 0
        remaining, done = 64, np.array([16, 48], dtype=np.intp)
        seqs = np.array([1, 1], np.uint32)
        ctx = mp.get_context("fork")
        child = ctx.Process(target=_finish_both_later, args=(block.name, k.__name__))
        child.start()
        began = time.monotonic()
        assert k.wait_any(words, remaining, done, seqs, 0, 5_000_000_000) in (0, 1)
        assert time.monotonic() - began < 2.5, "slept to the timeout: the wake-up was lost"
        child.join(5)
        assert child.exitcode == 0
        child.close()
        del words
    finally:
        block.close()
        block.unlink()


def _finish_both_later(name: str, impl: str) -> None:
    k = importlib.import_module(impl)
    block = shared_memory.SharedMemory(name=name)
    words = np.ndarray((3 * 32,), dtype=np.uint32, buffer=block.buf)
    time.sleep(0.3)
    while impl.endswith("_kernels") and words[65] == 0:  # the compiled parent sleeps on the futex
        time.sleep(0.001)
    k.finish(words, 16, 1, 64)  # 1 -> 0: wakes the parent, which finds the word already ...
    k.finish(words, 48, 1, 64)  # ... past 0, a microsecond later
    del words
    block.close()


NINE, TEN = np.array([9, 9], np.uint32), np.array([10, 10], np.uint32)


@pytest.mark.parametrize("k", IMPLS)
@pytest.mark.parametrize("order", [">", "<"])
def test_gather_converts_non_native_byte_order(k, order) -> None:
    """A big-endian '>f4' item has the same type number as '<f4': it must be converted, not memcpy'd."""
    dst = np.zeros((2, 3), dtype=np.float32)
    items = [np.array([1.5, -2.0, 3.25], dtype=f"{order}f4"), np.array([4.0, 5.0, 6.0], dtype=np.float32)]
    assert k.gather_rows(items, dst, 0) == -1
    np.testing.assert_array_equal(dst, [[1.5, -2.0, 3.25], [4.0, 5.0, 6.0]])
    swapped = np.zeros((2, 3), dtype=">f4")  # and into a big-endian destination (a '>f4' space)
    assert k.gather_rows([np.array([1.5, 2, 3], np.float32), items[0]], swapped, 0) == -1
    np.testing.assert_array_equal(swapped, [[1.5, 2, 3], [1.5, -2.0, 3.25]])


@pytest.mark.parametrize("k", IMPLS)
@pytest.mark.skipif(envs.WRAPS_OUT_OF_RANGE_INTS, reason="numpy 1 wraps out-of-range Python ints")
def test_gather_raises_on_values_the_row_cannot_hold(k) -> None:
    dst = np.zeros((2, 4), dtype=np.uint8)
    with pytest.raises((OverflowError, ValueError)):
        k.gather_rows([[1, 2, 3, 4], [300, 0, 0, 0]], dst, 0)


@pytest.mark.parametrize("k", IMPLS)
def test_write_results_matches_writing_each_field(k) -> None:
    rng = np.random.default_rng(3)
    results = [
        (rng.standard_normal(3).astype(np.float32), float(j), j == 1, j == 2, {"x": 1} if j == 3 else {})
        for j in range(5)
    ]
    results[4] = (results[4][0].astype(np.float64), np.float32(np.nan), False, False, {})  # cast and NaN
    obs, rew = np.zeros((7, 3), np.float32), np.zeros(7)
    term, trunc = np.zeros(7, np.uint8), np.zeros(7, np.uint8)
    code, ended, has_info, nan, shared = k.write_results(results, obs, rew, term, trunc, 1, True)
    assert (code, ended, has_info, nan, shared) == (-2 - 4, [1, 2], True, 4, -1)  # ended: the positions, in order
    np.testing.assert_array_equal(obs[1:6], np.stack([r[0] for r in results]).astype(np.float32))
    assert rew[1:5].tolist() == [0, 1, 2, 3] and np.isnan(rew[5])
    assert term.tolist() == [0, 0, 1, 0, 0, 0, 0] and trunc.tolist() == [0, 0, 0, 1, 0, 0, 0]
    quiet = [(np.zeros(3, np.float32), 0.0, False, False, {})] * 2
    assert k.write_results(quiet, obs, rew, term, trunc, 0, True) == (-1, [], False, -1, 1)  # (one array twice)
    assert k.write_results([(np.zeros(4), 0.0, False, False, {})], obs, rew, term, trunc, 0)[0] == 0  # bad shape
    ended_then_bad = [(np.zeros(3, np.float32), 0.0, True, False, {}), (np.zeros(4), 0.0, True, False, {})]
    assert k.write_results(ended_then_bad, obs, rew, term, trunc, 0)[:2] == (1, [0])  # those before it
    with pytest.raises(TypeError):
        k.write_results([(np.zeros(3), 0.0, False, False)], obs, rew, term, trunc, 0)
    with pytest.raises(TypeError):
        k.write_results([(np.zeros(3), None, False, False, {})], obs, rew, term, trunc, 0)


@pytest.mark.parametrize("k", IMPLS)
def test_write_results_finds_observations_over_the_memory_of_the_one_before_or_the_first(k) -> None:
    """``shared``: the first env whose observation is the same list, or an array starting at the same byte, as the
    env's before it or the first env's (a buffer the envs' class shares); fresh arrays, numbers, empty arrays and
    views of other parts of one array are not."""
    buf = np.arange(8, dtype=np.float32)
    obs, rew = np.zeros((6, 2), np.float32), np.zeros(6)
    term, trunc = np.zeros(6, np.uint8), np.zeros(6, np.uint8)

    def shared(*items) -> int:
        return k.write_results([(item, 0.0, False, False, {}) for item in items], obs, rew, term, trunc, 0)[4]

    fresh = [np.array([j, j], np.float32) for j in range(4)]
    assert shared(*fresh) == -1
    assert shared(buf[:2], buf[2:4], buf[4:6]) == -1  # (one array, parts of its own each)
    assert shared(fresh[0], buf[:2], buf[:2].view()) == 2  # (a view starting where the array before does)
    assert shared(buf[:2], fresh[1], fresh[2], buf[0:2]) == 3  # (the first env's memory)
    assert shared(fresh[0], fresh[1], fresh[1]) == 2
    same = [1.0, 2.0]
    assert shared([1.0, 2.0], [1.0, 2.0]) == -1 and shared(fresh[0], same, same) == 2
    np.testing.assert_array_equal(obs[:3], [[0, 0], [1, 2], [1, 2]])  # (rows written as before)
    assert k.write_results([(np.zeros(0, np.float32), 0.0, False, False, {})] * 2, np.zeros((2, 0), np.float32), rew,
                           term, trunc, 0)[4] == -1  # (empty: no memory to share)
    assert k.write_results([(1, 0.0, False, False, {}), (1, 0.0, False, False, {})], np.zeros(2, np.int64), rew, term,
                           trunc, 0)[4] == -1  # (numbers: the same small int is one object, and cannot be written)


@pytest.mark.parametrize("k", IMPLS)
def test_waiters_stop_yielding_to_a_process_that_keeps_the_core(k) -> None:
    """With a CPU hog on the waiter's core every sched_yield costs a time slice: after two such
    yields close together the waiter stops yielding for a while (and sleeps on the futex)."""
    import os
    import subprocess
    import sys

    core = min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    try:
        os.sched_setaffinity(0, {core})
        time.sleep(0.2)  # the hog is running
        words = np.zeros(64, dtype=np.uint32)
        before = k.contended_yields()
        # nobody publishes: each wait yield-polls, then sleeps until its deadline (3 ms). Usually within 6 waits; for
        # up to 3 s, as an earlier test of this process may have left yield-polling off for up to 1 s (the backoff
        # doubles while contention comes back: 40 waits, 0.12 s, failed so in a full run)
        deadline = time.monotonic() + 3
        while k.contended_yields() == before and time.monotonic() < deadline:
            assert k.wait_all(words, np.array([0], np.intp), 1, -20_000_000, 3_000_000) == 0
        assert k.contended_yields() > before
    finally:
        os.sched_setaffinity(0, saved)
        hog.kill()
        hog.wait()


def test_a_slow_yield_that_ran_no_other_task_is_not_contention(monkeypatch) -> None:
    """A sched_yield that returns late without a context switch is the hypervisor taking the vCPU,
    not another process wanting the core: the waiter goes on yield-polling and turns nothing off
    (on a cloud VM this happens about 16 times a second on an idle core). The same slow yields with
    a context switch each are contention (the twin's logic; the compiled kernel's is the same, and
    the hog test above checks it against a real process)."""
    k = _kernels_py
    words = np.zeros(64, dtype=np.uint32)
    clock = {"now": 0}
    switches = {"n": 7}
    yields = []

    def slow_yield() -> None:  # every yield takes 100 us
        yields.append(clock["now"])
        clock["now"] += 100_000
        if len(yields) == 5:
            words[0] = 1  # the publisher's value arrives during the fifth yield

    monkeypatch.setattr(k.time, "monotonic_ns", lambda: clock["now"])
    monkeypatch.setattr(k.os, "sched_yield", slow_yield)
    monkeypatch.setattr(k, "_involuntary_switches", lambda: switches["n"])
    monkeypatch.setattr(k, "_contended_until", 0)
    monkeypatch.setattr(k, "_last_slow_yield", -(10**12))
    monkeypatch.setattr(k, "_contended_backoff", k._CONTENDED_BACKOFF_NS)

    def no_sleep(*args: object) -> None:
        raise AssertionError("the waiter stopped polling and went to sleep")

    monkeypatch.setattr(k, "_futex_wait", no_sleep)
    before = k.contended_yields()
    assert k._wait_word(words, 0, 1, 10**9, 2 * 10**9, True) == k.DONE
    assert len(yields) == 5  # it kept polling through four slow yields, then saw the value
    assert k.contended_yields() == before and k._contended_until == 0

    # the same yields, each running another task: the first slow one ends the polling (the waiter
    # would sleep on the futex), and a second one soon after turns yield-polling off for a while
    def switching_yield() -> None:
        clock["now"] += 100_000
        switches["n"] += 1

    monkeypatch.setattr(k.os, "sched_yield", switching_yield)
    monkeypatch.setattr(k, "_futex_wait", lambda *args: words.__setitem__(2, 1))  # woken: the value arrived
    words[:] = 0
    assert k._wait_word(words, 2, 1, 10**9, 2 * 10**9, True) == k.DONE
    words[:] = 0
    assert k._wait_word(words, 2, 1, 10**9, 2 * 10**9, True) == k.DONE
    assert k.contended_yields() == before + 1 and k._contended_until > clock["now"]


@pytest.mark.skipif(_compiled is None, reason="extension not built")
@pytest.mark.parametrize("k", IMPLS)
def test_kernels_refuse_arrays_they_cannot_use(k) -> None:
    """The compiled kernels take the numpy arrays' data directly (no buffer acquisition); what a
    typed memoryview would refuse they refuse too, with an error naming the argument. The twin refuses the same
    (it wrote a strided array's other words, and took wrong dtypes: hunt86 bug 3)."""
    words = np.zeros(64, np.uint32)
    bases, seqs = np.array([8], np.intp), np.zeros(1, np.uint32)
    k.issue(words, bases, 1, 0, 0, seqs, 40)
    assert words[8 + Control.CMD_SEQ] == 1 and seqs[0] == 1 and words[40] == 1
    issued = words.copy()
    with pytest.raises(ValueError, match="words has dtype int64"):
        k.issue(np.zeros(64, np.int64), bases, 1, 0, 0, seqs, 40)
    with pytest.raises(ValueError, match="words must be C-contiguous"):
        k.issue(np.zeros(128, np.uint32)[::2], bases, 1, 0, 0, seqs, 40)
    read_only = np.zeros(64, np.uint32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="words is read-only"):
        k.finish(read_only, 8, 1, 40)
    with pytest.raises(ValueError, match="bases has dtype int32"):
        k.issue(words, np.array([8], np.int32), 1, 0, 0, seqs, 40)
    with pytest.raises(ValueError, match="seqs has 1 words for 2 workers"):
        k.issue(words, np.array([8, 16], np.intp), 1, 0, 0, seqs, 40)
    with pytest.raises(TypeError, match="words must be a numpy array"):
        k.publish([0] * 64, 8, 1)
    with pytest.raises(ValueError, match="words has dtype >u4"):
        k.publish(np.zeros(64, ">u4"), 8, 1)
    obs, rewards = np.zeros((2, 3), np.float32), np.zeros(2)
    flags = np.zeros(2, np.uint8)
    result = (np.zeros(3, np.float32), 1.0, True, False, {})
    assert k.write_results([result, result], obs, rewards, flags, flags.copy(), 0)[:2] == (-1, [0, 1])
    with pytest.raises(ValueError, match="rewards has dtype float32"):
        k.write_results([result], obs, np.zeros(2, np.float32), flags, flags, 0)
    with pytest.raises(IndexError):
        k.write_results([result, result], obs, rewards, flags[:1], flags, 0)
    with pytest.raises(ValueError, match="at least 6 columns"):
        k.add_stats(np.zeros(5), 1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="row has dtype float32"):
        k.add_stats(np.zeros(8, np.float32), 1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="words must be C-contiguous"):
        k.publish(np.zeros(128, np.uint32)[::2], 4, 7)
    with pytest.raises(ValueError, match="seq_index is empty"):
        k.wait_all(words, np.zeros(0, np.intp), 0, 0, 1000)
    with pytest.raises(ValueError, match="rewards is read-only"):
        read_only_rewards = np.zeros(2)
        read_only_rewards.flags.writeable = False
        k.done_flags(np.zeros(2, bool), np.zeros(2, bool), read_only_rewards)
    assert words.tolist() == issued.tolist()  # (nothing written by a refused call)
    k.publish(words, np.int64(50), 7)  # (a numpy integer index: the twin stored the word, then failed to wake)
    assert words[50] == 7
    # the typed-memoryview kernels: what Cython refuses the twin refuses, with the same error types
    ints, floats = np.zeros(2, np.int64), np.zeros(2)
    for call, error in (
        (lambda: k.store_floats([1.0], np.zeros(2, np.float32), 0), ValueError),
        (lambda: k.store_floats((1.0,), floats, 0), TypeError),
        (lambda: k.store_bools([True], np.zeros(2, np.int8), 0), ValueError),
        (lambda: k.first_nan(np.zeros(2, np.float32), 0, 2), ValueError),
        (lambda: k.first_outside_int(ints.astype(np.int32), ints, ints), ValueError),
        (lambda: k.first_outside_float(floats.astype(np.float16), floats, floats), TypeError),
    ):
        with pytest.raises(error):
            call()
    for call, error in (  # (the twin wrote a 2-D destination's whole rows, and scanned 2-D values: hunt88 bug 5)
        (lambda: k.store_floats([1.0, 2.0], np.zeros((2, 2)), 0), ValueError),
        (lambda: k.first_nan(np.zeros((2, 2)), 0, 2), ValueError),
        (lambda: k.first_outside_float(np.zeros((2, 2)), floats, floats), TypeError),
        (lambda: k.first_outside_float(np.zeros(2, ">f8"), floats, floats), ValueError),
        (lambda: k.first_nan([0.0, 1.0], 0, 2), TypeError),
        (lambda: k.row_copies(None, []), TypeError),
    ):
        with pytest.raises(error):
            call()
    flags = np.zeros(2, bool)
    k.store_bools([True, False], flags, 0)  # (a one-byte bool destination is a uint8 buffer)
    assert flags.tolist() == [True, False]
    dones, _, ended = k.done_flags(np.array([[False, True], [False, False]]), np.zeros(4, bool), np.zeros(4))
    dones, rewards, ended = k.done_flags(np.array([[False, True], [False, False]]), np.zeros(4, bool), np.zeros((2, 2)))
    assert dones.tolist() == [False, True, False, False] and ended == [1] and rewards.shape == (4,)  # (taken flat)


_STUCK_CHILD = """
import ctypes, os, signal, sys, time
from fastvec import {module} as k
parent = int(sys.argv[1])

def on_term(signum, frame):
    os.write(1, b"handled\\n")
    os._exit(0)

signal.signal(signal.SIGALRM, signal.SIG_DFL)
signal.signal(signal.SIGTERM, on_term)
armed = k.term_deadline(1)
watching = k.watch_parent(parent) if parent else False
print(f"armed={{armed}} watching={{watching}}", flush=True)
if sys.argv[2] == "native":  # a mutex locked twice, the GIL held: no Python handler can run
    lib = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)
    lib.pthread_mutex_lock(mutex)
    lib.pthread_mutex_lock(mutex)
time.sleep(30)
"""


def _stuck_child(k, parent: int, where: str) -> subprocess.Popen:
    module = "_kernels" if k is _compiled else "_kernels_py"
    return subprocess.Popen(
        [sys.executable, "-c", _STUCK_CHILD.format(module=module), str(parent), where],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip


@pytest.mark.parametrize("k", IMPLS)
def test_term_deadline_ends_a_process_stuck_in_native_code(k) -> None:
    """SIGTERM to a process stuck in native code with the GIL held: its Python handler never runs. The
    compiled kernel armed alarm(1) in C as the signal arrived, so it dies of SIGALRM; the twin cannot
    act inside a signal (it says so: False) and the process stays stuck."""
    child = _stuck_child(k, 0, "native")
    try:
        armed = child.stdout.readline().strip()
        assert armed == f"armed={k is _compiled} watching=False"
        time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        if k is _compiled:
            assert child.wait(5) == -signal.SIGALRM
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(2)
    finally:
        child.kill()
        child.communicate()


@pytest.mark.parametrize("k", IMPLS)
def test_term_deadline_refuses_to_wrap_no_handler(k) -> None:
    """With SIGTERM's default action (die) or ignored, there is no handler to run before: wrapping
    it would turn either into a death 2 s later."""
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN)
    with pytest.raises(ValueError, match="a Python handler for SIGTERM"):
        k.term_deadline(2)


@pytest.mark.parametrize("k", IMPLS)
def test_watch_parent_sends_sigterm_when_the_watched_process_ends(k) -> None:
    """A watched process ends: the watcher sends SIGTERM to the main thread, and its handler runs even
    in a blocking sleep. (Stuck in native code, only the compiled kernel's native thread can act: the
    teardown tests check that through a real pool.)"""
    watched = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    child = _stuck_child(k, watched.pid, "python")
    try:
        assert child.stdout.readline().strip() == f"armed={k is _compiled} watching=True"
        watched.stdin.close()  # it ends
        watched.wait(5)
        assert child.stdout.readline().strip() == "handled"
        assert child.wait(5) == 0
    finally:
        child.kill()
        child.communicate()
        watched.kill()
        watched.wait()


@pytest.mark.parametrize("k", IMPLS)
def test_step_watching_stops_between_envs_once_a_watched_worker_is_done(k) -> None:
    """The own group's step under asynchronous batches: it steps on while no watched worker is done, stops
    after an env (at least one steps a call) once one is, before the deadline, and not after it; a worker
    not watched (one not in flight) never stops it."""
    words = np.zeros(16, np.uint32)
    done_index = np.array([3, 9], np.intp)
    seqs = np.array([5, 7], np.uint32)
    later = time.perf_counter_ns() + 60_000_000_000
    stepped: list = []

    def env(i):
        def step(action):
            stepped.append(i)
            if i == 1:  # worker 1 finishes while env 1 steps
                words[9] = 7
            return (i, int(action))

        return step

    fns = [env(i) for i in range(5)]
    results: list = []
    k.step_watching(results, fns, np.arange(5), 5, words, done_index, seqs, np.array([0], np.intp), later)
    assert [r[0] for r in results] == [0, 1, 2, 3, 4]  # worker 1 is not watched
    words[9], results = 0, []
    watch = np.array([0, 1], np.intp)
    k.step_watching(results, fns, np.arange(5), 5, words, done_index, seqs, watch, later)
    assert results == [(0, 0), (1, 1)]  # stopped after env 1
    assert k.watch_stops(words, done_index, seqs, watch, later) and not k.watch_stops(words, done_index, seqs, watch, 0)
    k.step_watching(results, fns, np.arange(5), 4, words, done_index, seqs, watch, later)
    assert [r[0] for r in results] == [0, 1, 2]  # goes on from env 2: one env, then stops again
    k.step_watching(results, fns, np.arange(5), 4, words, done_index, seqs, watch, 0)  # past the deadline
    assert [r[0] for r in results] == [0, 1, 2, 3]  # up to ``stop``
    words[9] = 0
    assert not k.watch_stops(words, done_index, seqs, watch, later)
    with pytest.raises(IndexError):
        k.step_watching([], fns, np.arange(5), 5, words, done_index, seqs, np.array([2], np.intp), later)
    with pytest.raises(IndexError):
        k.watch_stops(words, np.array([3, 16], np.intp), seqs, watch, later)
    with pytest.raises(ValueError, match="watch is empty"):  # (the pool watches only when a worker is in flight)
        k.watch_stops(words, done_index, seqs, np.zeros(0, np.intp), later)
    # the same checks in both: dtypes, and a count for every worker
    with pytest.raises(ValueError, match="watch has dtype int32"):
        k.watch_stops(words, done_index, seqs, np.array([0], np.int32), later)
    with pytest.raises(ValueError, match="words has dtype int64"):
        k.step_watching([], fns, np.arange(5), 5, words.astype(np.int64), done_index, seqs, watch, later)
    with pytest.raises(ValueError, match="seqs has 1 words for 2 workers"):
        k.watch_stops(words, done_index, seqs[:1], np.array([0], np.intp), later)


@pytest.mark.parametrize("k", IMPLS)
def test_row_kernels_compare_dtypes_as_numpy_does(k) -> None:
    """The compiled kernels compared type numbers: np.longlong items (pybind11's, ctypes') were a "cast" into
    an int64 row, S2 items were copied raw into S8 rows, datetime64[ms] into [s] rows unconverted, and
    row_copies of S3 rows made S1 arrays (writing past them). Dtypes compare as numpy compares them."""
    dst = np.zeros((2, 3), np.int64)
    assert k.gather_rows([np.ones(3, np.longlong), np.ones(3, np.int64)], dst, 0, True) == -1  # (no cast)
    assert k.gather_rows([np.ones(3, np.int32), np.ones(3, np.int64)], dst, 0, True) == -2  # (a cast: the first)
    for items, dtype in (
        ([np.array([b"ab", b"cd", b"ef"], "S2")], "S8"),
        ([np.array(["2020-01-01T00:00:01.500"], "datetime64[ms]")], "datetime64[s]"),
    ):
        dst = np.zeros((1, len(items[0])), dtype)
        assert k.gather_rows(items, dst, 0, True) == -2
        np.testing.assert_array_equal(dst[0], items[0].astype(dtype))
    source = np.array([[b"abc"], [b"def"]], "S3")
    copies = k.row_copies(source, [1, 0])
    assert [c.dtype for c in copies] == [np.dtype("S3")] * 2 and copies[0][0] == b"def" and copies[1][0] == b"abc"
    for out, source_rows in ((np.zeros(2, "S8"), np.zeros(2, "S4")), (np.zeros(2, "datetime64[s]"), np.zeros(2, "datetime64[ms]"))):
        assert k.copy_same(out, source_rows) is False
    assert k.copy_same(np.zeros(3, np.int64), np.ones(3, np.longlong)) is True


@pytest.mark.parametrize("k", IMPLS)
def test_row_kernels_refuse_what_numpy_would_not_write(k) -> None:
    """A 0-d destination (compiled: read past its shape, a crash) and a read-only one (compiled: written, even
    an immutable bytes object's buffer) are refused, as numpy refuses them."""
    results = [(np.ones(2), 1.0, False, False, {})]
    with pytest.raises(ValueError, match="with rows"):
        k.gather_rows([np.float64(1)], np.zeros(()), 0)
    with pytest.raises(ValueError, match="with rows"):
        k.write_results(results, np.zeros(()), np.zeros(1), np.zeros(1, np.uint8), np.zeros(1, np.uint8), 0)
    frozen = np.frombuffer(b"\0" * 16, np.float64).reshape(1, 2)
    with pytest.raises(ValueError, match="read-only"):
        k.gather_rows([np.ones(2)], frozen, 0)
    with pytest.raises(ValueError, match="read-only"):
        k.write_results(results, frozen, np.zeros(1), np.zeros(1, np.uint8), np.zeros(1, np.uint8), 0)
    assert not frozen.any()


@pytest.mark.parametrize("k", IMPLS)
def test_row_kernels_keep_the_references_of_object_rows(k) -> None:
    """Rows of objects (or of records holding one) are assigned by numpy, which counts their references: the
    compiled kernels copied the pointers of a temporary array, which then freed them."""
    marker = object()
    dst = np.empty((2, 2), object)
    held = sys.getrefcount(marker)
    assert k.gather_rows([[marker, 1.5], np.array([2.5, "x"], object)], dst, 0) == -1
    assert sys.getrefcount(marker) == held + 1
    assert dst[0, 0] is marker and dst.tolist()[0][1] == 1.5 and dst.tolist()[1] == [2.5, "x"]
    records = np.zeros((1,), [("a", object), ("b", np.float64)])
    assert k.gather_rows([np.array((marker, 2.0), records.dtype)], records, 0) == -1
    assert records[0]["a"] is marker and records[0]["b"] == 2.0
    assert k.row_copies(dst, [0])[0][0] is marker


@pytest.mark.parametrize("k", IMPLS)
def test_range_kernels_check_their_bounds(k) -> None:
    """With bounds checking off, the compiled kernels read outside the arrays they were given: a negative start,
    a stop past the end, bounds shorter than a row of values."""
    values = np.array([1.0, np.nan, 2.0, np.nan])
    assert k.first_nan(values, 2, 4) == 3 and k.first_nan(values, 2, 3) == -1
    for start, stop in ((-1, 3), (0, 5), (0, -1), (3, 2)):  # (the twin sliced values[0:-1]: hunt86 bug 3)
        with pytest.raises(IndexError, match="outside 4 values"):
            k.first_nan(values, start, stop)
    for call in (lambda: k.first_nan(None, 0, 0), lambda: k.first_outside_float(None, values[:1], values[:1])):
        with pytest.raises((TypeError, AttributeError)):  # (the compiled kernels took None for no values)
            call()
    # (no values and no bounds: a Box of shape (0,), which gymnasium steps)
    assert k.first_outside_int(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)) == -1
    assert k.first_outside_float(np.zeros(0), np.zeros(0), np.zeros(0)) == -1
    ints, floats = np.zeros(4, np.int64), np.zeros(4, np.float64)
    for low, high in ((np.zeros(0), np.zeros(0)), (np.zeros(2), np.zeros(1)), (np.zeros(3), np.zeros(3))):
        with pytest.raises(ValueError, match="bounds of"):
            k.first_outside_int(ints, low.astype(np.int64), high.astype(np.int64))
        with pytest.raises(ValueError, match="bounds of"):
            k.first_outside_float(floats, low, high)
