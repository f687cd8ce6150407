"""Throughput of vectorized-env engines, side by side, on this machine.

    python -m benchmarks.vec_env                 # the full study: every engine, every workload, 3 interleaved rounds (25-40 min on 2 cores)
    python -m benchmarks.vec_env --quick         # a first look in under a minute
    python -m benchmarks.vec_env --dry-run       # the plan and its estimated run time, nothing measured
    python -m benchmarks.vec_env --workloads CartPole-v1 image84 --num-envs 8 64 --engines fastvec sb3-subproc

Each measurement runs in its own child process (its own session, so nothing it
leaves behind outlives it) with a timeout; random actions (the same seeded batches
for every engine), a warm-up, then the median of ``repeats`` timed runs of
``seconds`` each. The CPU time other processes used during a measurement is
recorded, and a measurement disturbed by more than 2% is run again (up to twice).

Interleaved rounds (``--rounds``, default 3): a host's speed drifts by up to 2x within
an hour, so engines measured one after another can differ for no reason of their own.
Every grid point (workload, num_envs) measures all its engines once per round, in an
order that rotates from round to round, before the next point; an engine's figure is the
median of its rounds, and every ratio (the tables' (Nx), the goals) is the median of the
per-round ratios. Where a goal compares with the single-env rate, one env stepped in one
process is measured inside that point's rounds too.
Results go to benchmarks/results/<machine>-<date>/: raw.jsonl, results.csv,
README.md (tables, goals, machine facts) and one PNG plot per workload.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _cli
from benchmarks.engines import ENGINES, peer_status, unsupported
from fastvec.measure import child_environ, child_result, cores, python_argv, run_child
from fastvec.measure import machine_facts as base_machine_facts

MAX_OTHER_LOAD = 0.02
BASELINE = "sb3-subproc"
ROOT = Path(__file__).resolve().parent.parent

# engines that start one process per env: their start-up grows with num_envs, so fewer grid points
PROCESS_PER_ENV = {"sb3-subproc", "sb3-subproc-fork", "gym-async", "gym-async-shm"}


@dataclass(frozen=True)
class WorkloadPlan:
    """How the full study measures one workload (sized so the whole study stays under ~20 min on 2 cores)."""

    grid: tuple[int, ...]  # num_envs for the main engines
    sparse_grid: tuple[int, ...]  # num_envs for the one-process-per-env engines
    knob_grid: tuple[int, ...]  # num_envs for the fastvec (and PufferLib) knob variants
    seconds: float
    repeats: int


PLANS: dict[str, WorkloadPlan] = {
    "CartPole-v1": WorkloadPlan((1, 2, 4, 8, 16, 32, 64), (1, 8, 64), (8, 64), 0.5, 3),
    "Pendulum-v1": WorkloadPlan((1, 8, 64), (1, 8, 64), (), 0.5, 3),
    "Acrobot-v1": WorkloadPlan((1, 8, 64), (1, 8, 64), (), 0.5, 3),
    "image84": WorkloadPlan((1, 8, 64), (1, 8, 64), (8,), 0.5, 3),
    "cpu1ms": WorkloadPlan((1, 2, 8, 64), (1, 8, 64), (8,), 0.8, 3),
    "hetero": WorkloadPlan((1, 8, 64), (1, 8, 64), (8,), 0.7, 3),
}
QUICK_ENGINES = [
    "serial",
    "sb3-dummy",
    "sb3-subproc",
    "gym-async-shm",
    "puffer-serial",
    "puffer-mp",
    "envpool",
    "fastvec",
]


def main_engines() -> list[str]:
    return [name for name, engine in ENGINES.items() if not engine.knob]


def knob_engines() -> list[str]:
    names = [name for name, engine in ENGINES.items() if engine.knob]
    if 2 * cores() in (1, 4, 8):  # fastvec-2xcores would repeat fastvec-w1/-w4/-w8
        names.remove("fastvec-2xcores")
    return names


# -- machine facts ----------------------------------------------------------------------------------
def machine_facts() -> dict:
    """fastvec.measure's facts, the versions of every engine's package, and PufferLib's peer status."""
    facts = base_machine_facts(("numpy", "gymnasium", "stable_baselines3", "torch", "envpool"))
    # PufferLib lives in benchmarks/.peers and is imported by its measuring child only
    puffer = peer_status().get("pufferlib")
    if puffer is None:
        facts["pufferlib"] = "not installed (run `make peers`)"
    elif puffer["status"] == "installed":
        facts["pufferlib"] = f"{puffer['version']} (pure-Python vectorizers from the sdist)"
    else:
        facts["pufferlib"] = f"unavailable: {puffer['reason']}"
    return facts


