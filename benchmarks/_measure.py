"""Measure one (engine, workload, num_envs) in this process and print one JSON line.

Run by benchmarks.vec_env in a child process with a timeout, so an engine that
hangs or crashes is reported and the study goes on.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np

from fastvec.tune import time_steps


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
        result.update(time_steps(engine.step, batches, num_envs, seconds, repeats))
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
