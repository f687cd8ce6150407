"""Asynchronous batches with and without the caller's own group, beside a policy (issue 12).

    python -m benchmarks.async_layouts [--env-ms 1 --policy-ms 1] [--num-envs 8] [--rounds 2] [--seconds 3]

``SubprocVecEnv(batch_size=num_envs/2)`` stepped as a learner would: ``recv()``, a policy that
burns ``--policy-ms`` of CPU (a busy loop on thread time), ``send()``. The envs are
``BusyEnv``s burning ``--env-ms`` a step. Two layouts, each run in a fresh child process,
alternating (own, workers, workers, own, ...):

- own: ``step_in_parent=True``, the calling process steps the first group inside ``recv()``;
- workers: ``step_in_parent=False``, a worker per group.

Prints each run's steps/s and the median ratio own / workers over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from functools import partial

import numpy as np

from benchmarks import _cli
from benchmarks.workloads import BusyEnv


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def run(own: bool, num_envs: int, env_ms: float, policy_ms: float, seconds: float) -> float:
    """Env steps per second of one layout, in this process."""
    from fastvec import SubprocVecEnv

    fns = [partial(BusyEnv, env_ms / 1000, 100)] * num_envs
    batch = num_envs // 2
    with SubprocVecEnv(fns, start_method="fork", batch_size=batch, step_in_parent=own) as venv:
        venv.async_reset()
        actions = np.zeros(batch, np.int64)
        for _ in range(4):  # warm-up
            ids = venv.recv()[4]
            venv.send(actions, ids)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            ids = venv.recv()[4]
            _burn(policy_ms / 1000)
            venv.send(actions, ids)
            steps += len(ids)
        return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.async_layouts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-envs", type=_cli.count, default=8)
    parser.add_argument("--env-ms", type=_cli.seconds0, default=1.0)
    parser.add_argument("--policy-ms", type=_cli.seconds0, default=1.0)
    parser.add_argument("--rounds", type=_cli.count, default=2)
    parser.add_argument("--seconds", type=_cli.seconds, default=3.0)
    parser.add_argument("--child", choices=("own", "workers"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.num_envs < 2 or args.num_envs % 2:  # (batches of half the envs, a group each)
        parser.error(f"--num-envs must be even and at least 2 (batches of half the envs), got {args.num_envs}")
    if args.child:
        print(run(args.child == "own", args.num_envs, args.env_ms, args.policy_ms, args.seconds))
        return
    rates: dict[str, list[float]] = {"own": [], "workers": []}
    for r in range(args.rounds):
        for kind in ("own", "workers") if r % 2 == 0 else ("workers", "own"):
            argv_child = [sys.executable, "-m", "benchmarks.async_layouts", "--child", kind]
            for name in ("num_envs", "env_ms", "policy_ms", "seconds"):
                argv_child += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            out = subprocess.run(argv_child, check=True, capture_output=True, text=True, timeout=120 + args.seconds)
            rates[kind].append(float(out.stdout.split()[-1]))
            print(f"round {r + 1} {kind}: {rates[kind][-1]:,.0f} steps/s", flush=True)
    ratios = [a / b for a, b in zip(rates["own"], rates["workers"])]
    print(
        f"{args.num_envs} envs, env {args.env_ms:g} ms, policy {args.policy_ms:g} ms: own / workers "
        f"{statistics.median(ratios):.2f}x (rounds {', '.join(f'{x:.2f}' for x in ratios)})"
    )


if __name__ == "__main__":
    main()
