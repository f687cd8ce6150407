"""Parking a worker (Pool.request_park / request_unpark; the monitor does it beside a CPU hog): its
envs move to its neighbouring shards at their episode ends, then it sleeps, left out of every
command, until it is given envs again. The caller cannot tell, except by where an env runs."""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from fastvec import SubprocVecEnv, VectorEnv
from fastvec.monitor import Monitor
from fastvec.protocol import Stats
from tests import envs
from tests.test_migrate import make_where


def _commands(pool, shard: int) -> int:
    return int(pool.shard_counters()[shard, Stats.COMMANDS])


class _Pair:
    """A pool that parks and one that does not, stepped with the same actions, compared each step."""

    def __init__(self, kind: str, n: int, num_workers: int):
        self.n, self.kind = n, kind
        if kind == "sb3":
            self.still, self.moving = (
                SubprocVecEnv([make_where] * n, start_method="fork", num_workers=num_workers) for _ in range(2)
            )
            for venv in (self.still, self.moving):
                venv.seed(5)
            np.testing.assert_array_equal(self.moving.reset(), self.still.reset())
        else:
            self.still, self.moving = (
                VectorEnv(
                    [envs.make_cartpole] * n,
                    context="fork",
                    num_workers=num_workers,
                    autoreset_mode=AutoresetMode.NEXT_STEP,
                )
                for _ in range(2)
            )
            np.testing.assert_array_equal(self.moving.reset(seed=3)[0], self.still.reset(seed=3)[0])
        self.pool = self.moving.pool
        self.rng = np.random.default_rng(1)
        self.t = 0

    def step(self, count: int = 1, until=None, limit: int = 3000) -> None:
        for _ in range(limit):
            if until is not None and until():
                return
            actions = self.rng.integers(0, 2, self.n)
            a, b = self.moving.step(actions), self.still.step(actions)
            for x, y in zip(a[:3], b[:3]):
                np.testing.assert_array_equal(x, y, err_msg=f"step {self.t}")
            if self.kind == "sb3":
                for i in np.flatnonzero(b[2]):
                    np.testing.assert_array_equal(a[3][i]["terminal_observation"], b[3][i]["terminal_observation"])
            self.t += 1
            if until is None:
                count -= 1
                if count == 0:
                    return
        raise AssertionError(f"not reached within {limit} steps: shards {self.pool.shard_envs}")

    def close(self) -> None:
        self.still.close()
        self.moving.close()


@pytest.mark.parametrize("kind", ["sb3", "gymnasium-next-step"])
def test_a_parked_worker_gets_no_commands_and_results_do_not_change(kind) -> None:
    pair = _Pair(kind, 6, 2)
    pool = pair.pool
    try:
        assert pool.shard_envs == [range(0, 3), range(3, 6)]
        pair.step(5)
        assert pool.request_park(1)
        assert pool.draining == [1] and pool.parked == []
        pair.step(until=lambda: pool.parked == [1])
        assert pool.draining == [] and pool.shard_envs == [range(0, 6), range(6, 6)]
        before = _commands(pool, 1)
        pair.step(40)
        if kind == "sb3":  # every env now steps in the calling process
            assert pair.moving.env_method("pid") == [os.getpid()] * 6
            pair.moving.reset()
            pair.still.reset()
        assert _commands(pool, 1) == before  # the parked worker was given none of those commands
        stats = pool.stats()
        assert [s.parked for s in stats.shards] == [False, True] and stats.shards[1].envs == range(6, 6)
        assert len(pool.worker_pids) == 1 and pool.shard_pid(1) == pool.worker_pids[0]

        # back: no envs at first, then envs move to it again
        assert pool.request_unpark(1) and pool.parked == []
        pair.step(2)
        assert _commands(pool, 1) == before + 2
        for _ in range(3):
            assert pool.request_move(0, 1) is not None
        pair.step(until=lambda: len(pool.shard_envs[1]) == 3)
        assert pool.shard_envs == [range(0, 3), range(3, 6)]
        pair.step(20)
        if kind == "sb3":
            pids = pair.moving.env_method("pid")
            assert pids[:3] == [os.getpid()] * 3 and os.getpid() not in pids[3:]
        assert pool.moves_done == 6
    finally:
        pair.close()


