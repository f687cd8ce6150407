"""The monitor (fastvec.monitor): straggler detection, its two remedies, and its thread's life."""

from __future__ import annotations

import collections
import dataclasses
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from fastvec import SubprocVecEnv
from fastvec.monitor import Monitor, find_straggler
from fastvec.stats import PoolStats, ShardStats


class BusyEnv(gym.Env):
    """Burns ``step_seconds`` of CPU per step; deterministic observations."""

    observation_space = gym.spaces.Box(-1e6, 1e6, (2,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, step_seconds: float):
        self.step_seconds = step_seconds
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = int(self.np_random.integers(5))
        return np.array([self.t, self.step_seconds]), {}

    def step(self, action):
        self.t += 1
        end = time.thread_time() + self.step_seconds
        while time.thread_time() < end:
            pass
        return np.array([self.t, self.step_seconds]), float(action), False, self.t >= 12, {}


def make_busy(step_seconds: float) -> gym.Env:
    return BusyEnv(step_seconds)


class _FlakySampler:
    """A sampler whose first ``failures`` samples collide with the stepping thread (a dict it iterates
    changed size), as the monitor's thread can while a move settles or a worker is parked."""

    def __init__(self, monitor: Monitor, failures: int, samples: int, snapshot: PoolStats) -> None:
        self.monitor, self.failures, self.samples, self.snapshot = monitor, failures, samples, snapshot
        self.calls = 0

    def sample(self) -> PoolStats:
        self.calls += 1
        if self.calls >= self.samples:
            self.monitor._stop.set()
        if self.calls <= self.failures:
            raise RuntimeError("dictionary changed size during iteration")
        return self.snapshot


@pytest.mark.parametrize("failures", [3, 12])
def test_a_sample_that_collides_with_the_stepping_thread_does_not_end_the_monitor(monkeypatch, failures: int) -> None:
    """Any exception in a sample ended the monitor thread for good, without a word."""
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 60.0, 1: 95.0})
    pool = _FakePool()
    pool.closed = False
    monitor = Monitor(pool, interval=0.001, patience=3, cooldown=2)
    monitor._sampler = _FlakySampler(monitor, failures, 20, _snapshot([0.4, 0.95], [[0, 1], [1]], [60.0, 95.0]))
    if failures < 10:
        monitor._run()
        assert monitor._sampler.calls == 20 and monitor.events and {e.kind for e in monitor.events} == {"move"}
    else:
        with pytest.warns(RuntimeWarning, match="monitor stopped after 10 failed samples"):
            monitor._run()
        assert monitor._sampler.calls == 10 and monitor.events == []


def test_find_straggler() -> None:
    assert find_straggler([0.5, 0.52], 1.25) is None
    assert find_straggler([0.3, 0.9], 1.25) == 1
    assert find_straggler([0.3, 0.35, 0.9, 0.32], 1.25) == 2
    assert find_straggler([0.01, 0.04], 1.25) is None  # both idle: nothing to fix
    assert find_straggler([0.9], 1.25) is None


class _FakePool:
    def __init__(self, parkable: bool = False, wraps: bool = False, can_move: bool = True) -> None:
        self._allowed_cores = [0, 1]
        self.pin: str | list[int] = "auto"
        self.monitor_parked: set[int] = set()
        self.pin_list: list[int] | None = None
        self.can_move = can_move
        self.moves: list[tuple[int, int]] = []
        self.repins: list[tuple[int, list[int]]] = []
        self.parkable = parkable
        self.parked: list[int] = []
        self.draining: list[int] = []
        self.cores: dict[int, list[int]] = {1: [1]}
        self.parks: list[int] = []
        self.unparks: list[int] = []
        self.wraps = wraps
        self.pending_moves = 0
        self.unmovable: frozenset[int] = frozenset()
        self.queued_requests = 0
        self.moves_by_route: collections.Counter = collections.Counter()
        self.refuse: set[tuple[int, int, bool]] = set()  # routes whose moves the pool refuses (an env that cannot move)

    def queue_move(self, source: int, target: int, around: bool = False) -> None:
        self.moves.append((source, target, "around") if around else (source, target))
        if (source, target, around) not in self.refuse:  # (done at once here: a real pool does it at an episode end)
            self.moves_by_route[(source, target, around)] += 1

    def can_park(self, shard: int) -> bool:
        return self.parkable

    def queue_park(self, shard: int) -> None:
        self.parks.append(shard)

    @property
    def worker_cores(self) -> list[int]:
        return self.pin_list or self._allowed_cores

    def can_unpark(self, shard: int) -> bool:
        return shard in self.parked

    def queue_unpark(self, shard: int) -> None:
        self.unparks.append(shard)

    def parked_exit_status(self, shard: int) -> str | None:
        return "exit code -9 (killed by SIGKILL)" if shard in self.parked else None

    def repin(self, shard: int, cores: list[int]) -> None:
        self.repins.append((shard, cores))


