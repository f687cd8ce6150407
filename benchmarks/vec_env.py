"""Throughput of vectorized-env engines, side by side, on this machine.

    python -m benchmarks.vec_env                 # the CartPole-v1 study of fastvec's README
    python -m benchmarks.vec_env --quick         # a first look in under a minute
    python -m benchmarks.vec_env --workloads CartPole-v1 image84 --num-envs 8 64 --engines fastvec sb3-subproc

Each measurement runs in its own child process with a timeout; random actions
(the same seeded batches for every engine), a warm-up, then the median of
``--repeats`` timed runs of ``--seconds`` each. The CPU time other processes used
during a measurement is recorded, and a measurement disturbed by more than 2% is
run again (up to twice). Results go to benchmarks/results/<machine>-<date>/.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

DEFAULT_ENGINES = ["serial", "sb3-dummy", "sb3-subproc", "gym-async-shm", "fastvec", "fastvec-no-parent", "fastvec-w8"]
MAX_OTHER_LOAD = 0.02


def machine_facts() -> dict:
    import numpy

    facts = {
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }
    for package in ("gymnasium", "stable_baselines3", "torch", "fastvec", "envpool", "pufferlib"):
        try:
            module = __import__(package)
            facts[package] = getattr(module, "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - a missing peer is a fact too
            facts[package] = f"not installed ({type(exc).__name__})"
    try:
        import fastvec

        facts["fastvec_kernels"] = fastvec.KERNELS
    except Exception:  # noqa: BLE001
        pass
    return facts


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_one(spec: dict, timeout: float) -> dict:
    """Measure in a child process; a hang or crash becomes a result with its status."""
    for attempt in range(3):
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks._measure", json.dumps(spec)],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=Path(__file__).resolve().parent.parent,
            )
        except subprocess.TimeoutExpired:
            return {**spec, "status": "timeout", "reason": f"no result within {timeout:.0f} s"}
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            return {**spec, "status": "crashed", "reason": f"exit code {proc.returncode}: {' | '.join(tail)}"}
        result = json.loads(lines[-1][len("RESULT ") :])
        result["attempts"] = attempt + 1
        if result.get("status") != "ok" or result.get("other_load", 0.0) <= MAX_OTHER_LOAD:
            return result
    result["disturbed"] = True
    return result


def _progress(items: list, label: str):
    try:
        from rich.progress import Progress

        with Progress() as progress:
            task = progress.add_task(label, total=len(items))
            for item in items:
                progress.update(task, description=f"{label}: {item['engine']} {item['workload']} x{item['num_envs']}")
                yield item
                progress.advance(task)
    except ImportError:  # pragma: no cover
        for i, item in enumerate(items):
            print(f"[{i + 1}/{len(items)}] {item['engine']} {item['workload']} x{item['num_envs']}", flush=True)
            yield item


def markdown_table(results: list[dict], engines: list[str], baseline: str = "sb3-subproc") -> str:
    rows = sorted({(r["workload"], r["num_envs"]) for r in results}, key=lambda x: (x[0], x[1]))
    head = "| workload | envs | " + " | ".join(engines) + " |"
    lines = [head, "|" + "---|" * (len(engines) + 2)]
    for workload, n in rows:
        cells = []
        base = next(
            (r.get("rate") for r in results if (r["workload"], r["num_envs"], r["engine"]) == (workload, n, baseline)),
            None,
        )
        for engine in engines:
            r = next((r for r in results if (r["workload"], r["num_envs"], r["engine"]) == (workload, n, engine)), None)
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append(r["status"])
            else:
                cell = f"{r['rate']:,.0f}"
                if base and engine != baseline:
                    cell += f" ({r['rate'] / base:.1f}x)"
                if r.get("disturbed"):
                    cell += " (disturbed)"
                cells.append(cell)
        lines.append(f"| {workload} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for workload in sorted({r["workload"] for r in results}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for engine in sorted({r["engine"] for r in results}):
            points = sorted(
                (r["num_envs"], r["rate"])
                for r in results
                if r["workload"] == workload and r["engine"] == engine and r["status"] == "ok"
            )
            if points:
                ax.plot(*zip(*points), marker="o", label=engine)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("num_envs")
        ax.set_ylabel("env steps per second")
        ax.set_title(f"{workload}: throughput by engine")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        out = path / f"throughput-{workload}.png"
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        made.append(out)
    return made


def check_goals(results: list[dict]) -> list[str]:
    """The fastvec engine issue's goals for CartPole-v1, as ratios within this run."""

    def rate(engine: str, n: int) -> float | None:
        r = next(
            (r for r in results if (r["workload"], r["num_envs"], r["engine"]) == ("CartPole-v1", n, engine)), None
        )
        return r["rate"] if r and r["status"] == "ok" else None

    lines = []
    single = rate("serial", 1)
    pairs = [
        ("8 envs: fastvec >= 10x sb3-subproc", rate("fastvec", 8), rate("sb3-subproc", 8), 10.0),
        ("8 envs: fastvec >= sb3-dummy (in-process)", rate("fastvec", 8), rate("sb3-dummy", 8), 1.0),
        ("64 envs: fastvec >= 60% of 2 x single-env rate", rate("fastvec", 64), 2 * single if single else None, 0.6),
        ("64 envs: 8 workers >= half of 2 workers", rate("fastvec-w8", 64), rate("fastvec", 64), 0.5),
        ("8 envs: 8 workers >= half of 2 workers", rate("fastvec-w8", 8), rate("fastvec", 8), 0.5),
    ]
    for label, value, reference, goal in pairs:
        if value is None or reference is None:
            lines.append(f"- {label}: not measured")
            continue
        ratio = value / reference
        verdict = "met" if ratio >= goal else f"MISSED by {100 * (1 - ratio / goal):.0f}%"
        lines.append(f"- {label}: {ratio:.2f} (goal {goal:g}) -> {verdict}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["CartPole-v1"])
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--engines", nargs="+", default=DEFAULT_ENGINES)
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a measurement is declared hung")
    parser.add_argument("--quick", action="store_true", help="a first look: 8 envs, short runs")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<machine>-<date>)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_envs, args.seconds, args.repeats = [8], 0.5, 1
    from benchmarks.engines import ENGINES

    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engines {unknown}; known: {sorted(ENGINES)}")
    facts = machine_facts()
    out = args.out or Path(__file__).resolve().parent / "results" / f"{facts['cores']}core-{dt.date.today().isoformat()}"
    out.mkdir(parents=True, exist_ok=True)
    specs = []
    for workload in args.workloads:
        for n in args.num_envs:
            for engine in args.engines:
                if n == 1 and engine not in ("serial",) and "serial" in args.engines:
                    continue  # one env: only the single-process rate is of interest
                specs.append(
                    {"engine": engine, "workload": workload, "num_envs": n, "seconds": args.seconds, "repeats": args.repeats}
                )
    results = []
    with open(out / "raw.jsonl", "a") as raw:
        for spec in _progress(specs, "measuring"):
            result = run_one(spec, args.timeout)
            result["time"] = dt.datetime.now().isoformat(timespec="seconds")
            raw.write(json.dumps(result) + "\n")
            raw.flush()
            results.append(result)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["workload", "num_envs", "engine", "status", "rate", "other_load", "cpu_used_by_run", "startup_s", "reason"])
        for r in results:
            writer.writerow(
                [r["workload"], r["num_envs"], r["engine"], r["status"], r.get("rate", ""), r.get("other_load", ""),
                 r.get("cpu_used_by_run", ""), r.get("startup_s", ""), r.get("reason", "")]
            )
    table = markdown_table(results, args.engines)
    goals = check_goals(results)
    plots = plot(results, out)
    facts_md = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    command = "python -m benchmarks.vec_env " + " ".join(argv if argv is not None else sys.argv[1:])
    report = (
        f"# Vectorized env throughput ({dt.date.today().isoformat()})\n\nCommand: `{command.strip()}`\n\n"
        f"Env steps per second, median of {args.repeats} runs of {args.seconds:g} s; (Nx) = ratio to sb3-subproc "
        f"in the same run.\n\n{table}\n\nGoals (CartPole-v1):\n" + "\n".join(goals) + f"\n\nMachine:\n{facts_md}\n"
    )
    for p in plots:
        report += f"\n![{p.stem}]({p.name})\n"
    (out / "README.md").write_text(report)
    (out / "machine.json").write_text(json.dumps(facts, indent=2))
    print(report)
    unavailable = [r for r in results if r["status"] != "ok"]
    for r in unavailable:
        print(f"note: {r['engine']} on {r['workload']} x{r['num_envs']}: {r['status']} ({r.get('reason', '')})")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
