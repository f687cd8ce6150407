"""How fast each core runs right now, side by side (issue 14: what a lock-step barrier waits for).

    python -m benchmarks.core_speed [--rounds 8] [--seconds 1] [--pause 1]

Each round starts one process per allowed core, pinned to it, all running the same busy loop
for ``--seconds`` at the same time, and prints the loops each got through and the ratio of
every core to the first. On a quiet machine the ratios stay near 1. On a VM whose virtual CPUs
the hypervisor slows down one at a time, they move from round to round; a synchronous step
(every shard done before the next step) then runs at the pace of whichever core is slower
at the moment, while free-running loops (benchmarks' ``ceiling`` engine) do not wait for it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

from benchmarks import _cli


def _loop(core: int, seconds: float, go, out) -> None:
    os.sched_setaffinity(0, {core})
    go.wait()
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            pass
        count += 1
    out.put((core, count))


def measure(seconds: float, cores: list[int] | None = None) -> dict[int, int]:
    """One round: core -> busy-loop iterations (of 1,000 steps) in ``seconds``, all cores at once."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_loop, args=(core, seconds, go, out)) for core in cores]
    for proc in procs:
        proc.start()
    try:
        go.set()
        return dict(out.get(timeout=30 + 2 * seconds) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        out.close()
        out.join_thread()


def main(argv: list[str] | None = None) -> list[dict[int, int]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core_speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=_cli.count, default=8)
    parser.add_argument("--seconds", type=_cli.seconds, default=1.0)
    parser.add_argument("--pause", type=_cli.seconds0, default=1.0, help="seconds between rounds")
    args = parser.parse_args(argv)
    rounds = []
    for r in range(args.rounds):
        counts = measure(args.seconds)
        first = counts[min(counts)]
        ratios = ", ".join(
            f"core {c}: {n:,} ({n / first:.2f})" if first else f"core {c}: {n:,}" for c, n in sorted(counts.items())
        )
        print(f"round {r + 1}: {ratios}", flush=True)
        rounds.append(counts)
        if r + 1 < args.rounds:
            time.sleep(args.pause)
    return rounds


if __name__ == "__main__":
    main()
