"""What each vectorizer does when something goes wrong: fastvec vs SB3 SubprocVecEnv vs gymnasium AsyncVectorEnv.

    python -m benchmarks.faults            # prints a markdown table, writes benchmarks/results/faults.md

Every (fault, engine) runs in its own child process with a time limit; "hang"
means nothing came back within the limit. After each run the script checks for
worker processes and /dev/shm entries left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

from benchmarks import _cli
from fastvec.measure import kill_session

ENGINES = ["fastvec", "sb3-subproc", "gym-async"]
TIME_LIMIT = 12.0

FAULTS = {
    "env raises in constructor": "make:init",
    "env raises in reset": "reset:reset",
    "env raises in step": "step:step",
    "env raises in env_method / call": "method:",
    "worker SIGKILL while idle": "kill-idle:",
    "worker SIGKILL during step": "kill-step:hang",
    "env hangs in step": "hang:hang",
    "wrong action shape": "bad-action:",
    "NaN reward": "nan:nan",
    "close() twice, then step": "close-twice:",
    "parent SIGKILL": "parent-kill:",
    "parent SIGKILL while an env hangs in step (fastvec: forkserver, its default)": "parent-kill-hung:hang",
}

CHILD = textwrap.dedent(
    r'''
    import json, os, signal, sys, time, warnings
    import numpy as np
    from functools import partial
    sys.path.insert(0, os.getcwd())
    from benchmarks.faults import FaultEnv

    engine, scenario, fail_in = sys.argv[1], sys.argv[2], sys.argv[3] or None
    n = 4
    fns = [partial(FaultEnv, fail_in if i == n - 1 else None) for i in range(n)]

    def build():
        if engine == "fastvec":
            from fastvec import SubprocVecEnv
            start_method = "forkserver" if scenario == "parent-kill-hung" else "fork"
            return SubprocVecEnv(fns, start_method=start_method, num_workers=2, step_timeout=5.0 if scenario == "hang" else None)
        if engine == "sb3-subproc":
            from stable_baselines3.common.vec_env import SubprocVecEnv
            return SubprocVecEnv(fns, start_method="fork")
        import gymnasium
        return gymnasium.vector.AsyncVectorEnv(fns, context="fork")

    gym_api = engine == "gym-async"

    def reset(v):
        return v.reset(seed=0) if gym_api else v.reset()

    def step(v, a):
        return v.step(a)

    def report(outcome, **extra):
        print("OUTCOME " + json.dumps({"outcome": outcome, **extra}), flush=True)

    began = time.monotonic()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            v = build()
            # the process that runs env n-1 (the faulty one), and every worker
            workers = v.pool.worker_pids if engine == "fastvec" else [p.pid for p in v.processes]
            print("PIDS " + json.dumps(workers), flush=True)
            if scenario != "reset":
                reset(v)
                began = time.monotonic()  # times below count from the fault, not from start-up
            a = np.zeros(n, dtype=np.int64)
            if scenario == "reset":
                reset(v)
            if scenario == "method":
                v.call("explode") if gym_api else v.env_method("explode")
            elif scenario == "kill-idle":
                os.kill(workers[-1], signal.SIGKILL); time.sleep(0.2)
                step(v, a)
            elif scenario == "kill-step":
                if gym_api: v.step_async(a)
                else: v.step_async(a)
                time.sleep(0.2); os.kill(workers[-1], signal.SIGKILL)
                v.step_wait()
            elif scenario == "bad-action":
                step(v, np.zeros(n + 1, dtype=np.int64))
            elif scenario == "close-twice":
                v.close(); v.close(); step(v, a)
            elif scenario == "parent-kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif scenario == "parent-kill-hung":
                v.step_async(a)
                time.sleep(0.3); os.kill(os.getpid(), signal.SIGKILL)
            else:
                for _ in range(3):
                    step(v, a)
            msgs = [str(w.message)[:120] for w in caught if issubclass(w.category, (RuntimeWarning, UserWarning))]
        report("no error", seconds=time.monotonic() - began, warnings=msgs)
    except BaseException as exc:
        report("error", seconds=time.monotonic() - began, type=type(exc).__name__, message=str(exc).splitlines()[0][:160] if str(exc) else "")
    if "v" not in globals():
        sys.exit(0)  # the constructor raised: nothing to close
    try:
        v.close()
        report("closed", seconds=time.monotonic() - began)
    except BaseException as exc:
        report("close failed", type=type(exc).__name__)
    '''
)


class FaultEnv:
    """A small env that misbehaves where asked (importable by every engine's workers)."""

    def __new__(cls, fail_in=None):
        import gymnasium as gym
        import numpy as np
        from gymnasium import spaces

        class _Env(gym.Env):
            def __init__(self):
                if fail_in == "init":
                    raise RuntimeError("boom in __init__")
                self.observation_space = spaces.Box(-1, 1, (2,), np.float32)
                self.action_space = spaces.Discrete(2)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                if fail_in == "reset":
                    raise ValueError("boom in reset")
                return np.zeros(2, np.float32), {}

            def step(self, action):
                if fail_in == "step":
                    raise ZeroDivisionError("boom in step")
                if fail_in == "hang":
                    time.sleep(3600)
                reward = float("nan") if fail_in == "nan" else 1.0
                return np.zeros(2, np.float32), reward, False, False, {}

            def explode(self):
                raise KeyError("boom in env_method")

        return _Env()


def run(engine: str, scenario: str, fail_in: str) -> dict:
    shm_before = set(os.listdir("/dev/shm"))
    outcomes, pids = [], []
    began = time.monotonic()
    # output to a file, not a pipe: orphaned workers holding a pipe open must not look like a hang
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, engine, scenario, fail_in],
            stdout=out,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
        )
        hung = False
        try:
            proc.wait(timeout=TIME_LIMIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            hung = True
        out.seek(0)
        text = out.read()
    for line in text.splitlines():
        if line.startswith("OUTCOME "):
            outcomes.append(json.loads(line[8:]))
        elif line.startswith("PIDS "):
            pids = json.loads(line[5:])
    if hung:  # after whatever it reported: e.g. an error, then a close() that never returned
        outcomes.append({"outcome": f"hang (no further progress within {TIME_LIMIT:.0f} s)"})
    if not outcomes:
        outcomes.append({"outcome": f"process died (exit {proc.returncode})"})
    time.sleep(1.5)  # the parent-death rule under test is "within about a second"
    left = [p for p in pids if _alive(p)]
    kill_session(proc.pid)  # whatever is left of the run's session
    new_shm = [s for s in set(os.listdir("/dev/shm")) - shm_before]
    return {"engine": engine, "scenario": scenario, "outcomes": outcomes, "orphans": len(left), "shm_left": new_shm,
            "seconds": time.monotonic() - began}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(result: dict) -> str:
    parts = []
    for o in result["outcomes"]:
        if o["outcome"] == "error":
            message = o.get("message", "").split("Remote traceback")[0].replace("\\n", " ").strip()
            if len(message) > 1 and message[0] == message[-1] == "'":  # a KeyError's repr
                message = message[1:-1]
            parts.append(f"raises {o['type']} after {o['seconds']:.1f} s" + (f": {message[:90]}" if message else ""))
        elif o["outcome"] == "no error":
            w = f" (warns: {o['warnings'][0][:60]})" if o.get("warnings") else ""
            parts.append(f"no error{w}")
        elif o["outcome"] == "closed":
            parts.append("close() ok")
        else:
            parts.append(o["outcome"])
    if result["orphans"]:
        parts.append(f"**{result['orphans']} worker(s) still running 1.5 s later**")
    if result["shm_left"]:
        parts.append(f"**{len(result['shm_left'])} /dev/shm entries left**")
    return "; ".join(parts).replace("|", "/")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.faults",
        description="What fastvec, SB3's SubprocVecEnv and gymnasium's AsyncVectorEnv do for each fault "
        "(each case in its own process, with a 12 s limit): a markdown table."
    )
    parser.add_argument(
        "--out", type=_cli.file_path, default=Path(__file__).resolve().parent / "results" / "faults.md",
        help="where the table is written (default: benchmarks/results/faults.md)",
    )
    args = parser.parse_args(argv)
    if args.out is not None:  # (checked before measuring: found after, it lost the results in a traceback)
        out_error = _cli.out_error(args.out, folder=False)
        if out_error:
            parser.error(out_error)
    rows = []
    for label, spec in FAULTS.items():
        scenario, fail_in = spec.split(":")
        cells = []
        for engine in ENGINES:
            result = run(engine, scenario, fail_in)
            cells.append(describe(result))
            print(f"{label:32s} {engine:12s} {cells[-1]}", flush=True)
        rows.append((label, cells))
    table = ["| fault | " + " | ".join(ENGINES) + " |", "|---|" + "---|" * len(ENGINES)]
    table += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    text = "\n".join(table)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Fault behaviour (`python -m benchmarks.faults`)\n\n4 envs, the last one faulty (in the env_method row every env's "
                   f"method raises); fastvec with num_workers=2 (step_timeout=5 s for the hang case).\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
