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
  (``--front gym``: gymnasium's API, NEXT_STEP autoresets unless ``--autoreset same``);
- async-pool (``--shards 2`` only): ``Pool.recv`` + ``Pool.send`` of asynchronous batches,
  ``batch_size`` half the envs, a group each for the learner and the worker: a command is one
  ``recv()`` and one ``send()`` of half the envs;
- async (``--shards 2`` only): the same through the front-end's ``recv()`` and ``send()`` (issue 12:
  EnvPool's send/recv are C++, these are Python). Which group a batch is, the learner's own or the
  worker's, depends on timing: the two async layers' learner and worker counts move by up to 10%
  from run to run, one against the other, and their sum by a few percent.

With ``--shards 2`` the step runs as it does by default on 2 cores: the learner's own shard and
one worker's (fork-started), each with half the envs, waiting with ``spin_ns=0`` (a waiting side
sleeps at once, so it runs no instructions while it waits). Each process is counted on its own:
the learner's instructions per command and the worker's (layers ``pool`` and ``front`` only).

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
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import _cli

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("raw", "shard", "pool", "front", "async-pool", "async")


class _Episodic:
    """Makes NullEnvs whose episodes end (terminated) after ``length`` steps. The first episode
    of env k is ``k mod length`` steps shorter (``offset``: one factory per env, since every env is
    made from a copy of its factory), so episodes end spread over the steps (``length`` equal envs
    started together would all end in the same step). One class for all: a class per env would
    make the interpreter's method cache, and the counts, vary from run to run."""

    def __init__(self, length: int, offset: int = 0) -> None:
        self.length = length
        self.offset = offset

    def __call__(self) -> Any:
        # (a class of an importable module: made from a copy of this factory, each env still gets this
        # one class; a class made here would be one per copy, and the counts would vary with them)
        from benchmarks.breakdown import EpisodicNullEnv

        env = EpisodicNullEnv()
        env.length = self.length
        env.offset = self.offset % self.length
        return env