def test_parking_a_middle_worker_splits_its_envs_and_moves_pass_over_it() -> None:
    pair = _Pair("sb3", 8, 4)  # shards [0, 2) in the calling process, [2, 4), [4, 6), [6, 8) in workers
    pool = pair.pool
    try:
        pair.step(3)
        assert pool.request_park(2)
        pair.step(until=lambda: pool.parked == [2])
        # the lower half to the lower neighbour, the upper half to the upper one
        assert pool.shard_envs == [range(0, 2), range(2, 5), range(5, 5), range(5, 8)]
        with pytest.raises(ValueError, match="neighbouring"):
            pool.request_move(0, 3)  # shard 1 (not empty) is between
        assert pool.request_move(2, 1) is None  # a parked shard neither gives nor takes
        assert pool.request_move(1, 3) == 4  # over the empty, parked shard
        pair.step(until=lambda: pool.moves_done == 3)
        assert pool.shard_envs == [range(0, 2), range(2, 4), range(4, 4), range(4, 8)]
        assert pool.request_unpark(2)
        assert pool.request_move(3, 2) == 4
        # not across shard 2 while env 4 moves into it: arriving, env 3 would border none of shard 3's envs
        # (the move was taken, and broke the pool blaming env 3)
        assert pool.request_move(1, 3) is None
        assert pool.request_move(1, 2) == 3
        pair.step(until=lambda: pool.moves_done == 5)
        assert pool.shard_envs == [range(0, 2), range(2, 3), range(3, 5), range(5, 8)]
        pair.step(10)
        pids = pair.moving.env_method("pid")
        assert len({pids[3], pids[4]}) == 1 and pids[3] not in (pids[2], pids[5], os.getpid())
    finally:
        pair.close()


def test_park_requests_are_refused_where_they_cannot_apply() -> None:
    with SubprocVecEnv([envs.make_cartpole] * 6, start_method="fork", num_workers=3) as venv:
        pool = venv.pool
        venv.reset()
        assert not pool.request_park(0)  # the calling process's own shard
        assert not pool.request_unpark(1)  # not parked
        assert pool.request_move(1, 2) == 3
        assert not pool.request_park(1) and not pool.request_park(2)  # a move is pending on them
        while pool.moves_done == 0:
            venv.step(np.zeros(6, np.int64))
        assert pool.request_park(1) and not pool.request_park(1)  # already being emptied
        assert pool.request_move(0, 1) is None and pool.request_move(2, 1) is None
        assert not pool.request_park(2)  # its only neighbour is being emptied
        while pool.parked != [1]:
            venv.step(np.zeros(6, np.int64))
        # not while a step is pending: the worker would count as part of the step, which it never got
        # (step_wait waited for its message for ever)
        venv.step_async(np.zeros(6, np.int64))
        assert not pool.request_unpark(1)
        venv.step_wait()
        assert pool.request_unpark(1)
        venv.step(np.zeros(6, np.int64))
    with SubprocVecEnv([envs.make_cartpole] * 6, start_method="fork", num_workers=3) as venv:
        # nor a park while a step is pending (another thread's, say): the workers stepping would read the moves it
        # marks in the middle of the step
        venv.reset()
        venv.pool._can_carry(list(venv.pool.shard_envs[1]))  # (whether its envs can move known: no call of its own)
        venv.step_async(np.zeros(6, np.int64))
        assert not venv.pool.request_park(1) and not venv.pool.pending_moves
        venv.step_wait()
        assert venv.pool.request_park(1)
    with VectorEnv(
        [envs.make_cartpole] * 4, context="fork", num_workers=2, autoreset_mode=AutoresetMode.DISABLED
    ) as venv:
        assert not venv.pool.request_park(1)  # no episode end to leave at
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2, step_in_parent=False) as venv:
        assert venv.pool.request_park(0)  # its neighbour is a worker too
        assert not venv.pool.request_park(1)


