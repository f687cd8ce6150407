"""What a pool's processes are doing: a typed snapshot from the counters in the shared block
and what psutil says of each process (``Pool.stats()``, the monitor).

Every shard (the calling process's own, and each worker's) counts its commands, env steps,
time running commands, time waiting for the next one, and a histogram of command durations,
in its row of the block; with the monitor on, each env's time in ``env.step`` too. A
``Sampler`` turns two readings into rates over the time between them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fastvec.protocol import Stats

if TYPE_CHECKING:
    from fastvec.pool import Pool

__all__ = ["ShardStats", "PoolStats", "Sampler", "describe_envs", "percentile_ms"]


def describe_envs(envs: Sequence[int]) -> str:
    """Env indices as runs: "4..7", or for shard 0 with envs around the ring's end "14..15, 0..5"."""
    runs: list[list[int]] = []
    for i in envs:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}..{b}" for a, b in runs) or "none"


@dataclass(frozen=True)
class ShardStats:
    """One shard over the sampled interval."""

    shard: int
    pid: int | None
    in_parent: bool  # the calling process's own shard
    # the env indices it steps, in order around the ring: a range, or for shard 0 once envs moved to it
    # around the ring's end, a tuple (those past the last worker's, then its own from 0)
    envs: Sequence[int]
    cores: list[int] | None  # the process's CPU affinity
    steps_per_s: float  # env steps per second
    busy: float  # share of wall time spent running commands (stepping envs)
    p50_ms: float | None  # median command duration
    p95_ms: float | None
    cpu_percent: float | None  # psutil: the process's CPU use (100 = one core)
    involuntary_switches: int | None  # psutil: times the OS took the core away, over the interval
    env_step_ms: list[float] | None  # mean time in env.step per env (monitor on), in the order of envs
    parked: bool = False  # a worker left out of commands, with no envs (the monitor parks one beside a CPU hog)


@dataclass(frozen=True)
class PoolStats:
    """The pool over the sampled interval (since the previous sample, or since the start)."""

    interval_s: float
    shards: list[ShardStats]
    throughput: float  # env steps per second, all shards
    straggler_ratio: float | None  # the busiest shard's busy share over the median of the others
    learner_share: float | None  # share of wall time the calling process spent outside the pool

    @property
    def workers(self) -> list[ShardStats]:
        """The shards that run in worker processes."""
        return [s for s in self.shards if not s.in_parent]


