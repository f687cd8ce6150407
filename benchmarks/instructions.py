"""The engine's own work per synchronous step, in CPU instructions, layer by layer (issue 14).

    python -m benchmarks.instructions                      # this checkout
    python -m benchmarks.instructions --repo /path/to/old  # another checkout (its extension built)

On this project's shared 2-core VMs a host's speed drifts by up to 2x within an hour, and
a change worth 1-2 us per command is invisible in timings. An instruction count is not:
valgrind's cachegrind counts the instructions a process runs, whatever else the host does.
Each layer runs ``--steps`` steps of 8 envs that cost (almost) nothing (NullEnv), all in one
process (one shard, no worker: no waiting whose length varies), once with ``--steps`` and
once with ``--base-steps``; the difference divided by the difference of the step counts is
the layer's instructions per step, start-up and imports cancelled out:

- raw: the 8 envs' ``step`` called in a plain loop (what no engine can save);
- shard: ``Shard.step`` (the loop, row writes, flags, autoreset checks);
- pool: ``Pool.step_async`` + ``step_wait`` (action checks, command record, Batch);
- sb3: ``fastvec.SubprocVecEnv.step`` (SB3's dones, infos, observation copy).

Counts vary by 1-3% from run to run (the garbage collector, allocator caches), so compare
differences larger than that. An instruction count is a proxy: a numpy call and a clock
read can cost different time for the same count. Needs ``valgrind`` on the PATH.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("raw", "shard", "pool", "sb3")


def child(repo: str, layer: str, steps: int) -> None:
    """In the measured process: step ``layer`` ``steps`` times."""
    sys.path.insert(0, repo)
    import numpy as np

    import fastvec
    from benchmarks.breakdown import make_null
    from fastvec import SubprocVecEnv

    if not fastvec.__file__.startswith(repo):
        raise RuntimeError(f"fastvec was imported from {fastvec.__file__}, not from {repo}")

    with SubprocVecEnv([make_null] * 8, start_method="fork", num_workers=1, step_in_parent=True) as venv:
        venv.reset()
        actions = np.zeros(8, np.int64)
        pool = venv.pool
        shard = pool._local
        if layer == "sb3":
            for _ in range(steps):
                venv.step(actions)
        elif layer == "pool":
            for _ in range(steps):
                pool.step_async(actions)
                pool.step_wait()
        elif layer == "shard":
            pool.step(actions)  # (the actions are in the buffer now)
            for _ in range(steps):
                shard.step(pool.slot)
        else:
            envs = shard.envs
            for _ in range(steps):
                for env, action in zip(envs, actions):
                    env.step(action)


def count(repo: str, layer: str, steps: int) -> int:
    """Instructions of a whole child process stepping ``layer`` ``steps`` times."""
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", "benchmarks.instructions", "--child", layer, str(steps), "--repo", repo,
    ]  # fmt: skip
    out = subprocess.run(
        command, cwd=ROOT, env={"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repo", default=str(ROOT), help="the fastvec checkout to measure (default: this one)")
    parser.add_argument("--steps", type=int, default=11000)
    parser.add_argument("--base-steps", type=int, default=1000)
    parser.add_argument("--layers", nargs="+", choices=LAYERS, default=list(LAYERS))
    parser.add_argument("--child", nargs=2, metavar=("LAYER", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        child(str(Path(args.repo).resolve()), args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("benchmarks.instructions needs valgrind (apt install valgrind)")
    repo = str(Path(args.repo).resolve())
    print(f"Instructions per step of 8 null envs in one process, {repo} (valgrind cachegrind)\n")
    print("| layer | instructions per step | over the layer below |")
    print("|---|---:|---:|")
    below = None
    for layer in args.layers:
        per_step = (count(repo, layer, args.steps) - count(repo, layer, args.base_steps)) // (
            args.steps - args.base_steps
        )
        extra = "" if below is None else f"{per_step - below:+,}"
        print(f"| {layer} | {per_step:,} | {extra} |", flush=True)
        below = per_step


if __name__ == "__main__":
    main()