@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_a_parked_worker_that_died(on_error: str) -> None:
    """Without restart it stays parked (the monitor no longer tries to bring it back: it logged an unpark
    that never happened every few samples) and the pool closes cleanly; with restart, unparking replaces
    it (it was never replaced), and the balancing can give it envs again."""
    venv = SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2, on_error=on_error)
    pool = venv.pool
    try:
        venv.reset()
        pool.request_park(1)
        while pool.parked != [1]:
            venv.step(np.zeros(4, np.int64))
        pid = pool.worker_pids[0]
        os.kill(pid, signal.SIGKILL)
        for _ in range(20):
            venv.step(np.ones(4, np.int64))  # nothing waits for it
        pool._parked[1][0].process.join(5)
        if on_error == "raise":  # (said once, where it cannot come back: no step failed, it had no envs)
            with pytest.warns(RuntimeWarning, match=r"worker 1 died while parked, with exit code -9 \(killed by SIGKILL\); it stays parked"):
                assert not pool.can_unpark(1) and not pool.request_unpark(1) and pool.parked == [1]
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert not pool.request_unpark(1)
            assert venv.env_method("pid") == [os.getpid()] * 4
            return
        core = sorted(os.sched_getaffinity(0))[0]
        pool.repin(1, [core])  # (the monitor re-pins a worker it brings back: the dead one's replacement is placed so)
        with pytest.warns(RuntimeWarning, match="worker 1 died while parked"):
            assert pool.request_unpark(1)
        assert pool.parked == [] and pool.worker_restarts == 1 and pool.worker_pids[0] != pid
        assert os.sched_getaffinity(pool.worker_pids[0]) == {core}
        moved = pool.moves_done
        assert pool.request_move(0, 1) == 3
        while pool.moves_done == moved:
            venv.step(np.zeros(4, np.int64))
        assert venv.env_method("pid")[3] == pool.worker_pids[0]
    finally:
        venv.close()
    assert pool.closed


def test_a_worker_that_dies_while_it_is_emptied_is_replaced_and_parking_goes_on() -> None:
    with SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2, on_error="restart") as venv:
        pool = venv.pool
        venv.reset()
        assert pool.request_park(1)
        os.kill(pool.worker_pids[0], signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="died"):
            venv.step(np.zeros(4, np.int64))
        for _ in range(2000):
            if pool.parked == [1]:
                break
            venv.step(np.zeros(4, np.int64))
        assert pool.parked == [1] and pool.shard_envs == [range(0, 4), range(4, 4)]
        assert venv.env_method("pid") == [os.getpid()] * 4


@pytest.mark.serial
def test_the_monitor_parks_a_worker_beside_a_cpu_hog_and_brings_it_back_when_the_hog_ends() -> None:
    """On two cores (the learner busy on one, a hog pinned to the worker's), no core is free: the
    monitor parks the worker, every env steps in the learner's process; once the hog is gone, a
    core is free again, the worker comes back and the balancing gives it envs. (Where the learner,
    waiting for the slowed worker, leaves its core mostly idle, the monitor re-pins the worker
    there instead: also accepted.)"""
    import subprocess
    import sys
    import time

    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two cores")
    os.sched_setaffinity(0, allowed[:2])  # two cores, whatever this machine has
    hog = None
    venv = SubprocVecEnv([make_where] * 8, start_method="fork", num_workers=2, monitor=True, monitor_interval=0.1)
    pool = venv.pool
    try:
        core = pool.cores[1][0]
        code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
        hog = subprocess.Popen([sys.executable, "-c", code])
        venv.reset()
        actions = np.array([0, 1] * 4)

        def step_until(done, seconds: float = 30.0) -> None:
            end = time.monotonic() + seconds
            while not done():
                assert time.monotonic() < end, (pool.shard_envs, pool.monitor_events)
                for _ in range(20):
                    venv.step(actions)

        step_until(lambda: pool.parked == [1] or pool.cores.get(1) != [core])
        if not pool.parked:  # the learner's core had a core's worth of spare time (it waits for the slowed
            # worker, asleep): a re-pin there is the monitor's answer too, and nothing is left to bring back
            event = pool.monitor_events[-1]
            assert event.kind == "repin" and pool.cores[1] != [core] and f"core {core} ->" in event.detail, event
            return
        # every env in this process (some may have come around the ring's end: shard 0's wrap_envs)
        assert sorted(pool.envs_of(0)) == list(range(8)) and not pool.envs_of(1)
        assert [e.kind for e in pool.monitor_events][-1] == "park"
        hog.kill()
        hog.wait()
        step_until(lambda: not pool.parked and len(pool.shard_envs[1]) >= 2)
        kinds = [e.kind for e in pool.monitor_events]
        # (envs came back by a move after the unpark; another event, a re-pin on a noisy host, may follow it)
        assert kinds.index("unpark") > kinds.index("park") and "move" in kinds[kinds.index("unpark") :], pool.monitor_events
        assert os.getpid() not in venv.env_method("pid", indices=list(pool.envs_of(1)))
    finally:
        if hog is not None and hog.poll() is None:
            hog.kill()
            hog.wait()
        venv.close()
        os.sched_setaffinity(0, allowed)


