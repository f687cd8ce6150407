"""Where one synchronous step's time goes, command by command, from timestamps (issue 14).

    python -m benchmarks.critical_path [--num-envs 8] [--commands 20000] [--env CartPole-v1]

``benchmarks.breakdown`` measures each layer alone; this shows how they line up in a real
2-shard step (the learner's own shard and one worker, fork-started, default settings). Each
command's moments are recorded with the monotonic clock, which both processes share: the
learner's in a local array, the worker's in an anonymous shared mapping made before the
fork. The instrumentation wraps ``Shard.step`` and the kernels ``issue``, ``wait_all``,
``finish`` and ``wait_remaining`` (a few clock reads each, about 0.1-0.3 us per moment,
which the segments include).

The report gives the median of each segment over the commands (the first 10% left out),
and how often the worker finished after the learner's shard: the side that finishes last
is the critical path, so the learner's Python before ``issue`` and after the wait, and the
worker's before and after its shard, are what a faster engine must cut.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np

from benchmarks import _cli
from fastvec.measure import machine_facts

# learner moments (columns of its array)
A_ENTER, A_ISSUED, A_LEFT, L_BEGIN, L_END, W_DONE, RETURNED = range(7)
# worker moments
W_WOKE, W_BEGIN, W_END, W_FINISH = range(4)


def record(num_envs: int, commands: int, env_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Step a 2-shard SubprocVecEnv ``commands`` times; (learner moments, worker moments), one row each."""
    from fastvec import SubprocVecEnv, kernels
    from fastvec import shard as shard_module

    rows = commands + 16
    shared = mmap.mmap(-1, 8 * 4 * rows)  # anonymous and shared: the forked worker writes into it
    worker = np.frombuffer(shared, dtype=np.int64).reshape(rows, 4)
    learner = np.zeros((rows, 7), dtype=np.int64)
    clock = time.perf_counter_ns  # CLOCK_MONOTONIC: one clock for both processes
    me = os.getpid()
    at = {"learner": 0, "worker": 0, "stepped": False}  # the row being recorded on each side
    saved = (shard_module.Shard.step, kernels.issue, kernels.wait_all, kernels.finish, kernels.wait_remaining)
    step, issue, wait_all, finish, wait_remaining = saved

    def timed_step(self: Any, slot: int, objects: Any = None) -> Any:
        began = clock()
        result = step(self, slot, objects)
        ended = clock()
        if os.getpid() == me:
            learner[at["learner"], L_BEGIN], learner[at["learner"], L_END] = began, ended
        else:
            worker[at["worker"], W_BEGIN], worker[at["worker"], W_END] = began, ended
            at["stepped"] = True
        return result

    def timed_issue(*args: Any) -> Any:
        result = issue(*args)
        learner[at["learner"], A_ISSUED] = clock()
        return result

    def timed_wait_all(*args: Any) -> Any:
        result = wait_all(*args)
        worker[at["worker"], W_WOKE] = clock()
        return result

    def timed_finish(*args: Any) -> Any:  # (in the worker) a step's row is complete; other commands are overwritten
        worker[at["worker"], W_FINISH] = clock()
        if at["stepped"]:
            at["worker"] += 1
            at["stepped"] = False
        return finish(*args)

    def timed_wait_remaining(*args: Any) -> Any:
        result = wait_remaining(*args)
        learner[at["learner"], W_DONE] = clock()
        return result

    shard_module.Shard.step = timed_step
    kernels.issue, kernels.wait_all, kernels.finish, kernels.wait_remaining = (
        timed_issue,
        timed_wait_all,
        timed_finish,
        timed_wait_remaining,
    )
    try:
        venv = SubprocVecEnv([lambda: gym.make(env_id)] * num_envs, start_method="fork", num_workers=2)
        try:
            venv.reset()
            actions = np.random.default_rng(0).integers(0, 2, (256, num_envs))
            for k in range(commands):
                row = learner[k]
                row[A_ENTER] = clock()
                venv.step_async(actions[k & 255])
                row[A_LEFT] = clock()
                venv.step_wait()
                row[RETURNED] = clock()
                at["learner"] = k + 1
        finally:
            venv.close()
    finally:
        shard_module.Shard.step = saved[0]
        kernels.issue, kernels.wait_all, kernels.finish, kernels.wait_remaining = saved[1:]
    return learner[:commands].copy(), worker[:commands].copy()


def segments(learner: np.ndarray, worker: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The named segments of each command, in microseconds."""
    lr, wk = learner / 1e3, worker / 1e3
    last = np.maximum(lr[:, L_END], wk[:, W_FINISH])
    next_enter = np.append(lr[1:, A_ENTER], np.nan)
    return [
        ("command, start to start", next_enter - lr[:, A_ENTER]),
        ("learner: step_async until issue() returned", lr[:, A_ISSUED] - lr[:, A_ENTER]),
        ("learner: issue() to its shard's first env", lr[:, L_BEGIN] - lr[:, A_ISSUED]),
        ("learner: its shard (envs, row writes, autoresets)", lr[:, L_END] - lr[:, L_BEGIN]),
        ("worker: issue() to its wake-up", wk[:, W_WOKE] - lr[:, A_ISSUED]),
        ("worker: wake-up to its shard's first env", wk[:, W_BEGIN] - wk[:, W_WOKE]),
        ("worker: its shard", wk[:, W_END] - wk[:, W_BEGIN]),
        ("worker: shard end to finish()", wk[:, W_FINISH] - wk[:, W_END]),
        ("learner: last side done to the wait's return", lr[:, W_DONE] - last),
        ("learner: wait's return to step_wait's return", lr[:, RETURNED] - lr[:, W_DONE]),
        ("learner: step_wait's return to the next step_async", next_enter - lr[:, RETURNED]),
    ]


def report(learner: np.ndarray, worker: np.ndarray, num_envs: int, env_id: str) -> str:
    skip = len(learner) // 10
    learner, worker = learner[skip:], worker[skip:]
    facts = machine_facts()
    lines = [
        f"{facts['cpu']}, {facts['cores']} cores, Python {facts['python']}, kernels {facts['kernels']}; "
        f"{num_envs} {env_id} envs, 2 shards (the learner's and one worker's), {len(learner)} commands",
        "",
        "| segment | median us | p90 us |",
        "|---|---:|---:|",
    ]
    for name, values in segments(learner, worker):
        values = values[np.isfinite(values)]
        lines.append(f"| {name} | {statistics.median(values.tolist()):.2f} | {np.percentile(values, 90):.2f} |")
    worker_last = float(np.mean(worker[:, W_FINISH] > learner[:, L_END]))
    lines += ["", f"The worker finished after the learner's shard in {worker_last:.0%} of the commands."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.critical_path",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num-envs", type=_cli.count, default=8)
    parser.add_argument("--commands", type=_cli.count, default=20000)
    parser.add_argument("--env", default="CartPole-v1")
    args = parser.parse_args(argv)
    if args.num_envs < 2:  # (two shards, each with an env: one env left the learner's shard empty)
        parser.error(f"--num-envs must be at least 2 (the learner's shard and a worker's), got {args.num_envs}")
    env_error = _cli.env_error(args.env)  # (else three tracebacks, one per process that made the env)
    if env_error:
        parser.error(f"--env {env_error}")
    learner, worker = record(args.num_envs, args.commands, args.env)
    print(report(learner, worker, args.num_envs, args.env))


if __name__ == "__main__":
    main()
