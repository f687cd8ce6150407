"""fastvec's monitor: watch the shards, and act when one holds the others back.

The learner waits for the slowest shard at every step, so one slow env or one busy core
slows everything. With ``monitor=True`` a background thread in the learner samples the
shards' counters (fastvec.stats) every ``interval`` seconds. A shard whose busy share stays
above ``threshold`` times the median of the others for ``patience`` samples is a straggler,
and the monitor acts, once per ``cooldown`` samples:

1. a worker pinned to a core that other processes load (per-core load from psutil, minus
   fastvec's own use of it) is re-pinned to the least loaded allowed core;
2. otherwise the imbalance is in the envs: an env moves from the straggler to its less busy
   neighbouring shard at its next episode boundary (fastvec.migrate). Env indices and rows
   never change; the caller can tell only from ``stats()`` and ``monitor_events``.

    python -m fastvec.monitor            # a demo: a slow env and a CPU hog, a live table

The thread is a daemon that stops when the pool closes; it never keeps a process alive.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastvec.stats import PoolStats, Sampler

if TYPE_CHECKING:
    from fastvec.pool import Pool

__all__ = ["Monitor", "MonitorEvent", "find_straggler", "main"]


@dataclass(frozen=True)
class MonitorEvent:
    """One thing the monitor did."""

    time: float  # seconds since the monitor started
    kind: str  # "repin" or "move"
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
    other_load: float = 30.0  # percent of a core used by others before a worker is re-pinned
    events: list[MonitorEvent] = field(default_factory=list)
    last: PoolStats | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._streak: dict[int, int] = {}
        self._quiet = 0
        self._began = time.monotonic()

    def start(self) -> None:
        self.pool.timing = True  # shards time each env step: which envs are slow, not only which shard
        self._sampler = Sampler(self.pool)
        self._thread = threading.Thread(target=self._run, name="fastvec-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2 * self.interval + 1.0)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.step(self._sampler.sample())
        except Exception:  # a pool closing under it: the monitor just ends
            pass

    # -- deciding -------------------------------------------------------------------------------
    def step(self, snapshot: PoolStats) -> MonitorEvent | None:
        """Look at one sample; act when a straggler persisted. Returns what it did, if anything."""
        self.last = snapshot
        if self._quiet > 0:
            self._quiet -= 1
            return None
        straggler = find_straggler([s.busy for s in snapshot.shards], self.threshold)
        for shard in list(self._streak):
            if shard != straggler:
                del self._streak[shard]
        if straggler is None:
            return None
        self._streak[straggler] = self._streak.get(straggler, 0) + 1
        if self._streak[straggler] < self.patience:
            return None
        self._streak.clear()
        event = self._repin(snapshot, straggler) or self._move(snapshot, straggler)
        if event is not None:
            self.events.append(event)
            self._quiet = self.cooldown
        return event

    def _repin(self, snapshot: PoolStats, shard: int) -> MonitorEvent | None:
        """A worker that shares its core with other load goes to the least loaded allowed core."""
        stats = snapshot.shards[shard]
        if stats.in_parent or not stats.cores or len(stats.cores) != 1:
            return None
        loads = _core_loads()
        if loads is None:
            return None
        ours: dict[int, float] = {}
        for s in snapshot.shards:
            if s.cores and len(s.cores) == 1 and s.cpu_percent is not None:
                ours[s.cores[0]] = ours.get(s.cores[0], 0.0) + s.cpu_percent
        core = stats.cores[0]
        others = loads.get(core, 0.0) - ours.get(core, 0.0)
        if others < self.other_load:
            return None
        allowed = [c for c in self.pool._allowed_cores if c in loads]
        target = min(allowed, key=lambda c: loads[c])
        if target == core or loads[target] >= loads[core] - self.other_load / 2:
            return None
        self.pool.repin(shard, [target])
        return MonitorEvent(
            time.monotonic() - self._began,
            "repin",
            shard,
            f"worker {shard}: core {core} -> core {target}",
            f"core {core} is {others:.0f}% busy with other processes (core {target}: {loads[target]:.0f}% in all)",
        )

    def _move(self, snapshot: PoolStats, shard: int) -> MonitorEvent | None:
        """An env moves from the straggler to its less busy neighbour, at its next episode end."""
        neighbours = [n for n in (shard - 1, shard + 1) if 0 <= n < len(snapshot.shards)]
        if not neighbours or len(snapshot.shards[shard].envs) <= 1:
            return None
        target = min(neighbours, key=lambda n: snapshot.shards[n].busy)
        if snapshot.shards[target].busy >= snapshot.shards[shard].busy:
            return None
        self.pool.queue_move(shard, target)
        envs = snapshot.shards[shard].envs
        index = envs.stop - 1 if target > shard else envs.start
        busy = snapshot.shards[shard].busy
        return MonitorEvent(
            time.monotonic() - self._began,
            "move",
            shard,
            f"env {index}: shard {shard} -> shard {target} (at its next episode end)",
            f"shard {shard} busy {busy:.0%}, shard {target} {snapshot.shards[target].busy:.0%}",
        )


def _core_loads() -> dict[int, float] | None:
    """Per-core CPU use (percent) since the previous call, every process included."""
    try:
        import psutil

        return dict(enumerate(psutil.cpu_percent(interval=None, percpu=True)))
    except Exception:
        return None


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
    code = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
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
            f"{s.shard}{' (learner)' if s.in_parent else ''}",
            str(s.pid),
            f"{s.envs.start}..{s.envs.stop - 1}",
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
