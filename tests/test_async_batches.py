"""Asynchronous partial batches (fastvec.async_batches): send/recv in any order, against a serial model."""

from __future__ import annotations

import collections
import multiprocessing
import os
import random
import signal
import time
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import psutil
import pytest

from fastvec import SubprocVecEnv, VectorEnv
from fastvec.async_batches import AsyncBatch
from fastvec.errors import AlreadyPendingCallError, EnvError, NoAsyncCallError, StepTimeoutError, WorkerDiedError
from fastvec.pool import Pool
from fastvec.protocol import DISABLED, NEXT_STEP, SAME_STEP
from tests import envs


@pytest.fixture(autouse=True)
def _two_cores(monkeypatch):
    """The layout these tests were written for, whatever the machine: 2 cores, so by default a group
    (a worker's envs) per batch. The default layout depends on the cores (a worker per core where they
    outnumber the batches); the tests of that set the count themselves."""
    from fastvec import pool as pool_module

    monkeypatch.setattr(pool_module, "default_num_workers", lambda: 2)


def _model_step(env: envs.Counter, action: int, mode) -> tuple:
    """One step of the serial reference: (obs, reward, terminated, truncated, final obs or None).
    SAME_STEP: an episode's end returns the reset's observation (the final one aside);
    NEXT_STEP: the step after an episode's end resets (reward 0, flags False)."""
    if mode == NEXT_STEP and env.ended:
        env.ended = False
        return env.reset()[0], 0.0, False, False, None
    obs, reward, term, trunc, _ = env.step(action)
    if term or trunc:
        if mode == SAME_STEP:
            return env.reset()[0], reward, term, trunc, obs
        env.ended = True
    return obs, reward, term, trunc, None


def _against_a_serial_model(pool: Pool, model: list, rng: random.Random, mode, batch: int, rounds: int) -> int:
    """``rounds`` random sends and recvs on ``pool`` (envs made as ``model``'s, one per env), each
    batch checked against a serial run of ``model``; returns how many episodes ended (SAME_STEP)."""
    n = len(model)
    for env in model:
        env.ended = False
    seeds = list(range(10, 10 + n))
    expected = {i: (model[i].reset(seed=seeds[i])[0], 0.0, False, False, None) for i in range(n)}
    pool.async_reset(seeds)
    available: list[np.ndarray] = []
    running, ended = n, 0
    for _ in range(rounds):
        if available and (running == 0 or rng.random() < 0.5):
            ids = available.pop(rng.randrange(len(available)))
            actions = np.array([rng.randrange(5) for _ in ids])
            for i, a in zip(ids.tolist(), actions.tolist()):
                expected[i] = _model_step(model[i], a, mode)
            pool.send(actions, ids)
            running += len(ids)
        elif running:
            got = pool.recv()
            assert len(got.env_ids) == batch
            for k, i in enumerate(got.env_ids.tolist()):
                obs, reward, term, trunc, final = expected[i]
                np.testing.assert_array_equal(got.obs[k], obs, err_msg=f"env {i}")
                assert (got.rewards[k], got.terminated[k], got.truncated[k]) == (reward, term, trunc), f"env {i}"
                if final is not None:
                    np.testing.assert_array_equal(got.terminal_observation(i), final, err_msg=f"env {i}")
                    ended += 1
            available.append(got.env_ids)
            running -= len(got.env_ids)
    return ended


@pytest.mark.parametrize("mode", [SAME_STEP, NEXT_STEP])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("own", "batch"), [(False, 2), (True, 2), (True, 4)], ids=["workers", "own-group", "own-group-in-batches-of-2"]
)
def test_random_send_recv_orders_match_a_serial_run_of_each_env(own: bool, batch: int, seed: int, mode) -> None:
    """Random interleavings of send and recv: every env's observations, rewards, flags and final
    observations are those of a serial run of the same env with the same actions; with the
    calling process stepping the first group itself (step_in_parent) or not, and with batches
    of one group or two (groups of 2 envs)."""
    rng = random.Random(seed)
    n = 8
    pool = Pool(
        [partial(envs.Counter, i) for i in range(n)],
        batch_size=batch,
        start_method="fork",
        autoreset_mode=mode,
        step_in_parent=own,
        num_workers=4,
    )
    try:
        assert pool.num_workers == 4 and pool.step_in_parent == own and len(pool.worker_pids) == 4 - own
        ended = _against_a_serial_model(pool, [envs.Counter(i) for i in range(n)], rng, mode, batch, 600)
        assert ended > 0 or mode == NEXT_STEP  # episodes (40 counts) did end on the way
    finally:
        pool.close()


