"""Who steps what: asynchronous batches against the synchronous step, alternating (issue 12).

    python -m benchmarks.async_shares --num-envs 64 --rounds 5

CartPole-v1 x N with the default layouts: ``fastvec.SubprocVecEnv(batch_size=N/2)`` stepped with
``recv``/``send`` (on 2 cores the calling process steps one group inside ``recv()``, a worker
the other), and the same envs stepped synchronously (the caller steps shard 0, a worker the
rest). Each round runs both, in that order, for ``--seconds`` each, and reads from the workers'
counters: the env steps the calling process took (all steps less the workers'), the workers'
busy share of the time, and their idle time per command (the hand-off: from a worker's finish to
its next command). A profiler would slow the calling process and not the worker, and change the
shares it measures: none runs here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from benchmarks import _cli
from benchmarks.breakdown import make_cartpole
from fastvec import SubprocVecEnv
from fastvec.measure import machine_facts


def run(mode: str, n: int, seconds: float) -> dict:
    """One measurement: steps/s, the caller's share of env steps, the workers' busy share and idle us per command."""
    options = {"batch_size": n // 2} if mode == "async" else {}
    with SubprocVecEnv([make_cartpole] * n, start_method="fork", **options) as venv:
        pool = venv.pool
        half, actions = np.zeros(n // 2, np.int64), np.zeros(n, np.int64)
        if mode == "async":
            venv.async_reset()

            def calls(k: int) -> None:
                for _ in range(k):
                    venv.send(half, venv.recv()[4])

            per_call = n // 2
        else:
            venv.reset()

            def calls(k: int) -> None:
                for _ in range(k):
                    venv.step(actions)

            per_call = n
        calls(300)  # (warm: the workers' poll adapts to the gap between commands)
        before, began, made = pool.worker_stats(), time.perf_counter(), 0
        while time.perf_counter() - began < seconds:
            calls(50)
            made += 50
        elapsed, after = time.perf_counter() - began, pool.worker_stats()
    total = made * per_call
    worker_steps = sum(b["env_steps"] - a["env_steps"] for a, b in zip(before, after))
    commands = sum(b["commands"] - a["commands"] for a, b in zip(before, after))
    busy = sum(b["busy_s"] - a["busy_s"] for a, b in zip(before, after))
    return {
        "steps_per_s": total / elapsed,
        "caller_share": 1 - worker_steps / total,
        "worker_busy": busy / (elapsed * len(after)),
        "idle_us_per_command": (elapsed * len(after) - busy) / max(commands, 1) * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.async_shares", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--rounds", type=_cli.count, default=5)
    parser.add_argument("--seconds", type=_cli.seconds, default=2.0, help="per engine and round")
    args = parser.parse_args(argv)
    if args.num_envs < 2 or args.num_envs % 2:
        parser.error(f"--num-envs must be even (batches of half the envs), got {args.num_envs}")
    rounds = []
    for r in range(args.rounds):
        pair = {mode: run(mode, args.num_envs, args.seconds) for mode in ("async", "sync")}
        rounds.append(pair)
        print(f"round {r + 1}: " + " | ".join(
            f"{mode} {m['steps_per_s']:,.0f}/s, caller {m['caller_share']:.1%}, worker busy {m['worker_busy']:.1%}, "
            f"idle {m['idle_us_per_command']:.1f} us/command" for mode, m in pair.items()
        ) + f" | async/sync {pair['async']['steps_per_s'] / pair['sync']['steps_per_s']:.3f}", flush=True)  # fmt: skip

    def median(mode: str, key: str) -> float:
        return statistics.median(p[mode][key] for p in rounds)

    ratios = [p["async"]["steps_per_s"] / p["sync"]["steps_per_s"] for p in rounds]
    facts = ", ".join(f"{key} {value}" for key, value in machine_facts().items())
    command = " ".join(["python -m benchmarks.async_shares", *(sys.argv[1:] if argv is None else argv)])
    print(f"\n`{command}`  \n{facts}; CartPole-v1 x {args.num_envs}, batches of {args.num_envs // 2}\n")
    print("| | async | sync |\n|---|---:|---:|")
    print(f"| steps/s (median) | {median('async', 'steps_per_s'):,.0f} | {median('sync', 'steps_per_s'):,.0f} |")
    for key, label, unit in (("caller_share", "calling process's share of env steps", "%"),
                             ("worker_busy", "worker busy", "%"), ("idle_us_per_command", "worker idle per command", "us")):
        a, s = median("async", key), median("sync", key)
        print(f"| {label} | {a:.1%} | {s:.1%} |" if unit == "%" else f"| {label} | {a:.1f} us | {s:.1f} us |")
    print(f"\nasync / sync: median {statistics.median(ratios):.3f}, rounds " + ", ".join(f"{x:.3f}" for x in ratios))


if __name__ == "__main__":
    main()
