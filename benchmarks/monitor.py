"""The monitor's worth: throughput with and without it, in interleaved rounds (issue 11).

    python -m benchmarks.monitor [--rounds 5] [--warmup 6] [--seconds 4]

Scenarios (each measurement in a fresh child process; monitor off and on alternate):

- hetero: 16 CPU-bound envs, the last quarter 4x slower (0.4 ms against 0.1 ms a step),
  all on the worker at the start (the learner's shard steps envs 0-7, the worker 8-15);
- hog: 8 CartPole-v1 envs, and a busy process pinned to the worker's core;
- cartpole: 8 CartPole-v1 envs and nothing else (what watching costs);
- cost: the same 8 CartPole-v1 envs in one pool in one child process, the monitor started
  and stopped in alternating phases (off, on, on, off, ...) of ``--phase-seconds``: what
  watching costs, measured seconds apart rather than minutes (this host's drift between
  two child processes is larger than the cost);
- cost-parts (only when named): the same, in rounds of four phases (off, per-env timing only,
  the monitor's thread started but never sampling, the monitor), each against off.

Each run steps for ``--warmup`` seconds (the monitor has time to act), then measures
``--seconds``. Results (table, JSON, and a plot of each shard's busy share before and after
the monitor acted) go to benchmarks/results/<machine>-<date>/monitor.*.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np

from benchmarks import _cli
from benchmarks.workloads import BusyEnv
from fastvec.measure import (
    child_environ,
    child_main,
    child_result,
    machine_facts,
    python_argv,
    repository_root,
    run_child,
    time_steps,
)
from fastvec.stats import describe_envs

ROOT = repository_root()
SCENARIOS = ("hetero", "hog", "cartpole", "cost", "cost-parts")


def _factories(scenario: str) -> list:
    if scenario == "hetero":
        return [partial(BusyEnv, 4e-4 if i >= 12 else 1e-4, 100) for i in range(16)]
    return [partial(gym.make, "CartPole-v1") for _ in range(8)]


COST_STATES = {
    "cost": ("off", "on"),
    # what watching costs, in parts: per-env timing alone; the monitor's thread started but never
    # sampling (timing on too, as the monitor sets it); the monitor itself
    "cost-parts": ("off", "timing", "thread", "on"),
}


def _measure_cost(spec: dict) -> dict:
    """In the child: one pool of 8 CartPole-v1 envs, the monitor off and on (or each state of
    COST_STATES[scenario]) in phases, in rounds of each state once, in turn forwards and backwards
    (off, on, on, off, ...: each state goes first as often)."""
    from fastvec import SubprocVecEnv
    from fastvec.monitor import Monitor

    states = COST_STATES[spec["scenario"]]
    with SubprocVecEnv(_factories("cartpole"), start_method="fork") as venv:
        venv.reset()
        actions = np.zeros(venv.num_envs, np.int64)

        def phase(seconds: float) -> float:  # env steps per second over ``seconds`` (after a short warm-up)
            return time_steps(venv.step, [actions], venv.num_envs, seconds, 1)["rate"]

        phase(spec["warmup"])
        rates: dict[str, list[float]] = {state: [] for state in states}
        events: list[str] = []
        for r in range(spec["phases"]):
            for state in states if r % 2 == 0 else states[::-1]:
                monitor = None
                if state in ("on", "thread"):  # "thread": an interval no phase reaches
                    monitor = Monitor(venv.pool, interval=spec["interval"] if state == "on" else 1e6)
                    monitor.start()
                venv.pool.timing = state != "off"
                rates[state].append(phase(spec["phase_seconds"]))
                if monitor is not None:
                    monitor.stop()
                    events += [f"round {r + 1} {e.time:.1f}s {e.kind}: {e.detail}" for e in monitor.events]
                venv.pool.timing = False
        return {"status": "ok", "rate": statistics.median(rates["off"]), "rates": rates, "events": events}


def _measure(spec: dict) -> dict:
    """In the child: one run of one scenario, monitor on or off."""
    import subprocess

    from fastvec import SubprocVecEnv

    if spec["scenario"] in COST_STATES:
        return _measure_cost(spec)

    fns = _factories(spec["scenario"])
    venv = SubprocVecEnv(fns, start_method="fork", monitor=spec["monitor"], monitor_interval=0.5)
    hog = None
    try:
        if spec["scenario"] == "hog":
            core = venv.pool.cores[1][0]
            hog = subprocess.Popen(
                [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"]
            )
        venv.reset()
        n = venv.num_envs
        actions = np.zeros(n, np.int64)
        venv.stats()
        end = time.perf_counter() + spec["warmup"]
        while time.perf_counter() < end:
            for _ in range(16):
                venv.step(actions)
        before = spec.get("before")
        steps, began = 0, time.perf_counter()
        end = began + spec["seconds"]
        venv.stats()
        while time.perf_counter() < end:
            for _ in range(16):
                venv.step(actions)
            steps += 16
        rate = steps * n / (time.perf_counter() - began)
        after = venv.stats()
        events = [f"{e.time:.1f}s {e.kind}: {e.detail}" for e in venv.monitor_events]
        return {
            "status": "ok",
            "rate": rate,
            "busy": [s.busy for s in after.shards],
            "envs": [describe_envs(s.envs) for s in after.shards],
            "events": events,
            "before": before,
        }
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        venv.close()


def _busy_at_start(scenario: str) -> list[float]:
    """Each shard's busy share over the first second, no monitor (for the plot's 'before')."""
    from fastvec import SubprocVecEnv

    with SubprocVecEnv(_factories(scenario), start_method="fork") as venv:
        venv.reset()
        actions = np.zeros(venv.num_envs, np.int64)
        venv.stats()
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            venv.step(actions)
        return [s.busy for s in venv.stats().shards]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(_measure, argv[1])
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.monitor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=_cli.count, default=5)
    parser.add_argument("--warmup", type=_cli.seconds0, default=6.0)
    parser.add_argument("--seconds", type=_cli.seconds, default=4.0)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, default=None)
    parser.add_argument("--phases", type=_cli.count, default=20, help="cost: rounds of phases (one per state: off, on, ...)")
    parser.add_argument("--phase-seconds", type=_cli.seconds, default=1.5, help="cost: length of one phase")
    parser.add_argument("--out", type=_cli.file_path, default=None)
    args = parser.parse_args(argv)
    if args.out is not None:  # (checked before measuring: found after, it lost the results in a traceback)
        out_error = _cli.stem_error(args.out, (".md", ".json", ".png"))
        if out_error:
            parser.error(out_error)
    scenarios = args.scenario or [s for s in SCENARIOS if s != "cost-parts"]
    facts = machine_facts()
    out = args.out or ROOT / "benchmarks" / "results" / f"{facts['cores']}core-{time.strftime('%Y-%m-%d')}" / "monitor"
    command = "python -m benchmarks.monitor " + " ".join(argv)
    records = []
    for scenario in scenarios:
        if scenario in COST_STATES:
            records += _cost_records(scenario, args)
            continue
        rates: dict[bool, list[float | None]] = {False: [], True: []}
        last: dict[bool, dict] = {}
        for r in range(args.rounds):
            for monitor in (False, True) if r % 2 == 0 else (True, False):
                spec = {"scenario": scenario, "monitor": monitor, "warmup": args.warmup, "seconds": args.seconds}
                run = run_child(
                    python_argv("benchmarks.monitor", "--child", json.dumps(spec)),
                    args.warmup + args.seconds + 60,
                    env=child_environ(ROOT),
                    cwd=ROOT,
                )
                result = child_result(run)
                rates[monitor].append(result.get("rate") if result.get("status") == "ok" else None)
                if result.get("status") == "ok":
                    last[monitor] = result
                print(
                    f"  {scenario} round {r + 1} monitor={'on' if monitor else 'off'}: "
                    + (
                        f"{result['rate']:,.0f} steps/s, busy {[round(b, 2) for b in result['busy']]}, "
                        f"envs {result['envs']}, {len(result['events'])} events"
                        if result.get("status") == "ok"
                        else f"{result.get('status')} {result.get('reason', '')}"
                    ),
                    flush=True,
                )
        ratios = [a / b for a, b in zip(rates[True], rates[False]) if a and b]
        records.append(
            {
                "scenario": scenario,
                "off": [x for x in rates[False] if x],
                "on": [x for x in rates[True] if x],
                "ratios": ratios,
                "median_ratio": statistics.median(ratios) if ratios else None,
                "busy_off": last.get(False, {}).get("busy"),
                "busy_on": last.get(True, {}).get("busy"),
                "envs_on": last.get(True, {}).get("envs"),
                "events": last.get(True, {}).get("events", [])[:8],
            }
        )
    text = markdown(records, command, facts)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    _cli.stem_file(out, ".md").write_text(text)
    _cli.stem_file(out, ".json").write_text(
        json.dumps({"command": command, "machine": facts, "records": records}, indent=2)
    )
    plot(records, _cli.stem_file(out, ".png"))


def _cost_records(scenario: str, args: argparse.Namespace) -> list[dict]:
    """A cost scenario: one child, the states in alternating phases; per state, the ratios to the
    monitor-off phase of the same round."""
    spec = {
        "scenario": scenario,
        "warmup": min(args.warmup, 3.0),
        "phases": args.phases,
        "phase_seconds": args.phase_seconds,
        "interval": 0.5,
    }
    states = COST_STATES[scenario]
    run = run_child(
        python_argv("benchmarks.monitor", "--child", json.dumps(spec)),
        spec["warmup"] + len(states) * args.phases * (args.phase_seconds + 1.0) + 60,
        env=child_environ(ROOT),
        cwd=ROOT,
    )
    result = child_result(run)
    label = f"{args.phases} x {args.phase_seconds:g} s phases, one process"
    if result.get("status") != "ok":
        print(f"  {scenario}: {result.get('status')} {result.get('reason', '')}", flush=True)
        return [_empty_record(f"{scenario} ({label})")]
    records = []
    off = result["rates"]["off"]
    for state in states[1:]:
        on = result["rates"][state]
        ratios = [b / a for a, b in zip(off, on)]  # phases of one round
        name = f"cost ({label})" if scenario == "cost" else f"cost, {COST_PARTS[state]} ({label})"
        print(f"  {name}: on/off median {statistics.median(ratios):.3f}, {len(result['events'])} monitor events", flush=True)
        records.append(
            _empty_record(name)
            | {"off": off, "on": on, "ratios": ratios, "median_ratio": statistics.median(ratios)}
            | ({"events": result["events"][:8]} if state == "on" else {})
        )
    return records


COST_PARTS = {"timing": "per-env timing only", "thread": "the thread, never sampling", "on": "the monitor"}


def _empty_record(scenario: str) -> dict:
    return {
        "scenario": scenario,
        "off": [],
        "on": [],
        "ratios": [],
        "median_ratio": None,
        "busy_off": None,
        "busy_on": None,
        "envs_on": None,
        "events": [],
    }


def markdown(records: list[dict], command: str, facts: dict) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {facts.get('cpu')}, {facts.get('cores')} cores, Python {facts.get('python')}  ",
        "",
        "| scenario | monitor off, steps/s (median) | monitor on (median) | on / off: median (per round) | shards' busy share off -> on | envs per shard with the monitor |",
        "|---|---:|---:|---|---|---|",
    ]
    for r in records:
        off = statistics.median(r["off"]) if r["off"] else None
        on = statistics.median(r["on"]) if r["on"] else None
        shown = r["ratios"] if len(r["ratios"]) <= 8 else sorted(r["ratios"])
        per_round = ", ".join(f"{x:.2f}" for x in shown)
        if len(r["ratios"]) > 8:
            per_round = f"{len(shown)} pairs, from {shown[0]:.2f} to {shown[-1]:.2f}, quartiles " + ", ".join(
                f"{q:.3f}" for q in statistics.quantiles(shown, n=4)
            )
        busy = f"{_pct(r['busy_off'])} -> {_pct(r['busy_on'])}"
        envs = " / ".join(r["envs_on"] or [])
        lines.append(
            f"| {r['scenario']} | {off or 0:,.0f} | {on or 0:,.0f} | "
            + (f"**{r['median_ratio']:.2f}x** ({per_round})" if r["median_ratio"] else "-")
            + f" | {busy} | {envs} |"
        )
    lines.append("")
    for r in records:
        if r["events"]:
            lines.append(f"{r['scenario']}, the monitor's first events: " + "; ".join(r["events"]))
    return "\n".join(lines) + "\n"


def _pct(values: list[float] | None) -> str:
    return " / ".join(f"{v:.0%}" for v in values) if values else "-"


def plot(records: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    records = [r for r in records if r["busy_off"] or r["busy_on"]]  # the cost scenario has no shards' shares
    if not records:
        return
    fig, axes = plt.subplots(1, len(records), figsize=(4 * len(records), 3.2), squeeze=False)
    for ax, r in zip(axes[0], records):
        off, on = r["busy_off"] or [], r["busy_on"] or []
        x = np.arange(max(len(off), len(on)))
        ax.bar(x - 0.2, off, 0.4, label="monitor off")
        ax.bar(x + 0.2, on, 0.4, label="monitor on")
        ax.set_xticks(x, [f"shard {i}" + (" (learner)" if i == 0 else "") for i in x])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{r['scenario']}: {r['median_ratio']:.2f}x" if r["median_ratio"] else r["scenario"])
        ax.set_ylabel("busy share")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
