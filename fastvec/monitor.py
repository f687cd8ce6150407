"""fastvec's monitor: watch the shards, and act when one holds the others back.

The learner waits for the slowest shard at every step, so one slow env or one busy core
slows everything. With ``monitor=True`` a background thread in the learner samples the
shards' counters (fastvec.stats) every ``interval`` seconds. A shard whose busy share stays
above ``threshold`` times the median of the others for ``patience`` samples is a straggler,
and the monitor acts, once per ``cooldown`` samples:

1. a worker pinned to a core that other processes load (per-core load from psutil, minus
   fastvec's own use of it) is re-pinned to the least loaded allowed core, where that core is
   free (under ``other_load``, with most of a core spare over all allowed cores); where none
   is, the worker is parked: its envs move to its neighbouring shards, each at its episode
   end, and the worker sleeps, left out of every command, until the cores have most of a core
   spare for ``patience`` samples (then it comes back with no envs, and the balancing below
   gives it some). Two busy processes time-sharing one core cost each other more than running
   the envs in one of them (benchmarks/README.md, "Parking");
2. otherwise the imbalance is in the envs: envs move from the straggler to its less busy
   neighbouring shards, each at its next episode boundary (fastvec.migrate); shards form a
   ring, so the learner's shard and the last worker's also border each other around its end.
   It moves the numbers of edge envs on each side (from their measured step times) that
   leave the busiest shard least busy, only when that is at least ``min_gain`` below the
   straggler's load now, and never straight back the other way within ``settle`` samples (a
   noisy host must not make envs bounce). Each move is then on trial: when the pool steps
   ``undo_drop`` slower (its pace: env steps per second of the caller's time in the pool)
   over the ``patience`` samples after it than before, the same envs go back, and none go
   that way again for ``retry_after`` samples. Env indices and rows never change;
   the caller can tell only from ``stats()`` and ``monitor_events``.

    python -m fastvec.monitor            # a demo: the last quarter of the envs 4x slower, a live table
    python -m fastvec.monitor --hog      # ... and a CPU hog on a worker's core (re-pinned, or parked)

The thread is a daemon that stops when the pool closes; it never keeps a process alive.
"""

from __future__ import annotations

import itertools
import os
import statistics
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastvec.stats import PoolStats, Sampler, ShardStats, describe_envs

_FAILED_SAMPLES = 10  # samples in a row that fail before the monitor gives up (with a warning)

if TYPE_CHECKING:
    from fastvec.pool import Pool

__all__ = ["Monitor", "MonitorEvent", "find_straggler", "main"]


@dataclass(frozen=True)
class MonitorEvent:
    """One thing the monitor did."""

    time: float  # seconds since the monitor started
    kind: str  # "repin", "park", "unpark", "move", "undo" (a move that cost throughput, reversed), "refused" or "dead"
    # ("refused": a park, unpark or move the monitor asked for and the pool then refused; "dead": a worker it parked
    # died, without on_error="restart", and stays parked)
    shard: int
    detail: str  # what moved where
    why: str


def find_straggler(busy: list[float], threshold: float) -> int | None:
    """The shard whose busy share is above ``threshold`` times the median of the others, or None."""
    if len(busy) < 2:
        return None
    slowest = max(range(len(busy)), key=lambda s: busy[s])
    others = [b for s, b in enumerate(busy) if s != slowest]
    middle = statistics.median(others)
    if busy[slowest] > threshold * max(middle, 1e-3) and busy[slowest] > 0.05:
        return slowest
    return None