def result_folder(machine: str | None, facts: dict) -> Path:
    """benchmarks/results/<machine>-<date>, <machine> defaulting to "<cores>core"; every study writes there."""
    return ROOT / "benchmarks" / "results" / f"{machine or str(facts['cores']) + 'core'}-{dt.date.today().isoformat()}"


# -- planning ---------------------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> list[dict]:
    """The measurements of this invocation, in order."""
    specs = []
    explicit_engines = args.engines is not None
    for workload in args.workloads:
        p = PLANS[workload]
        seconds = args.seconds if args.seconds is not None else p.seconds
        repeats = args.repeats if args.repeats is not None else p.repeats
        if explicit_engines:
            chosen = [(engine, args.num_envs or p.grid) for engine in args.engines]
        else:
            chosen = []
            for engine in main_engines():
                grid = p.sparse_grid if engine in PROCESS_PER_ENV else p.grid
                chosen.append((engine, args.num_envs or grid))
            if not args.num_envs:
                chosen += [(engine, p.knob_grid) for engine in knob_engines()]
        for engine, grid in chosen:
            for n in grid:
                specs.append(
                    {"engine": engine, "workload": workload, "num_envs": n, "seconds": seconds, "repeats": repeats}
                )
    return specs


def estimate_seconds(spec: dict) -> float:
    """A rough wall-clock cost of one measurement on an idle 2-core machine (for the plan, not a result)."""
    engine, n = spec["engine"], spec["num_envs"]
    if unsupported(engine, spec["workload"]):
        return 0.0
    family = ENGINES[engine].family
    start = {"sb3": 1.6, "fastvec": 1.8, "envpool": 1.0}.get(family, 0.5)  # child start and imports
    if engine in PROCESS_PER_ENV:
        start += 0.03 * n + (4.0 if engine == "sb3-subproc" else 0.0)
    timed = spec["seconds"] * spec["repeats"] + min(0.3, spec["seconds"] / 3)
    return start + timed + 0.3


# -- running ----------------------------------------------------------------------------------------
def _measure_once(spec: dict, timeout: float) -> dict:
    """One child process (benchmarks._measure) in its own session; whatever it leaves running is killed when it returns."""
    argv = python_argv("benchmarks._measure", json.dumps(spec))
    run = run_child(argv, timeout, env=child_environ(ROOT), cwd=ROOT)
    return {**spec, **child_result(run, timeout)}


def run_one(spec: dict, timeout: float, attempts: int = 3) -> dict:
    """Measure in a child process; a hang or crash becomes a result with its status; re-run if disturbed."""
    reason = unsupported(spec["engine"], spec["workload"])
    if reason:
        return {**spec, "status": "unavailable", "reason": reason, "attempts": 0}
    for attempt in range(attempts):
        result = _measure_once(spec, timeout)
        result["attempts"] = attempt + 1
        if result.get("status") != "ok" or result.get("other_load", 0.0) <= MAX_OTHER_LOAD:
            return result
    result["disturbed"] = True
    return result


def schedule(specs: list[dict], rounds: int) -> list[tuple[dict, int]]:
    """(spec, round) in the order they run: grid point by grid point (workload, num_envs), each point's
    engines once per round in a rotating order. A point with more than one env whose workload has a
    single-env serial measurement also measures that one, paired with it (``paired_with``): goals
    relative to the single-env rate then take per-round ratios too."""
    points: dict[tuple[str, int], list[dict]] = {}
    for spec in specs:
        points.setdefault((spec["workload"], spec["num_envs"]), []).append(spec)
    single = {s["workload"]: s for s in specs if s["engine"] == "serial" and s["num_envs"] == 1}
    order = []
    for (workload, n), members in points.items():
        if n > 1 and workload in single:
            members = [*members, {**single[workload], "paired_with": n}]
        for r in range(rounds):
            k = r % len(members)
            order += [(spec, r) for spec in members[k:] + members[:k]]
    return order