def _snapshot(busy: list[float], cores: list[list[int]], cpu: list[float]) -> PoolStats:
    shards = [
        ShardStats(s, 100 + s, s == 0, range(4 * s, 4 * s + 4), cores[s], 1000.0, busy[s], 0.1, 0.2, cpu[s], 0, None)
        for s in range(len(busy))
    ]
    return PoolStats(1.0, shards, 2000.0, max(busy) / min(busy), 0.5)


def _timed(learner: tuple[range, float, float], worker: tuple[range, float, float]) -> PoolStats:
    """Two shards with per-env step times: (envs, busy share, each env's step time in ms) each,
    1000 commands a second."""
    shards = [
        ShardStats(
            s,
            100 + s,
            s == 0,
            envs,
            None if s == 0 else [1],
            1000.0 * len(envs),
            busy,
            0.1,
            0.2,
            100 * busy,
            0,
            [ms] * len(envs),
        )
        for s, (envs, busy, ms) in enumerate((learner, worker))
    ]
    return PoolStats(1.0, shards, sum(s.steps_per_s for s in shards), 1.5, 0.3)


def test_a_lasting_straggler_gets_an_env_moved_to_its_idler_neighbour(monkeypatch) -> None:
    pool = _FakePool()
    monitor = Monitor(pool, patience=3, cooldown=2)
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 60.0, 1: 95.0})
    slow = _snapshot([0.4, 0.95], [[0, 1], [1]], [60.0, 95.0])  # worker 1 alone on core 1: the envs are slow
    assert monitor.step(slow) is None and monitor.step(slow) is None  # patience
    event = monitor.step(slow)
    # 0.55 of busy share apart, each env ~0.24: one edge env (4) leaves the busier at 0.71; two would
    # leave the learner's shard at 0.88
    assert event.kind == "move" and pool.moves == [(1, 0)] and "env 4:" in event.detail
    assert monitor.step(slow) is None and monitor.step(slow) is None  # cooldown
    assert monitor.events == [event]


def test_no_move_where_envs_cannot_move(monkeypatch) -> None:
    """The same lasting straggler in a pool whose envs cannot move (asynchronous batches, or no
    autoreset): no event that names a move request_move would refuse."""
    pool = _FakePool(can_move=False)
    monitor = Monitor(pool, patience=1, cooldown=0)
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 60.0, 1: 95.0})
    slow = _snapshot([0.4, 0.95], [[0, 1], [1]], [60.0, 95.0])
    assert [monitor.step(slow) for _ in range(4)] == [None] * 4 and pool.moves == [] and monitor.events == []


def test_a_straggler_sharing_its_core_with_other_load_is_repinned(monkeypatch) -> None:
    pool = _FakePool()
    monitor = Monitor(pool, patience=1)
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 40.0, 1: 100.0})
    monkeypatch.setattr("fastvec.monitor._last_core", lambda pid: 0)  # the learner last ran on core 0
    event = monitor.step(_snapshot([0.4, 0.95], [[0, 1], [1]], [40.0, 50.0]))  # core 1: 50% someone else's
    assert event.kind == "repin" and pool.repins == [(1, [0])] and "core 1 -> core 0" in event.detail


