"""Measure one (engine, workload, num_envs) in this process and print one JSON line.

Run by benchmarks.vec_env in a child process with a timeout, so an engine that
hangs or crashes is reported and the study goes on.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fastvec.measure import child_main, time_steps


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
    policy_ns = int(spec.get("policy_us", 0) * 1000)
    step = getattr(engine, "step", None)  # (none for an engine that times itself: the ceiling)
    if policy_ns and step is not None:  # a policy's time per call (a batch's with asynchronous engines), busy as inference is
        clock = time.perf_counter_ns

        def step(actions: np.ndarray, engine_step=engine.step) -> None:
            end = clock() + policy_ns
            while clock() < end:
                pass
            engine_step(actions)

    try:
        engine.reset()
        if hasattr(engine, "measure"):  # an engine that times itself (the ceiling: several processes, no caller)
            if policy_ns:
                return {**result, "status": "unavailable", "reason": "times itself, without a caller's policy"}
            result.update(engine.measure(batches, seconds, repeats))
        else:  # asynchronous engines step a batch of envs per call, not all of them
            result.update(time_steps(step, batches, getattr(engine, "steps_per_call", num_envs), seconds, repeats))
    finally:
        engine.close()
    return result


def main() -> None:
    child_main(measure, sys.argv[1])


if __name__ == "__main__":
    main()