def merge_rounds(runs: list[dict]) -> dict:
    """One engine's rounds at one grid point as one result: the median rate of the rounds that ran,
    ``round_rates`` (None where a round did not run), every timed run in ``rates``."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return {**runs[-1], "round_rates": [None] * len(runs), "attempts": sum(r.get("attempts", 0) for r in runs)}
    merged = dict(ok[0])
    merged.update(
        rate=statistics.median(r["rate"] for r in ok),
        round_rates=[r["rate"] if r.get("status") == "ok" else None for r in runs],
        rates=[x for r in ok for x in r.get("rates", [r["rate"]])],
        other_load=max(r.get("other_load", 0.0) for r in ok),
        disturbed=any(r.get("disturbed") for r in ok),
        attempts=sum(r.get("attempts", 0) for r in runs),
        rounds=len(runs),
    )
    if any(r.get("startup_s") is not None for r in ok):
        merged["startup_s"] = statistics.median(r["startup_s"] for r in ok if r.get("startup_s") is not None)
    return merged


def _progress(items: list[tuple[dict, int]], label: str):
    """Yield the (spec, round) items, showing which one runs."""

    def name(item: tuple[dict, int]) -> str:
        spec, r = item
        return f"{spec['engine']} {spec['workload']} x{spec['num_envs']} (round {r + 1})"

    try:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns) as progress:
            task = progress.add_task(label, total=len(items))
            for item in items:
                progress.update(task, description=f"{label}: {name(item)}")
                yield item
                progress.advance(task)
    except ImportError:  # pragma: no cover
        for i, item in enumerate(items):
            print(f"[{i + 1}/{len(items)}] {name(item)}", flush=True)
            yield item


# -- reporting --------------------------------------------------------------------------------------
def _find(results: list[dict], workload: str, n: int, engine: str) -> dict | None:
    """The grid point's result (not a single-env measurement paired with another point)."""
    return next(
        (
            r
            for r in results
            if (r["workload"], r["num_envs"], r["engine"]) == (workload, n, engine) and not r.get("paired_with")
        ),
        None,
    )


def paired_ratio(a: dict | None, b: dict | None, scale: float = 1.0) -> tuple[float | None, list[float | None]]:
    """a's rate over (scale x b's): the median of the per-round ratios where both ran in a round (results
    of one interleaved grid point), else the ratio of their medians; and the per-round ratios."""
    if not a or not b or a.get("status") != "ok" or b.get("status") != "ok":
        return None, []
    ra, rb = a.get("round_rates"), b.get("round_rates")
    if ra and rb and len(ra) == len(rb):
        per = [x / (scale * y) if x and y else None for x, y in zip(ra, rb)]
        present = [x for x in per if x is not None]
        if present:
            return statistics.median(present), per
    return a["rate"] / (scale * b["rate"]), []


def single_reference(results: list[dict], workload: str, n: int) -> dict | None:
    """The single-env serial rate measured in the rounds of (workload, n), else the grid's own serial x1."""
    paired = next(
        (r for r in results if r["workload"] == workload and r["engine"] == "serial" and r.get("paired_with") == n),
        None,
    )
    return paired or _find(results, workload, 1, "serial")


def rate_of(results: list[dict], workload: str, n: int, engine: str) -> float | None:
    r = _find(results, workload, n, engine)
    return r["rate"] if r and r["status"] == "ok" else None