@pytest.mark.serial
def test_the_monitor_balances_a_real_pool_without_changing_results() -> None:
    """A quarter of the envs 10x slower, all on the worker at the start: the monitor moves envs to
    the learner's shard; every observation equals that of a pool without a monitor. (The other
    pool's worker shares the watched worker's core, and the monitor may act on that foreign load
    first, re-pinning the worker or, with no core free, parking it, which also moves its envs to the
    learner's shard: right moves too, so the test waits for the envs to have moved.)"""
    fns = [partial(make_busy, 1e-3 if i >= 6 else 1e-4) for i in range(8)]
    plain = SubprocVecEnv(fns, start_method="fork", num_workers=2)
    watched = SubprocVecEnv(fns, start_method="fork", num_workers=2, monitor=True, monitor_interval=0.05)
    try:
        for venv in (plain, watched):
            venv.seed(1)
        np.testing.assert_array_equal(watched.reset(), plain.reset())
        pool = watched.pool

        def worker_ms() -> float:  # what the worker's envs cost a step (2.2 ms at the start: envs 4..7)
            return sum(1.0 if i >= 6 else 0.1 for i in set(range(8)) - set(pool.envs_of(0)))

        began = time.monotonic()
        t = 0
        least = worker_ms()
        while (pool.moves_done < 1 or t < 200) and time.monotonic() - began < 30:
            actions = np.full(8, t % 2)
            a, b = watched.step(actions), plain.step(actions)
            for x, y in zip(a[:3], b[:3]):
                np.testing.assert_array_equal(x, y, err_msg=f"step {t}")
            least = min(least, worker_ms())
            t += 1
        assert any(e.kind in ("move", "park") for e in pool.monitor_events), pool.monitor_events
        # envs moved to the learner's shard, down from its bottom edge or, from the top, around the
        # ring's end (env 7 around and env 3 up gives 1.3 | 1.3 ms with 4 envs each). (This test's
        # two pools share the cores, so the throughput that judges a move is noisy, and a move may
        # be undone later: the least the worker had is what shows the balancing.)
        assert pool.moves_done >= 1 and least < 2.2
    finally:
        plain.close()
        watched.close()
    assert watched.pool._monitor._thread is not None and not watched.pool._monitor._thread.is_alive()


def test_nothing_changes_without_the_monitor() -> None:
    fns = [partial(make_busy, 1e-3 if i >= 6 else 1e-4) for i in range(8)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        venv.reset()
        for _ in range(50):
            venv.step(np.zeros(8, np.int64))
        assert venv.pool.monitor_events == [] and venv.pool.moves_done == 0 and not venv.pool.timing


def test_the_monitor_thread_never_keeps_the_process_alive() -> None:
    code = textwrap.dedent(
        """
        from fastvec import SubprocVecEnv
        from tests import envs
        venv = SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", monitor=True, monitor_interval=0.05)
        venv.reset()
        print("made")
        """
    )  # no close(): the interpreter must still exit
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert result.returncode == 0 and "made" in result.stdout, result.stderr


def test_no_move_that_would_only_shift_the_straggler(monkeypatch) -> None:
    """An env as costly as the gap between two shards stays: moving it would swap who lags."""
    pool = _FakePool()
    monitor = Monitor(pool, patience=1)
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    assert monitor.step(_timed((range(0, 12), 0.6, 0.05), (range(12, 16), 0.8, 0.2))) is None and pool.moves == []


def test_envs_do_not_bounce_back_on_a_noisy_host(monkeypatch) -> None:
    """After a move from shard 1 to shard 0, shard 0 looking slow (host noise) does not send envs
    straight back; after ``settle`` samples it may."""
    pool = _FakePool()
    monitor = Monitor(pool, patience=1, cooldown=0, settle=4)
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    assert monitor.step(_snapshot([0.4, 0.95], [[0], [1]], [40.0, 95.0])).kind == "move"
    assert pool.moves == [(1, 0)]
    reverse = _snapshot([0.95, 0.4], [[0], [1]], [95.0, 40.0])
    assert [monitor.step(reverse) for _ in range(3)] == [None, None, None] and pool.moves == [(1, 0)]
    assert monitor.step(reverse).kind == "move" and pool.moves == [(1, 0), (0, 1)]


def test_no_move_for_a_small_gain(monkeypatch) -> None:
    """Shards at 0.42 and 0.60 with envs of 0.15 each: the best move (one env) leaves 0.45 / 0.57, a
    5% gain, under min_gain (10%): nothing moves; with min_gain=0 it would."""
    pool = _FakePool()
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    snapshot = _snapshot([0.42, 0.6], [[0], [1]], [42.0, 60.0])
    assert Monitor(pool, patience=1, threshold=1.1).step(snapshot) is None and pool.moves == []
    assert Monitor(pool, patience=1, threshold=1.1, min_gain=0.0).step(snapshot).kind == "move"
    assert pool.moves == [(1, 0)]


def test_no_move_when_the_envs_cost_the_same_on_both_shards(monkeypatch) -> None:
    """The learner's shard looks busier (its process does other work too, or the host is noisy),
    but its envs step as fast as the worker's: moving envs cannot help, so none move."""
    pool = _FakePool()
    monitor = Monitor(pool, patience=1)
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    worker = (range(4, 8), 0.45, 0.0064)
    assert monitor.step(_timed((range(0, 4), 0.68, 0.0065), worker)) is None and pool.moves == []
    # the same busy shares with the learner's envs twice as slow: one of them moves
    event = Monitor(pool, patience=1).step(_timed((range(0, 4), 0.68, 0.013), worker))
    assert event.kind == "move" and pool.moves == [(0, 1)] and "env 3:" in event.detail


def test_a_passing_slowdown_of_one_shard_moves_nothing(monkeypatch) -> None:
    """Step times inflated in some samples only (the GIL, a busy moment of the host) do not count:
    the monitor balances on each env's least step time over its last ``patience`` samples."""
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)

    def snapshot(learner_ms: float) -> PoolStats:
        return _timed((range(0, 4), 0.68, learner_ms), (range(4, 8), 0.45, 0.0064))

    pool = _FakePool()
    monitor = Monitor(pool, patience=3)
    assert [monitor.step(snapshot(ms)) for ms in (0.013, 0.0065, 0.013)] == [None, None, None]
    assert pool.moves == []
    steady = Monitor(pool, patience=3)
    events = [steady.step(snapshot(0.013)) for _ in range(3)]
    assert events[:2] == [None, None] and events[2].kind == "move" and pool.moves == [(0, 1)]