def test_a_worker_back_from_parking_that_dies_before_it_has_envs_is_replaced() -> None:
    with SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2, on_error="restart") as venv:
        pool = venv.pool
        venv.reset()
        assert pool.request_park(1)
        while pool.parked != [1]:
            venv.step(np.zeros(4, np.int64))
        assert pool.request_unpark(1)
        os.kill(pool.worker_pids[0], signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="died"):
            _, _, dones, _ = venv.step(np.zeros(4, np.int64))
        assert pool.worker_restarts == 1 and pool.shard_envs == [range(0, 4), range(4, 4)]
        assert pool.request_move(0, 1) == 3
        while pool.moves_done < 3:
            venv.step(np.ones(4, np.int64))
        pids = venv.env_method("pid")
        assert pids[:3] == [os.getpid()] * 3 and pids[3] == pool.worker_pids[0]


def test_request_unpark_while_another_thread_closes_the_pool_raises_closed_error(monkeypatch) -> None:
    """close() from another thread that gives up waiting for a request_unpark (it holds the pool) tears the
    pool down under it: the request raises ClosedError (it raised a bare KeyError), and nothing is left."""
    import threading

    from fastvec import ClosedError

    venv = SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2)
    pool = venv.pool
    venv.reset()
    pool.request_park(1)
    while pool.parked != [1]:
        venv.step(np.zeros(4, np.int64))
    can_unpark = type(pool).can_unpark

    def closed_meanwhile(self, shard: int) -> bool:  # close() runs here, between the check and the unparking
        answer = can_unpark(self, shard)
        closer = threading.Thread(target=venv.close)
        closer.start()
        closer.join(30)  # (it waits the pending-step grace for this thread, then tears the pool down)
        return answer

    monkeypatch.setattr(type(pool), "can_unpark", closed_meanwhile)
    with pytest.raises(ClosedError, match="closed"):
        pool.request_unpark(1)
    assert pool.closed


def test_park_requests_keep_the_pool_to_one_token() -> None:
    """request_park holds the pool while it asks the workers whether the envs can move (a call): that call
    must go on under the park's hold, not take the token for lost and make a second one (two tokens let
    close() from another thread step this process's envs while a step of this thread did)."""
    with SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2) as venv:
        pool = venv.pool
        venv.reset()
        pool.queue_park(1)  # (the monitor's way: done in the next step)
        venv.step(np.zeros(4, np.int64))
        assert pool.draining == [1] and len(pool._token) == 1
        while pool.parked != [1]:
            venv.step(np.zeros(4, np.int64))
        assert pool.request_unpark(1) and len(pool._token) == 1
        assert pool.request_move(0, 1) is not None
        while not pool.shard_envs[1]:
            venv.step(np.zeros(4, np.int64))
        assert pool.request_park(1) and len(pool._token) == 1


