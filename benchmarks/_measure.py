"""Measure one (engine, workload, num_envs) in this process and print one JSON line.

Run by benchmarks.vec_env in a child process with a timeout, so an engine that
hangs or crashes is reported and the study goes on.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback

import numpy as np
import psutil

from fastvec.tune import busy_cpu_seconds, tree_cpu_seconds


def measure(spec: dict) -> dict:
    from benchmarks import workloads
    from benchmarks.engines import ENGINES, EngineUnavailable

    name, workload, num_envs = spec["engine"], spec["workload"], spec["num_envs"]
    seconds, repeats = spec["seconds"], spec["repeats"]
    result = {**spec, "status": "ok"}
    space = workloads.make(workload).action_space
    space.seed(spec.get("seed", 0))
    batches = np.stack([np.stack([space.sample() for _ in range(num_envs)]) for _ in range(256)])
    began = time.perf_counter()
    try:
        engine = ENGINES[name](workloads.factories(workload, num_envs), workload)
    except EngineUnavailable as exc:
        return {**result, "status": "unavailable", "reason": str(exc)}
    result["startup_s"] = time.perf_counter() - began
    try:
        engine.reset()
        end = time.perf_counter() + min(0.3, seconds / 3)
        k = 0
        while time.perf_counter() < end:  # warm-up
            engine.step(batches[k & 255])
            k += 1
        me = psutil.Process()
        rates = []
        cpu0, busy0, wall0 = tree_cpu_seconds(me), busy_cpu_seconds(), time.perf_counter()
        for _ in range(repeats):
            steps = 0
            start = time.perf_counter()
            deadline = start + seconds
            while True:
                for _ in range(8):
                    engine.step(batches[k & 255])
                    k += 1
                steps += 8
                now = time.perf_counter()
                if now >= deadline:
                    break
            rates.append(steps * num_envs / (now - start))
        wall = time.perf_counter() - wall0
        cpu_tree = tree_cpu_seconds(me) - cpu0
        busy = busy_cpu_seconds() - busy0
        cores = psutil.cpu_count()
        result.update(
            rate=statistics.median(rates),
            rates=rates,
            cpu_used_by_run=cpu_tree / wall,
            other_load=max(0.0, (busy - cpu_tree) / (wall * cores)),
        )
    finally:
        engine.close()
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = measure(spec)
    except Exception as exc:
        result = {**spec, "status": "error", "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # do not wait on anything an engine leaked: the study measures, it does not clean up


if __name__ == "__main__":
    main()