def test_a_hogged_worker_is_parked_when_no_core_is_free(monkeypatch) -> None:
    """Beside a CPU hog with no free core to go to, the worker is parked (its envs move to its
    neighbour); with a free core it is re-pinned there instead; where parking cannot apply
    (can_park False), the least loaded core is still better than the hogged one."""
    monkeypatch.setattr("fastvec.monitor._last_core", lambda pid: 0)
    hogged = _snapshot([0.4, 0.95], [[0, 1], [1]], [90.0, 50.0])  # core 1: 50% someone else's

    pool = _FakePool(parkable=True)
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 90.0, 1: 100.0})
    monitor = Monitor(pool, patience=2)
    assert monitor.step(hogged) is None  # patience
    event = monitor.step(hogged)
    assert event.kind == "park" and pool.parks == [1] and pool.repins == [] and "no core is free" in event.why

    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 10.0, 1: 100.0, 2: 5.0})
    pool = _FakePool(parkable=True)
    pool._allowed_cores = [0, 1, 2]
    event = Monitor(pool, patience=1).step(hogged)
    assert event.kind == "repin" and pool.repins == [(1, [2])] and pool.parks == []

    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 40.0, 1: 100.0})
    pool = _FakePool(parkable=False)
    event = Monitor(pool, patience=1).step(hogged)
    assert event.kind == "repin" and pool.repins == [(1, [0])] and pool.parks == []


def test_a_worker_is_never_moved_off_the_cores_pin_names(monkeypatch) -> None:
    """pin=[1] (the user keeps core 0 for something else): beside a hog on core 1, the monitor moved the
    worker to core 0; it now parks it (or leaves it there, where it cannot park: balancing may move envs)."""
    monkeypatch.setattr("fastvec.monitor._last_core", lambda pid: 0)
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 10.0, 1: 100.0})
    hogged = _snapshot([0.4, 0.95], [[0, 1], [1]], [90.0, 50.0])
    for parkable in (True, False):
        pool = _FakePool(parkable=parkable)
        pool.pin_list = [1]
        event = Monitor(pool, patience=1).step(hogged)
        assert pool.repins == [] and (event.kind == "park") == parkable


def test_nothing_is_asked_again_while_a_request_waits_for_the_next_step(monkeypatch) -> None:
    """While the learner is away (a PPO update), the park it queued is not applied: the monitor queued and
    logged it again at each sample (five parks logged for two)."""
    monkeypatch.setattr("fastvec.monitor._last_core", lambda pid: 0)
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 90.0, 1: 100.0})
    hogged = _snapshot([0.4, 0.95], [[0, 1], [1]], [90.0, 50.0])
    pool = _FakePool(parkable=True)
    monitor = Monitor(pool, patience=1, cooldown=0)
    assert monitor.step(hogged).kind == "park" and pool.parks == [1]
    pool.queued_requests = 1  # (no step took it yet)
    assert [monitor.step(hogged) for _ in range(3)] == [None] * 3 and pool.parks == [1]