def percentile_ms(histogram: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile of command durations from a histogram of power-of-two bins (in us), in ms."""
    total = float(histogram.sum())
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for b, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = 0.0 if b == 0 else 2.0**b
            high = 2.0 ** (b + 1)
            return (low + (high - low) * (rank - seen) / count) / 1000.0  # interpolated within its bin
        seen += count
    return 2.0 ** len(histogram) / 1000.0


class Sampler:
    """Readings of a pool's counters turned into rates between two calls to ``sample``."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self._previous: tuple | None = None
        # what earlier samples counted of a command (or a wait of the caller's) that had not ended: shard (or
        # "inside") -> (its command count, seconds counted, the process running it); taken off its time once it ends
        self._credits: dict[Any, tuple[int, float, Any]] = {}
        self._processes: dict[int, Any] = {}
        self._switches: dict[int, int] = {}
        self._started = time.perf_counter()
        self._take()  # the baseline: the first sample covers the time since now

    def _take(self) -> tuple:
        pool = self.pool
        running, inside, own_counted = pool.in_flight()
        reading = (
            time.perf_counter(),
            pool.shard_counters(),
            pool.env_step_ns(),
            pool.inside_seconds(),
            running,
            # (a wait is told from the next one by the time inside, which grows when a wait ends)
            pool._inside_ns if inside else None,
            own_counted,
        )
        previous, self._previous = self._previous, reading
        return previous or reading

    def _credited(
        self, key: Any, took: float, was: Any, now: Any, interval: float, owner: Any = None, counted: int | None = None
    ) -> float:
        """``took`` (seconds of what ended over the interval) with what is still running counted: a command (or
        wait) running at both readings (``was`` and ``now`` the same, not None) ran through the interval,
        though its time is added to the counters only when it ends; then that time is taken off it. ``owner``:
        the process running it (a worker that died has its command's time counted by no one: its replacement's
        are not taken off for it). ``counted``: the count of the last command in the counters, where a command
        may stop running before it ends (the calling process's asynchronous step, stopped between envs)."""
        credit = self._credits.get(key)
        ended = credit is not None and (credit[0] != now if counted is None else counted >= credit[0])
        if ended:  # its whole time is in ``took``, if its process's
            if credit[2] == owner:
                took = max(0.0, took - credit[1])
            del self._credits[key]
            credit = None
        if now is not None and was == now:
            took += interval
            self._credits[key] = (now, interval + (credit[1] if credit is not None else 0.0), owner)
        return took

    def sample(self) -> PoolStats:
        """The pool since the previous call (or since the sampler was made)."""
        (t0, counters0, env0, inside0, running0, wait0, _), (t1, counters1, env1, inside1, running1, wait1, counted) = (
            self._take(),
            self._previous,
        )
        interval = max(t1 - t0, 1e-9)
        delta = counters1 - counters0
        pool = self.pool
        timing = pool.timing
        shards = []
        for shard in range(len(pool.shard_envs)):
            envs = pool.envs_of(shard)
            pid = pool.shard_pid(shard)
            row = delta[shard]
            commands = row[Stats.COMMANDS]
            histogram = row[Stats.HISTOGRAM : Stats.HISTOGRAM + Stats.HISTOGRAM_BINS]
            cpu, switches, cores = self._process_facts(pid)
            busy_s = self._credited(
                shard, float(row[Stats.BUSY_NS]) / 1e9, running0.get(shard), running1.get(shard), interval, pid,
                counted if shard == 0 and pool.step_in_parent else None,
            )
            env_ms = None
            if timing and commands:
                env_ms = [float(x) / commands / 1e6 for x in (env1 - env0)[list(envs)]]
            shards.append(
                ShardStats(
                    shard=shard,
                    pid=pid,
                    in_parent=pool.step_in_parent and shard == 0,
                    envs=envs,
                    cores=cores,
                    steps_per_s=float(row[Stats.ENV_STEPS]) / interval,
                    busy=min(1.0, busy_s / interval),
                    p50_ms=percentile_ms(histogram, 0.5),
                    p95_ms=percentile_ms(histogram, 0.95),
                    cpu_percent=cpu,
                    involuntary_switches=switches,
                    env_step_ms=env_ms,
                    parked=shard in pool._parked,
                )
            )
        live = {s.pid for s in shards}
        for pid in [pid for pid in self._processes if pid not in live]:  # (workers replaced since: on_error="restart")
            del self._processes[pid]
            self._switches.pop(pid, None)
        busy = [s.busy for s in shards if not s.parked]
        ratio = None
        if len(busy) >= 2:
            others = sorted(busy)[:-1]
            middle = statistics.median(others)
            ratio = max(busy) / middle if middle > 0 else None
        learner = 1.0 - min(1.0, self._credited("inside", inside1 - inside0, wait0, wait1, interval) / interval)
        return PoolStats(
            interval_s=interval,
            shards=shards,
            throughput=sum(s.steps_per_s for s in shards),
            straggler_ratio=ratio,
            learner_share=learner,
        )

    def _process_facts(self, pid: int | None) -> tuple[float | None, int | None, list[int] | None]:
        if pid is None:
            return None, None, None
        try:
            import psutil

            process = self._processes.get(pid)
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
                process.cpu_percent(None)  # the first reading only starts psutil's interval
                cpu = None
            else:
                cpu = process.cpu_percent(None)
            total = process.num_ctx_switches().involuntary
            switches = total - self._switches.get(pid, total)
            self._switches[pid] = total
            cores = process.cpu_affinity() if hasattr(process, "cpu_affinity") else None
            return cpu, switches, cores
        except Exception:  # a process that just ended, or psutil refusing: no facts this time
            return None, None, None
