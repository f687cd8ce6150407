"""What compiling the engine's Python unchanged would give (issue 14): the time fastvec adds to a command of N envs
stepped in the calling process, with the pool's and the front-end's modules as Python, and as Cython compiles them.

    python -m benchmarks.compiled_glue --num-envs 4 --rounds 7

Copies this checkout (its tracked files and built extension) into a temporary folder and cythonizes the copy's
``fastvec/{pool,sb3_vec_env,shard,batch,checks,sb3_contract}.py`` in place (about 2 minutes on 2 cores). Then, in
child processes alternating between the two trees (A B A B ...: the host's drift cannot bias the ratio), it steps N
CartPole-v1 envs with a plain loop (autoreset, as ``serial``) and with ``fastvec.SubprocVecEnv(num_workers=1,
step_in_parent=True)`` (every env in the calling process: no worker, no wait), the same actions, and reports
fastvec's cost per command over the plain loop (us), per round and its median, for each tree.

The compiled copy is for this measurement only: code that walks the interpreter's frames (a close() from a signal
handler finds the pool's frames; ``sys._getframe``) does not work in it, so its pool is ended with ``terminate()``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import _cli

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("pool", "sb3_vec_env", "shard", "batch", "checks", "sb3_contract")


def child(repo: str, num_envs: int, commands: int) -> None:
    """In the measuring process: one timing of both loops, printed as JSON (us per command)."""
    sys.path.insert(0, repo)
    import gc
    import time

    import gymnasium as gym
    import numpy as np

    import fastvec
    import fastvec.pool

    if not fastvec.__file__.startswith(repo):
        raise RuntimeError(f"fastvec was imported from {fastvec.__file__}, not from {repo}")
    fns = [lambda: gym.make("CartPole-v1")] * num_envs
    envs = [fn() for fn in fns]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    venv = fastvec.SubprocVecEnv(fns, start_method="fork", num_workers=1, step_in_parent=True)
    venv.reset()
    actions = np.random.default_rng(0).integers(0, 2, size=(4096, num_envs))
    gc.disable()
    try:
        began = time.perf_counter()
        for t in range(commands):
            for env, action in zip(envs, actions[t & 4095]):
                _, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    env.reset()
        plain = time.perf_counter() - began
        step = venv.step
        began = time.perf_counter()
        for t in range(commands):
            step(actions[t & 4095])
        engine = time.perf_counter() - began
    finally:
        gc.enable()
        try:
            venv.close()
        except Exception:  # (the compiled copy: see the module's docstring)
            venv.pool.terminate()
    compiled = not fastvec.pool.__file__.endswith(".py")
    print(json.dumps({"plain_us": plain / commands * 1e6, "fastvec_us": engine / commands * 1e6, "compiled": compiled}))


def compiled_copy(folder: Path) -> Path:
    """A copy of this checkout in ``folder`` with the modules of MODULES compiled by Cython."""
    copy = folder / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    for built in (ROOT / "fastvec").glob("_kernels*.so"):
        shutil.copy2(built, copy / "fastvec" / built.name)
    script = (
        "from setuptools import setup\nfrom Cython.Build import cythonize\n"
        f"setup(ext_modules=cythonize({[f'fastvec/{m}.py' for m in MODULES]!r}, language_level=3, quiet=True),"
        " script_args=['build_ext', '--inplace', '-q'])\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=copy, check=True, capture_output=True)
    return copy


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compiled_glue", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-envs", type=_cli.count, default=4)
    parser.add_argument("--rounds", type=_cli.count, default=7)
    parser.add_argument("--commands", type=_cli.count, default=3000, help="commands timed per loop and round")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return []
    if not any((ROOT / "fastvec").glob("_kernels*.so")):
        parser.error("build the extension first: python setup.py build_ext --inplace")
    with tempfile.TemporaryDirectory() as folder:
        print("cythonizing a copy of the checkout (about 2 minutes)...", flush=True)
        trees = {"python": ROOT, "cython": compiled_copy(Path(folder))}
        rows = []
        for r in range(args.rounds):
            for label, tree in trees.items():
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.compiled_glue", "--child", str(tree), str(args.num_envs), str(args.commands)],
                    cwd=tree, capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                if out.returncode != 0:
                    raise RuntimeError(f"{label} round {r} failed:\n{out.stderr[-2000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                if result["compiled"] != (label == "cython"):
                    raise RuntimeError(f"{label}: the modules were {'' if result['compiled'] else 'not '}compiled")
                result.update(round=r, tree=label, overhead_us=result["fastvec_us"] - result["plain_us"])
                rows.append(result)
                print(f"round {r} {label}: plain loop {result['plain_us']:.1f} us, fastvec {result['fastvec_us']:.1f} us a "
                      f"command: +{result['overhead_us']:.1f} us", flush=True)  # fmt: skip
    for label in trees:
        own = [row["overhead_us"] for row in rows if row["tree"] == label]
        print(f"{label}: fastvec's cost over the plain loop, median {statistics.median(own):.2f} us a command of "
              f"{args.num_envs} envs (rounds {', '.join(f'{x:.1f}' for x in own)})")  # fmt: skip
    ratios = [c["overhead_us"] / p["overhead_us"] for p, c in zip(rows[::2], rows[1::2]) if p["overhead_us"] > 0]
    if ratios:
        print(f"cython / python, per round: median {statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})")
    return rows


if __name__ == "__main__":
    main()