def test_a_parked_worker_comes_back_once_a_core_is_free_for_a_while(monkeypatch) -> None:
    pool = _FakePool(parkable=True)
    pool.parked = [1]
    parked = _snapshot([0.9, 0.01], [[0, 1], [1]], [95.0, 0.0])
    parked.shards[1] = ShardStats(1, 101, False, range(4, 4), [1], 0.0, 0.0, None, None, 0.0, 0, None, parked=True)
    loads = {0: 100.0, 1: 100.0}
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: dict(loads))
    monitor = Monitor(pool, patience=2)
    pool.monitor_parked = {1}  # (a park it made: one made by hand it leaves as it is, below)
    # the hog still there: nothing (and the parked shard's idleness is no reason to move envs to it)
    assert [monitor.step(parked) for _ in range(4)] == [None] * 4 and pool.moves == [] and pool.unparks == []
    loads[1] = 3.0  # the hog ended
    assert monitor.step(parked) is None and monitor.step(parked) is None  # loads averaged over patience samples
    event = monitor.step(parked)
    assert event.kind == "unpark" and pool.unparks == [1] and pool.repins == [] and "core 1" in event.detail
    loads[1] = 60.0  # half free on each core: a core's worth of spare time in all
    loads[0] = 40.0
    monitor = Monitor(pool, patience=1)
    pool.monitor_parked = set()
    assert monitor.step(parked) is None  # (a worker parked by hand stays parked: hunt89 bug 7)
    pool.monitor_parked = {1}
    event = monitor.step(parked)
    assert event.kind == "unpark" and pool.repins == [(1, [0])]
    # pin="none": it comes back unpinned (it was pinned to one core, and parked and unparked in a loop after)
    pool.pin, pool.repins = "none", []
    monitor = Monitor(pool, patience=1)
    pool.monitor_parked = {1}
    event = monitor.step(parked)
    assert event.kind == "unpark" and pool.repins == [] and "core" not in event.detail
    # a shard being emptied is neither re-pinned nor parked again, nor given envs
    pool = _FakePool(parkable=True)
    pool.draining = [1]
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 90.0, 1: 100.0})
    monitor = Monitor(pool, patience=1)
    hogged = _snapshot([0.2, 0.95], [[0, 1], [1]], [90.0, 50.0])
    assert monitor.step(hogged) is None and pool.parks == [] and pool.moves == [] and pool.repins == []


def test_core_loads_leave_out_the_time_a_hypervisor_took(monkeypatch) -> None:
    """Steal is no process's doing, and moving a worker cannot avoid it: it is not load."""
    import collections

    import psutil

    from fastvec.monitor import _core_loads

    Times = collections.namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    zero = Times(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    readings = iter([[zero, zero], [Times(10, 0, 5, 40, 5, 0, 0, 40, 3, 0), Times(90, 0, 10, 0, 0, 0, 0, 0, 0, 0)]])
    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=True: next(readings))
    state: dict = {}
    assert _core_loads(state) is None  # the first reading: nothing to compare with
    assert _core_loads(state) == {0: 25.0, 1: 100.0}  # of the time not stolen; guest time is already in user time


def _per_env(shards: list[tuple[Sequence[int], float, list[float]]]) -> PoolStats:
    """Shards given as (envs, busy share, each env's step time in ms), 1000 commands a second."""
    stats = [
        ShardStats(s, 100 + s, s == 0, envs, None if s == 0 else [s], 1000.0 * len(envs), busy, 0.1, 0.2, 100 * busy, 0, ms)
        for s, (envs, busy, ms) in enumerate(shards)
    ]
    return PoolStats(1.0, stats, sum(s.steps_per_s for s in stats), 1.5, 0.3)


# benchmarks.monitor's hetero scenario: 16 envs, the last 4 four times slower, all on the worker
HETERO = [(range(0, 8), 0.4, [0.1] * 8), (range(8, 16), 0.95, [0.1] * 4 + [0.4] * 4)]