def test_a_park_requested_from_another_thread_waits_for_a_command_in_flight() -> None:
    """request_park from a second thread while the first is inside a call: it waits for the call to end (it
    went on beside it once the park counted as a command holding the pool, found by its own frame)."""
    import threading
    import time

    with SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2) as venv:
        pool = venv.pool
        venv.reset()
        pool._can_carry(list(pool.shard_envs[1]))  # (whether the envs can move known: no call of its own)
        ended: dict[str, float] = {}

        def call() -> None:
            venv.env_method("sleep_for", 0.6, indices=[3])
            ended["call"] = time.monotonic()

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.2)  # (the call holds the pool now)
        assert pool.request_park(1)
        parked_at = time.monotonic()
        caller.join()
        assert parked_at >= ended["call"] and len(pool._token) == 1


def test_a_park_the_pool_refuses_is_reported_by_the_monitor(monkeypatch) -> None:
    """The monitor asks for a park from its thread (queue_park) and logs a "park" event; when the pool then
    refuses it (an env of the worker cannot be pickled, learnt only then), a "refused" event says so (the
    events said the worker slept)."""
    from tests.test_migrate import make_unpicklable

    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    fns = [make_where] * 3 + [make_unpicklable]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        pool = venv.pool
        venv.reset()
        monitor = Monitor(pool, patience=1, cooldown=0)
        pool.queue_park(1)
        venv.step(np.zeros(4, np.int64))
        assert pool.parked == [] and pool.draining == [] and list(pool.refused_requests) == [("park", 1, None)]
        monitor.step(pool.stats())
        refused = [event for event in monitor.events if event.kind == "refused"]
        assert len(refused) == 1 and refused[0].shard == 1 and "park of worker 1" in refused[0].detail
        assert not pool.refused_requests
        # a move it asks for an env that cannot move: said too (its "move" event stood alone: hunt89 bug 1)
        pool.queue_move(1, 0, around=True)  # (env 3, the last worker's top env, is the unpicklable one)
        venv.step(np.zeros(4, np.int64))
        assert list(pool.refused_requests) == [("move", 1, 0)] and pool.unmovable == {3}
        monitor.step(pool.stats())
        refused = [event for event in monitor.events if event.kind == "refused"]
        assert len(refused) == 2 and "the move from shard 1 to shard 0" in refused[1].detail


def test_requests_queued_on_an_asynchronous_pool_are_refused_at_once() -> None:
    """Only a synchronous step takes queued requests: on a pool of asynchronous batches a queued park stayed queued
    for ever, and the monitor, which waits for what it asked, stopped (no core check again)."""
    with SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2, batch_size=2) as venv:
        pool = venv.pool
        pool.queue_move(1, 0)
        pool.queue_park(1)
        pool.queue_unpark(1)
        why = "the pool hands out asynchronous batches, whose groups stay"
        assert pool.queued_requests == 0 and list(pool.refused_requests) == [("park", 1, None, why), ("unpark", 1, None, why)]
        # (the monitor's event says so: it named an env that does not pickle; hunt112 bug 4)
        monitor = Monitor(pool, patience=1, cooldown=0)
        monitor.step(pool.stats())
        refused = [event for event in monitor.events if event.kind == "refused"]
        assert len(refused) == 2 and all(why in event.why and "pickle" not in event.why for event in refused)


def test_a_park_or_unpark_of_no_worker_is_refused_by_name() -> None:
    """request_park(7) on a pool of two shards answered False, as a park not possible now, queue_park(7) was
    taken (and later said refused), and request_park(1.0) gave a bare TypeError (hunt112 bug 2); request_move and
    repin name such a shard. And a closed pool's workers cannot be parked (can_park said True; bug 3)."""
    with SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2) as venv:
        pool = venv.pool
        venv.reset()
        for call in (pool.request_park, pool.request_unpark, pool.queue_park, pool.queue_unpark):
            for shard in (7, -1):
                with pytest.raises(ValueError, match=rf"no worker {shard} \(shards 0\.\.1\)"):
                    call(shard)
            for shard in (1.0, True, "1"):
                with pytest.raises(TypeError, match="named by its shard number"):
                    call(shard)
        assert pool.queued_requests == 0 and not pool.refused_requests
        assert pool.can_park(1) and pool.can_park(np.int64(1))
    assert not pool.can_park(1) and not pool.can_unpark(1)


