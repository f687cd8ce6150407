"""How many envs should the learner's own shard step? One pool, alternating splits (issue 14).

    python -m benchmarks.learner_share --num-envs 8 --shares 4 3 5 2 6
    python -m benchmarks.learner_share --num-envs 64 --shares 32 28 36 24 40

By default the calling process steps an even share (shard 0) and one worker steps the
rest. With a small policy, the learner might take more; with a heavy front-end, less. This
measures it drift-proof: one pool of CartPole-v1 envs (random actions are not needed: the
envs step with action 0 and reset at episode ends), the learner's share changed in place by
moving envs between the two shards at episode ends (``Pool.request_move``), each share
measured for ``--seconds`` per round in an order that reverses every round. Ratios are to
the first share in the same round; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial

import gymnasium as gym
import numpy as np

from benchmarks import _cli
from fastvec import SubprocVecEnv
from fastvec.measure import machine_facts, time_steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.learner_share",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num-envs", type=_cli.count, default=8)
    parser.add_argument("--shares", type=int, nargs="+", default=None, help="learner's envs (default: n/2, n/2 -+ 1)")
    parser.add_argument("--rounds", type=_cli.count, default=8)
    parser.add_argument("--seconds", type=_cli.seconds, default=1.0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    n = args.num_envs
    if args.shares is None and n < 4:  # (the default shares, n/2 and n/2 -+ 1, each leave both shards an env from 4)
        parser.error(f"--num-envs {n}: the default shares need at least 4 envs (or give --shares)")
    shares = list(dict.fromkeys(args.shares or [n // 2, n // 2 - 1, n // 2 + 1]))  # (one given twice ran twice)
    if any(not 1 <= k < n for k in shares):
        parser.error(f"every share must leave each shard at least one env: 1 <= share < {n}")
    venv = SubprocVecEnv([partial(gym.make, "CartPole-v1")] * n, start_method="fork", num_workers=2)
    pool = venv.pool
    actions = np.zeros(n, np.int64)

    def run(seconds: float) -> float:  # a short warm-up, then env steps per second over ``seconds``
        return time_steps(venv.step, [actions], n, seconds, 1)["rate"]

    def set_share(k: int) -> None:
        while len(pool.shard_envs[0]) != k:
            if len(pool.shard_envs[0]) > k:
                pool.request_move(0, 1)
            else:
                pool.request_move(1, 0)
            for _ in range(500):  # the env moves at its episode end (CartPole with action 0: ~10 steps)
                venv.step(actions)
                if not pool._moves:
                    break

    try:
        venv.reset()
        run(1.0)
        rates: dict[int, list[float]] = {k: [] for k in shares}
        for r in range(args.rounds):
            for k in shares if r % 2 == 0 else shares[::-1]:
                set_share(k)
                rates[k].append(run(args.seconds))
    finally:
        venv.close()
    facts = machine_facts()
    print(
        f"{facts.get('cpu')}, {facts.get('cores')} cores, Python {facts.get('python')}; {n} CartPole-v1 envs, 2 shards"
    )
    print(f"command: python -m benchmarks.learner_share {' '.join(sys.argv[1:] if argv is None else argv)}\n")
    print("| learner's envs / worker's | steps/s (median) | vs the first split: median (per round) |")
    print("|---|---:|---|")
    for k in shares:
        ratios = [x / y for x, y in zip(rates[k], rates[shares[0]])]
        print(
            f"| {k} / {n - k} | {statistics.median(rates[k]):,.0f} | **{statistics.median(ratios):.3f}** "
            f"({', '.join(f'{x:.2f}' for x in ratios)}) |"
        )


if __name__ == "__main__":
    main()