def child(
    repo: str, layer: str, steps: int, num_envs: int, episode: int, front: str, autoreset: str, shards: int = 1
) -> None:
    """In the measured process: step ``layer`` ``steps`` times."""
    sys.path.insert(0, repo)
    import numpy as np

    import fastvec
    from benchmarks.breakdown import make_null
    from fastvec import SubprocVecEnv, VectorEnv

    if not fastvec.__file__.startswith(repo):
        raise RuntimeError(f"fastvec was imported from {fastvec.__file__}, not from {repo}")

    fns = [_Episodic(episode, k) for k in range(num_envs)] if episode else [make_null] * num_envs
    # one shard in this process, or this process's and one worker's (waiting without polling)
    layout = (
        {"num_workers": 1, "step_in_parent": True}
        if shards == 1
        else {"num_workers": 2, "step_in_parent": True, "spin_ns": 0}
    )
    if layer.startswith("async"):
        layout["batch_size"] = num_envs // 2
    if front == "sb3":
        venv = SubprocVecEnv(fns, start_method="fork", **layout)
    else:
        mode = "SameStep" if autoreset == "same" else "NextStep"
        venv = VectorEnv(fns, context="fork", autoreset_mode=mode, **layout)
    with venv:
        if layer.startswith("async"):
            venv.async_reset()
        else:
            venv.reset()
        actions = np.zeros(num_envs, np.int64)
        pool = venv.pool
        shard = pool._local
        # no cyclic garbage collection while counting: one full collection runs tens of millions
        # of instructions, and whether it falls inside one of the two runs moved a layer's count by 30%
        gc.collect()
        gc.disable()
        half = actions[: num_envs // 2]
        if layer == "async":
            for _ in range(steps):
                out = venv.recv()
                venv.send(half, out[4] if front == "sb3" else out[4]["env_id"])
        elif layer == "async-pool":
            for _ in range(steps):
                pool.send(half, pool.recv().env_ids)
        elif layer == "front":
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


def count(repo: str, layer: str, steps: int, args: argparse.Namespace) -> tuple[int, ...]:
    """Instructions of a whole child process stepping ``layer`` ``steps`` times: (the process's,) or
    with ``--shards 2`` (the learner's, the worker's)."""
    with tempfile.TemporaryDirectory() as folder:
        # (setarch -R: the same addresses in every run, so the interpreter's address-hashed caches
        # collide the same way each time; a forked worker is counted too, into its own file)
        command = [
            *(["setarch", platform.machine(), "-R"] if shutil.which("setarch") else []),
            "valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={folder}/cg.%p",
            sys.executable, "-m", "benchmarks.instructions", "--child", layer, str(steps), "--repo", repo,
            "--num-envs", str(args.num_envs), "--episode", str(args.episode), "--front", args.front,
            "--autoreset", args.autoreset, "--shards", str(args.shards),
        ]  # fmt: skip
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, stderr = proc.communicate()
        totals = {}  # pid -> instructions
        for path in Path(folder).glob("cg.*"):
            summary = next((line for line in path.read_text().splitlines() if line.startswith("summary:")), None)
            if summary is not None:
                totals[int(path.suffix[1:])] = int(summary.split()[1])
    if proc.returncode != 0 or len(totals) != args.shards or proc.pid not in totals:
        raise RuntimeError(
            f"valgrind run failed ({proc.returncode}, {len(totals)} processes counted):\n{stderr[-2000:]}"
        )
    # (setarch and valgrind exec in place: the learner is the process started here, the other its worker)
    return (totals.pop(proc.pid), *totals.values())


def _skipped(layer: str, shards: int) -> bool:
    """Whether ``layer`` is not counted with ``shards`` shards."""
    if shards == 2:
        return layer not in ("pool", "front", "async-pool", "async")
    return layer.startswith("async")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repo", default=str(ROOT), help="the fastvec checkout to measure (default: this one)")
    parser.add_argument("--steps", type=_cli.count, default=11000)
    parser.add_argument("--base-steps", type=_cli.count, default=1000)
    parser.add_argument("--layers", nargs="+", choices=LAYERS, default=None, help="default: every layer --shards counts")
    parser.add_argument("--num-envs", type=_cli.count, default=8)
    parser.add_argument("--repeats", type=_cli.count, default=1, help="count each layer this many times; report the least")
    parser.add_argument("--episode", type=_cli.count0, default=0, help="episode length in steps (default: episodes never end)")
    parser.add_argument("--front", choices=("sb3", "gym"), default="sb3")
    parser.add_argument(
        "--autoreset", choices=("same", "next"), default="next", help="gym's autoreset mode (sb3: always same)"
    )
    parser.add_argument(
        "--shards", type=int, choices=(1, 2), default=1, help="2: the learner's shard and a worker's, counted apart"
    )
    parser.add_argument("--child", nargs=2, metavar=("LAYER", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.child and args.steps <= args.base_steps:  # (the counts are of the difference: negative otherwise)
        parser.error(f"--steps ({args.steps}) must exceed --base-steps ({args.base_steps})")
    if args.layers is None:
        args.layers = [layer for layer in LAYERS if not _skipped(layer, args.shards)]
    if not args.child:
        # (the shard and raw layers step this process's envs alone, no worker to count; asynchronous batches need
        # two groups: a layer the shards given do not count left an empty table)
        skipped = [layer for layer in args.layers if _skipped(layer, args.shards)]
        if skipped:
            parser.error(f"--layers {', '.join(skipped)}: not counted with --shards {args.shards} (see --help)")
        if Path(args.repo).resolve() != ROOT.resolve():
            error = _cli.checkout_error(str(Path(args.repo).resolve()), "--repo")
            if error:
                parser.error(error)
    if args.child:
        child(
            str(Path(args.repo).resolve()),
            args.child[0],
            int(args.child[1]),
            args.num_envs,
            args.episode,
            args.front,
            args.autoreset,
            args.shards,
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
    where = "in one process" if args.shards == 1 else "in two shards (the learner's and one worker's, spin_ns=0)"
    print(
        f"Instructions per step of {args.num_envs} null envs {where}{ending}, {front}, {repo} (valgrind cachegrind)\n"
    )
    if args.shards == 1:
        print("| layer | instructions per step | over the layer below |")
        print("|---|---:|---:|")
    else:
        print("| layer | learner: instructions per command | worker: instructions per command |")
        print("|---|---:|---:|")
    below = None
    for layer in args.layers:
        runs = []
        for _ in range(args.repeats):
            more, fewer = count(repo, layer, args.steps, args), count(repo, layer, args.base_steps, args)
            runs.append([(m - f) // (args.steps - args.base_steps) for m, f in zip(more, fewer)])
        per_step = [min(column) for column in zip(*runs)]  # (a run now and then counts a few percent more, never fewer)
        if args.shards == 2:
            print(f"| {layer} | {per_step[0]:,} | {per_step[1]:,} |", flush=True)
            continue
        extra = "" if below is None else f"{per_step[0] - below:+,}"
        print(f"| {layer} | {per_step[0]:,} | {extra} |", flush=True)
        below = per_step[0]


if __name__ == "__main__":
    main()