@pytest.mark.parametrize("around", [False, True])
def test_no_env_moves_into_an_empty_shard_a_pending_move_passes_over(around: bool) -> None:
    """Worker 2's envs bound for shard 0 across unparked worker 1 (or shard 0's wrapped env bound back around the
    ring's end past unparked worker 2): a move into that empty shard was accepted, and the pending move's env then
    arrived beside no env of its new shard, which broke the pool (hunt89 bug 5). Such a move is refused until the
    pending one is done; results stay SyncVectorEnv's."""
    from functools import partial

    from gymnasium.vector import SyncVectorEnv

    if around:
        fns = [partial(envs.CountsTo, k, 2, *((4, 30) if k == 5 else ())) for k in range(6)]
    else:
        fns = [partial(envs.CountsTo, k, 30 if k >= 4 else 2) for k in range(6)]
    reference = SyncVectorEnv(fns)
    actions = np.zeros(6, np.int64)
    with VectorEnv(fns, context="fork", num_workers=3) as venv:
        pool = venv.pool

        def step(count: int) -> None:
            for _ in range(count):
                for ours, theirs in zip(venv.step(actions)[:4], reference.step(actions)[:4]):
                    np.testing.assert_array_equal(ours, theirs)

        venv.reset(seed=0), reference.reset(seed=0)
        if around:
            assert pool.request_park(2)
            step(6)
            assert pool.request_move(1, 0, around=True) == 5
            step(2)
            assert pool.request_move(0, 1, around=True) == 5  # (env 5's episodes are long now: it stays pending)
            assert pool.request_unpark(2)
            assert pool.request_move(1, 2) is None  # (env 5 passes over shard 2 on its way to shard 1)
        else:
            assert pool.request_park(1)
            step(10)
            assert pool.request_park(2)  # (envs 4 and 5, of long episodes, bound for shard 0 across shard 1)
            step(4)
            assert pool.request_unpark(1)
            assert pool.request_move(0, 1) is None
        step(60)
        assert pool.state.name == "IDLE" and not pool.pending_moves
    reference.close()


def _parked_by_the_monitor(venv: SubprocVecEnv, shard: int) -> None:
    """``venv`` reset, worker ``shard`` parked the monitor's way (queue_park), stepping until it is (its envs leave
    at their episode ends)."""
    venv.reset()
    venv.pool.queue_park(shard)
    for _ in range(600):
        venv.step(np.zeros(venv.num_envs, np.int64))
        if shard in venv.pool.parked:
            return


def test_a_worker_parked_by_hand_is_not_the_monitor_s_to_bring_back() -> None:
    """The monitor brings back only the workers it parked (queue_park); one unparked and parked again by hand since
    was brought back too (hunt91 bug 4)."""
    with SubprocVecEnv([make_where] * 4, start_method="fork", num_workers=2) as venv:
        pool = venv.pool
        _parked_by_the_monitor(venv, 1)
        assert pool.parked == [1] and pool.monitor_parked == {1}
        assert pool.request_unpark(1) and pool.monitor_parked == set()
        for _ in range(3):
            assert pool.request_move(0, 1) is not None or pool.pending_moves
            for _ in range(30):
                venv.step(np.zeros(4, np.int64))
        assert pool.request_park(1) and pool.monitor_parked == set()


class _SlowToPickle(gym.Wrapper):
    """CartPole whose pickling (asked whether it can move: ``movable``) takes 0.5 s in its worker."""

    def __init__(self) -> None:
        super().__init__(envs.make_cartpole())

    def __getstate__(self) -> dict:
        time.sleep(0.5)
        return self.__dict__.copy()


