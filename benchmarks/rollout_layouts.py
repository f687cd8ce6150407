"""The trainer's rollouts, synchronous and double-buffered, in alternating phases (issue 12).

    python -m benchmarks.rollout_layouts [--env-id ID] [--rounds 6] [--rollouts 12] [--layouts sync async pinned]

Builds one ``ppo.train`` Trainer per layout in this process and times ``collect_rollout()``
alone (no update: the part double buffering can change), in phases of ``--rollouts``
rollouts, alternating the layouts' order from round to round so that the host's drift falls
on all of them alike:

- sync: the default synchronous sampler (the learner's process steps one shard itself);
- async: ``--async-envs``, the pool's default groups (a worker per half on 2 cores, one per core
  where there are more) placed by the pool's default (``pin="auto"``);
- pinned: ``--async-envs`` with the workers pinned to every allowed core but the first, so the
  learner (the policy) has a core of its own: the alternating sampler's layout.

Each trainer's pool stays up during the others' phases; idle workers sleep on their futex.
Prints microseconds per step of all envs, per round and as medians, and each layout's
per-round speed ratio to sync with its median; ``--out`` writes them as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _cli

LAYOUTS = ("sync", "async", "pinned")


def _trainer(layout: str, env_id: str, num_envs: int, folder: str, device: str = "auto"):
    from ppo.config import Config
    from ppo.train import Trainer

    common = dict(
        env_id=env_id, num_envs=num_envs, progress=False, stop_when_solved=False, seed=1, runs_dir=folder, device=device
    )
    if layout == "sync":
        return Trainer(Config(**common))
    if layout == "async":
        return Trainer(Config(**common, async_envs=True))
    if layout == "pinned":
        cores = sorted(os.sched_getaffinity(0))
        settings = Path(folder) / "pinned.json"
        settings.write_text(json.dumps({"pin": cores[1:] or cores}))
        return Trainer(Config(**common, async_envs=True, fastvec_config=str(settings)))
    raise ValueError(f"unknown layout {layout!r}; expected some of {LAYOUTS}")


def _phase(trainer, rollouts: int) -> float:
    """Microseconds per step of all envs over ``rollouts`` rollouts."""
    began = time.perf_counter()
    for _ in range(rollouts):
        trainer.collect_rollout()
    return (time.perf_counter() - began) / (rollouts * trainer.config.num_steps) * 1e6


def _policy_calls(trainer, num_envs: int, calls: int = 2000) -> dict[int, float]:
    """Median microseconds of one ``Agent.sample`` call for half and for all the envs' observations:
    what a rollout step costs the learner besides the envs (twice the half's with --async-envs)."""
    import torch

    out = {}
    # on CUDA the call returns before the kernels ran; the rollout waits for its actions, so does this
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for n in (num_envs // 2, num_envs):
        obs = trainer.storage.obs_at(0)[:n].clone()
        samples = []
        with torch.no_grad():
            for _ in range(calls):
                began = time.perf_counter_ns()
                trainer.agent.sample(obs)
                sync()
                samples.append(time.perf_counter_ns() - began)
        out[n] = statistics.median(samples) / 1e3
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rollout_layouts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-id", default="benchmarks.workloads:fastvec-bench/CartPole25us-v1")
    parser.add_argument("--num-envs", type=_cli.count, default=8)
    parser.add_argument("--rounds", type=_cli.count, default=6)
    parser.add_argument("--rollouts", type=_cli.count, default=12, help="rollouts per phase")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="the trainers' device")
    parser.add_argument("--out", type=_cli.file_path, help="write the results as markdown here")
    args = parser.parse_args(argv)
    args.layouts = list(dict.fromkeys(args.layouts))  # (a name given twice was measured twice)
    if args.out is not None:  # (checked before measuring: found after, it lost the results in a traceback)
        out_error = _cli.out_error(args.out, folder=False)
        if out_error:
            parser.error(out_error)
    if "sync" not in args.layouts:
        parser.error("--layouts must include sync (the ratios are to it)")
    if any(layout != "sync" for layout in args.layouts) and args.num_envs % 2:
        parser.error(f"--num-envs {args.num_envs}: the asynchronous layouts step the envs in two halves (an even count)")
    env_error = _cli.env_error(args.env_id)  # (an unknown id ended in a 70-line traceback)
    if env_error:
        parser.error(f"--env-id {env_error}")
    from fastvec.measure import machine_facts

    times: dict[str, list[float]] = {layout: [] for layout in args.layouts}
    with tempfile.TemporaryDirectory() as folder:
        trainers = {}
        try:
            for layout in args.layouts:
                trainers[layout] = _trainer(layout, args.env_id, args.num_envs, folder, args.device)
            for layout in args.layouts:  # warm-up: torch's first calls, the workers' first polls
                _phase(trainers[layout], 2)
            for r in range(args.rounds):
                order = args.layouts if r % 2 == 0 else args.layouts[::-1]
                for layout in order:
                    times[layout].append(_phase(trainers[layout], args.rollouts))
            policy = _policy_calls(trainers["sync"], args.num_envs)
            trainers_device = trainers["sync"].device
        finally:
            for trainer in trainers.values():
                trainer.close()
    facts = machine_facts(["torch"])
    lines = [
        f"# Rollouts by layout: {args.num_envs} x {args.env_id}",
        "",
        f"`python -m benchmarks.rollout_layouts {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"{facts['cpu']}, {facts['cores']} cores, fastvec {facts['fastvec']} ({facts['kernels']} kernels), "
        f"torch {facts.get('torch')}, policy on {trainers_device}; {args.rounds} rounds of {args.rollouts} rollouts per layout.",
        "",
        "The policy's per-step call (`Agent.sample`), median of 2,000: "
        + ", ".join(f"{us:.0f} us for {n} observations" for n, us in policy.items())
        + ".",
        "",
        "| layout | us per step of all envs, per round | median | speed / sync per round | median |",
        "|---|---|---:|---|---:|",
    ]
    summary = {}
    for layout, values in times.items():
        ratios = [s / v for s, v in zip(times["sync"], values)]
        summary[layout] = {"us": values, "median_us": statistics.median(values), "ratios": ratios,
                           "median_ratio": statistics.median(ratios)}  # fmt: skip
        lines.append(
            f"| {layout} | {', '.join(f'{v:.0f}' for v in values)} | {statistics.median(values):.0f} | "
            f"{', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    summary["policy_us"] = policy
    return summary


if __name__ == "__main__":
    main()