@dataclass
class Monitor:
    """The background thread that watches a pool (see the module's docstring)."""

    pool: Pool
    interval: float = 1.0
    threshold: float = 1.25
    patience: int = 3
    cooldown: int = 2
    settle: int = 10  # samples after a move during which envs do not move back the other way
    min_gain: float = 0.1  # a move must bring the straggler's busy share down by this fraction
    other_load: float = 30.0  # percent of a core used by others before a worker is re-pinned
    undo_drop: float = 0.05  # a move after which the pool steps this fraction slower is undone
    retry_after: int = 60  # samples before envs move again the way of a move that was undone
    events: list[MonitorEvent] = field(default_factory=list)
    last: PoolStats | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._streak: dict[Any, int] = {}
        self._quiet = 0
        self._samples = 0
        self._recent: dict[tuple[int, int, bool], int] = {}  # (source, target, around) -> the sample of its latest move
        # (sample number, the pool's pace: see _pace) of the latest ``patience`` samples in which the pool stepped
        self._throughputs: list[tuple[int, float]] = []
        # the latest move on trial: ([(source, target, around, envs moved)], the pace before, its sample)
        self._trial: tuple[list[tuple[int, int, bool, int]], float, int] | None = None
        self._trial_made: dict[tuple[int, int, bool], int] = {}  # the pool's moves per route when the trial began
        self._undone: dict[tuple[int, int, bool], int] = {}  # (source, target, around) -> the sample it was undone
        self._step_ms: dict[int, list[tuple[range, list[float]]]] = {}  # per shard: its latest per-env step times
        self._began = time.monotonic()
        self._asked_dead: set[int] = set()  # (parked workers found dead, without restart: their unpark asked once)
        self._cpu_state: dict = {}  # _core_loads' previous reading
        self._load_history: list[dict[int, float]] = []

    def start(self) -> None:
        self.pool.timing = True  # shards time each env step: which envs are slow, not only which shard
        self._sampler = Sampler(self.pool)
        self._thread = threading.Thread(target=self._run, name="fastvec-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=min(2 * self.interval + 1.0, 60.0))

    def _run(self) -> None:
        failed = 0
        while not self._stop.wait(self.interval):
            try:
                self.step(self._sampler.sample())
                failed = 0
            except ReferenceError:  # the pool (held weakly) was dropped and freed: its close() stops this thread
                return
            except Exception as exc:
                try:
                    if self._stop.is_set() or self.pool.closed:  # the pool closing under it: the monitor just ends
                        return
                except ReferenceError:
                    return
                # the stepping thread changed what this sample read (a move settling, a worker parked): the
                # next sample looks again; only a failure that lasts ends the monitor, and says so
                failed += 1
                if failed >= _FAILED_SAMPLES:
                    warnings.warn(
                        f"fastvec: the monitor stopped after {failed} failed samples in a row: {exc!r}",
                        RuntimeWarning,
                        stacklevel=1,
                    )
                    return

    # -- deciding -------------------------------------------------------------------------------
    def step(self, snapshot: PoolStats) -> MonitorEvent | None:
        """Look at one sample; act when a problem persisted. Returns what it did, if anything."""
        self.last = snapshot
        self._samples += 1
        self._report_refusals()
        for stats in snapshot.shards:
            if stats.env_step_ms is not None and len(stats.env_step_ms) == len(stats.envs):
                history = self._step_ms.setdefault(stats.shard, [])
                history.append((stats.envs, [float(t) for t in stats.env_step_ms]))
                del history[: -self.patience]
        pace = _pace(snapshot)
        if pace is not None:  # (an interval without a step, a PPO update longer than it, says nothing of the pace)
            self._throughputs.append((self._samples, pace))
            del self._throughputs[: -self.patience]
        if self._quiet > 0:
            self._quiet -= 1
            return None
        if self.pool.queued_requests:  # what it asked is not done yet (no step since): it would ask again
            return None
        loads = self._smoothed(_core_loads(self._cpu_state))
        event = (
            self._check_parked(loads)
            or self._check_cores(snapshot, loads)
            or self._judge_trial()
            # (a pool whose envs cannot move, asynchronous batches or no autoreset, is not balanced: an
            # event would name a move that request_move then refuses)
            or (self._check_balance(snapshot) if self._trial is None and self.pool.can_move else None)
        )
        if event is not None:
            self.events.append(event)
            self._quiet = self.cooldown
        return event

    def _report_refusals(self) -> None:
        """An event for each park or unpark asked since the previous sample that the pool refused (a worker
        holding an env found not to pickle, a pool that went asynchronous or closed meanwhile): the park event
        said the worker would sleep."""
        refused = getattr(self.pool, "refused_requests", None)
        reasons = {
            "park": "an env of the worker cannot move keeping its state (it does not pickle), or the worker can no "
            "longer be emptied",
            "unpark": "the worker cannot come back now",
            "move": "the env at the boundary cannot move keeping its state (it does not pickle), or the shards are no "
            "longer neighbours, or another move across that boundary is pending",
        }
        while refused:
            entry = refused.popleft()  # (kind, shard, target[, why: where the pool says why])
            kind, shard, target = entry[:3]
            if kind == "unpark" and shard in self._asked_dead:  # (a worker that died parked: its "dead" event said so)
                continue
            what = f"the move from shard {shard} to shard {target}" if kind == "move" else f"the {kind} of worker {shard}"
            self.events.append(
                MonitorEvent(
                    time.monotonic() - self._began,
                    "refused",
                    shard,
                    f"{what} asked above did not happen",
                    f"the pool refused it when it came to do it: {entry[3] if len(entry) > 3 else reasons[kind]}",
                )
            )

    def _smoothed(self, loads: dict[int, float] | None) -> dict[int, float] | None:
        """Per-core loads averaged over the last ``patience`` samples: one short sample can show a
        busy core idle (the kernel's per-core times move in 10 ms ticks, and a process that the
        scheduler moves between cores leaves one of them idle for a while)."""
        if loads is None:
            self._load_history.clear()
            return None
        self._load_history.append(loads)
        del self._load_history[: -self.patience]
        readings = [r for r in self._load_history if r.keys() == loads.keys()]
        return {core: sum(r[core] for r in readings) / len(readings) for core in loads}

    def _persisted(self, key: Any, present: bool) -> bool:
        """Whether condition ``key`` has now held for ``patience`` samples in a row."""
        if not present:
            self._streak.pop(key, None)
            return False
        self._streak[key] = self._streak.get(key, 0) + 1
        if self._streak[key] < self.patience:
            return False
        self._streak.pop(key)
        return True

    def _active(self, snapshot: PoolStats) -> list[ShardStats]:
        """The shards that step envs and may take more: neither parked nor being emptied."""
        draining = self.pool.draining
        return [s for s in snapshot.shards if not s.parked and s.shard not in draining]

    def _check_balance(self, snapshot: PoolStats) -> MonitorEvent | None:
        active = self._active(snapshot)
        position = find_straggler([s.busy for s in active], self.threshold)
        straggler = None if position is None else active[position].shard
        for key in [k for k in self._streak if isinstance(k, int) and k != straggler]:
            del self._streak[key]
        if straggler is None or not self._persisted(straggler, True) or not self._throughputs:
            return None  # (nor with no pace known yet to judge a move by)
        return self._move(snapshot, active, straggler)

    def _check_cores(self, snapshot: PoolStats, loads: dict[int, float] | None) -> MonitorEvent | None:
        """A worker pinned to a core that other processes load goes to a free core, or is parked.

        Busy shares cannot show this (a worker waiting for its core is neither busy nor idle in
        its counters): per-core load from psutil, minus fastvec's own processes' use, does."""
        foreign = _foreign_loads(snapshot, loads)
        if foreign is None or loads is None:
            return None
        draining = self.pool.draining
        allowed, spare = self._spare(loads)
        for stats in snapshot.shards:
            if stats.in_parent or stats.parked or stats.shard in draining or not stats.cores or len(stats.cores) != 1:
                continue
            core = stats.cores[0]
            key = ("core", stats.shard)
            if not self._persisted(key, foreign.get(core, 0.0) >= self.other_load):
                continue
            target = min(allowed, key=lambda c: loads[c])  # all use counts: our own learner's core is not free
            # free: the least busy core is idle enough, and the cores have spare time for the worker
            # in all (an unpinned learner moving between cores can leave one looking idle for a while)
            free = target != core and loads[target] < self.other_load and spare >= 100.0 - self.other_load
            if not free and self.pool.can_park(stats.shard):
                self.pool.queue_park(stats.shard)
                return MonitorEvent(
                    time.monotonic() - self._began,
                    "park",
                    stats.shard,
                    f"worker {stats.shard}: envs {stats.envs.start}..{stats.envs.stop - 1} to its neighbours "
                    "(each at its next episode end), then the worker sleeps",
                    f"other processes use {foreign[core]:.0f}% of core {core}, and no core is free "
                    f"(the least busy, {target}, is {loads[target]:.0f}% busy)",
                )
            if target == core or loads[target] > loads[core] - self.other_load:
                continue
            try:
                self.pool.repin(stats.shard, [target])
            except RuntimeError:  # (the host refused it: the worker stays where it is)
                continue
            return MonitorEvent(
                time.monotonic() - self._began,
                "repin",
                stats.shard,
                f"worker {stats.shard}: core {core} -> core {target}",
                f"other processes use {foreign[core]:.0f}% of core {core}; core {target} is {loads[target]:.0f}% busy in all",
            )
        return None

    def _check_parked(self, loads: dict[int, float] | None) -> MonitorEvent | None:
        """A parked worker comes back once the allowed cores have had a core's worth of spare time
        (all but ``other_load`` percent of one, every process counted) for ``patience`` samples;
        pinned to the least busy core. Spare time, not one free core: an unpinned learner that the
        scheduler moves between cores keeps each of them half busy. It comes back with no envs; the
        balancing gives it some."""
        if loads is None:
            return None
        allowed, spare = self._spare(loads)
        for shard in self.pool.parked:
            if shard not in self.pool.monitor_parked:  # (a worker parked by hand stays parked)
                continue
            if not self.pool.can_unpark(shard):  # died parked, without restart: said once, here and by the pool
                if self.pool.parked_exit_status(shard) is None:  # (alive: a pool closed or broken takes none back)
                    continue
                if shard not in self._asked_dead:
                    self._asked_dead.add(shard)
                    self.pool.queue_unpark(shard)  # (which the pool refuses, warning how the worker ended)
                    status = self.pool.parked_exit_status(shard)
                    return MonitorEvent(
                        time.monotonic() - self._began,
                        "dead",
                        shard,
                        f"worker {shard}: died while parked{f', with {status}' if status else ''}; it stays parked, and "
                        "the pool goes on with one process fewer",
                        "its process ended, and without on_error='restart' it cannot be replaced",
                    )
                continue
            if not allowed:
                continue
            if not self._persisted(("free", shard), spare >= 100.0 - self.other_load):
                continue
            target = min(allowed, key=lambda c: loads[c])
            pinned = self.pool.pin not in (None, "none")  # (pin="none": no worker is pinned, nor this one)
            if pinned and self.pool.cores.get(shard) != [target]:
                try:
                    self.pool.repin(shard, [target])
                except RuntimeError:  # (the host refused it: it comes back where it may run)
                    pass
            self.pool.queue_unpark(shard)
            return MonitorEvent(
                time.monotonic() - self._began,
                "unpark",
                shard,
                f"worker {shard}: back{f', on core {target}' if pinned else ''}, with no envs (the balancing gives it some)",
                f"the cores have had {spare:.0f}% of a core spare for {self.patience} samples",
            )
        return None

    def _spare(self, loads: dict[int, float]) -> tuple[list[int], float]:
        """The allowed cores that ``loads`` covers, and their idle time in all (percent of a core)."""
        allowed = [c for c in self.pool.worker_cores if c in loads]
        return allowed, sum(max(0.0, 100.0 - loads[c]) for c in allowed)

    def _steady_step_ms(self, stats: ShardStats) -> list[float]:
        """Each env's step time, the least of the last ``patience`` samples while the shard kept its
        envs: interference only ever adds time (a timed step of the learner's shard that the GIL
        paused for the monitor's own sampling can count milliseconds for a 7 us CartPole step)."""
        history = [times for envs, times in self._step_ms.get(stats.shard, []) if envs == stats.envs]
        if not history:
            return list(stats.env_step_ms or [])
        return [min(column) for column in zip(*history)]

    def _sides(self, snapshot: PoolStats, active: list[ShardStats], shard: int) -> list[tuple[int, bool, list[int]]]:
        """Where shard ``shard`` can give envs: per neighbour, (the neighbour, whether across the ring's
        end, the envs that can go there in the order they would, the edge's first). Neighbours are the
        nearest active shards on either side, with only empty (parked) shards between; where the pool
        wraps, shard 0 and the last shard with envs also border each other around the ring's end."""
        shards = snapshot.shards
        order = [s.shard for s in active]
        k = order.index(shard)
        envs = list(shards[shard].envs)
        wrapped = _wrapped_part(envs) if shard == 0 else []
        own = envs[len(wrapped) :]
        sides = []
        for other, edges in ((order[k - 1] if k > 0 else None, own), (order[k + 1] if k + 1 < len(order) else None, own[::-1])):
            if other is not None and all(not shards[m].envs for m in range(min(other, shard) + 1, max(other, shard))):
                sides.append((other, False, edges))
        if self.pool.wraps and order[0] == 0 and len(order) > 1:
            last = order[-1]
            if all(not shards[m].envs for m in range(last + 1, len(shards))):
                if shard == 0:
                    sides.append((last, True, wrapped))  # its envs past the last worker's, the lowest first
                elif shard == last:
                    sides.append((0, True, envs[::-1]))  # its top env first
        return [side for side in sides if side[2]]

    def _move(self, snapshot: PoolStats, active: list[ShardStats], shard: int) -> MonitorEvent | None:
        """Envs move from the straggler to its less busy neighbours, each at its next episode end:
        the numbers, on each side, that even the shards' work out best.

        Work is the sum of the envs' measured step times where the shards have them: a busy share
        also counts what is not the envs' doing (the learner's own process, a noisy host, a worker
        just started), and moving envs cannot fix that. Without step times, busy shares. With two
        shards that border each other on both sides (around the ring's end), envs may leave from
        both edges at once: contiguous ranges alone cannot split 12 fast envs and 4 slow last ones
        evenly (benchmarks/README.md, "The monitor")."""
        shards = snapshot.shards
        source_stats = shards[shard]
        envs = list(source_stats.envs)
        sides = [
            side
            for side in self._sides(snapshot, active, shard)
            if shards[side[0]].busy < source_stats.busy
            and not self._bounces(shard, side[0], side[1])
            and self._samples - self._undone.get((shard, side[0], side[1]), -self.retry_after) >= self.retry_after
        ]
        stuck = self.pool.unmovable  # (envs that cannot move keeping their state: the edge stops before them)
        if stuck:
            sides = [(t, around, edges[: next((k for k, i in enumerate(edges) if i in stuck), len(edges))]) for t, around, edges in sides]
            sides = [side for side in sides if side[2]]
        if not sides or len(envs) <= 1:
            return None
        targets = {target for target, _, _ in sides}
        times = self._steady_step_ms(source_stats)
        by_env = dict(zip(envs, times)) if times else {}
        target_times = {t: self._steady_step_ms(shards[t]) for t in targets}
        if len(times) == len(envs) and all(len(target_times[t]) == len(shards[t].envs) for t in targets):
            unit, load = "ms of env steps per step", float(sum(times))
            target_load = {t: float(sum(target_times[t])) for t in targets}
            cost = by_env.__getitem__
        else:  # busy shares: an env's share from its step time, or an even split of the shard's
            share_per_ms = _commands(source_stats, snapshot.interval_s) / (snapshot.interval_s * 1000.0)
            per_env_ms = source_stats.busy / share_per_ms / len(envs)
            unit, load = "busy share", source_stats.busy
            target_load = {t: shards[t].busy for t in targets}
            cost = lambda index: by_env.get(index, per_env_ms) * share_per_ms  # noqa: E731
        # how many edge envs to give on each side: the numbers that leave the busiest shard least loaded
        sums = [list(itertools.accumulate((cost(i) for i in edges), initial=0.0)) for _, _, edges in sides]
        best: tuple[float, int, tuple[int, ...]] = (load, 0, ())
        for counts in itertools.product(*(range(len(edges) + 1) for _, _, edges in sides)):
            total = sum(counts)
            if total == 0 or total > len(envs) - 1:  # the straggler keeps at least one env
                continue
            loads = dict(target_load)
            for (target, _, _), count, prefix in zip(sides, counts, sums):
                loads[target] += prefix[count]
            busiest = max(load - sum(prefix[c] for c, prefix in zip(counts, sums)), *loads.values())
            if (busiest, total) < best[:2]:
                best = (busiest, total, counts)
        best_busiest, _, counts = best
        if not counts or best_busiest > (1.0 - self.min_gain) * load:
            return None  # no move would help enough: moving would only swap who lags, or gain too little
        parts = []
        trial = []
        # the moves done on each route so far, before any of this trial's: its undo reverses only those the pool made
        made = self.pool.moves_by_route
        self._trial_made = {(shard, target, around): made.get((shard, target, around), 0) for target, around, _ in sides}
        for (target, around, edges), count in zip(sides, counts):
            if not count:
                continue
            moved = edges[:count]
            trial.append((shard, target, around, count))
            self._recent[(shard, target, around)] = self._samples
            self._queue_moves(shard, target, around, count)
            what = f"envs {describe_envs(sorted(moved))}" if len(moved) > 1 else f"env {moved[0]}"
            parts.append(f"{what}: shard {shard} -> shard {target}{' around the ring' if around else ''}")
        self._trial = (trial, statistics.median(pace for _, pace in self._throughputs), self._samples)
        several = sum(counts) > 1
        return MonitorEvent(
            time.monotonic() - self._began,
            "move",
            shard,
            "; ".join(parts) + (" (each at its next episode end)" if several else " (at its next episode end)"),
            f"shard {shard} busy {source_stats.busy:.0%}, "
            + ", ".join(f"shard {t} {shards[t].busy:.0%}" for t in sorted(targets))
            + f"; {unit}: {load:.3g} and "
            + ", ".join(f"{target_load[t]:.3g}" for t in sorted(targets))
            + f", the busiest expected at {best_busiest:.3g} after",
        )

    def _judge_trial(self) -> MonitorEvent | None:
        """A move stays when the pool steps at least nearly as fast after it as before (its pace,
        ``patience`` samples each, medians, once the move had ``cooldown`` samples to happen);
        else it is undone, and envs do not go that way again for ``retry_after`` samples. Step times can mislead: on
        a noisy host one shard's envs may read 10% slower for a few samples, and then an uneven
        split of equal envs costs what it was meant to save (8 CartPole envs split 5 | 3 and 3 | 5
        stepped 0.92x and 0.95x as fast as 4 | 4: ``python -m benchmarks.learner_share``)."""
        if self._trial is None:
            return None
        moves, before, when = self._trial
        if self._samples - when <= self.cooldown + self.patience:
            return None
        if self.pool.pending_moves:  # an env of the trial still waits for its episode end: judged once it moved, on
            # samples after that (those before show the old layout; its undo, asked now, would be refused: a boundary
            # moves one way at a time)
            self._trial = (moves, before, self._samples)
            return None
        paces = [pace for sample, pace in self._throughputs if sample > when + self.cooldown]
        if len(paces) < self.patience:  # (samples without a step in between: judged once enough had steps)
            return None
        self._trial = None
        after = statistics.median(paces)
        if after >= (1.0 - self.undo_drop) * before:
            return None
        # only what the pool did: a move it refused (an env found not to pickle, a target parked meanwhile) or
        # called off is not undone (its undo would move an env that never left onto the straggler)
        made = self.pool.moves_by_route
        moves = [
            (source, target, around, min(count, made.get((source, target, around), 0) - self._trial_made[(source, target, around)]))
            for source, target, around, count in moves
        ]
        moves = [move for move in moves if move[3] > 0]
        if not moves:
            return None
        for source, target, around, count in moves:
            self._queue_moves(target, source, around, count)
            self._undone[(source, target, around)] = self._samples
            self._recent[(target, source, around)] = self._samples
        back = "; ".join(
            f"{count} env{'s' if count > 1 else ''}: shard {target} -> shard {source}{' around the ring' if around else ''}"
            for source, target, around, count in moves
        )
        return MonitorEvent(
            time.monotonic() - self._began,
            "undo",
            moves[0][0],
            f"{back} (the latest move, reversed, each at its next episode end)",
            f"the pool stepped {after:,.0f} env steps per second of the caller's time in it after the move, "
            f"against {before:,.0f} before",
        )

    def _queue_moves(self, source: int, target: int, around: bool, count: int) -> None:
        """``count`` edge envs from shard ``source`` to ``target`` (around the ring's end or not)."""
        for _ in range(count):
            self.pool.queue_move(source, target, around)

    def _bounces(self, source: int, target: int, around: bool) -> bool:
        """Whether envs moved from ``target`` to ``source`` on this side within ``settle`` samples: they
        do not move straight back (a noisy host must not make envs bounce)."""
        when = self._recent.get((target, source, around))
        return when is not None and self._samples - when < self.settle


def _wrapped_part(envs: list[int]) -> list[int]:
    """Shard 0's envs past the last worker's (those before its own from env 0, in ``envs``' order)."""
    if not envs or envs[0] == 0:
        return []
    drop = next((k for k in range(1, len(envs)) if envs[k] < envs[k - 1]), len(envs))
    return envs[:drop]


def _pace(snapshot: PoolStats) -> float | None:
    """The pool's env steps per second of the time the calling process spent in it (stepping,
    waiting for the workers): what a move changes. Per second of wall time would also count what
    the caller does between steps (a policy, a PPO update, another pool), which moves no env.
    None for an interval in which the pool did not step (its pace is unknown, not 0)."""
    if not snapshot.throughput > 0:
        return None
    inside = 1.0 - snapshot.learner_share if snapshot.learner_share is not None else 1.0
    return snapshot.throughput / max(inside, 0.01)


def _commands(stats: ShardStats, interval_s: float) -> float:
    """Commands a shard ran in the interval (from its steps per second and env count)."""
    return max(1.0, stats.steps_per_s * interval_s / max(1, len(stats.envs)))


def _foreign_loads(snapshot: PoolStats, loads: dict[int, float] | None) -> dict[int, float] | None:
    """Per core, the CPU use (percent) of processes that are not this pool's, out of ``loads``
    (every process's use per core since the previous reading)."""
    if loads is None:
        return None
    ours: dict[int, float] = {}
    for s in snapshot.shards:
        if s.cpu_percent is None:
            continue
        core = s.cores[0] if s.cores and len(s.cores) == 1 else _last_core(s.pid)
        if core is not None:
            ours[core] = ours.get(core, 0.0) + s.cpu_percent
    return {core: max(0.0, load - ours.get(core, 0.0)) for core, load in loads.items()}


def _last_core(pid: int | None) -> int | None:
    try:
        import psutil

        return psutil.Process(pid).cpu_num()
    except Exception:
        return None


def _core_loads(state: dict | None = None) -> dict[int, float] | None:
    """Per-core CPU use (percent of the time the core was this machine's) since the previous call
    with the same ``state`` (a dict this function keeps its last reading in), every process
    included. The time a hypervisor took the virtual core away (steal) counts neither way: on a
    VM that is 10-35% of each core, no process can move away from it; psutil's cpu_percent,
    which counts it as busy, made the monitor park workers on an idle host, and counting it as
    idle showed a core one process kept busy as 16% busy. (psutil's cpu_times_percent per core
    does not add up to 100 here.)"""
    try:
        import psutil

        now = psutil.cpu_times(percpu=True)
    except Exception:
        return None
    state = {} if state is None else state
    before, state["times"] = state.get("times"), now
    if before is None or len(before) != len(now):
        return None  # nothing to compare with yet
    loads = {}
    for core, (a, b) in enumerate(zip(before, now)):
        fields = b._fields
        delta = {f: getattr(b, f) - getattr(a, f) for f in fields if f not in ("guest", "guest_nice")}  # (in user)
        total = sum(delta.values()) - delta.get("steal", 0.0)  # the time the core was this machine's
        idle = delta.get("idle", 0.0) + delta.get("iowait", 0.0)
        loads[core] = 100.0 * max(0.0, total - idle) / total if total > 0 else 0.0
    return loads


# -- the demo -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fastvec.monitor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--hog", action="store_true", help="also run a CPU hog on the last worker's core")
    args = parser.parse_args(argv)
    from fastvec.tune import option_error  # (the tuner's checks of the same two options)

    error = option_error(num_envs=args.num_envs, seconds=args.seconds)
    if error is not None:
        parser.error(error)
    try:
        import rich  # noqa: F401  (the live table: an extra's, not the engine's dependency)
    except ImportError:
        parser.error("the live view needs rich: pip install rich (or, in fastvec's folder, pip install '.[train]')")
    import signal

    def stop(signum: int, frame: Any) -> None:  # (a SIGTERM or a closed terminal ends the demo as Ctrl-C does)
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    _demo(args.seconds, args.num_envs, args.hog)


def _demo(seconds: float, num_envs: int, hog: bool) -> None:
    import numpy as np
    from rich.live import Live
    from rich.table import Table

    from fastvec.pool import Pool
    from fastvec.protocol import SAME_STEP

    fns = [_demo_env(i, num_envs) for i in range(num_envs)]
    pool = Pool(fns, start_method="fork", autoreset_mode=SAME_STEP, monitor=True, monitor_interval=1.0)
    hog_process = _start_hog(pool) if hog else None
    try:
        pool.reset()
        actions = np.zeros(num_envs, dtype=np.int64)
        end = time.monotonic() + seconds
        with Live(refresh_per_second=2) as live:
            while time.monotonic() < end:
                for _ in range(50):
                    pool.step(actions)
                monitor = pool._monitor
                if monitor is not None and monitor.last is not None:
                    live.update(_table(monitor.last, monitor.events, Table))
    finally:
        if hog_process is not None:
            hog_process.kill()
        pool.close()


def _demo_env(index: int, num_envs: int) -> Any:
    from functools import partial

    slow = index >= num_envs - num_envs // 4  # the last quarter: 4x slower, all in the last shard at start
    return partial(_BusyEnv, 4e-4 if slow else 1e-4)


class _BusyEnv:
    """A gymnasium env that burns a fixed amount of CPU per step (the demo's workload)."""

    def __new__(cls, step_seconds: float) -> Any:
        import gymnasium as gym
        import numpy as np

        class BusyEnv(gym.Env):
            observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
            action_space = gym.spaces.Discrete(2)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.t = 0
                return np.zeros(4, np.float32), {}

            def step(self, action):
                self.t += 1
                end = time.thread_time() + step_seconds
                while time.thread_time() < end:
                    pass
                return np.zeros(4, np.float32), 1.0, False, self.t >= 200, {}

        return BusyEnv()


def _start_hog(pool: Any) -> Any:
    import subprocess
    import sys

    core = next(iter(pool.cores.values()), [0])[0]
    # (it spins while its parent lives: a demo killed outright, SIGKILL, leaves no hog behind either)
    code = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile os.getppid() == {os.getpid()}: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def _table(snapshot: PoolStats, events: list[MonitorEvent], table_class: Any) -> Any:
    table = table_class(
        title=f"fastvec monitor: {snapshot.throughput:,.0f} env steps/s, straggler ratio "
        + (f"{snapshot.straggler_ratio:.2f}" if snapshot.straggler_ratio else "-")
    )
    for column in ("shard", "pid", "envs", "cores", "steps/s", "busy", "p50 ms", "p95 ms", "CPU %", "inv. switches"):
        table.add_column(column, justify="right")
    for s in snapshot.shards:
        table.add_row(
            f"{s.shard}{' (learner)' if s.in_parent else ' (parked)' if s.parked else ''}",
            str(s.pid),
            describe_envs(s.envs),
            ",".join(map(str, s.cores or [])),
            f"{s.steps_per_s:,.0f}",
            f"{s.busy:.0%}",
            f"{s.p50_ms:.2f}" if s.p50_ms is not None else "-",
            f"{s.p95_ms:.2f}" if s.p95_ms is not None else "-",
            f"{s.cpu_percent:.0f}" if s.cpu_percent is not None else "-",
            str(s.involuntary_switches if s.involuntary_switches is not None else "-"),
        )
    for event in events[-5:]:
        table.caption = (table.caption or "") + f"\n{event.time:6.1f} s  {event.kind}: {event.detail} ({event.why})"
    return table


if __name__ == "__main__":
    main()
