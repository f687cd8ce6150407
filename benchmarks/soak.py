"""Soak run: a pool stepping for minutes while workers are killed and envs raise.

    python -m benchmarks.soak --minutes 10

32 CartPole-v1 envs under fastvec.SubprocVecEnv(on_error="restart"); each env
raises in step with a small probability, and every few seconds a random worker
is SIGKILLed. Reports steps, faults injected and recovered, memory over time
(resident set of the parent and its workers), and at the end open file
descriptors, child processes and /dev/shm segments against the start.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
import warnings
from functools import partial

import gymnasium as gym
import numpy as np
import psutil

from benchmarks import _cli
from fastvec import SubprocVecEnv, shm


class Faulty(gym.Wrapper):
    """Raises in step with probability ``p`` (its own seeded RNG)."""

    def __init__(self, env: gym.Env, p: float, seed: int):
        super().__init__(env)
        self.p = p
        self.rng = random.Random(seed)

    def step(self, action):
        if self.rng.random() < self.p:
            raise RuntimeError("injected env fault")
        return self.env.step(action)


def make(index: int, p: float) -> gym.Env:
    # a new seed for every life of the env, so a re-created env does not replay its fault
    return Faulty(gym.make("CartPole-v1"), p, seed=hash((index, os.getpid(), time.perf_counter_ns())))


def _our_children(me: psutil.Process) -> list[psutil.Process]:
    """Child processes other than multiprocessing's long-lived resource tracker."""
    return [p for p in me.children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]


def tree_rss_mb(pids: list[int]) -> float:
    total = psutil.Process().memory_info().rss
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=_cli.seconds, default=10.0)
    parser.add_argument("--num-envs", type=_cli.count, default=32)
    parser.add_argument("--num-workers", type=_cli.count, default=4)
    parser.add_argument("--env-fault-p", type=_cli.probability, default=1e-5, help="probability an env raises in a step")
    parser.add_argument("--kill-every", type=_cli.seconds, default=5.0, help="seconds between worker kills")
    parser.add_argument("--sample-every", type=_cli.seconds, default=10.0, help="seconds between memory samples")
    args = parser.parse_args()

    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # multiprocessing's helper keeps one pipe open for good: not ours
    me = psutil.Process()
    fds_start = me.num_fds()
    children_start = len(_our_children(me))
    shm_start = set(shm.list_segments())
    rng = np.random.default_rng(0)
    venv = SubprocVecEnv(
        [partial(make, i, args.env_fault_p) for i in range(args.num_envs)],
        start_method="fork",
        num_workers=args.num_workers,
        on_error="restart",
    )
    venv.reset()
    steps = kills = env_faults_seen = worker_faults_seen = 0
    samples: list[tuple[float, float]] = []
    began = time.monotonic()
    next_kill = began + args.kill_every
    next_sample = began
    end = began + 60 * args.minutes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # worker restarts are counted below
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_sample:
                samples.append((now - began, tree_rss_mb(venv.pool.worker_pids)))
                next_sample += args.sample_every
            if now >= next_kill:
                os.kill(random.choice(venv.pool.worker_pids), signal.SIGKILL)
                kills += 1
                next_kill += args.kill_every
            for _ in range(100):
                _, _, _, infos = venv.step(rng.integers(0, 2, size=args.num_envs))
                steps += args.num_envs
                for info in infos:
                    error = info.get("fastvec.restarted")
                    if error is not None:
                        if error == "worker process died":
                            worker_faults_seen += 1
                        else:
                            env_faults_seen += 1
    env_restarts = venv.pool.shard_restarts()
    worker_restarts = venv.pool.worker_restarts
    samples.append((time.monotonic() - began, tree_rss_mb(venv.pool.worker_pids)))
    elapsed = time.monotonic() - began
    fds_open = me.num_fds()
    venv.close()
    time.sleep(0.5)
    fds_end = me.num_fds()
    children_end = len(_our_children(me))
    shm_end = set(shm.list_segments()) - shm_start

    first, peak, last = samples[0][1], max(s[1] for s in samples), samples[-1][1]
    command = " ".join(["python -m benchmarks.soak", *sys.argv[1:]])  # (every option given: the command reproduces the run)
    print(f"# Soak: {args.minutes:g} min, {args.num_envs} envs, {args.num_workers} workers (`{command}`)\n")
    print("| measure | value |\n|---|---|")
    print(f"| env steps | {steps:,} ({steps / elapsed:,.0f}/s) |")
    print(f"| workers killed (SIGKILL) | {kills} |")
    print(f"| worker restarts | {worker_restarts} (envs reported truncated: {worker_faults_seen}) |")
    print(f"| env faults injected and recovered | {env_restarts} (reported in infos: {env_faults_seen}) |")
    print(f"| resident memory, parent + workers | start {first:.0f} MiB, peak {peak:.0f} MiB, end {last:.0f} MiB |")
    print(f"| open fds in the parent | start {fds_start}, with the pool open {fds_open}, after close {fds_end} |")
    print(f"| child processes after close | {children_end - children_start} |")
    print(f"| fastvec /dev/shm segments after close | {len(shm_end)} |")
    print("\nMemory over time (s, MiB): " + ", ".join(f"{t:.0f}:{m:.0f}" for t, m in samples))


if __name__ == "__main__":
    main()
