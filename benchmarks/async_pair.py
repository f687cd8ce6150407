"""What one recv/send pair costs the calling process, layer by layer, in microseconds (issue 12).

    python -m benchmarks.async_pair --num-envs 16

CartPole-v1 x N in batches of N/2, every group a worker's (``step_in_parent=False``, 2 workers),
so that ``recv()`` steps no env here. Before each ``recv()`` the caller busy-waits ``--settle-us``
(default 150 us) so that both workers have finished: ``recv()`` then waits for nothing, and what it
takes is its own work. The workers poll for ``--spin-us`` (default 1,000 us) before they sleep, so
that ``send()`` finds them awake and makes no futex wake; ``--spin-us 0`` makes every ``send()`` wake
a sleeping worker, to see that syscall's cost on the host. Layers, taken in turn within one run:

- front: ``fastvec.SubprocVecEnv.recv()`` (SB3's dones, infos, final observations of ended episodes);
- pool: ``Pool.recv(copy="obs")``, what the front-end calls;
- batches: ``AsyncBatches.recv(copy=False)``, the bookkeeping alone;
- send: the front-end's ``send()`` after each of them.

Medians (and 10th percentiles) over ``--pairs`` pairs. A timing on a shared host: compare layers
within a run, not runs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import _cli
from benchmarks.breakdown import make_cartpole
from fastvec import SubprocVecEnv
from fastvec.async_batches import OBS_ONLY
from fastvec.measure import machine_facts


def measure(n: int, pairs: int, settle_us: float, spin_us: float) -> dict[str, list[int]]:
    """Nanoseconds per call of each layer (and of send)."""
    layers = ("front", "pool", "batches")
    took: dict[str, list[int]] = {name: [] for name in (*layers, "send")}
    options = {"num_workers": 2, "step_in_parent": False, "batch_size": n // 2, "spin_ns": int(spin_us * 1000)}
    with SubprocVecEnv([make_cartpole] * n, start_method="fork", **options) as venv:
        pool, actions = venv.pool, np.zeros(n // 2, np.int64)
        venv.async_reset()
        for k in range(pairs + 300):  # (the first 300: warming up)
            layer = layers[k % len(layers)]
            settled = time.perf_counter_ns()
            while time.perf_counter_ns() - settled < settle_us * 1000:
                pass
            began = time.perf_counter_ns()
            if layer == "front":
                ids = venv.recv()[4]
            elif layer == "pool":
                ids = pool.recv(None, OBS_ONLY).env_ids
            else:
                ids = pool._async.recv(None, False).env_ids
            received = time.perf_counter_ns()
            venv.send(actions, ids)
            sent = time.perf_counter_ns()
            if k >= 300:
                took[layer].append(received - began)
                took["send"].append(sent - received)
    return took


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.async_pair", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=9000)
    parser.add_argument("--settle-us", type=_cli.seconds0, default=150.0)
    parser.add_argument("--spin-us", type=_cli.seconds0, default=1000.0)
    args = parser.parse_args(argv)
    if args.num_envs < 4 or args.num_envs % 4 or args.pairs < 3 or args.settle_us < 0 or args.spin_us < 0:
        parser.error("--num-envs must be a multiple of 4 (two workers, batches of half), --pairs at least 3, "
                     "--settle-us and --spin-us not negative")  # fmt: skip
    took = measure(args.num_envs, args.pairs, args.settle_us, args.spin_us)
    facts = machine_facts()
    print(f"`python -m benchmarks.async_pair --num-envs {args.num_envs} --pairs {args.pairs} --settle-us "
          f"{args.settle_us:g} --spin-us {args.spin_us:g}`  ")  # fmt: skip
    print(f"cpu {facts.get('cpu')}, cores {facts.get('cores')}, python {facts.get('python')}; CartPole-v1 x "
          f"{args.num_envs}, batches of {args.num_envs // 2}, both groups a worker's\n")  # fmt: skip
    print("| call | median us | 10th percentile us |")
    print("|---|---:|---:|")
    names = {"front": "SubprocVecEnv.recv()", "pool": "Pool.recv(copy='obs')", "batches": "AsyncBatches.recv(copy=False)",
             "send": "SubprocVecEnv.send()"}  # fmt: skip
    for layer, values in took.items():
        print(f"| {names[layer]} | {np.median(values) / 1e3:.2f} | {np.percentile(values, 10) / 1e3:.2f} |")


if __name__ == "__main__":
    main()