def _ratio(x: float) -> str:
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def markdown_table(results: list[dict], workload: str, baseline: str = BASELINE) -> str:
    """Rows: engines; columns: num_envs; cells: env steps/s and (in parentheses) the ratio to ``baseline``."""
    mine = [r for r in results if r["workload"] == workload]
    engines = list(dict.fromkeys(r["engine"] for r in mine))
    sizes = sorted({r["num_envs"] for r in mine})
    lines = ["| engine | " + " | ".join(f"{n} envs" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for engine in engines:
        cells = []
        for n in sizes:
            r = _find(mine, workload, n, engine)
            ratio, _ = paired_ratio(r, _find(mine, workload, n, baseline))
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append(r["status"])
            else:
                cell = f"{r['rate']:,.0f}"
                if ratio and engine != baseline:
                    cell += f" ({_ratio(ratio)})"
                if r.get("disturbed"):
                    cell += " *"
                cells.append(cell)
        lines.append(f"| {engine} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, facts: dict) -> list[Path]:
    """Per workload: throughput against num_envs, one line per engine, log scales (throughput-<workload>.png);
    and the knob variants beside fastvec's default as grouped bars (knobs-<workload>.png)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return []
    made = []
    subtitle = f"{facts.get('cpu', '?')}, {facts.get('cores', '?')} cores, Python {facts.get('python', '?')}"
    for workload in dict.fromkeys(r["workload"] for r in results):
        mine = [r for r in results if r["workload"] == workload and r["status"] == "ok"]
        engines = list(dict.fromkeys(r["engine"] for r in mine))
        main = [e for e in engines if not ENGINES[e].knob]
        if main:
            fig, ax = plt.subplots(figsize=(8, 5))
            ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # more engines than the default 10 colours
            for engine in main:
                points = sorted((r["num_envs"], r["rate"]) for r in mine if r["engine"] == engine)
                style = "-" if ENGINES[engine].family == "fastvec" else "--"
                width = 2.5 if engine == "fastvec" else 1.2
                ax.plot(*zip(*points), style, marker="o", lw=width, ms=4, label=engine)
            ax.set_xscale("log", base=2)
            sizes = sorted({r["num_envs"] for r in mine})
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_yscale("log")
            ax.set_xlabel("num_envs")
            ax.set_ylabel("env steps per second")
            ax.set_title(f"{workload}: throughput by engine\n{subtitle}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best", ncol=2)
            made.append(_save(fig, plt, path / f"throughput-{workload}.png"))
        knobs = [e for e in engines if ENGINES[e].knob]
        if knobs:
            names = [e for e in ("fastvec", *knobs) if e in engines]
            sizes = sorted({r["num_envs"] for r in mine if r["engine"] in knobs})
            fig, ax = plt.subplots(figsize=(8, 0.9 + 0.28 * len(names) * len(sizes)))
            height = 0.8 / len(sizes)
            for k, n in enumerate(sizes):
                rates = [rate_of(mine, workload, n, e) or 0.0 for e in names]
                ys = [i + k * height for i in range(len(names))]
                ax.barh(ys, rates, height=height, label=f"{n} envs")
                for y, value in zip(ys, rates):
                    if value:
                        ax.text(value, y, f" {value:,.0f}", va="center", fontsize=6)
            ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names, fontsize=8)
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_xlabel("env steps per second")
            ax.set_title(f"{workload}: settings against fastvec's default\n{subtitle}", fontsize=10)
            ax.grid(True, axis="x", which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best")
            made.append(_save(fig, plt, path / f"knobs-{workload}.png"))
    return made


def _save(fig, plt, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _verdict(ratio: float, goal: float) -> str:
    if ratio >= goal:
        return "met"
    return f"MISSED: reaches {100 * ratio / goal:.0f}% of the goal (short by {100 * (1 - ratio / goal):.0f}%)"


def check_goals(results: list[dict], num_cores: int | None = None) -> list[str]:
    """The study's goals (issue 5), each a ratio within this run; says where fastvec falls short and by how much."""
    num_cores = num_cores or cores()
    rate = lambda workload, n, engine: rate_of(results, workload, n, engine)  # noqa: E731
    find = lambda workload, n, engine: _find(results, workload, n, engine)  # noqa: E731
    lines = []

    def goal(label: str, value: dict | None, reference: dict | None, target: float, note: str = "", scale=1.0) -> None:
        ratio, per_round = paired_ratio(value, reference, scale)
        if ratio is None:
            lines.append(f"- {label}: not measured")
            return
        rounds = f"; per round: {', '.join('-' if x is None else f'{x:.2f}' for x in per_round)}" if per_round else ""
        lines.append(f"- {label}: {ratio:.2f} (goal {target:g}) -> {_verdict(ratio, target)}{note}{rounds}")

    cart = "CartPole-v1"
    goal("CartPole-v1, 8 envs: fastvec / sb3-subproc", find(cart, 8, "fastvec"), find(cart, 8, BASELINE), 10.0)
    multiprocess = [e for e, spec in ENGINES.items() if spec.processes and spec.family != "fastvec" and not spec.knob]
    measured = {e: rate(cart, 8, e) for e in multiprocess if rate(cart, 8, e) is not None}
    if measured:
        strongest = max(measured, key=measured.get)
        goal(
            "CartPole-v1, 8 envs: fastvec / best other multiprocess engine",
            find(cart, 8, "fastvec"),
            find(cart, 8, strongest),
            1.0,
            f" (best other: {strongest}; compared: {', '.join(sorted(measured))})",
        )
    else:
        lines.append("- CartPole-v1, 8 envs: fastvec / best other multiprocess engine: not measured")
    goal(
        "CartPole-v1, 64 envs: fastvec / (2 x single-env serial rate)",
        find(cart, 64, "fastvec"),
        single_reference(results, cart, 64),
        0.6,
        scale=2.0,
    )
    goal("image84, 8 envs: fastvec / sb3-subproc", find("image84", 8, "fastvec"), find("image84", 8, BASELINE), 10.0)
    sizes = sorted({r["num_envs"] for r in results if r["workload"] == "cpu1ms" and r["engine"] == "fastvec"})
    for n in [n for n in sizes if n >= num_cores] or [num_cores]:  # every measured size that can fill the cores
        goal(
            f"cpu1ms, {n} envs: fastvec / ({num_cores} cores x single-env serial rate)",
            find("cpu1ms", n, "fastvec"),
            single_reference(results, "cpu1ms", n),
            0.9,
            scale=float(num_cores),
        )
    # context, not goals
    info = []
    versus_envpool, _ = paired_ratio(find(cart, 8, "fastvec"), find(cart, 8, "envpool"))
    if versus_envpool:
        info.append(
            f"- CartPole-v1, 8 envs: fastvec / envpool = {versus_envpool:.2f} "
            "(EnvPool steps its own C++ CartPole in threads; fastvec steps gymnasium's Python one)"
        )
    for n in (8, 64):
        variants = {e: rate(cart, n, e) for e in ENGINES if ENGINES[e].family == "fastvec" and rate(cart, n, e)}
        if len(variants) > 1:
            best = max(variants, key=variants.get)
            info.append(
                f"- CartPole-v1, {n} envs: best fastvec setting is {best} at {variants[best]:,.0f} steps/s "
                f"({paired_ratio(find(cart, n, best), find(cart, n, 'fastvec'))[0] or 1.0:.2f}x the default)"
            )
    if info:
        lines += ["", "Context (not goals):", *info]
    return lines


def write_outputs(results: list[dict], out: Path, facts: dict, command: str) -> str:
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        columns = [
            "workload",
            "num_envs",
            "engine",
            "status",
            "rate",
            "rates",
            "round_rates",
            "paired_with",
            "other_load",
            "cpu_used_by_run",
            "startup_s",
            "attempts",
            "disturbed",
            "seconds",
            "repeats",
            "reason",
        ]
        writer.writerow(columns)
        for r in results:
            writer.writerow([json.dumps(r.get(c)) if c.endswith("rates") else r.get(c, "") for c in columns])
    everything, results = results, [r for r in results if not r.get("paired_with")]
    plots = plot(results, out, facts)
    workloads = list(dict.fromkeys(r["workload"] for r in results))
    sections = []
    for workload in workloads:
        first = next(r for r in results if r["workload"] == workload)
        sections.append(
            f"### {workload}\n\nEnv steps per second, median of {first.get('rounds', 1)} interleaved round(s) of "
            f"{first['repeats']} run(s) of {first['seconds']:g} s; (Nx) = ratio to {BASELINE} at the same num_envs "
            "(median of the per-round ratios); * = disturbed (other load > "
            f"{100 * MAX_OTHER_LOAD:g}% in every attempt).\n\n{markdown_table(results, workload)}\n"
        )
        for p in plots:
            if p.stem.endswith(f"-{workload}"):
                sections.append(f"![{p.stem}]({p.name})\n")
    engines = list(dict.fromkeys(r["engine"] for r in results))
    engine_md = "\n".join(f"- `{e}`: {ENGINES[e].description}" for e in engines)
    not_ok = [r for r in results if r["status"] != "ok"]
    problems = "\n".join(
        f"- {r['engine']} on {r['workload']} x{r['num_envs']}: {r['status']} ({r.get('reason', '')})" for r in not_ok
    )
    facts_md = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    loads = [r["other_load"] for r in results if r.get("status") == "ok"]
    load_md = (
        f"Other processes used a median {100 * statistics.median(loads):.1f}% (max {100 * max(loads):.1f}%) of the "
        f"machine during the measurements; {sum(1 for r in results if r.get('disturbed'))} stayed disturbed after re-runs."
        if loads
        else ""
    )
    report = (
        f"# Vectorized env throughput ({dt.date.today().isoformat()})\n\nCommand: `{command}`\n\n"
        "Goals (issue 5; medians of per-round ratios):\n"
        + "\n".join(check_goals(everything, facts.get("cores")))
        + "\n\n"
        f"{load_md}\n\n## Results\n\n"
        + "\n".join(sections)
        + f"\n## Engines\n\n{engine_md}\n\n"
        + (f"## Not measured\n\n{problems}\n\n" if problems else "")
        + f"## Machine\n\n{facts_md}\n"
    )
    (out / "README.md").write_text(report)
    (out / "machine.json").write_text(json.dumps(facts, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.vec_env", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workloads", nargs="+", default=None, choices=list(PLANS), help="default: every workload (--quick: CartPole-v1)"
    )
    parser.add_argument("--num-envs", nargs="+", type=_cli.count, default=None, help="override every grid")
    parser.add_argument(
        "--engines", nargs="+", default=None, help="default: every engine, knob variants on fewer points"
    )
    parser.add_argument("--seconds", type=_cli.seconds, default=None, help="length of one timed run (default: per workload)")
    parser.add_argument(
        "--repeats", type=_cli.count, default=None, help="timed runs per measurement (default: 1 per round; 3 with --rounds 1)"
    )
    parser.add_argument(
        "--rounds", type=_cli.count, default=3, help="interleaved rounds per grid point (default 3; --quick: 2)"
    )
    parser.add_argument("--timeout", type=_cli.seconds, default=120.0, help="seconds before a measurement is declared hung")
    parser.add_argument("--attempts", type=_cli.count, default=3, help="runs of a measurement disturbed by other load")
    parser.add_argument("--quick", action="store_true", help="a first look in under a minute: CartPole-v1, 8 envs")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time, measure nothing")
    parser.add_argument("--machine", default=None, help="results folder name prefix (default: <cores>core)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default benchmarks/results/<machine>-<date>)"
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.out is not None:  # (checked before measuring: found after, it lost the results in a traceback)
        out_error = _cli.out_error(args.out, folder=True)
        if out_error:
            parser.error(out_error)
    # (a name given twice was measured twice a round, and its ratios were no longer per round)
    args.engines = list(dict.fromkeys(args.engines)) if args.engines else args.engines
    args.num_envs = list(dict.fromkeys(args.num_envs)) if args.num_envs else args.num_envs
    if args.quick:
        args.workloads = args.workloads or ["CartPole-v1"]  # (one given is kept, as the other options are)
        args.engines = args.engines or QUICK_ENGINES
        args.num_envs = args.num_envs or [8]
        args.seconds = args.seconds or 0.3
        args.repeats = args.repeats or 1
        args.rounds = min(args.rounds, 2)
        args.attempts = min(args.attempts, 2)
    if args.repeats is None and args.rounds > 1:  # the rounds are the repeats
        args.repeats = 1
    if args.engines:
        unknown = [e for e in args.engines if e not in ENGINES]
        if unknown:
            parser.error(f"unknown engines {unknown}; known: {sorted(ENGINES)}")
    args.workloads = list(dict.fromkeys(args.workloads or PLANS))
    specs = plan(args)
    single = {**specs[0], "engine": "serial", "num_envs": 1}
    if args.quick and single not in specs:  # the single-env serial rate, for the 64-env goal's reference
        specs.insert(0, single)
    order = schedule(specs, args.rounds)
    estimate = sum(estimate_seconds(s) for s, _ in order)
    print(
        f"{len(order)} measurements ({len(specs)} grid points x engines, {args.rounds} interleaved rounds), "
        f"about {estimate / 60:.1f} min on an idle 2-core machine",
        flush=True,
    )
    if args.dry_run:
        for s, r in order:
            paired = f" (paired with x{s['paired_with']})" if s.get("paired_with") else ""
            print(
                f"  round {r + 1} {s['workload']:12s} {s['engine']:18s} x{s['num_envs']:<3d} "
                f"{s['seconds']:g} s x {s['repeats']}{paired}"
            )
        return
    facts = machine_facts()
    out = args.out or result_folder(args.machine, facts)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple, list[dict]] = {}
    began = time.monotonic()
    with open(out / "raw.jsonl", "w") as raw:
        for spec, r in _progress(order, "measuring"):
            result = run_one(spec, args.timeout, args.attempts)
            result.update(round=r + 1, time=dt.datetime.now().isoformat(timespec="seconds"))
            raw.write(json.dumps(result) + "\n")
            raw.flush()
            key = (spec["workload"], spec["num_envs"], spec["engine"], spec.get("paired_with"))
            runs.setdefault(key, []).append(result)
    results = [merge_rounds(rounds) for rounds in runs.values()]
    facts["study_minutes"] = round((time.monotonic() - began) / 60, 1)
    command = ("python -m benchmarks.vec_env " + " ".join(argv)).strip()
    report = write_outputs(results, out, facts, command)
    print(report)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
