"""Time to solve CartPole-v1 with PPO, per vectorized-env engine, on this machine.

    python -m benchmarks.ppo_solve                # the full study: 3 seeds of every case (~10 min on 2 cores)
    python -m benchmarks.ppo_solve --quick        # a first look: 1 seed, 3 cases (~1 min)
    python -m benchmarks.ppo_solve --dry-run      # the plan, nothing run
    python -m benchmarks.ppo_solve --cases ppo-fastvec-x8 sb3-ppo-zoo --seeds 1 2 3 4 5
    python -m benchmarks.ppo_solve --distributed  # torchrun: 1 rank x 8 envs against 2 ranks x 4 envs
    python -m benchmarks.ppo_solve --async-envs   # 8 envs of a 1 ms CartPole, with and without --async-envs

"Solved" is the usual criterion: the mean return of the last 100 episodes reaches
475. Each run is its own child process (its own session, killed on timeout), so
one run's imports, threads or leftovers cannot affect another. For every run the
table reports:

- solve wall s: from the first env step to the step that solved, measured inside
  the run (what the engine and the learner cost; no imports, no env start-up);
- process s: the whole child process, start-up included (what a user waits for);
- steps: env steps (summed over envs) when it solved.

Cases: ppo.train on fastvec with 8 envs (engine default workers, and all envs in the
learner's process), on SB3's SubprocVecEnv and on gymnasium's SyncVectorEnv (serial);
ppo.train with 1 env; Stable-Baselines3's PPO with rl-zoo's CartPole hyperparameters
on a DummyVecEnv; and ppo.train on Pendulum-v1 (continuous), reporting the return
reached within 300k steps. Results: a markdown table on stdout and
benchmarks/results/ppo_solve-<host>-<date>.json (+ .md and a PNG).

``--distributed``: ``ppo.train --distributed`` under torchrun with 1 and with 2 ranks on this
machine, the same 8 envs in total (1 x 8, 2 x 4: the same batch, so the same algorithm),
seed by seed, the two configurations interleaved (in alternating order from one round to the
next) so that a drift in the host's speed does not bias their ratio. It reports env steps
per second and time to solve, per round and as medians, and each round's 2-rank/1-rank ratio.
Results: benchmarks/results/ppo_solve_distributed-<host>-<date>.json (+ .md).

``--async-envs``: the same interleaved rounds for ``ppo.train`` with and without ``--async-envs``
(double-buffered sampling) on ``--env-id`` (default: CartPole-v1 burning 1 ms of CPU a step,
benchmarks.workloads), ``--total-envs`` envs. Results: ppo_solve_async_envs-<host>-<date>.json (+ .md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import _cli
from fastvec.measure import child_environ, run_child
from fastvec.measure import machine_facts as base_machine_facts

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SOLVE_RETURN = 475.0

# rl-zoo's hyperparameters for PPO on CartPole-v1 (rl-baselines3-zoo hyperparams/ppo.yml)
ZOO_CARTPOLE = {
    "n_envs": 8,
    "n_timesteps": 100_000,
    "n_steps": 32,
    "batch_size": 256,
    "gae_lambda": 0.8,
    "gamma": 0.98,
    "n_epochs": 20,
    "ent_coef": 0.0,
    "learning_rate": 1e-3,  # linear schedule to 0 over n_timesteps
    "clip_range": 0.2,  # linear schedule to 0 over n_timesteps
}

# ppo.train on Pendulum-v1: rl-zoo's Pendulum settings (gamma 0.9, lambda 0.95, normalized obs and
# rewards, lr 1e-3, 10 epochs) without gSDE, on 8 envs x 256 steps in 4 minibatches of 512
PENDULUM_ARGS = [
    "--env-id", "Pendulum-v1",
    "--total-timesteps", "300000",
    "--num-steps", "256",
    "--num-minibatches", "4",
    "--update-epochs", "10",
    "--learning-rate", "1e-3",
    "--gamma", "0.9",
    "--gae-lambda", "0.95",
    "--norm-obs",
    "--norm-reward",
    "--no-anneal-clip",
]  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    kind: str  # "ppo" (python -m ppo.train) or "sb3" (this module as a child)
    args: tuple[str, ...] = ()
    timeout: float = 300.0
    solves: bool = True  # CartPole cases; Pendulum reports the return reached instead
    tags: frozenset[str] = field(default_factory=frozenset)
    ranks: int = 0  # "ppo" cases: 0 runs one process; N > 0 runs ppo.train --distributed under torchrun, N ranks


QUICK = frozenset({"quick"})
CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case("ppo-fastvec-x8", "ppo.train, fastvec, 8 envs (default workers)", "ppo", ("--num-envs", "8"), tags=QUICK),
        Case(
            "ppo-fastvec-x8-inproc",
            "ppo.train, fastvec, 8 envs in the learner's process (--num-workers 0)",
            "ppo",
            ("--num-envs", "8", "--num-workers", "0"),
        ),
        Case(
            "ppo-sb3-subproc-x8",
            "ppo.train, SB3 SubprocVecEnv, 8 envs",
            "ppo",
            ("--num-envs", "8", "--vec-backend", "sb3-subproc"),
        ),
        Case(
            "ppo-serial-x8",
            "ppo.train, gymnasium SyncVectorEnv, 8 envs",
            "ppo",
            ("--num-envs", "8", "--vec-backend", "serial"),
            tags=QUICK,
        ),
        Case("ppo-fastvec-x1", "ppo.train, fastvec, 1 env", "ppo", ("--num-envs", "1"), timeout=600.0),
        Case("sb3-ppo-zoo", "SB3 PPO, rl-zoo CartPole hyperparameters, DummyVecEnv x8", "sb3", tags=QUICK),
        Case(
            "ppo-pendulum-x8",
            "ppo.train, fastvec, Pendulum-v1 (continuous), 8 envs, 300k steps",
            "ppo",
            tuple(PENDULUM_ARGS),
            timeout=900.0,
            solves=False,
        ),
    ]
}
BASELINE = "sb3-ppo-zoo"


def distributed_cases(total_envs: int, ranks: list[int]) -> list[Case]:
    """torchrun with each number of ranks, the ``total_envs`` envs split evenly (the same batch each time)."""
    cases = []
    for count in ranks:
        if total_envs % count:
            raise ValueError(f"{total_envs} envs do not split evenly over {count} ranks")
        per_rank = total_envs // count
        cases.append(
            Case(
                f"torchrun-{count}x{per_rank}",
                f"ppo.train --distributed, torchrun, {count} rank(s) x {per_rank} envs",
                "ppo",
                ("--num-envs", str(per_rank)),
                ranks=count,
            )
        )
    return cases


# -- one run, in a child process --------------------------------------------------------------------
def run_case(case: Case, seed: int, threads: int) -> dict:
    """Run one (case, seed); returns a result dict with a status."""
    result: dict = {"case": case.name, "seed": seed, "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="ppo_solve-") as runs:
        if case.kind == "ppo":
            torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={case.ranks}"]
            command = [
                sys.executable, "-W", "ignore", *(torchrun if case.ranks else []), "-m", "ppo.train",
                *(["--distributed"] if case.ranks else []), *case.args,
                "--seed", str(seed), "--runs-dir", runs, "--run-name", "run", "--torch-threads", str(threads),
                "--no-progress", "--no-tensorboard", "--eval-episodes", "0",
            ]  # fmt: skip
        else:
            command = [
                sys.executable,
                "-W",
                "ignore",
                "-m",
                "benchmarks.ppo_solve",
                "--child-sb3",
                str(seed),
                "--threads",
                str(threads),
            ]
        run = run_child(command, case.timeout, env=child_environ(ROOT), cwd=ROOT)
        result["process_s"] = run.seconds
        result["load_after"] = os.getloadavg()[0]
        if run.timed_out:
            return {**result, "status": "timeout", "reason": f"no result within {case.timeout:.0f} s"}
        if run.returncode != 0:
            return {**result, "status": "crashed", "reason": f"exit code {run.returncode}: {run.stderr_tail()}"}
        if case.kind == "ppo":
            summary = json.loads((Path(runs) / "run" / "summary.json").read_text())
            if summary["mean_return_100"] is None:  # (no episode finished: null in summary.json, nan here)
                summary["mean_return_100"] = math.nan
        else:
            line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
            summary = json.loads(line[len("RESULT ") :])
    result.update(
        status="ok",
        solved=summary["solved"],
        solve_step=summary["solve_step"],
        solve_wall_s=summary["solve_wall_s"],
        global_step=summary["global_step"],
        train_wall_s=summary["train_wall_s"],
        sps=summary["global_step"] / max(summary["train_wall_s"], 1e-9),
        mean_return_100=summary["mean_return_100"],
    )
    return result


def sb3_child(seed: int, threads: int) -> None:
    """SB3's PPO with rl-zoo's CartPole hyperparameters until solved; prints one RESULT line."""
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    if threads > 0:
        torch.set_num_threads(threads)
    zoo = ZOO_CARTPOLE

    def linear(initial: float):
        return lambda progress_remaining: progress_remaining * initial  # rl-zoo's "lin_<value>"

    class StopWhenSolved(BaseCallback):
        """Stop when the mean return of the last 100 episodes (SB3's ep_info_buffer) reaches 475."""

        solved_step: int | None = None

        def _on_step(self) -> bool:
            buffer = self.model.ep_info_buffer
            if len(buffer) >= 100 and np.mean([info["r"] for info in buffer]) >= SOLVE_RETURN:
                self.solved_step = self.num_timesteps
                return False
            return True

    venv = make_vec_env("CartPole-v1", n_envs=zoo["n_envs"], seed=seed, vec_env_cls=DummyVecEnv)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=zoo["n_steps"],
        batch_size=zoo["batch_size"],
        gae_lambda=zoo["gae_lambda"],
        gamma=zoo["gamma"],
        n_epochs=zoo["n_epochs"],
        ent_coef=zoo["ent_coef"],
        learning_rate=linear(zoo["learning_rate"]),
        clip_range=linear(zoo["clip_range"]),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    callback = StopWhenSolved()
    start = time.perf_counter()
    model.learn(total_timesteps=zoo["n_timesteps"], callback=callback)
    wall = time.perf_counter() - start
    buffer = model.ep_info_buffer
    summary = {
        "solved": callback.solved_step is not None,
        "solve_step": callback.solved_step,
        "solve_wall_s": wall if callback.solved_step is not None else None,
        "global_step": model.num_timesteps,
        "train_wall_s": wall,
        "mean_return_100": float(np.mean([info["r"] for info in buffer])) if buffer else float("nan"),
    }
    venv.close()
    print("RESULT " + json.dumps(summary), flush=True)


# -- reporting --------------------------------------------------------------------------------------
def _strict(result: dict) -> dict:
    """A result for the JSON file: a return never measured (nan) as null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in result.items()}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(case: Case, runs: list[dict]) -> dict:
    ok = [r for r in runs if r["status"] == "ok"]
    solved = [r for r in ok if r["solved"]]
    return {
        "case": case.name,
        "description": case.description,
        "runs": len(runs),
        "solved": len(solved),
        "failed": [
            f"seed {r['seed']}: {r['status']} {r.get('reason', '')}".strip() for r in runs if r["status"] != "ok"
        ],
        "solve_wall_s": _median([r["solve_wall_s"] for r in solved]),
        "solve_wall_all": [round(r["solve_wall_s"], 2) for r in solved],
        "solve_step": _median([r["solve_step"] for r in solved]),
        "process_s": _median([r["process_s"] for r in solved] if case.solves else [r["process_s"] for r in ok]),
        # (a run that finished no episode: nan, left out of the median and null in the results file)
        "final_return": _median([r["mean_return_100"] for r in ok if not math.isnan(r["mean_return_100"])]),
        "final_return_all": [None if math.isnan(r["mean_return_100"]) else round(r["mean_return_100"], 1) for r in ok],
    }


def markdown(summaries: list[dict], facts: dict, seeds: list[int]) -> str:
    lines = [
        f"PPO time to solve CartPole-v1 (mean return of the last 100 episodes >= {SOLVE_RETURN:g}); "
        f"medians over seeds {seeds}.",
        f"Machine: {facts['cpu']}, {facts['cores']} cores; python {facts['python']}, torch {facts['torch']}, "
        f"torch threads {facts['torch_threads']}.",
        "",
        "| case | solved | solve wall s (median) | per seed | env steps (median) | process s (median) "
        "| speed-up vs SB3 PPO |",
        "|---|---|---|---|---|---|---|",
    ]
    by_name = {s["case"]: s for s in summaries}
    base = by_name.get(BASELINE, {}).get("solve_wall_s")
    for s in summaries:
        case = CASES[s["case"]]
        if not case.solves:
            continue
        wall = s["solve_wall_s"]
        speedup = f"{base / wall:.1f}x" if base and wall else "-"
        lines.append(
            f"| {case.description} | {s['solved']}/{s['runs']} | {_fmt(wall, 2)} | {s['solve_wall_all']} | "
            f"{_fmt(s['solve_step'], 0)} | {_fmt(s['process_s'], 1)} | {speedup} |"
        )
    one, eight = by_name.get("ppo-fastvec-x1", {}), by_name.get("ppo-fastvec-x8", {})
    if one.get("solve_wall_s") and eight.get("solve_wall_s"):
        lines += [
            "",
            f"8 envs vs 1 env (fastvec): {one['solve_wall_s'] / eight['solve_wall_s']:.1f}x less wall time to solve "
            f"(the tutorial claims ~7x).",
        ]
    pendulum = by_name.get("ppo-pendulum-x8")
    if pendulum:
        lines += [
            "",
            f"Pendulum-v1 ({CASES['ppo-pendulum-x8'].description}): mean return of the last 100 episodes after 300k "
            f"steps: median {_fmt(pendulum['final_return'], 1)}, per seed {pendulum['final_return_all']} "
            f"(random policy about -1200; process {_fmt(pendulum['process_s'], 0)} s).",
        ]
    failures = [f"- {s['case']}: {f}" for s in summaries for f in s["failed"]]
    if failures:
        lines += ["", "Runs without a result:", *failures]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def machine_facts(threads: int) -> dict:
    """fastvec.measure's facts with torch's version and the learners' thread count."""
    return {**base_machine_facts(("torch",)), "torch_threads": threads}


def plot(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in summaries if CASES[s["case"]].solves and s["solve_wall_all"]]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.2), dpi=100)
    for i, s in enumerate(rows):
        ax.barh(i, s["solve_wall_s"], color="C1" if s["case"] == BASELINE else "C0", alpha=0.7)
        ax.scatter(s["solve_wall_all"], [i] * len(s["solve_wall_all"]), color="k", s=10, zorder=3)
    ax.set_yticks(range(len(rows)), [s["case"] for s in rows])
    ax.invert_yaxis()
    ax.set_xlabel("wall seconds to solve CartPole-v1 (bar: median, dots: seeds)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- the distributed study ----------------------------------------------------------------------------------
def _describe_result(result: dict, case: Case) -> str:
    if result["status"] != "ok":
        return f"{result['status']}: {result.get('reason', '')}"
    if not case.solves:
        return f"mean return {result['mean_return_100']:.1f} after {result['global_step']:,} steps"
    if result["solved"]:
        return (
            f"solved at {result['solve_step']:,} steps in {result['solve_wall_s']:.2f} s, {result['sps']:,.0f} steps/s"
        )
    return f"not solved ({result['global_step']:,} steps, mean return {result['mean_return_100']:.1f})"


def distributed_markdown(
    cases: list[Case], results: list[dict], facts: dict, seeds: list[int], title: str | None = None
) -> str:
    """One row per round (seed): each configuration's time to solve and steps/s, and their ratios to the first."""
    first, names = cases[0], [c.name for c in cases]
    if title is None:
        layouts = ", ".join(f"{c.name} ({c.ranks} rank(s) x {c.args[1]} envs)" for c in cases)
        title = f"PPO on CartPole-v1 with `ppo.train --distributed` under torchrun on one machine: {layouts}"
    lines = [
        f"{title}; seeds {seeds}, configurations interleaved.",
        f"Machine: {facts['cpu']}, {facts['cores']} cores; python {facts['python']}, torch {facts['torch']}, "
        f"torch threads {facts['torch_threads']}.",
        "solve s: wall time from the first env step to the step that solved (mean return of the last 100 episodes "
        f">= {SOLVE_RETURN:g}); steps/s: env steps of all ranks per second of training; ratio: this configuration "
        f"over {first.name} in the same round (solve s: < 1 is faster; steps/s: > 1 is faster); load: the 1-minute "
        "load average before the round's runs.",
        "",
        "| round | seed | load | "
        + " | ".join(f"{n} solve s | {n} steps | {n} steps/s" for n in names)
        + "".join(f" | {n} solve s ratio | {n} steps/s ratio" for n in names[1:])
        + " |",
        "|" + "---|" * (3 + 3 * len(names) + 2 * (len(names) - 1)),
    ]
    ratios: dict[str, dict[str, list[float]]] = {n: {"solve": [], "sps": []} for n in names[1:]}
    for round_index, seed in enumerate(seeds):
        by_case = {r["case"]: r for r in results if r["round"] == round_index}
        cells = [str(round_index + 1), str(seed), f"{min(r['load_before'] for r in by_case.values()):.1f}"]
        for name in names:
            r = by_case.get(name, {})
            solved = r.get("status") == "ok" and r.get("solved")
            cells += [
                _fmt(r["solve_wall_s"], 2) if solved else "-",
                _fmt(r["solve_step"], 0) if solved else "-",
                _fmt(r.get("sps"), 0),
            ]
        base = by_case.get(first.name, {})
        for name in names[1:]:
            r = by_case.get(name, {})
            solve_ratio = sps_ratio = None
            if base.get("solved") and r.get("solved"):
                solve_ratio = r["solve_wall_s"] / base["solve_wall_s"]
                ratios[name]["solve"].append(solve_ratio)
            if base.get("sps") and r.get("sps"):
                sps_ratio = r["sps"] / base["sps"]
                ratios[name]["sps"].append(sps_ratio)
            cells += [_fmt(solve_ratio, 2), _fmt(sps_ratio, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["median", "", ""]
    for name in names:
        ok = [r for r in results if r["case"] == name and r["status"] == "ok"]
        solved = [r for r in ok if r["solved"]]
        cells += [
            _fmt(_median([r["solve_wall_s"] for r in solved]), 2) + f" ({len(solved)}/{len(seeds)} solved)",
            _fmt(_median([r["solve_step"] for r in solved]), 0),
            _fmt(_median([r["sps"] for r in ok]), 0),
        ]
    for name in names[1:]:
        cells += [_fmt(_median(ratios[name]["solve"]), 2), _fmt(_median(ratios[name]["sps"]), 2)]
    lines.append("| " + " | ".join(cells) + " |")
    failures = [f"- {r['case']} seed {r['seed']}: {r['status']} {r.get('reason', '')}" for r in results]
    failures = [f for r, f in zip(results, failures) if r["status"] != "ok"]
    if failures:
        lines += ["", "Runs without a result:", *failures]
    return "\n".join(lines)


def async_cases(num_envs: int, env_id: str) -> list[Case]:
    """ppo.train on ``num_envs`` envs of ``env_id`` with synchronous and with double-buffered sampling."""
    common = ("--num-envs", str(num_envs), "--env-id", env_id)
    return [
        Case("sync", f"ppo.train, fastvec, {num_envs} x {env_id}, synchronous steps", "ppo", common, timeout=900.0),
        Case(
            "async-envs",
            f"ppo.train --async-envs, fastvec, {num_envs} x {env_id}: one half steps while the policy acts for the other",
            "ppo",
            (*common, "--async-envs"),
            timeout=900.0,
        ),
    ]


def distributed_study(args: argparse.Namespace) -> None:
    """--distributed or --async-envs: configurations interleaved seed by seed (round by round)."""
    if args.async_envs:
        cases = async_cases(args.total_envs, args.env_id)
        title = f"PPO on {args.env_id}, {args.total_envs} envs, with and without `ppo.train --async-envs`"
        kind = "async_envs"
    else:
        cases = distributed_cases(args.total_envs, args.ranks)
        title, kind = None, "distributed"
    seeds = list(dict.fromkeys(args.seeds or [1, 2, 3]))
    # round r runs every configuration once; odd rounds in reverse order, so a steady drift of the
    # host's speed favours neither configuration
    plan = [
        (round_index, case, seed)
        for round_index, seed in enumerate(seeds)
        for case in (cases if round_index % 2 == 0 else cases[::-1])
    ]
    print(f"{len(plan)} runs: {', '.join(c.name for c in cases)} x seeds {seeds}, interleaved", flush=True)
    if args.dry_run:
        for round_index, case, seed in plan:
            print(
                f"  round {round_index + 1}: {case.name} seed {seed} (timeout {case.timeout:.0f} s): {case.description}"
            )
        return
    facts = machine_facts(args.threads)
    results = []
    for i, (round_index, case, seed) in enumerate(plan, 1):
        result = {"round": round_index, **run_case(case, seed, args.threads)}
        results.append(result)
        print(
            f"[{i}/{len(plan)}] round {round_index + 1} {case.name} seed {seed}: {_describe_result(result, case)} "
            f"(process {result['process_s']:.1f} s, load {result['load_before']:.1f})",
            flush=True,
        )
    table = distributed_markdown(cases, results, facts, seeds, title)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"ppo_solve_{kind}-{facts['host']}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out_json = args.out / f"{stem}.json"
    out_json.write_text(json.dumps({"machine": facts, "seeds": seeds, "runs": results}, indent=2))
    (args.out / f"{stem}.md").write_text(table + "\n")
    print(f"\nresults: {out_json} (+ .md)")


# -- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ppo_solve", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 seed of ppo-fastvec-x8, ppo-serial-x8 and sb3-ppo-zoo")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="cases to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 1 2 3; --quick: 1)")
    parser.add_argument("--threads", type=_cli.count, default=1, help="torch threads of every learner (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON/markdown/PNG results")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument(
        "--distributed", action="store_true", help="torchrun study: 1 rank against 2 ranks, the same envs in total"
    )
    parser.add_argument(
        "--async-envs",
        action="store_true",
        help="double-buffering study: ppo.train with and without --async-envs, on --env-id",
    )
    parser.add_argument(
        "--env-id",
        default="benchmarks.workloads:fastvec-bench/CartPole1ms-v1",
        help="--async-envs: the env (default: CartPole-v1 with 1 ms of CPU per step)",
    )
    parser.add_argument(
        "--total-envs", type=_cli.count, default=8, help="--distributed: envs over all ranks; --async-envs: envs (default 8)"
    )
    parser.add_argument(
        "--ranks", nargs="+", type=_cli.count, default=[1, 2], help="--distributed: rank counts to compare (default 1 2)"
    )
    parser.add_argument("--child-sb3", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out is not None:  # (checked before measuring: found after, it lost the results in a traceback)
        out_error = _cli.out_error(args.out, folder=True)
        if out_error:
            parser.error(out_error)

    if args.child_sb3 is not None:
        sb3_child(args.child_sb3, args.threads)
        return
    args.ranks = list(dict.fromkeys(args.ranks))
    if args.distributed:
        try:  # (an uneven split ended in a traceback)
            distributed_cases(args.total_envs, args.ranks)
        except ValueError as exc:
            parser.error(f"--total-envs {args.total_envs}, --ranks {' '.join(map(str, args.ranks))}: {exc}")
    if args.distributed or args.async_envs:
        distributed_study(args)
        return

    seeds = list(dict.fromkeys(args.seeds or ([1] if args.quick else [1, 2, 3])))  # (one given twice ran twice)
    names = list(dict.fromkeys(args.cases or [])) or ([n for n, c in CASES.items() if "quick" in c.tags] if args.quick else list(CASES))
    cases = [CASES[n] for n in names]
    plan = [(case, seed) for case in cases for seed in seeds]
    print(f"{len(plan)} runs: {', '.join(c.name for c in cases)} x seeds {seeds}", flush=True)
    if args.dry_run:
        for case, seed in plan:
            print(f"  {case.name} seed {seed} (timeout {case.timeout:.0f} s): {case.description}")
        return

    facts = machine_facts(args.threads)
    results: list[dict] = []
    for i, (case, seed) in enumerate(plan, 1):
        result = run_case(case, seed, args.threads)
        results.append(result)
        if result["status"] != "ok":
            what = f"{result['status']}: {result.get('reason', '')}"
        elif case.solves:
            what = (
                f"solved at {result['solve_step']:,} steps in {result['solve_wall_s']:.2f} s"
                if result["solved"]
                else f"not solved ({result['global_step']:,} steps, mean return {result['mean_return_100']:.1f})"
            )
        else:
            what = f"mean return {result['mean_return_100']:.1f} after {result['global_step']:,} steps"
        print(f"[{i}/{len(plan)}] {case.name} seed {seed}: {what} (process {result['process_s']:.1f} s)", flush=True)

    summaries = [summarize(case, [r for r in results if r["case"] == case.name]) for case in cases]
    table = markdown(summaries, facts, seeds)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"ppo_solve-{facts['host']}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out_json = args.out / f"{stem}.json"
    out_json.write_text(
        json.dumps({"machine": facts, "seeds": seeds, "summaries": summaries, "runs": [_strict(r) for r in results]}, indent=2)
    )
    (args.out / f"{stem}.md").write_text(table + "\n")
    plot(summaries, args.out / f"{stem}.png")
    print(f"\nresults: {out_json} (+ .md, .png)")


if __name__ == "__main__":
    main()
