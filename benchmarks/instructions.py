"""The engine's own work per synchronous step, in CPU instructions, layer by layer (issue 14).

    python -m benchmarks.instructions                      # this checkout
    python -m benchmarks.instructions --repo /path/to/old  # another checkout (its extension built)

On this project's shared 2-core VMs a host's speed drifts by up to 2x within an hour, and
a change worth 1-2 us per command is invisible in timings. An instruction count is not:
valgrind's cachegrind counts the instructions a process runs, whatever else the host does.
Each layer runs ``--steps`` steps of ``--num-envs`` (8) envs that cost (almost) nothing (NullEnv;
with ``--episode L`` each episode ends after L steps, the envs' ends spread over the steps, so
autoresets and terminal observations count too), all in one process (one shard, no worker: no waiting whose length varies), once with ``--steps`` and
once with ``--base-steps``; the difference divided by the difference of the step counts is
the layer's instructions per step, start-up and imports cancelled out:

- raw: the envs' ``step`` called in a plain loop, an env reset when its episode ends (what no
  engine can save);
- shard: ``Shard.step`` (the loop, row writes, flags, autoreset checks);
- pool: ``Pool.step_async`` + ``step_wait`` (action checks, command record, Batch);
- front: the front-end's ``step``: ``fastvec.SubprocVecEnv`` (``--front sb3``, the default:
  SB3's dones, infos, observation copy; SAME_STEP autoresets) or ``fastvec.VectorEnv``
  (``--front gym``: gymnasium's API, NEXT_STEP autoresets unless ``--autoreset same``).

The cyclic garbage collector is off in the measured loops and the child runs with one BLAS
thread (an idle BLAS thread's polling is counted too, and it varies with the host's speed).
Counts still vary by 1-3% from run to run (allocator caches), so compare differences larger
than that. An instruction count is a proxy: a numpy call and a clock
read can cost different time for the same count. Needs ``valgrind`` on the PATH.
"""

from __future__ import annotations

import argparse
import gc
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("raw", "shard", "pool", "front")


class _Episodic:
    """Makes NullEnvs whose episodes end (terminated) after ``length`` steps. The first episode
    of the k-th env made is ``k mod length`` steps shorter, so episodes end spread over the
    steps (``length`` equal envs started together would all end in the same step). One class
    for all: a class per env would make the interpreter's method cache, and the counts, vary
    from run to run."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.made = 0

    def __call__(self) -> Any:
        env = _episodic_class()()
        env.length = self.length
        env.offset = self.made % self.length
        self.made += 1
        return env


def _episodic_class() -> type:
    global _EPISODIC
    if _EPISODIC is None:
        from benchmarks.breakdown import NullEnv

        class EpisodicNullEnv(NullEnv):
            t = 0
            length = 1
            offset = 0

            def reset(self, *, seed=None, options=None):
                self.t, self.offset = self.offset, 0
                return self._obs, {}

            def step(self, action):
                self.t += 1
                return self._obs, 1.0, self.t >= self.length, False, {}

        _EPISODIC = EpisodicNullEnv
    return _EPISODIC


_EPISODIC: type | None = None


def child(repo: str, layer: str, steps: int, num_envs: int, episode: int, front: str, autoreset: str) -> None:
    """In the measured process: step ``layer`` ``steps`` times."""
    sys.path.insert(0, repo)
    import numpy as np

    import fastvec
    from benchmarks.breakdown import make_null
    from fastvec import SubprocVecEnv, VectorEnv

    if not fastvec.__file__.startswith(repo):
        raise RuntimeError(f"fastvec was imported from {fastvec.__file__}, not from {repo}")

    fn = _Episodic(episode) if episode else make_null
    if front == "sb3":
        venv = SubprocVecEnv([fn] * num_envs, start_method="fork", num_workers=1, step_in_parent=True)
    else:
        mode = "SameStep" if autoreset == "same" else "NextStep"
        venv = VectorEnv([fn] * num_envs, context="fork", autoreset_mode=mode, num_workers=1, step_in_parent=True)
    with venv:
        venv.reset()
        actions = np.zeros(num_envs, np.int64)
        pool = venv.pool
        shard = pool._local
        # no cyclic garbage collection while counting: one full collection runs tens of millions
        # of instructions, and whether it falls inside one of the two runs moved a layer's count by 30%
        gc.collect()
        gc.disable()
        if layer == "front":
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
                    _, _, terminated, truncated, _ = env.step(action)
                    if terminated or truncated:
                        env.reset()


def count(repo: str, layer: str, steps: int, args: argparse.Namespace) -> int:
    """Instructions of a whole child process stepping ``layer`` ``steps`` times."""
    # (setarch -R: the same addresses in every run, so the interpreter's address-hashed caches
    # collide the same way each time)
    command = [
        *(["setarch", platform.machine(), "-R"] if shutil.which("setarch") else []),
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", "benchmarks.instructions", "--child", layer, str(steps), "--repo", repo,
        "--num-envs", str(args.num_envs), "--episode", str(args.episode), "--front", args.front,
        "--autoreset", args.autoreset,
    ]  # fmt: skip
    out = subprocess.run(
        command,
        cwd=ROOT,
        env={"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
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
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="count each layer this many times; report the least")
    parser.add_argument("--episode", type=int, default=0, help="episode length in steps (default: episodes never end)")
    parser.add_argument("--front", choices=("sb3", "gym"), default="sb3")
    parser.add_argument(
        "--autoreset", choices=("same", "next"), default="next", help="gym's autoreset mode (sb3: always same)"
    )
    parser.add_argument("--child", nargs=2, metavar=("LAYER", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        child(
            str(Path(args.repo).resolve()),
            args.child[0],
            int(args.child[1]),
            args.num_envs,
            args.episode,
            args.front,
            args.autoreset,
        )
        return
    if shutil.which("valgrind") is None:
        sys.exit("benchmarks.instructions needs valgrind (apt install valgrind)")
    repo = str(Path(args.repo).resolve())
    ending = f", episodes of {args.episode} steps" if args.episode else ""
    front = (
        "fastvec.SubprocVecEnv (SB3)"
        if args.front == "sb3"
        else f"fastvec.VectorEnv (gymnasium, autoreset {args.autoreset})"
    )
    print(
        f"Instructions per step of {args.num_envs} null envs in one process{ending}, {front}, {repo} (valgrind cachegrind)\n"
    )
    print("| layer | instructions per step | over the layer below |")
    print("|---|---:|---:|")
    below = None
    for layer in args.layers:
        per_step = min(  # (a run now and then counts a few percent more, never fewer)
            (count(repo, layer, args.steps, args) - count(repo, layer, args.base_steps, args))
            // (args.steps - args.base_steps)
            for _ in range(args.repeats)
        )
        extra = "" if below is None else f"{per_step - below:+,}"
        print(f"| {layer} | {per_step:,} | {extra} |", flush=True)
        below = per_step


if __name__ == "__main__":
    main()