def test_a_step_while_another_thread_parks_waits_for_the_park() -> None:
    """A step while another thread's request_park() waited for its workers' answers (a call it runs under its hold):
    the step's check, made before it took the hold, completed that call itself, reading the same pipes as the park's
    thread: one of them waited for replies for good (hunt106 bug 4). The step waits for the park, then steps."""
    import threading

    from fastvec.pool import Pool

    with SubprocVecEnv([_SlowToPickle] * 6, start_method="fork", num_workers=3, step_in_parent=False) as venv:
        venv.reset()
        pool = venv.pool
        out: dict = {}
        parker = threading.Thread(target=lambda: out.update(park=pool.request_park(2)), daemon=True)
        parker.start()
        deadline = time.monotonic() + 10
        while (pool._pending is None or pool._pending.name != "movable") and time.monotonic() < deadline:
            time.sleep(0.001)  # (until the park's call is pending)
        completed: list = []

        def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
            if event == "call" and frame.f_code is Pool._complete_command.__code__:
                completed.append(getattr(frame.f_locals.get("p"), "name", None))

        stepper = threading.Thread(
            target=lambda: (sys.settrace(tracer), venv.step(np.zeros(6, np.int64)), out.update(stepped=True)), daemon=True
        )
        stepper.start()
        stepper.join(20)
        parker.join(20)
        assert out.get("stepped") and out.get("park") is True and "movable" not in completed


class _SlowActions:
    """An action batch whose conversion takes ``seconds`` (a lazy tensor)."""

    def __init__(self, n: int, seconds: float) -> None:
        self.n, self.seconds = n, seconds

    def __array__(self, dtype=None, copy=None):  # type: ignore[no-untyped-def]
        time.sleep(self.seconds)
        return np.zeros(self.n, dtype or np.int64)

    def __len__(self) -> int:
        return self.n


def test_a_thread_that_has_just_taken_the_token_is_not_taken_for_a_waiter() -> None:
    """A park request waiting for a step's hold took the token and was paused (a GIL switch) before leaving the wait;
    the step's thread, waiting for the token in its turn, took the other for a waiter holding nothing and made a second
    token: two threads could hold the pool at once for good (hunt106 bug 3)."""
    import threading

    from fastvec.pool import Pool

    with SubprocVecEnv([envs.make_cartpole] * 6, start_method="fork", num_workers=3, step_in_parent=False) as venv:
        venv.reset()
        pool = venv.pool
        take = Pool._take_token.__code__
        paused: list = []

        def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
            if event == "call" and frame.f_code is take:
                def local(frame, event, arg):  # type: ignore[no-untyped-def]
                    if event == "return" and arg is not None and not paused:
                        paused.append(True)
                        time.sleep(0.3)  # (taken, not yet out of the wait)
                    return local

                return local
            return None

        def park() -> None:
            sys.settrace(tracer)
            try:
                pool.request_park(1)
            finally:
                sys.settrace(None)

        parker = threading.Thread(target=park, daemon=True)
        threading.Timer(0.1, parker.start).start()  # (while step_async converts the actions, holding the pool)
        venv.step_async(_SlowActions(6, 0.3))
        deadline = time.monotonic() + 10
        while not paused and time.monotonic() < deadline:
            time.sleep(0.001)
        venv.step_wait()  # (waits for the token the park holds)
        parker.join(20)
        assert paused and len(pool._token) == 1


def test_a_parked_worker_of_a_broken_pool_is_not_said_dead(monkeypatch) -> None:
    """can_unpark() says False on a broken pool; the monitor read any False as a parked worker's death and said so
    ("died while parked") of a worker still running (hunt113 bug 1)."""
    import signal as signals

    from fastvec.errors import WorkerDiedError

    with SubprocVecEnv([make_where] * 6, start_method="fork", num_workers=3) as venv:
        pool = venv.pool
        _parked_by_the_monitor(venv, 2)
        assert 2 in pool.parked and 2 in pool.monitor_parked
        os.kill(next(r for r in pool._remotes if r.index == 1).pid, signals.SIGKILL)
        with pytest.raises(WorkerDiedError):
            for _ in range(50):
                venv.step(np.zeros(6, np.int64))
        assert pool.parked_exit_status(2) is None
        event = Monitor(pool)._check_parked({core: 0.0 for core in range(os.cpu_count() or 1)})
        assert event is None or event.kind != "dead"