def test_without_the_ring_a_contiguous_split_is_the_best_the_monitor_can_do(monkeypatch) -> None:
    """1.2 ms against 1.6 ms of work a step (12 | 4) is the best contiguous split: 1.25x at most."""
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    pool = _FakePool(wraps=False)
    event = Monitor(pool, patience=1).step(_per_env(HETERO))
    assert pool.moves == [(1, 0)] * 4 and "envs 8..11: shard 1 -> shard 0" in event.detail


def test_around_the_ring_the_monitor_evens_out_what_a_contiguous_split_cannot(monkeypatch) -> None:
    """With the ring, the worker gives envs from both edges at once: 8 and 9 down to the learner's
    shard, 15 around the ring's end: 1.4 ms each (1.43x the 2.0 ms the worker had), in one event."""
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    pool = _FakePool(wraps=True)
    event = Monitor(pool, patience=1).step(_per_env(HETERO))
    assert sorted(pool.moves) == [(1, 0), (1, 0), (1, 0, "around")]
    assert "envs 8..9: shard 1 -> shard 0; env 15: shard 1 -> shard 0 around the ring" in event.detail
    assert "the busiest expected at 1.4 after" in event.why


def test_the_edge_stops_before_an_env_that_cannot_move(monkeypatch) -> None:
    """The contiguous split above (8..11 down) with env 10 known not to move keeping its state (it cannot
    be pickled): only 8 and 9 go; with env 8, none."""
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    pool = _FakePool(wraps=False)
    pool.unmovable = frozenset({10})
    event = Monitor(pool, patience=1).step(_per_env(HETERO))
    assert pool.moves == [(1, 0)] * 2 and "envs 8..9: shard 1 -> shard 0" in event.detail
    pool = _FakePool(wraps=False)
    pool.unmovable = frozenset({8})
    assert Monitor(pool, patience=1).step(_per_env(HETERO)) is None and pool.moves == []


def test_the_learners_shard_gives_back_around_the_ring(monkeypatch) -> None:
    """Shard 0 holding envs past the worker's (14, 15 and 0..9) and now the straggler: its wrapped
    envs can go back down to the worker around the ring's end, its own from the top edge up."""
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    pool = _FakePool(wraps=True)
    learner = ((14, 15, *range(0, 10)), 0.95, [0.4, 0.4] + [0.1] * 10)  # 1.8 ms
    worker = (range(10, 14), 0.4, [0.1, 0.1, 0.4, 0.4])  # 1.0 ms
    event = Monitor(pool, patience=1).step(_per_env([learner, worker]))
    # 14 around (0.4) leaves 1.4 and 1.4
    assert pool.moves == [(0, 1, "around")] and "env 14: shard 0 -> shard 1 around the ring" in event.detail


def test_a_move_after_which_the_pool_steps_slower_is_undone(monkeypatch) -> None:
    """Step times said a move would help; the pool's throughput after it says otherwise (an uneven
    split of equal envs, host noise in the step times): the same envs go back, and envs do not go
    that way again for ``retry_after`` samples."""
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    pool = _FakePool(wraps=False)
    monitor = Monitor(pool, patience=1, cooldown=0, settle=2, retry_after=5)
    straggling = _per_env(HETERO)
    assert monitor.step(dataclasses.replace(straggling, throughput=10_000.0)).kind == "move"
    assert pool.moves == [(1, 0)] * 4
    slower = dataclasses.replace(straggling, throughput=8_000.0)  # 20% slower than before the move
    assert monitor.step(slower) is None  # (the move is still happening)
    event = monitor.step(slower)
    assert event.kind == "undo" and pool.moves == [(1, 0)] * 4 + [(0, 1)] * 4
    # (per second of the time the caller spent in the pool: 70% of each sample here)
    assert "4 envs: shard 0 -> shard 1" in event.detail and "11,429 env steps per second" in event.why
    assert "against 14,286 before" in event.why
    assert [monitor.step(straggling) for _ in range(4)] == [None] * 4  # not that way again, for a while
    assert monitor.step(straggling).kind == "move"