def test_views_with_copy_false_are_the_ring_and_copies_are_not() -> None:
    with Pool([envs.make_cartpole] * 4, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        pool.async_reset()
        view = pool.recv(copy=False)
        assert not view.obs.flags.owndata and np.shares_memory(view.obs, pool.ring.obs[0])
        copy = pool.recv()
        assert copy.obs.flags.owndata and not np.shares_memory(copy.obs, pool.ring.obs[0])
        assert view.parts != copy.parts and len(view.parts) == 1


def test_close_while_batches_run_leaves_nothing() -> None:
    """close() with groups still stepping waits for them briefly and stops every worker (the
    fixture checks no process or segment is left); a hung group is killed."""
    pool = Pool([envs.make_cartpole] * 4, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP)
    pool.async_reset()
    pool.close()
    fns = [partial(envs.FailingEnv, "hang" if i < 2 else None, 0) for i in range(4)]
    pool = Pool(fns, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP)
    pool.async_reset()
    pool.recv()
    pool.recv()
    pool.send(np.zeros(4, np.int64), [0, 1, 2, 3])
    began = time.monotonic()
    pool.close(timeout=1)
    assert time.monotonic() - began < 10


@pytest.mark.serial
def test_the_first_envs_to_finish_come_first() -> None:
    fns = [partial(envs.FailingEnv, "hang" if i < 2 else None, 0) for i in range(4)]  # envs 0, 1 hang in step
    with Pool(fns, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP, step_in_parent=False) as pool:
        pool.async_reset()
        for _ in range(2):
            pool.recv()
        pool.send(np.zeros(4, np.int64), [0, 1, 2, 3])
        got = pool.recv(timeout=5)
        assert got.env_ids.tolist() == [2, 3]  # 0 and 1 are still stepping
        with pytest.raises(multiprocessing.TimeoutError):
            pool.recv(timeout=0.2)  # the hung group: still pending, named


@pytest.mark.serial
def test_the_own_group_steps_while_a_worker_hangs() -> None:
    """step_in_parent: recv() steps the calling process's own group (envs 0-1) while the worker's
    group hangs, and a recv() with a timeout then names the worker's group as still pending."""
    fns = [partial(envs.FailingEnv, "hang" if i >= 2 else None, 0) for i in range(4)]  # envs 2, 3 hang in step
    with Pool(fns, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP, step_in_parent=True) as pool:
        assert len(pool.worker_pids) == 1
        pool.async_reset()
        assert sorted(pool.recv().env_ids.tolist() + pool.recv().env_ids.tolist()) == [0, 1, 2, 3]
        pool.send(np.zeros(4, np.int64), [0, 1, 2, 3])
        assert pool.recv(timeout=5).env_ids.tolist() == [0, 1]
        with pytest.raises(multiprocessing.TimeoutError):
            pool.recv(timeout=0.2)


@pytest.mark.serial
def test_the_own_group_is_not_starved_by_quick_workers() -> None:
    """Workers whose groups are always done by the next recv() (a slow policy between calls: two
    worker groups) do not keep the own group waiting: the three groups take turns (a worker's group done
    while the own group stepped goes first, and the own group's results come with the next recv)."""
    with Pool([envs.make_cartpole] * 6, batch_size=2, start_method="fork", step_in_parent=True) as pool:
        assert len(pool.worker_pids) == 2
        pool.async_reset()
        returned = []
        for _ in range(12):
            got = pool.recv()
            returned.append(got.env_ids[0].item())
            time.sleep(0.005)  # the policy: long enough for the other worker's group to finish
            pool.send(np.zeros(2, np.int64), got.env_ids)
        assert all(0 in returned[k : k + 3] for k in range(len(returned) - 2)), returned


class Sleeps(envs.Counter):
    """A Counter whose step takes ``seconds``."""

    def __init__(self, index: int, seconds: float):
        super().__init__(index)
        self.seconds = seconds

    def step(self, action):
        time.sleep(self.seconds)
        return super().step(action)


@pytest.mark.serial
def test_the_own_group_stops_between_envs_for_a_worker_that_finished() -> None:
    """A worker's group that finished while this process stepped its own is returned at the next env boundary,
    so the worker gets its next actions at once instead of idling through the rest of the own group's step (with
    the own group's envs 4x slower, three quarters of its time); the next recv() goes on from the next env. A
    worker's group done when the own group's step ends comes first too (it finished first), and the own group's
    batch then comes with the next recv(), without stepping anything."""
    fns = [partial(Sleeps, i, 0.3 if i < 2 else 0.02) for i in range(4)]
    with Pool(fns, batch_size=2, start_method="fork", step_in_parent=True, num_workers=2) as pool:
        own = [env.unwrapped for env in pool._local.envs]
        first = _stopped_after_env_0(pool)  # the worker's finishes while own env 0 steps
        assert [env.t for env in own] == [2, 1]
        pool.send(np.ones(2, np.int64), [2, 3])
        second = pool.recv()  # own env 1 steps; the worker's finishes meanwhile and comes first
        assert second.env_ids.tolist() == [2, 3] and [env.t for env in own] == [2, 2]
        third_began = time.monotonic()
        third = pool.recv()  # already stepped: no wait
        assert third.env_ids.tolist() == [0, 1] and time.monotonic() - third_began < 0.1
        assert third.obs.tolist() == [[2.0, 0.0], [2.0, 1.0]]
        assert first.obs.tolist() == [[2.0, 2.0], [2.0, 3.0]] and second.obs.tolist() == [[4.0, 2.0], [4.0, 3.0]]


def _stopped_after_env_0(pool: Pool) -> AsyncBatch:
    """async_reset, a step of the own group (envs 0-1) and the worker's (2-3), which does not stop (how long the
    own group's step takes is not known yet), then one in which the own group's step stops after env 0 for the
    worker's group: that batch, returned."""
    pool.async_reset()
    for _ in range(2):
        pool.recv()
    _first_step_of_both(pool)
    pool.send(np.zeros(2, np.int64), [0, 1])
    pool.send(np.zeros(2, np.int64), [2, 3])
    got = pool.recv()
    assert got.env_ids.tolist() == [2, 3]
    return got


def _first_step_of_both(pool: Pool) -> None:
    """Step the own group (envs 0-1) and the worker's (2-3) once with zeros; the worker's comes first."""
    pool.send(np.zeros(2, np.int64), [0, 1])
    pool.send(np.zeros(2, np.int64), [2, 3])
    assert [pool.recv().env_ids.tolist() for _ in range(2)] == [[2, 3], [0, 1]]


class SleepsThenRaises(Sleeps):
    """A Sleeps whose steps after its first raise, after their sleep."""

    def step(self, action):
        if self.t == 0:
            return super().step(action)
        time.sleep(self.seconds)
        raise ZeroDivisionError("boom in step")


def _count_stops(pool: Pool) -> list[int]:
    """A list that counts the own group's steps that stopped between envs (its length), wrapped around
    the pool's _step_own."""
    stops: list[int] = []
    batches = pool._async
    step_own = batches._step_own

    def counted(owner: Pool, pausable: bool = False) -> bool:
        done = step_own(owner, pausable)
        if not done:
            stops.append(1)
        return done

    batches._step_own = counted
    return stops


@pytest.mark.parametrize("mode", [SAME_STEP, NEXT_STEP, DISABLED], ids=["same-step", "next-step", "disabled"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_orders_match_serial_runs_while_the_own_group_stops_between_envs(seed: int, mode) -> None:
    """The own group's envs 2 ms a step, the worker's instant: its steps stop between envs again and again
    (counted), and every env's sequence is still that of a serial run with the same actions, in every
    autoreset mode (the results, errors and restarts of a step are kept across its stops)."""
    n = 8
    fns = [partial(Sleeps, i, 0.002) if i < 4 else partial(envs.Counter, i) for i in range(n)]
    pool = Pool(fns, batch_size=4, start_method="fork", autoreset_mode=mode, step_in_parent=True, num_workers=2)
    try:
        stops = _count_stops(pool)
        ended = _against_a_serial_model(pool, [envs.Counter(i) for i in range(n)], random.Random(seed), mode, 4, 300)
        assert len(stops) > 10, len(stops)
        assert ended > 0 or mode != SAME_STEP
    finally:
        pool.close()


@pytest.mark.serial
@pytest.mark.parametrize("mode", [SAME_STEP, NEXT_STEP], ids=["same-step", "next-step"])
@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_an_env_error_before_the_own_group_stops_is_raised_when_its_step_ends(on_error: str, mode) -> None:
    """Own env 0 raises, then the own group's step stops for the worker's finished group: that batch comes
    first, the step goes on with env 1 (not env 0 again) at the next recv(), and env 0's error (or with
    on_error="restart" its restart) comes with the own group's batch."""
    # (the worker's envs take 20 ms: not done yet when recv() begins, which would take them first)
    fns = [partial(SleepsThenRaises, 0, 0.1), partial(Sleeps, 1, 0.1), partial(Sleeps, 2, 0.02), partial(Sleeps, 3, 0.02)]
    with Pool(
        fns, batch_size=2, start_method="fork", step_in_parent=True, num_workers=2, on_error=on_error, autoreset_mode=mode
    ) as pool:
        own = [env.unwrapped for env in pool._local.envs]
        _stopped_after_env_0(pool)
        assert own[1].t == 1  # stopped after env 0 raised
        pool.send(np.zeros(2, np.int64), [2, 3])
        assert pool.recv().env_ids.tolist() == [2, 3] and own[1].t == 2  # env 1 stepped; the worker's came first
        if on_error == "raise":
            with pytest.raises(EnvError, match="boom in step") as caught:
                pool.recv()
            assert caught.value.env_index == 0 and caught.value.env_ids.tolist() == [0, 1]
        else:
            got = pool.recv()
            assert got.env_ids.tolist() == [0, 1] and set(got.restarted) == {0} and got.obs[1].tolist() == [2.0, 1.0]
            assert "boom in step" in str(got.restarted[0])


@pytest.mark.serial
def test_a_shard_error_from_a_part_of_the_own_group_step_ends_that_step() -> None:
    """Whatever part of the own group's step raises a ShardError (here the first part, made to), the group's
    step is over: recv() names the env, and the group can be sent its next actions and steps them anew."""
    from fastvec.errors import ShardError

    fns = [partial(Sleeps, i, 0.0) for i in range(4)]
    with Pool(fns, batch_size=2, start_method="fork", step_in_parent=True, num_workers=2) as pool:
        pool.async_reset()
        for _ in range(2):
            pool.recv()
        local = pool._local
        step_envs = local.step_envs

        def fails_once(run, stop, watch=None):
            local.step_envs = step_envs
            raise ShardError(1, "step", RuntimeError("a part that raised"))

        local.step_envs = fails_once
        pool.send(np.zeros(2, np.int64), [0, 1])
        with pytest.raises(EnvError, match="a part that raised") as caught:
            pool.recv()
        assert caught.value.env_index == 1
        pool.send(np.ones(2, np.int64), [0, 1])
        got = pool.recv()
        assert got.env_ids.tolist() == [0, 1] and got.obs[:, 0].tolist() == [2.0, 2.0]  # (the failed part stepped none)


@pytest.mark.serial
def test_stats_count_a_stopped_step_of_the_own_group_as_one_command() -> None:
    """stats() counts the own group's step that stopped between envs as one command of its envs' time (2 envs of
    20 ms: 40 ms, in the histogram's 32-65 ms bin), not one per part (20 ms each)."""
    fns = [partial(Sleeps, i, 0.02 if i < 2 else 0.0) for i in range(4)]
    with Pool(fns, batch_size=2, start_method="fork", step_in_parent=True, num_workers=2) as pool:
        stops = _count_stops(pool)
        pool.async_reset()
        for _ in range(2):
            pool.recv()
        _first_step_of_both(pool)
        pool.stats()  # (from here)
        for _ in range(4):
            pool.send(np.zeros(2, np.int64), [0, 1])
            pool.send(np.zeros(2, np.int64), [2, 3])
            while True:
                got = pool.recv()
                if got.env_ids[0] == 0:
                    break
                pool.send(np.zeros(2, np.int64), got.env_ids)
            pool.recv()  # (the worker's last)
        own = pool.stats().shards[0]
        assert len(stops) >= 4 and own.in_parent
        assert 32.768 <= own.p50_ms < 65.536 and own.steps_per_s > 0, own


@pytest.mark.serial
def test_close_while_the_own_group_stopped_between_envs_closes_every_env() -> None:
    """close() while the own group's step is stopped between envs drops it and closes every env (the
    fixture checks that no process or segment is left)."""
    envs.Counter.closed.clear()
    fns = [partial(Sleeps, i, 0.1 if i < 2 else 0.0) for i in range(4)]
    pool = Pool(fns, batch_size=2, start_method="fork", step_in_parent=True, num_workers=2)
    own = [env.unwrapped for env in pool._local.envs]
    _stopped_after_env_0(pool)
    assert [env.t for env in own] == [2, 1]
    pool.close()
    assert pool.closed and {index for pid, index in envs.Counter.closed if pid == os.getpid()} == {0, 1}


def _mapped_blocks() -> set[str]:
    """The shared blocks (fastvec's, in /dev/shm) this process maps."""
    with open("/proc/self/maps") as maps:
        return {line.split()[5] for line in maps if "/dev/shm/fastvec" in line}


@pytest.mark.serial
@pytest.mark.parametrize("how", ["terminate", "close-after-ctrl-c"])
def test_a_pool_ended_while_the_own_group_stopped_lets_go_of_its_block(how: str) -> None:
    """terminate(), or close() after a Ctrl-C in the own group's step, while that step is stopped between envs:
    the block is unmapped at once (the stopped step's actions are views of its rows: kept, they kept it mapped
    for as long as the pool object lived)."""
    import gc

    before = _mapped_blocks()
    fns = [partial(Sleeps, i, 0.1 if i < 2 else 0.0) for i in range(4)]
    pool = Pool(fns, batch_size=2, start_method="fork", step_in_parent=True, num_workers=2)
    block = _mapped_blocks() - before
    assert block
    own = [env.unwrapped for env in pool._local.envs]
    _stopped_after_env_0(pool)
    assert [env.t for env in own] == [2, 1]  # stopped after env 0
    if how == "terminate":
        pool.terminate()
    else:
        envs.Counter.interrupt_at = 2  # env 1, next in the own group's step (the group left in flight)
        with pytest.raises(KeyboardInterrupt):
            pool.recv()
        pool.close()
    gc.collect()
    assert pool.closed and not (_mapped_blocks() & block)


class _RaisesAtCall(envs.Counter):
    """A Counter whose step number ``at`` (over its life) raises."""

    def __init__(self, index: int, at: int | None = None):
        super().__init__(index)
        self.at, self.calls = at, 0

    def step(self, action):
        self.calls += 1
        if self.calls == self.at:
            raise ZeroDivisionError("boom in step")
        return super().step(action)


@pytest.mark.parametrize("own", [False, True], ids=["workers", "own-group"])
def test_a_masked_reset_between_batches_keeps_the_other_envs_latest_rows(own: bool) -> None:
    """A masked synchronous reset between batches: the envs it leaves out read their latest observations (each
    group's latest results are in its own ring slot, not the pool's synchronous one), as gymnasium's
    SyncVectorEnv gives them; and a restart of such an env at its next step ends its episode with the
    observation it last produced."""
    fns = [partial(_RaisesAtCall, 0, 3), partial(_RaisesAtCall, 1), partial(_RaisesAtCall, 2), partial(_RaisesAtCall, 3)]
    venv = VectorEnv(fns, context="fork", batch_size=2, num_workers=2, step_in_parent=own, on_error="restart")
    try:
        venv.async_reset(seed=0)
        for _ in range(2):
            venv.recv()
        for _ in range(2):  # envs 0 and 1 step twice (t = 2); envs 2 and 3 stay at their reset
            venv.send(np.zeros(2, np.int64), np.array([0, 1]))
            assert venv.recv()[4]["env_id"].tolist() == [0, 1]
        obs, _ = venv.reset(options={"reset_mask": np.array([False, False, True, True])})
        assert obs.tolist() == [[2.0, 0.0], [1002.0, 1.0], [0.0, 2.0], [0.0, 3.0]]  # (env i seeded i: base 1000 i)
        venv.send(np.zeros(2, np.int64), np.array([0, 1]))  # env 0 raises (its 3rd step): restarted
        obs, _, _, truncated, infos = venv.recv()
        assert infos["env_id"].tolist() == [0, 1] and truncated.tolist() == [True, False]
        assert obs.tolist() == [[2.0, 0.0], [1003.0, 1.0]]  # env 0's last observation, env 1's next
    finally:
        venv.close()


def test_misuse_is_named() -> None:
    with Pool([envs.make_cartpole] * 4, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        with pytest.raises(NoAsyncCallError, match="nothing sent"):
            pool.recv()
        pool.reset_async()  # a synchronous call pending: recv() names it (it said "nothing sent: async_reset()",
        with pytest.raises(AlreadyPendingCallError, match=r"'reset' is pending: reset_wait\(\) completes it"):
            pool.recv()  # which the pending reset refuses too)
        pool.reset_wait()
        pool.async_reset()
        with pytest.raises(AlreadyPendingCallError, match="still running"):
            pool.send(np.zeros(2, np.int64), [0, 1])
        got = pool.recv()
        with pytest.raises(ValueError, match="whole groups"):
            pool.send(np.zeros(1, np.int64), got.env_ids[:1])
        with pytest.raises(ValueError, match="must not repeat"):
            pool.send(np.zeros(2, np.int64), [got.env_ids[0]] * 2)
        with pytest.raises(ValueError, match="no env ids"):  # (it said they were out of range: "must be in 0..3, got []")
            pool.send(np.zeros(0, np.int64), [])
        for ids in ([2**70, 1], np.array([2**64 - 1, 1], np.uint64), [1e20, 1.0]):  # (a raw OverflowError, or
            with pytest.raises(ValueError, match=r"env ids must be in 0\.\.3, got \[(1180591620717411303424|18446744073709551615|1e\+20), 1"):
                pool.send(np.zeros(2, np.int64), ids)  # ids that wrapped: [-1, 1])
        for ids in ([True, False], [0.5, 1.0], np.array([True, 1], dtype=object)):  # (a boolean mask was taken as
            with pytest.raises(TypeError, match=r"env ids must be integers .*got (bool|float64|object): \["):
                pool.send(np.zeros(2, np.int64), ids)  # ids 1 and 0, 0.5 as 0)
        with pytest.raises(ValueError, match="send\\(actions, env_ids\\)"):
            pool.step_async(np.zeros(4, np.int64))
        with pytest.raises(AlreadyPendingCallError, match="asynchronous batches are running"):
            pool.call("get_attr", [0], ("spec",))
        pool.send(np.zeros(2, np.int64), got.env_ids)
    with pytest.raises(ValueError, match="multiple of batch_size") as info:
        Pool([envs.make_cartpole] * 5, batch_size=2, start_method="fork")
    assert "num_workers" not in str(info.value)  # (none given: it named num_workers=2, hunt80 bug 7)
    with pytest.raises(ValueError, match="with 8 envs and num_workers=3"):
        Pool([envs.make_cartpole] * 8, batch_size=4, num_workers=3, start_method="fork")
    with pytest.raises(ValueError, match="batch_size=8 is more than the 4 envs"):  # (it was the synchronous step)
        Pool([envs.make_cartpole] * 4, batch_size=8, start_method="fork")


def test_integer_ids_in_any_form_are_taken() -> None:
    """Ids numpy does not store as integers but that are: Python ints in an object array, np.uint64 mixed with ints
    (which numpy makes float64), integral floats, torch-like lists of 0-d arrays."""
    forms = [
        lambda ids: np.array(ids.tolist(), dtype=object),
        lambda ids: [np.uint64(ids[0]), int(ids[1])],
        lambda ids: [float(i) for i in ids],
        lambda ids: [np.array(i) for i in ids],
        lambda ids: tuple(ids.tolist()),
    ]
    with Pool([envs.make_cartpole] * 4, batch_size=2, start_method="fork") as pool:
        pool.async_reset()
        for form in forms:
            ids = pool.recv().env_ids
            pool.send(np.zeros(2, np.int64), form(ids))
            assert pool._async.running[pool._async._group_of[ids[0]]]


@pytest.mark.parametrize(
    ("failing", "own"), [(3, False), (3, True), (1, True)], ids=["workers", "worker-env-own-group", "own-env"]
)
def test_env_errors_and_dead_workers_in_batches(failing: int, own: bool) -> None:
    """An env that raises is named by recv(), in a worker's group or in the calling process's
    own group (step_in_parent: envs 0-1 here); the other group goes on."""
    fns = [partial(envs.FailingEnv, "step" if i == failing else None, 1) for i in range(4)]
    with Pool(fns, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP, step_in_parent=own) as pool:
        pool.async_reset()
        ids = [pool.recv().env_ids, pool.recv().env_ids]
        for _ in range(2):
            for group in ids:
                pool.send(np.zeros(2, np.int64), group)
            outcomes = []
            for _ in range(2):
                try:
                    outcomes.append(pool.recv().env_ids.tolist())
                except EnvError as err:
                    outcomes.append(err.env_index)
        other = [0, 1] if failing == 3 else [2, 3]
        assert failing in outcomes and other in outcomes  # the env's group raised naming it; the other went on
    if failing != 3:
        return
    with Pool(
        [envs.make_cartpole] * 4, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP, on_error="restart",
        step_in_parent=own,
    ) as pool:
        pool.async_reset()
        groups = [pool.recv().env_ids, pool.recv().env_ids]
        os.kill(pool.worker_pids[-1], signal.SIGKILL)  # the worker of envs 2-3
        for group in groups:
            pool.send(np.zeros(2, np.int64), group)
        with pytest.warns(RuntimeWarning, match="died"):
            got = [pool.recv(), pool.recv()]
        restarted = {i for b in got for i in b.restarted}
        assert restarted == {2, 3}


def test_an_env_error_in_a_batch_of_several_groups_keeps_the_other_groups() -> None:
    """Batches of two groups: when an env of one raises, recv() names it and its group's ids (env_ids, free
    to be sent again); the other group's results come with the next recv() (they were dropped with the
    error, and their ids never reached the caller: those envs were never sent an action again)."""
    fns = [partial(envs.FailingEnv, "step" if i == 1 else None, 0) for i in range(8)]  # env 1: every step raises
    with Pool(fns, batch_size=4, num_workers=4, step_in_parent=False, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        pool.async_reset()
        assert sorted(i for _ in range(2) for i in pool.recv().env_ids.tolist()) == list(range(8))
        pool.send(np.zeros(4, np.int64), [0, 1, 2, 3])
        with pytest.raises(EnvError, match="env 1 raised ZeroDivisionError") as raised:
            pool.recv()
        assert raised.value.env_ids.tolist() == [0, 1]
        pool.send(np.zeros(4, np.int64), [4, 5, 6, 7])
        returned: list[int] = []
        while len(returned) < 6:
            returned += pool.recv().env_ids.tolist()
        assert sorted(returned) == [2, 3, 4, 5, 6, 7] and returned[:2] == [2, 3]  # (envs 2-3 finished first)
        pool.send(np.zeros(2, np.int64), raised.value.env_ids)  # the failed group can be sent again
        with pytest.raises(EnvError, match="env 1 raised"):
            pool.recv()


def test_front_ends_in_batches() -> None:
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", batch_size=2) as venv:
        venv.seed(0)
        venv.async_reset()
        obs, rewards, dones, infos, ids = venv.recv()
        assert obs.shape == (2, 4) and rewards.dtype == np.float64 and len(infos) == 2 and len(ids) == 2
        for _ in range(60):
            venv.send(np.ones(2, np.int64), ids)
            obs, rewards, dones, infos, ids = venv.recv()
            for k in np.flatnonzero(dones):
                assert "terminal_observation" in infos[k]
    with VectorEnv([envs.make_cartpole] * 4, context="fork", batch_size=2) as venv:
        venv.async_reset(seed=0)
        obs, rewards, terminated, truncated, infos = venv.recv()
        assert obs.shape == (2, 4) and infos["env_id"].shape == (2,)
        venv.send(np.zeros(2, np.int64), infos["env_id"])
        venv.recv()


def test_each_group_gets_its_actions_in_the_dtype_it_was_sent() -> None:
    """The dtype tags are per env: a group sent float64 actions while another is still stepping
    float32 ones each see their own dtype and values (a pool-wide tag would be overwritten)."""
    space = gym.spaces.Box(-1, 1, (2,), np.float32)
    fns = [partial(envs.EchoEnv, gym.spaces.Discrete(2), space, 1000) for _ in range(4)]
    with Pool(fns, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        pool.async_reset()
        first, second = pool.recv().env_ids, pool.recv().env_ids
        sent = {}
        for k in range(20):
            swap = k >= 10  # from then on each group gets the other dtype: a tag kept from before would be stale
            for ids, dtype in ((first, np.float64 if swap else np.float32), (second, np.float32 if swap else np.float64)):
                actions = np.full((2, 2), 0.25 + k / 100, dtype)
                actions[:, 1] = 5.0  # outside the Box: passed through as sent, as the references do
                sent[int(ids[0])] = actions
                pool.send(actions, ids)
            for _ in range(2):
                got = pool.recv()
                for i in got.env_ids.tolist():
                    action = got.infos[i]["action"]
                    expected = sent[int(got.env_ids[0])][0]
                    assert action.dtype == expected.dtype and np.array_equal(action, expected), (i, action)


def test_a_send_to_another_number_of_envs_than_the_last_gets_its_own_dtype() -> None:
    """One writer per batch count shares the tag scratch: a writer that skipped storing a tag it stored
    before left the other count's there. Sent int64 [1, 2] after 3.7 to all four envs, two envs got the bits
    of 3.7's float64 view, np.float64(5e-324) and 1e-323."""
    fns = [partial(envs.EchoEnv, gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(3))] * 4
    with Pool(fns, batch_size=2, num_workers=2, step_in_parent=False, start_method="fork") as pool:
        pool.async_reset()
        first = [pool.recv().env_ids, pool.recv().env_ids][0].tolist()
        everyone = [0, 1, 2, 3]
        for ids, actions in ((first, np.array([1, 2])), (everyone, np.full(4, 3.7)), (first, np.array([1, 2]))):
            pool.send(actions, ids)
            got = {}
            while len(got) < len(ids):
                batch = pool.recv()
                got.update({i: batch.infos[i]["action"] for i in batch.env_ids.tolist()})
            assert [got[i] for i in ids] == actions.tolist() and {type(a) for a in got.values()} == {type(actions[0])}


class _InfoCounter(envs.Counter):
    """A Counter with infos: its step's info on every third t, its reset's info, and episodes that
    end both ways (terminated at t % 17 == 0, truncated at t >= 40)."""

    def reset(self, *, seed=None, options=None):
        obs, _ = super().reset(seed=seed, options=options)
        return obs, {"reset_of": self.index}

    def step(self, action):
        obs, reward, _, truncated, _ = super().step(action)
        info = {"t": self.t} if self.t % 3 == 0 else {}
        return obs, reward, self.t % 17 == 0, truncated, info


def test_sb3_batches_match_sb3_env_by_env() -> None:
    """Every env's observations, rewards, dones and infos (its own keys, TimeLimit.truncated,
    terminal_observation) and reset infos from recv() equal those of SB3's DummyVecEnv stepping
    that env alone with the same actions."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    fns = [partial(_InfoCounter, i) for i in range(4)]
    refs = [DummyVecEnv([fn]) for fn in fns]
    with SubprocVecEnv(fns, start_method="fork", batch_size=2) as venv:
        venv.seed(5)
        venv.async_reset()
        expected: dict[int, tuple] = {}
        for i, ref in enumerate(refs):
            ref.seed(5 + i)
            expected[i] = (ref.reset(), None, None, None)
        steps = [0] * 4
        seen_infos = seen_ends = 0
        for _ in range(150):
            obs, rewards, dones, infos, ids = venv.recv()
            for k, i in enumerate(ids.tolist()):
                want_obs, want_reward, want_done, want_infos = expected[i]
                np.testing.assert_array_equal(obs[k], want_obs[0], err_msg=f"env {i}")
                if want_infos is None:  # the first batch: reset observations
                    continue
                assert rewards[k] == want_reward[0] and dones[k] == want_done[0], i
                got, want = dict(infos[k]), dict(want_infos[0])
                if "terminal_observation" in want:
                    np.testing.assert_array_equal(got.pop("terminal_observation"), want.pop("terminal_observation"))
                    seen_ends += 1
                    assert venv.reset_infos[i] == refs[i].reset_infos[0] == {"reset_of": i}
                assert got == want, (i, got, want)
                seen_infos += "t" in want
            actions = np.array([(steps[i] * 7 + i) % 5 for i in ids.tolist()])
            venv.send(actions, ids)
            for a, i in zip(actions.tolist(), ids.tolist()):
                steps[i] += 1
                expected[i] = refs[i].step(np.array([a]))
        assert seen_infos > 10 and seen_ends > 10  # the unusual infos were exercised
    for ref in refs:
        ref.close()


class _EndsEveryStep(envs.Counter):
    """Its reset's info names it; envs 6 and 7 reset slowly; every step ends the episode."""

    def reset(self, *, seed=None, options=None):
        if self.index >= 6:
            time.sleep(0.5)
        obs, _ = super().reset(seed=seed, options=options)
        return obs, {"reset_of": self.index}

    def step(self, action):
        obs, reward, _, truncated, info = super().step(action)
        return obs, reward, True, truncated, info


def test_sb3_reset_infos_of_a_batch_mixing_an_async_reset_and_episode_ends() -> None:
    """A batch of several groups can hold one group's async_reset results beside another's step that ended
    episodes: every env's reset_infos are kept (the reset group's were dropped, left {})."""
    fns = [partial(_EndsEveryStep, i) for i in range(8)]
    with SubprocVecEnv(fns, start_method="fork", batch_size=4, num_workers=4, step_in_parent=False) as venv:
        venv.async_reset()
        seen: set[int] = set()
        mixed = False
        for _ in range(40):
            if mixed and len(seen) == 8:
                break
            _, _, dones, _, ids = venv.recv()
            mixed |= bool(dones.any()) and not bool(dones.all())
            seen |= set(ids.tolist())
            time.sleep(0.15)  # another quick group's reset finishes meanwhile (envs 6 and 7 still sleep)
            venv.send(np.zeros(len(ids), np.int64), ids)
        assert mixed and seen == set(range(8))
        assert [venv.reset_infos[i] for i in range(8)] == [{"reset_of": i} for i in range(8)]


def test_sb3_send_takes_one_action_per_env_for_a_dict_action_space() -> None:
    """SubprocVecEnv.send() takes SB3's layout for structured action spaces (a list of one dict per env),
    as its step() does; it refused it ("actions has no part 'a'")."""
    space = gym.spaces.Dict({"a": gym.spaces.Discrete(3), "b": gym.spaces.Box(-1, 1, (2,), np.float32)})
    fns = [partial(envs.EchoEnv, gym.spaces.Box(-1, 1, (2,), np.float32), space)] * 4
    with SubprocVecEnv(fns, start_method="fork", batch_size=2) as venv:
        venv.async_reset()
        ids = venv.recv()[4]
        venv.recv()  # (the other group's reset)
        actions = [{"a": 2 - k, "b": np.full(2, 0.25 * (k + 1), np.float32)} for k in range(2)]
        venv.send(actions, ids)
        *_, infos, got_ids = venv.recv()
        assert got_ids.tolist() == ids.tolist()
        for k, action in enumerate(actions):
            got = infos[k]["action"]
            assert got["a"] == action["a"] and np.array_equal(got["b"], action["b"])
        with pytest.raises(ValueError, match=f"action for env {ids[1]} has no part 'a'"):
            venv.send([actions[0], {"b": actions[1]["b"]}], ids)


def test_the_default_asynchronous_layout_steps_a_group_in_the_caller_where_cores_are_few(monkeypatch) -> None:
    """By default the calling process steps the first group itself where a worker per group and the caller
    would outnumber the cores and a batch is one group (its step can stop between envs for a worker that
    finished); explicit settings win; the number of groups follows the cores."""
    from fastvec import pool as pool_module
    from fastvec.options import PoolOptions

    def layout(n: int, batch: int, cores: int, **options) -> tuple[int, bool]:
        monkeypatch.setattr(pool_module, "default_num_workers", lambda: cores)
        return pool_module._async_layout(n, PoolOptions(batch_size=batch, **options))

    assert layout(8, 4, cores=2) == (2, True)  # 3 processes on 2 cores, a group per batch
    assert layout(32, 16, cores=2) == (2, True)
    assert layout(64, 32, cores=2) == (2, True)
    assert layout(8, 4, cores=2, step_in_parent=False) == (2, False)
    assert layout(16, 8, cores=2, num_workers=4) == (4, False)  # batches of two groups of 4: no stops
    # cores to spare: smaller groups, a worker per core (seen on 16 cores: two workers of 32 envs
    # left 14 cores idle), each group's size dividing the batch
    assert layout(8, 4, cores=16) == (8, False)  # 9 processes on 16 cores
    assert layout(64, 32, cores=16) == (16, False)  # groups of 4, 8 a batch
    assert layout(64, 32, cores=16, step_in_parent=True) == (16, True)
    assert layout(48, 24, cores=16) == (16, False)  # groups of 3
    assert layout(40, 20, cores=16) == (10, False)  # groups of 4: 20 has no divisor between 2.5 and 4
    assert layout(64, 32, cores=16, num_workers=2) == (2, False)  # named: kept
    assert layout(64, 16, cores=8) == (8, False)  # never fewer groups than batches... nor more than cores
    assert layout(64, 8, cores=4) == (8, True)  # ... unless the batches are more (a group each, 9 processes)
    # more workers than envs (a tuning file from a larger machine): lowered to the envs, as without batches;
    # the error blamed batch_size
    assert layout(4, 2, cores=2, num_workers=8) == (4, False)


@pytest.mark.parametrize("own", [False, True], ids=["workers", "own-group"])
def test_many_cores_give_smaller_groups_and_batches_still_match_serial_runs(monkeypatch, own: bool) -> None:
    """On a machine with more cores than batches, the default splits the envs into a group per
    core (here 4 "cores": 8 envs, batches of 4, 4 groups of 2 envs; with step_in_parent the caller
    steps the first); every batch is whole groups and every env's sequence still matches a serial
    run of it with the same actions."""
    from fastvec import pool as pool_module

    monkeypatch.setattr(pool_module, "default_num_workers", lambda: 4)
    pool = Pool([partial(envs.Counter, i) for i in range(8)], batch_size=4, start_method="fork", step_in_parent=own)
    try:
        assert pool.num_workers == 4 and pool.step_in_parent == own and len(pool.worker_pids) == (3 if own else 4)
        model = [envs.Counter(i) for i in range(8)]
        assert _against_a_serial_model(pool, model, random.Random(5), SAME_STEP, 4, 400) > 0
    finally:
        pool.close()


class _SlowCounter(envs.Counter):
    """A Counter whose steps take ``delay`` seconds (busy: it holds its core, as a real env does)."""

    def __init__(self, index: int, delay: float):
        super().__init__(index)
        self.delay = delay

    def step(self, action):
        until = time.perf_counter() + self.delay
        while time.perf_counter() < until:
            pass
        return super().step(action)


def test_the_monitor_leaves_batches_whole_and_results_unchanged() -> None:
    """The monitor on an asynchronous pool whose groups differ 4x in cost (the case for moving envs
    in a synchronous pool): it samples the shards and may re-pin workers, but moves no env, since a
    group is the unit of a batch; every batch still matches a serial run of each env."""
    n = 8
    delays = [0.0002 if i < 4 else 0.0008 for i in range(n)]
    pool = Pool(
        [partial(_SlowCounter, i, delays[i]) for i in range(n)],
        batch_size=2,
        start_method="fork",
        autoreset_mode=SAME_STEP,
        num_workers=4,
        step_in_parent=False,
        monitor=True,
        monitor_interval=0.05,
    )
    try:
        monitor = pool._monitor
        assert monitor is not None
        shards = [list(envs_) for envs_ in pool.shard_envs]
        model = [_SlowCounter(i, 0.0) for i in range(n)]
        ended = _against_a_serial_model(pool, model, random.Random(3), SAME_STEP, 2, 800)
        assert ended > 0
        assert monitor._samples >= 3 and monitor._thread.is_alive()  # it sampled the groups all along
        assert [list(envs_) for envs_ in pool.shard_envs] == shards and pool.moves_done == 0
        events = pool.monitor_events
        assert all(event.kind not in ("move", "undo") for event in events), events
    finally:
        pool.close()


def test_an_interrupt_while_recv_makes_its_batch_leaves_it_for_the_next_recv(monkeypatch) -> None:
    """Ctrl-C landing while recv() copies its batch out: that batch is not lost. The next recv()
    returns it, and every env keeps being stepped (the interrupt is raised deterministically where
    a SIGINT would land)."""
    from fastvec.async_batches import AsyncBatches

    make_batch = AsyncBatches._group_batch  # (a batch of one group, as here)
    lost: list = []  # the envs of the batch the interrupt hit

    def interrupted_once(self, owner, entry, copy, batch_object=None):
        if not lost:
            lost.extend(self.groups[entry[0]])
            raise KeyboardInterrupt
        return make_batch(self, owner, entry, copy, batch_object)

    with Pool([envs.make_cartpole] * 8, batch_size=4, num_workers=2, step_in_parent=False, start_method="fork") as pool:
        pool.async_reset()
        monkeypatch.setattr(AsyncBatches, "_group_batch", interrupted_once)
        with pytest.raises(KeyboardInterrupt):
            pool.recv()
        assert pool.state.value == "idle"
        got = pool.recv()
        assert got.env_ids.tolist() == lost
        pool.send(np.zeros(4, np.int64), got.env_ids)
        for _ in range(3):  # (before, the interrupted group was lost: never returned nor stepped again)
            first, second = pool.recv(), pool.recv()
            assert sorted(first.env_ids.tolist() + second.env_ids.tolist()) == list(range(8))
            pool.send(np.zeros(4, np.int64), first.env_ids)
            pool.send(np.zeros(4, np.int64), second.env_ids)


class _ResetInfo(envs.FailingEnv):
    def reset(self, *, seed=None, options=None):
        obs, _ = super().reset(seed=seed)
        return obs, {"reset": True}


@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_an_interrupt_while_a_front_end_makes_its_outputs_leaves_the_batch_for_the_next_recv(monkeypatch, front: str) -> None:
    """Ctrl-C after the pool handed the batch over, while the front-end made its dones and infos: those envs were
    lost (neither running nor ready, never returned again; recv() then found nothing sent)."""
    import fastvec.gym_vector_env as gym_front
    import fastvec.sb3_vec_env as sb3_front

    lost: list = []

    def interrupted_once(real):
        def interrupted(*args, **kwargs):
            if not lost:
                lost.append(True)
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        return interrupted

    options = {"batch_size": 2, "num_workers": 2, "step_in_parent": False}
    if front == "sb3":
        venv = SubprocVecEnv([_ResetInfo] * 4, start_method="fork", **options)
        monkeypatch.setattr(sb3_front.kernels, "done_flags", interrupted_once(sb3_front.kernels.done_flags))
    else:
        venv = VectorEnv([_ResetInfo] * 4, context="fork", **options)
        monkeypatch.setattr(gym_front.VectorEnv, "_recv_infos", interrupted_once(gym_front.VectorEnv._recv_infos))
    with venv:
        venv.async_reset()
        with pytest.raises(KeyboardInterrupt):
            venv.recv()
        ids = sorted(i for _ in range(2) for i in (venv.recv()[4] if front == "sb3" else venv.recv()[4]["env_id"]).tolist())
        assert ids == [0, 1, 2, 3]


@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_step_timeout_in_batches(on_error: str) -> None:
    """A group that hangs past step_timeout: StepTimeoutError naming its worker (the pool breaks), or
    with on_error="restart" its worker replaced and the group's episodes ended as restarted."""
    fns = [partial(envs.FailingEnv, "hang" if i == 3 else None, 0) for i in range(4)]
    options = {"on_error": on_error, "step_timeout": 0.5}
    with Pool(fns, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP, step_in_parent=False, **options) as pool:
        pool.async_reset()
        groups = sorted([pool.recv().env_ids, pool.recv().env_ids], key=lambda ids: ids[0])
        for group in groups:
            pool.send(np.zeros(2, np.int64), group)
        assert pool.recv().env_ids.tolist() == [0, 1]
        pool.send(np.zeros(2, np.int64), groups[0])
        assert pool.recv().env_ids.tolist() == [0, 1]  # the other group goes on meanwhile
        began = time.monotonic()
        if on_error == "raise":
            with pytest.raises(StepTimeoutError, match=r"'step' did not finish within 0.5 s in worker 1 \(envs 2..3\)"):
                pool.recv()
            assert time.monotonic() - began < 3
            assert pool.state.value == "broken"
            return
        with pytest.warns(RuntimeWarning):
            got = pool.recv()
        assert got.env_ids.tolist() == [2, 3] and set(got.restarted) == {2, 3} and got.truncated.all()
        assert time.monotonic() - began < 5


def test_recv_with_no_time_left_still_takes_a_finished_group() -> None:
    """recv(timeout=0) returns a group that finished, as step_wait(timeout=0) a finished step (it raised
    "no batch within 0 s; the envs are still running" before looking), and raises only while none did."""
    fns = [partial(envs.FailingEnv, "slow" if i >= 2 else None, 0) for i in range(4)]
    with Pool(fns, batch_size=2, num_workers=2, step_in_parent=False, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        pool.async_reset()
        first = pool.recv().env_ids.tolist()
        time.sleep(0.3)  # the other group's reset is done meanwhile
        assert sorted(first + pool.recv(timeout=0).env_ids.tolist()) == [0, 1, 2, 3]
        pool.send(np.zeros(2, np.int64), [2, 3])  # a step of 0.3 s
        with pytest.raises(multiprocessing.TimeoutError, match="no batch within 0 s"):
            pool.recv(timeout=0)


@pytest.mark.serial
@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_a_finished_group_waiting_to_be_collected_is_not_late(on_error: str) -> None:
    """step_timeout bounds a command, not the time its finished results wait for recv(): a learner slower
    than step_timeout between recv() calls got StepTimeoutError (with on_error="restart" its healthy
    workers were killed and their episodes ended as restarted)."""
    fns = [partial(gym.make, "CartPole-v1")] * 3
    options = {"on_error": on_error, "step_timeout": 0.4, "num_workers": 3, "step_in_parent": False}
    with Pool(fns, batch_size=1, start_method="fork", **options) as pool:
        pool.async_reset(seeds=[0, 1, 2])
        for _ in range(6):
            batch = pool.recv()
            assert not batch.restarted
            time.sleep(0.25)  # the learner's update: two groups wait done past step_timeout meanwhile
            pool.send(np.zeros(1, np.int64), batch.env_ids)


@pytest.mark.parametrize("own", [True, False], ids=["own-group", "workers"])
@pytest.mark.parametrize(("fault", "on_error"), [("kill", "raise"), ("kill", "restart"), ("hang", "raise"), ("hang", "restart")])
def test_a_worker_that_dies_or_hangs_is_found_while_other_groups_keep_coming(fault: str, on_error: str, own: bool) -> None:
    """The own group can always be stepped, and quicker workers' groups are always done: recv() never waited
    for the faulty worker, whose envs starved in silence (no WorkerDiedError, no restart, no
    StepTimeoutError; with workers only, the error came 10-27 s late)."""
    n = 4 if own else 6
    bad = {n - 2, n - 1}
    fns = [partial(envs.FailingEnv, "hang" if fault == "hang" and i in bad else None, 3) for i in range(n)]
    options = {"on_error": on_error, "step_timeout": 0.5, "step_in_parent": own, "num_workers": n // 2}
    with Pool(fns, batch_size=2, start_method="fork", autoreset_mode=SAME_STEP, **options) as pool:
        pool.async_reset()
        assert sorted(i for _ in range(n // 2) for i in pool.recv().env_ids.tolist()) == list(range(n))
        pool.send(np.zeros(n, np.int64), list(range(n)))
        if fault == "kill":
            os.kill(pool.worker_pids[-1], signal.SIGKILL)
        began = time.monotonic()
        expected = {"kill": WorkerDiedError, "hang": StepTimeoutError}[fault]
        try:
            while time.monotonic() - began < 10:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    got = pool.recv()
                if set(got.restarted) == bad:  # the faulty worker's group came back replaced
                    assert on_error == "restart"
                    hung = "worker hung: still running after step_timeout=0.5 s"
                    # (a SIGKILLed worker not yet gone when its step is past step_timeout, on a loaded host, is
                    # ended as hung: either way it is found and replaced)
                    reasons = ("worker process died", hung) if fault == "kill" else (hung,)
                    assert all(got.restarted[i].startswith(reasons) for i in bad), got.restarted
                    break
                pool.send(np.zeros(2, np.int64), got.env_ids)  # (the faulty worker's too, while it still steps)
            else:
                pytest.fail("the faulty worker's envs were never returned, and nothing was raised")
        except expected:
            assert on_error == "raise"
        assert time.monotonic() - began < 5


def test_async_reset_with_seeds_beyond_64_bits() -> None:
    with Pool([envs.make_cartpole] * 4, batch_size=2, start_method="fork") as pool:
        pool.async_reset([2**64 + i for i in range(4)])
        got = sorted([pool.recv(), pool.recv()], key=lambda batch: batch.env_ids[0])
        expected = [gym.make("CartPole-v1").reset(seed=2**64 + i)[0] for i in range(4)]
        np.testing.assert_array_equal(np.concatenate([batch.obs for batch in got]), np.stack(expected))


class OptionsEcho(envs.FailingEnv):
    def reset(self, *, seed=None, options=None):
        obs, _ = super().reset(seed=seed, options=options)
        return obs, {"options": options}


@pytest.mark.parametrize("own", [False, True], ids=["workers", "own-group"])
def test_async_reset_uses_set_options_once(own: bool) -> None:
    """SB3's set_options() reaches the envs in async_reset(), once, as in reset() (it used to be left
    for a later reset)."""
    with SubprocVecEnv([OptionsEcho] * 4, start_method="fork", batch_size=2, step_in_parent=own) as venv:
        venv.set_options({"level": 3})
        venv.async_reset()
        got = [venv.recv(), venv.recv()]
        assert sorted(i for batch in got for i in batch[4].tolist()) == [0, 1, 2, 3]
        assert venv.reset_infos == [{"options": {"level": 3}}] * 4
        venv.async_reset()
        for _ in range(2):
            venv.recv()
        assert venv.reset_infos == [{"options": None}] * 4


class FirstResetSays(gym.Env):
    """Its first reset's info is {"first_reset": True}, the later ones' {}; a reset with options {"boom": path} raises
    while the file path does not exist (made then)."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)
    resets = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "boom" in options and not os.path.exists(options["boom"]):
            open(options["boom"], "w").close()
            raise RuntimeError("reset fails")
        self.resets += 1
        return np.zeros(1, np.float32), ({"first_reset": True} if self.resets == 1 else {})

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize("own", [False, True], ids=["workers", "own-group"])
def test_async_reset_sets_every_env_s_reset_infos_as_reset_does(tmp_path, own: bool) -> None:
    """After async_reset() and its recv()s, reset_infos hold that reset's infos for every env, as reset() sets them:
    an env whose reset returned {} kept an earlier reset's (hunt77 bug 4), and a restart in it came only in recv()'s
    step infos, not beside the reset's info where reset() puts it (hunt77 bug 3)."""
    with SubprocVecEnv([FirstResetSays] * 4, start_method="fork", batch_size=2, step_in_parent=own,
                       on_error="restart") as venv:
        venv.async_reset()
        assert sorted(i for _ in range(2) for i in venv.recv()[4].tolist()) == [0, 1, 2, 3]
        assert venv.reset_infos == [{"first_reset": True}] * 4
        for ids in ([0, 1], [2, 3]):
            venv.send(np.zeros(2, np.int64), ids)
        for _ in range(2):
            venv.recv()
        venv.set_options([{}, {}, {"boom": str(tmp_path / "boom")}, {}])
        venv.async_reset()
        for _ in range(2):
            venv.recv()
        assert venv.reset_infos[:2] + venv.reset_infos[3:] == [{}] * 3
        assert sorted(venv.reset_infos[2]) == ["fastvec.restarted", "first_reset"]  # (its fresh copy's first reset)


def test_sb3_batches_hold_text_parts_as_its_synchronous_steps() -> None:
    """Text parts come batched as SB3's SubprocVecEnv batches them (np.stack), in recv() as in step()."""
    space = gym.spaces.Dict({"word": gym.spaces.Text(5), "pos": gym.spaces.Box(-1, 1, (2,), np.float32)})
    fns = [partial(envs.EchoEnv, space, gym.spaces.Discrete(2))] * 4
    with SubprocVecEnv(fns, start_method="fork", batch_size=2) as venv:
        venv.async_reset()
        obs = venv.recv()[0]
        assert isinstance(obs["word"], np.ndarray) and obs["word"].shape == (2,) and obs["word"].dtype.kind == "U"
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        assert isinstance(venv.reset()["word"], np.ndarray)


class _DiesInItsFirstReset(OptionsEcho):
    """Env ``i``'s process dies in its first reset while ``flag`` exists (the file goes with it: its replacement's
    reset works)."""

    def __init__(self, i: int, flag: str):
        super().__init__()
        self.i, self.flag = i, flag

    def reset(self, *, seed=None, options=None):
        if self.i == 3 and os.path.exists(self.flag):
            os.remove(self.flag)
            os._exit(3)
        return super().reset(seed=seed, options=options)


def test_a_worker_replaced_in_async_reset_resets_its_envs_with_their_options(tmp_path) -> None:
    """A worker that dies in async_reset() (on_error="restart"): its replacement resets the envs with the seeds and
    the options they were given, as reset() does (the options were dropped)."""
    flag = tmp_path / "die"
    flag.touch()
    fns = [partial(_DiesInItsFirstReset, i, str(flag)) for i in range(4)]
    with Pool(fns, batch_size=2, num_workers=2, step_in_parent=False, on_error="restart", start_method="fork") as pool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            pool.async_reset([100, 101, 102, 103], options=[{"x": i} for i in range(4)])
            infos = {}
            for _ in range(2):
                batch = pool.recv()
                infos.update(batch.reset_infos)
    assert not flag.exists()  # (env 3's worker died once)
    assert {i: info["options"] for i, info in infos.items()} == {i: {"x": i} for i in range(4)}


def test_a_check_that_replaces_every_worker_in_flight_returns_their_groups() -> None:
    """recv() every 0.15 s while every worker in flight dies (on_error="restart"): the periodic check of the workers
    in flight, which respawns them, can find every one dead; their groups come back restarted (recv() went on to
    wait for no worker at all: ValueError "done_index is empty", or "min() arg is an empty sequence")."""
    fns = [partial(envs.FailingEnv, "die", 2)] * 2
    options = {"num_workers": 2, "step_in_parent": False, "on_error": "restart"}
    with Pool(fns, batch_size=1, start_method="fork", **options) as pool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            pool.async_reset()
            restarted = 0
            for _ in range(16):
                time.sleep(0.15)  # (both workers done or dead when recv() looks)
                batch = pool.recv()
                restarted += len(batch.restarted)
                pool.send(np.zeros(1, np.int64), batch.env_ids)
    assert restarted >= 4


def test_the_own_groups_watch_of_the_workers_in_flight_stays_small() -> None:
    """The arrays of the workers in flight that the own group's step watches are kept per set of workers, not per
    order (in which they were sent): one array here for the six orders of three workers, each sorted (a cache
    keyed by order grew without bound: about 4,800 arrays after 120,000 recv() calls with 7 workers)."""
    import itertools

    with Pool([envs.make_cartpole] * 4, batch_size=1, num_workers=4, step_in_parent=True, start_method="fork") as pool:
        pool.async_reset()
        batches = pool._async
        inflight = batches.inflight
        try:
            for order in itertools.permutations([1, 2, 3]):
                batches.inflight = {position: inflight.get(position) for position in (0, *order)}
                assert batches._watch(pool)[3].tolist() == [0, 1, 2]
        finally:
            batches.inflight = inflight
        assert len(batches._watched) == 1
        for _ in range(4):
            pool.recv()


class _DiesThenSlowToMake(gym.Env):
    """Env 3 ends its worker (os._exit) in its second step; made again after that (``flag`` exists), it takes 20 s."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, index: int, flag: str):
        self.index, self.flag, self.t = index, flag, 0
        if index == 3 and os.path.exists(flag):
            time.sleep(20)

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.index == 3 and self.t == 2:
            open(self.flag, "w").close()
            os._exit(3)
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_close_of_batches_drops_a_dead_worker_instead_of_replacing_it(tmp_path) -> None:
    """on_error="restart": close() waits for the groups in flight, and replaced a worker found dead there, whose
    replacement made its envs again first: close(timeout=1.0) took 20 s with a slow simulator, for ever with one
    that hangs, where close() promises to return within about its timeout."""
    flag = str(tmp_path / "died")
    venv = SubprocVecEnv([partial(_DiesThenSlowToMake, i, flag) for i in range(4)], start_method="fork",
                         num_workers=2, step_in_parent=False, batch_size=2, on_error="restart")  # fmt: skip
    try:
        venv.async_reset()
        while not os.path.exists(flag):
            ids = venv.recv()[4]
            venv.send(np.zeros(len(ids), np.int64), ids)
        time.sleep(0.3)  # (the worker of envs 2 and 3 is dead, its batch in flight)
    finally:
        began = time.monotonic()
        venv.pool.close(timeout=1.0)
        took = time.monotonic() - began
        venv.close()
    assert took < 10 and venv.pool.worker_restarts == 0


class _SlowToPickle:
    """Its pickling (a worker sending it back) takes 3 s."""

    def __reduce__(self):
        time.sleep(3.0)
        return _SlowToPickle, ()


class _SendsSlowly(gym.Env):
    """Action 1: its info takes 3 s to pickle (the worker has said its step is done: it hangs sending the results).
    With ``slow_make`` existing, making it takes 3 s (a replacement worker's envs)."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, slow_make: str = ""):
        if slow_make and os.path.exists(slow_make):
            time.sleep(3.0)

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, ({"blob": _SlowToPickle()} if int(action) == 1 else {})


def _hand_out(venv, api: str, actions: list[int]) -> tuple:
    """Step every env with ``actions`` (sync), or, as batches of two groups, send them and receive the second's."""
    if api == "sync":
        return venv.step(np.array(actions))
    venv.async_reset()
    venv.recv()
    venv.recv()
    venv.send(np.array(actions[2:]), [2, 3])
    return venv.recv()


@pytest.mark.one_pass  # (the pool's handling of a worker's message: no kernel)
@pytest.mark.parametrize("api", ["sync", "batches"])
def test_a_worker_hung_sending_its_results_is_replaced_with_on_error_restart(api: str) -> None:
    """It had said its step was done, then hung past step_timeout sending the results: the pool broke (the error said
    the step did not finish) although on_error="restart" replaces a hung worker."""
    options = {"num_workers": 2, "step_in_parent": False, "on_error": "restart", "step_timeout": 0.5}
    with SubprocVecEnv([_SendsSlowly] * 4, start_method="fork", **options, **({"batch_size": 2} if api != "sync" else {})) as venv:
        if api == "sync":
            venv.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got = _hand_out(venv, api, [0, 0, 1, 0])
        dones, infos = got[2][-2:], got[3][-2:]
        assert dones.tolist() == [True, True] and all(info["fastvec.restarted"].startswith("worker hung") for info in infos)
        assert venv.pool.state.value == "idle"


@pytest.mark.serial
@pytest.mark.one_pass
@pytest.mark.parametrize("api", ["sync", "batches"])
def test_close_from_another_thread_while_a_worker_s_message_is_read_raises_closed_error(api: str) -> None:
    """close() ended the workers under the read: the waiting thread raised WorkerDiedError (killed by SIGTERM, close()'s
    own), or OSError / ValueError from the released pipe, instead of ClosedError."""
    import threading

    from fastvec.errors import ClosedError

    options = {"num_workers": 2, "step_in_parent": False, **({"batch_size": 2} if api != "sync" else {})}
    venv = SubprocVecEnv([_SendsSlowly] * 4, start_method="fork", **options)
    if api == "sync":
        venv.reset()
    closer = threading.Timer(0.3, venv.pool.close, kwargs={"timeout": 0.3})
    try:
        if api != "sync":  # (the batches' first steps, before the slow one)
            venv.async_reset()
            venv.recv()
            venv.recv()
        closer.start()
        with pytest.raises(ClosedError):
            if api == "sync":
                venv.step(np.array([0, 0, 1, 0]))
            else:
                venv.send(np.array([1, 0]), [2, 3])
                venv.recv()
    finally:
        closer.join(30)
        venv.close()


@pytest.mark.one_pass
def test_close_from_another_thread_while_recv_replaces_a_dead_worker_leaves_no_worker(tmp_path) -> None:
    """The replacement being made when close() gave up waiting was ended by close(), taken for a crash and replaced
    again: that worker outlived close() (the leak guard after each test finds one), and close() or recv() raised
    OSError or ValueError from the released pipe and process."""
    import threading

    from fastvec.errors import ClosedError

    slow_make = tmp_path / "slow"
    options = {"num_workers": 2, "step_in_parent": False, "on_error": "restart", "batch_size": 2}
    venv = SubprocVecEnv([partial(_SendsSlowly, str(slow_make))] * 4, start_method="fork", **options)
    closer = threading.Timer(0.5, venv.pool.close, kwargs={"timeout": 0.3})
    try:
        venv.async_reset()
        venv.recv()
        venv.recv()
        slow_make.touch()
        os.kill(venv.pool.worker_pids[1], signal.SIGKILL)
        venv.send(np.zeros(2, np.int64), [2, 3])
        closer.start()
        with pytest.raises(ClosedError), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            venv.recv()
    finally:
        closer.join(30)
        venv.close()


@pytest.mark.serial
@pytest.mark.one_pass
def test_a_group_done_in_time_is_never_ended_as_late() -> None:
    """The deadline check ran on the workers listed before another worker's (slow) replacement, and did not look at
    whether a group had finished meanwhile: a worker done within step_timeout was ended as hung, its step lost."""
    with Pool([envs.make_cartpole] * 4, batch_size=2, num_workers=2, step_in_parent=False, start_method="fork",
              on_error="restart", step_timeout=5.0) as pool:  # fmt: skip
        batches = pool._async
        pool.async_reset()
        pool.recv()
        pool.recv()
        pid = pool.worker_pids[1]
        pool.send(np.zeros(2, np.int64), [2, 3])
        group = 1 + batches.first_remote
        deadline = time.monotonic() + 10
        while not batches._done(pool, group):  # (its step is done, and waits to be collected)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        batches.issued[group] -= 60.0  # (as if sent a minute ago: past step_timeout by the clock)
        batches._check_deadlines(pool, [1], pool.step_timeout)
        assert pool.worker_pids[1] == pid and not pool.recv().restarted


@pytest.mark.one_pass
def test_a_restart_whose_warning_is_made_an_error_is_still_reported() -> None:
    """With warnings made errors (-W error), the replacement's RuntimeWarning left its group in flight, done: the next
    recv() returned the fresh envs as an ordinary step, without their restart."""
    with Pool([envs.make_cartpole] * 4, batch_size=2, num_workers=2, step_in_parent=False, start_method="fork",
              on_error="restart") as pool:  # fmt: skip
        pool.async_reset()
        pool.recv()
        pool.recv()
        os.kill(pool.worker_pids[1], signal.SIGKILL)
        pool.send(np.zeros(2, np.int64), [0, 1])
        pool.send(np.zeros(2, np.int64), [2, 3])
        got, warned = {}, 0
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            while len(got) < 2:
                try:
                    batch = pool.recv()
                except RuntimeWarning as warning:
                    assert "restarted it with fresh envs" in str(warning)
                    warned += 1
                    continue
                got[tuple(batch.env_ids.tolist())] = batch.restarted
        assert warned == 1 and not got[(0, 1)] and sorted(got[(2, 3)]) == [2, 3]


class _SlowArray:
    """Actions whose conversion to an array takes 0.5 s (a lazy tensor, a remote buffer)."""

    def __init__(self, n: int):
        self.n = n

    def __array__(self, dtype=None, copy=None):
        time.sleep(0.5)
        return np.zeros(self.n, dtype or np.int64)

    def __len__(self) -> int:
        return self.n


def _started(api: str) -> tuple:
    """4 CartPole envs in 2 workers, reset ("sync"), or async-reset with one group received ("batches": its ids)."""
    options = {"num_workers": 2, "step_in_parent": False, **({"batch_size": 2} if api != "sync" else {})}
    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", **options)
    try:
        if api == "sync":
            venv.reset()
            return venv, None
        venv.async_reset()
        return venv, venv.recv()[4]  # (either group: the one that finished first)
    except BaseException:
        venv.close()
        raise


@pytest.mark.one_pass
@pytest.mark.parametrize("api", ["sync", "batches"])
def test_close_from_another_thread_during_a_send_raises_closed_error(api: str) -> None:
    """close() from another thread while send() / step_async() convert their actions (0.5 s): it waits for the issue
    up to its timeout, here 0.1 s, then breaks the pool and stops the workers; the send then raises ClosedError
    (it released the block under the conversion: a bare TypeError from the released views; later it issued into the
    block of a pool already closed)."""
    import threading

    from fastvec.errors import ClosedError

    venv, ids = _started(api)
    closer = threading.Timer(0.2, venv.pool.close, kwargs={"timeout": 0.1})
    try:
        closer.start()
        with pytest.raises(ClosedError):
            if api == "sync":
                venv.step_async(_SlowArray(4))
            else:
                venv.send(_SlowArray(2), ids)
    finally:
        closer.join(30)
        venv.close()


@pytest.mark.one_pass
@pytest.mark.parametrize("api", ["sync", "batches"])
def test_close_from_another_thread_waits_for_a_send_being_issued(api: str) -> None:
    """close() from another thread while send() / step_async() convert their actions (0.5 s), with time to wait: the
    command is issued, then close() finishes it (or the caller does) and closes; the caller's next call raises
    ClosedError. (Held by neither, close() could issue its command while a step was issued: workers left to its
    timeout.)"""
    import threading

    from fastvec.errors import ClosedError

    venv, ids = _started(api)
    pids = venv.pool.worker_pids
    closed_at = []
    closer = threading.Timer(0.2, lambda: (venv.pool.close(timeout=5), closed_at.append(time.monotonic())))
    try:
        closer.start()
        if api == "sync":
            venv.step_async(_SlowArray(4))
        else:
            venv.send(_SlowArray(2), ids)
        issued = time.monotonic()
        closer.join(30)
        assert closed_at and closed_at[0] >= issued  # (it waited for the issue)
        with pytest.raises(ClosedError):
            venv.step_wait() if api == "sync" else venv.recv()
        assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    finally:
        closer.join(30)
        venv.close()


@pytest.mark.one_pass
def test_a_send_while_another_thread_waits_in_recv_is_refused() -> None:
    """send() from a second thread while the first waits in recv(): refused at once (AlreadyPendingCallError), not
    waited for: that recv() may be waiting for this very send's envs (a hang), and a pool is used from one thread at a
    time. The first thread's recv() is unharmed."""
    import threading

    from fastvec.errors import AlreadyPendingCallError

    fns = [partial(envs.FailingEnv, None)] * 2 + [partial(envs.FailingEnv, "slow")] * 2
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=False, batch_size=2) as venv:
        venv.async_reset()
        first, second = venv.recv()[4], venv.recv()[4]
        fast, slow = (first, second) if first[0] == 0 else (second, first)
        venv.send(np.zeros(2, np.int64), slow)  # (0.15 s a step)
        out: dict = {}
        receiver = threading.Thread(target=lambda: out.setdefault("ids", venv.recv()[4]))
        receiver.start()
        deadline = time.monotonic() + 10
        while venv.pool._token and time.monotonic() < deadline:  # (until it is inside recv(), holding the pool)
            time.sleep(0.001)
        with pytest.raises(AlreadyPendingCallError, match="another thread"):
            venv.send(np.zeros(2, np.int64), fast)
        receiver.join(10)
        assert out["ids"].tolist() == slow.tolist()
        venv.send(np.zeros(2, np.int64), fast)
        assert venv.recv()[4].tolist() == fast.tolist()


class _SlowToClose(gym.Wrapper):
    """CartPole whose close() takes 0.5 s."""

    def __init__(self) -> None:
        super().__init__(envs.make_cartpole())

    def close(self) -> None:
        time.sleep(0.5)
        super().close()


@pytest.mark.one_pass
def test_a_send_while_another_thread_closes_the_pool_waits_for_the_close() -> None:
    """send() from a second thread while the first closes the pool (its envs closing, slowly): not refused as a
    command of another thread's, but waited for, then ClosedError."""
    import threading

    from fastvec.errors import ClosedError

    with SubprocVecEnv([_SlowToClose] * 4, start_method="fork", num_workers=2, step_in_parent=False, batch_size=2) as venv:
        venv.async_reset()
        ids = venv.recv()[4]
        venv.recv()
        closer = threading.Thread(target=venv.close)
        closer.start()
        deadline = time.monotonic() + 10
        while not venv.pool._closer and time.monotonic() < deadline:  # (until close() holds the pool)
            time.sleep(0.001)
        with pytest.raises(ClosedError):
            venv.send(np.zeros(2, np.int64), ids)
        closer.join(30)


class _CountsSinceReset(gym.Env):
    """obs [t]: steps since its reset; a reset whose options say "fail" raises."""

    observation_space = gym.spaces.Box(-1e9, 1e9, (1,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and options.get("fail"):
            raise ValueError("reset fails")
        self.t = 0
        return np.array([0.0]), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)]), 0.0, False, False, {}


def test_a_masked_reset_that_raises_between_batches_leaves_the_others_rows() -> None:
    """It wrote every env's "latest" observation from the slot before the current one, which in asynchronous batches
    holds older rows: the next masked reset returned env 3 (left out) as it was two steps before."""
    with VectorEnv([_CountsSinceReset] * 4, context="fork", batch_size=2, num_workers=2, step_in_parent=False) as venv:
        venv.async_reset(seed=0)
        venv.recv()
        venv.recv()
        for _ in range(3):
            venv.send(np.zeros(2, np.int64), np.array([2, 3]))
            venv.recv()
        mask = np.array([False, False, True, False])
        with pytest.raises(EnvError, match="reset fails"):
            venv.reset(options={"reset_mask": mask, "fail": True})
        obs, _ = venv.reset(options={"reset_mask": mask})
        assert obs[:, 0].tolist() == [0.0, 0.0, 0.0, 3.0]


class _InfosGymnasiumCannotBatch(gym.Env):
    """At its second step env 1 and 3 say {"x": "a"}, the others {"x": 1}: gymnasium's info batching refuses a batch
    of both (ValueError, as its SyncVectorEnv raises)."""

    observation_space = gym.spaces.Box(-1e9, 1e9, (1,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, index: int):
        self.index, self.t = index, 0

    def reset(self, *, seed=None, options=None):
        return np.zeros(1), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1), 0.0, False, False, ({"x": "a" if self.index % 2 else 1} if self.t == 2 else {})


def test_a_batch_a_front_end_cannot_make_is_raised_once_and_its_envs_are_free() -> None:
    """An error (not an interrupt) while the outputs were made gave the batch back: every recv() then raised it again,
    and async_reset() was refused. The error comes once, saying which envs are free to be sent again."""
    fns = [partial(_InfosGymnasiumCannotBatch, i) for i in range(4)]
    with VectorEnv(fns, context="fork", batch_size=2, num_workers=2, step_in_parent=False) as venv:
        venv.async_reset()
        failed = []
        for _ in range(8):  # (each group's second step: a batch that mixes an int and a str)
            try:
                ids = venv.recv()[4]["env_id"]
            except ValueError as exc:
                failed.append(sorted(exc.env_ids.tolist()))
                if len(failed) == 2:
                    break
                continue
            venv.send(np.zeros(2, np.int64), ids)
        assert sorted(failed) == [[0, 1], [2, 3]]
        venv.async_reset()  # (nothing is running: every env is free)
        assert sorted(i for _ in range(2) for i in venv.recv()[4]["env_id"].tolist()) == [0, 1, 2, 3]


class SaysItsOwnEnvId(envs.Counter):
    """A Counter whose infos hold a key of its own named env_id."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "env_id": f"mine-{self.index}"}


def test_an_env_s_own_env_id_info_is_replaced_by_recv_with_a_warning() -> None:
    """recv() gives the batch's ids in infos["env_id"] (EnvPool's key): an env's own values of that key were
    replaced without a word, and gymnasium's mask of the env's key (infos["_env_id"]) stayed beside the ids."""
    fns = [partial(SaysItsOwnEnvId, i) for i in range(4)]
    with VectorEnv(fns, batch_size=2, context="fork", num_workers=2) as venv:
        venv.async_reset()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(6):
                *_, infos = venv.recv()
                assert sorted(infos) == ["env_id"] and infos["env_id"].dtype.kind == "i", infos
                venv.send(np.zeros(2, np.int64), infos["env_id"])
        said = [w for w in caught if "'env_id'" in str(w.message)]
        assert len(said) == 1 and said[0].filename == __file__


class _SlowReset(envs.FailingEnv):
    def reset(self, *, seed=None, options=None):  # type: ignore[no-untyped-def]
        time.sleep(1.0)  # (its worker is killed in here)
        return super().reset(seed=seed, options=options)


@pytest.mark.parametrize("front", ["sb3", "gymnasium"])
def test_a_worker_killed_in_async_reset_is_said_to_die_during_the_reset(front: str) -> None:
    """recv() said a worker that died during async_reset() died during 'step' (reset_wait() and the restart's warning
    say 'reset'; hunt110 bug 1)."""
    layout = dict(batch_size=2, num_workers=2, step_in_parent=False)
    if front == "sb3":
        venv = SubprocVecEnv([_SlowReset] * 4, start_method="fork", **layout)
    else:
        venv = VectorEnv([_SlowReset] * 4, context="fork", **layout)
    try:
        venv.async_reset()
        time.sleep(0.3)
        os.kill(venv.pool._remotes[-1].pid, signal.SIGKILL)  # (worker 1: envs 2 and 3, in their resets)
        with pytest.raises(WorkerDiedError, match="during 'reset'") as caught:
            for _ in range(2):
                venv.recv()
        assert caught.value.command == "reset"
    finally:
        venv.close()


class _StepInfo(envs.FailingEnv):
    """Env ``bad``'s step (every env's, with ``bad`` None) returns ``make()`` as its info."""

    def __init__(self, index: int, bad: int | None, make: Callable[[], Any]) -> None:
        super().__init__()
        self.ours, self.make = bad is None or index == bad, make

    def step(self, action):  # type: ignore[no-untyped-def]
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, self.make() if self.ours else info


def _a_list() -> list:
    return [1]


@pytest.mark.parametrize("front", ["sb3", "gymnasium"])
@pytest.mark.parametrize("batches", [False, True])
def test_an_info_that_is_no_dict_is_named_with_its_env(front: str, batches: bool) -> None:
    """An env's step returning a list as its info: a bare TypeError or AttributeError from the front-end's info
    handling (gymnasium's AsyncVectorEnv raises the same bare AttributeError; SB3's worker dies), where every other
    malformed step result is an EnvError naming the env (hunt110 bug 2). A mapping of another class passes."""
    fns = [partial(_StepInfo, i, 1, _a_list) for i in range(4)]
    layout: dict = dict(batch_size=2, step_in_parent=False) if batches else {}
    if front == "sb3":
        venv = SubprocVecEnv(fns, start_method="fork", num_workers=2, **layout)
    else:
        venv = VectorEnv(fns, context="fork", num_workers=2, **layout)
    try:
        with pytest.raises(EnvError, match=r"env 1 raised TypeError during 'step': an env's info must be a (mutable )?dict.*got list"):
            if batches:
                venv.async_reset()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # (each batch sent back, until env 1's group's step is received:
                    ids = venv.recv()[-1]  # under load the other worker's group came back 19 times in 20)
                    venv.send(np.zeros(2, np.int64), ids["env_id"] if front == "gymnasium" else ids)
            else:
                venv.reset()
                venv.step(np.zeros(4, np.int64))
    finally:
        venv.close()


class _ResetInfoIsAList(envs.FailingEnv):
    """Env 1's resets (its autoresets only, unless ``list_first``) return a list as their info; each episode ends after
    2 steps."""

    def __init__(self, index: int, list_first: bool) -> None:
        super().__init__()
        self.index, self.list_first = index, list_first

    def reset(self, *, seed=None, options=None):  # type: ignore[no-untyped-def]
        obs, info = super().reset(seed=seed, options=options)
        self.resets = getattr(self, "resets", 0) + 1
        return obs, ([1, 2, 3] if self.index == 1 and (self.resets > 1 or self.list_first) else info)

    def step(self, action):  # type: ignore[no-untyped-def]
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, self.steps % 2 == 0, truncated, info


@pytest.mark.parametrize("batches", [False, True])
def test_a_reset_info_that_is_no_dict_is_named_with_its_env(batches: bool) -> None:
    """A reset's info that is no dict, merged into a SAME_STEP step's infos or into recv()'s after async_reset(): a bare
    TypeError or ValueError naming no env (hunt111 bug 3)."""
    from gymnasium.vector import AutoresetMode

    fns = [partial(_ResetInfoIsAList, i, batches) for i in range(4)]
    layout: dict = dict(batch_size=2, step_in_parent=False) if batches else {}
    with VectorEnv(fns, context="fork", num_workers=2, autoreset_mode=AutoresetMode.SAME_STEP, **layout) as venv:
        with pytest.raises(EnvError, match=r"env 1 raised TypeError during 'reset': an env's info must be a dict.*got list"):
            if batches:  # (async_reset's own resets)
                venv.async_reset()
                for _ in range(2):
                    venv.recv()
            else:  # (an autoreset's, merged into the step's infos)
                venv.reset()
                for _ in range(2):
                    venv.step(np.zeros(4, np.int64))
    if not batches:  # (reset()'s own: gymnasium's batching raised a bare AttributeError, as AsyncVectorEnv's does;
        fns = [partial(_ResetInfoIsAList, i, True) for i in range(4)]  # hunt113 bug 5)
        with VectorEnv(fns, context="fork", num_workers=2) as venv:
            with pytest.raises(EnvError, match=r"env 1 raised TypeError during 'reset': an env's info must be a dict"):
                venv.reset()


class _ReadOnlyInfo(Mapping):
    def __init__(self) -> None:
        self._data = {"a": 1}

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        return self._data[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_a_read_only_info_is_named_by_sb3s_front_end_and_passes_gymnasiums() -> None:
    """SB3's front-end writes "TimeLimit.truncated" into each info, as SB3's workers do (which fail on a read-only
    mapping too): it raised a bare TypeError naming no env (hunt111 bug 4). gymnasium's takes it, as AsyncVectorEnv."""
    fns = [partial(_StepInfo, i, 2, _ReadOnlyInfo) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        venv.reset()
        with pytest.raises(EnvError, match=r"env 2 raised TypeError during 'step': an env's info must be a mutable dict.*_ReadOnlyInfo"):
            venv.step(np.zeros(4, np.int64))
    with VectorEnv(fns, context="fork", num_workers=2) as venv:
        venv.reset()
        infos = venv.step(np.zeros(4, np.int64))[4]
        assert infos["a"].tolist() == [0, 0, 1, 0] and infos["_a"].tolist() == [False, False, True, False]


def _an_array() -> np.ndarray:
    return np.array([1.0, 2.0])


@pytest.mark.parametrize("front", ["sb3", "gymnasium"])
@pytest.mark.parametrize("bad", [0, 3])  # (the calling process's env; a worker's second env)
def test_an_info_that_is_an_array_is_named_with_its_env(front: str, bad: int) -> None:
    """An array of several values as a step's info: its truth cannot be told, and the shard's check for an info
    raised, blamed on the worker's first env, or a bare ValueError in the calling process (hunt113 bug 4)."""
    fns = [partial(_StepInfo, i, bad, _an_array) for i in range(4)]
    if front == "sb3":
        venv = SubprocVecEnv(fns, start_method="fork", num_workers=2)
    else:
        venv = VectorEnv(fns, context="fork", num_workers=2)
    with venv:
        venv.reset()
        with pytest.raises(EnvError, match=rf"env {bad} raised TypeError during 'step': an env's info must be a (mutable )?dict.*ndarray"):
            venv.step(np.zeros(4, np.int64))


class _FalsyInfo(dict):
    """A mapping that holds keys but tests false."""

    def __bool__(self) -> bool:
        return False


def _falsy_info() -> _FalsyInfo:
    return _FalsyInfo(event=7)


@pytest.mark.parametrize("kind", ["falsy", "defaultdict"])
def test_infos_that_test_false_but_are_the_envs_reach_the_caller(kind: str) -> None:
    """An info was sent only where it tested true: a mapping holding keys but testing false was dropped, and an
    empty defaultdict became a plain dict (SB3's SubprocVecEnv returns the env's own, gymnasium's AsyncVectorEnv
    batches its keys; hunt114 bug 1). Only None and an empty plain dict are "no info"."""
    from stable_baselines3.common.vec_env import SubprocVecEnv as Reference

    fns = [partial(_StepInfo, 0, None, _falsy_info if kind == "falsy" else partial(collections.defaultdict, int))] * 2
    steps = []
    for cls in (SubprocVecEnv, Reference):
        venv = cls(fns, start_method="fork")
        try:
            venv.reset()
            steps.append(venv.step(np.zeros(2, np.int64))[3])
        finally:
            venv.close()
    ours, theirs = steps
    assert [(type(info), dict(info)) for info in ours] == [(type(info), dict(info)) for info in theirs]
    if kind == "falsy":
        with VectorEnv(fns, context="fork", num_workers=2) as venv:
            venv.reset(seed=0)
            infos = venv.step(np.zeros(2, np.int64))[4]
        assert infos["event"].tolist() == [7, 7] and infos["_event"].tolist() == [True, True]