def test_intervals_without_a_step_do_not_judge_a_move(monkeypatch) -> None:
    """An interval in which the caller did not step the pool at all (a PPO update longer than the monitor's interval)
    counted as a pace of 0 steps a second: a move after which the pool stepped as fast as before was undone when such
    intervals fell in the judged samples (hunt112 bug 1). They say nothing of the pace, and are passed over."""
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    pool = _FakePool(wraps=False)
    monitor = Monitor(pool, patience=2, cooldown=0, settle=2, retry_after=5)
    straggling = dataclasses.replace(_per_env(HETERO), throughput=10_000.0)
    events = [monitor.step(straggling) for _ in range(2)]
    assert events[-1].kind == "move" and pool.moves == [(1, 0)] * 4
    idle = dataclasses.replace(straggling, throughput=0.0, learner_share=1.0)  # (the whole interval in an update)
    events = [monitor.step(sample) for sample in (straggling, idle, idle, straggling)]
    assert not [event for event in events if event is not None and event.kind == "undo"]  # (as fast whenever it stepped)
    assert pool.moves[4:] in ([], [(1, 0)] * 4)  # (stayed; a second move at most, once judged)
    pool = _FakePool(wraps=False)
    monitor = Monitor(pool, patience=2, cooldown=0, settle=2, retry_after=5)
    assert [monitor.step(straggling) for _ in range(2)][-1].kind == "move"
    slower = dataclasses.replace(straggling, throughput=8_000.0)
    events = [monitor.step(sample) for sample in (idle, slower, idle, slower)]
    assert events[:3] == [None] * 3 and events[3].kind == "undo"  # (judged on the two samples that stepped)
    assert "8,000 env steps per second" not in events[3].why and "11,429" in events[3].why


def test_an_undo_reverses_only_the_moves_the_pool_made(monkeypatch) -> None:
    """A trial whose moves the pool refused in part (an env found not to pickle): the undo takes back the
    moves made, not the ones planned (it used to move envs that never left onto the straggler); none made,
    no undo."""
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    straggling = _per_env(HETERO)
    slower = dataclasses.replace(straggling, throughput=8_000.0)
    pool = _FakePool(wraps=False)
    monitor = Monitor(pool, patience=1, cooldown=0, settle=2, retry_after=5)
    assert monitor.step(dataclasses.replace(straggling, throughput=10_000.0)).kind == "move"
    assert pool.moves == [(1, 0)] * 4
    pool.moves_by_route[(1, 0, False)] -= 3  # the pool made one of the four
    assert monitor.step(slower) is None
    event = monitor.step(slower)
    assert event.kind == "undo" and pool.moves == [(1, 0)] * 4 + [(0, 1)] and "1 env: shard 0 -> shard 1" in event.detail
    pool = _FakePool(wraps=False)
    pool.refuse.add((1, 0, False))  # it made none
    monitor = Monitor(pool, patience=1, cooldown=0, settle=2, retry_after=5)
    assert monitor.step(dataclasses.replace(straggling, throughput=10_000.0)).kind == "move"
    events = [monitor.step(slower) for _ in range(3)]
    assert all(event is None or event.kind != "undo" for event in events) and (0, 1) not in pool.moves


def test_a_move_is_judged_once_its_envs_moved(monkeypatch) -> None:
    """While an env of the trial still waits for its episode end, nothing is undone (the undo's moves
    across a boundary still moving the other way would be refused): the trial waits, and is judged on samples
    after its envs moved (those taken while one still waited showed the old layout: a move that made the pool slower
    was kept on them, and one after which it stepped faster could be undone; hunt113 bug 3)."""
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    pool = _FakePool(wraps=False)
    monitor = Monitor(pool, patience=1, cooldown=0, settle=2, retry_after=5)
    straggling = _per_env(HETERO)
    assert monitor.step(dataclasses.replace(straggling, throughput=10_000.0)).kind == "move"
    slower = dataclasses.replace(straggling, throughput=8_000.0)
    pool.pending_moves = 1
    faster = dataclasses.replace(straggling, throughput=12_000.0)  # (the old layout, while the move waits)
    assert [monitor.step(faster) for _ in range(4)] == [None] * 4 and pool.moves == [(1, 0)] * 4
    pool.pending_moves = 0
    assert monitor.step(slower) is None  # (the first sample after the move)
    assert monitor.step(slower).kind == "undo" and pool.moves == [(1, 0)] * 4 + [(0, 1)] * 4


def test_a_move_after_which_the_pool_steps_faster_stays(monkeypatch) -> None:
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: None)
    pool = _FakePool(wraps=True)
    monitor = Monitor(pool, patience=1, cooldown=0)
    assert monitor.step(dataclasses.replace(_per_env(HETERO), throughput=10_000.0)).kind == "move"
    balanced = _per_env([(range(0, 10), 0.95, [0.1] * 10), (range(10, 15), 0.95, [0.1, 0.1, 0.4, 0.4, 0.4])])
    faster = dataclasses.replace(balanced, throughput=14_000.0)
    assert [monitor.step(faster) for _ in range(3)] == [None] * 3
    assert sorted(pool.moves) == [(1, 0), (1, 0), (1, 0, "around")]  # nothing undone


@pytest.mark.parametrize(("args", "named"), [(["--num-envs", "0"], "--num-envs"), (["--seconds", "-5"], "--seconds"),
                                             (["--seconds", "nan"], "--seconds")])
def test_the_demo_refuses_bad_arguments_by_name(capsys, args, named) -> None:
    """``python -m fastvec.monitor --num-envs 0`` ended in a traceback from inside the pool, and a negative
    ``--seconds`` ran for nothing: both are refused by name, as fastvec.tune refuses them."""
    from fastvec import monitor

    with pytest.raises(SystemExit) as info:
        monitor.main(args)
    assert info.value.code == 2 and named in capsys.readouterr().err


def test_the_demo_needs_rich_and_says_so(monkeypatch, capsys) -> None:
    """`python -m fastvec.monitor` on a plain install (rich is an extra's) ended in a ModuleNotFoundError."""
    import sys

    from fastvec import monitor as monitor_module

    monkeypatch.setitem(sys.modules, "rich", None)
    with pytest.raises(SystemExit) as stopped:
        monitor_module.main(["--seconds", "1"])
    assert stopped.value.code == 2 and "the live view needs rich: pip install rich" in capsys.readouterr().err


def test_the_demo_s_hog_ends_with_the_demo() -> None:
    """The demo's CPU hog was killed only in a finally: a SIGTERM, a closed terminal or a SIGKILL of the demo left
    it spinning on a core for good. It spins while its parent lives."""
    import subprocess
    import sys
    import time

    import psutil

    code = (
        "from fastvec.monitor import _start_hog\n"
        "class Pool: cores = {1: [0]}\n"
        "print(_start_hog(Pool()).pid, flush=True)\n"
        "import os; os._exit(0)\n"  # (killed, as by SIGKILL: no cleanup of any kind)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    hog = psutil.Process(int(out.stdout.split()[0]))
    try:
        end = time.monotonic() + 10
        while hog.is_running() and hog.status() != psutil.STATUS_ZOMBIE and time.monotonic() < end:
            time.sleep(0.05)
        assert not hog.is_running() or hog.status() == psutil.STATUS_ZOMBIE
    finally:
        if hog.is_running():
            hog.kill()


def test_a_worker_it_parked_that_died_is_asked_back_once(monkeypatch) -> None:
    """A worker the monitor parked that died (no restart) was skipped for good: nothing said it had died (hunt95 bug
    1). The monitor asks for its unpark once; the pool then warns and refuses it."""
    pool = _FakePool(parkable=True)
    pool.parked, pool.monitor_parked = [1], {1}
    monkeypatch.setattr(pool, "can_unpark", lambda shard: False)
    monkeypatch.setattr("fastvec.monitor._core_loads", lambda *_: {0: 100.0, 1: 100.0})
    monitor = Monitor(pool, patience=1)
    parked = _snapshot([0.9, 0.01], [[0, 1], [1]], [95.0, 0.0])
    parked.shards[1] = ShardStats(1, 101, False, range(4, 4), [1], 0.0, 0.0, None, None, 0.0, 0, None, parked=True)
    for _ in range(3):
        monitor.step(parked)
    assert pool.unparks == [1]
    # said in the log as what happened (it said only that an unpark "asked above", never logged, did not happen:
    # hunt97 bug 3); the pool's refusal of that unpark is no event of its own
    dead = [e for e in monitor.events if e.shard == 1]
    assert [e.kind for e in dead] == ["dead"]
    assert dead[0].detail == (
        "worker 1: died while parked, with exit code -9 (killed by SIGKILL); it stays parked, and the pool goes on "
        "with one process fewer"
    )
    pool.refused_requests = collections.deque([("unpark", 1, None)])
    monitor._report_refusals()
    assert [e.kind for e in monitor.events if e.shard == 1] == ["dead"]
