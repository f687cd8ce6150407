"""Compare engines (or two fastvec commits) in interleaved rounds, so host drift cannot bias a ratio.

    python -m benchmarks.interleaved --variant new=fastvec --variant ref=sb3-subproc \\
        --workload CartPole-v1:8 --workload image84:8 --rounds 5
    python -m benchmarks.interleaved --variant head=fastvec --variant base=fastvec@/path/to/old/checkout ...

On these shared machines a host's speed moves by up to 2x within an hour, so engines
measured one after another can differ for no reason of their own. Here every round
measures every variant once, each in a fresh child process (a rotating order, so no
variant always goes first); the report gives each variant's median rate, and per round
the ratio of each variant to the first one, with the median of those ratios.

A variant is ``label=engine`` (an engine of benchmarks.engines, from this checkout),
``label=engine@path``: the engine of another checkout of fastvec (its fastvec and its
benchmarks, imported from ``path``, whose extension must be built), to compare commits,
and ``#n`` at the end fixes its number of envs (``single=serial#1``: one env stepped in
one process, the single-env rate, measured beside every workload).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks import _cli
from fastvec.measure import child_environ, child_result, machine_facts, python_argv, repository_root, run_child

ROOT = repository_root()


def parse_variant(text: str) -> dict:
    label, _, rest = text.partition("=")
    rest, _, fixed = rest.partition("#")
    engine, _, tree = rest.partition("@")
    if not label or not engine or (fixed and (not fixed.isdigit() or int(fixed) < 1)):
        raise argparse.ArgumentTypeError(f"a variant is label=engine[@path][#num_envs], got {text!r}")
    return {
        "label": label,
        "engine": engine,
        "tree": str(Path(tree).resolve()) if tree else str(ROOT),
        "num_envs": int(fixed) if fixed else None,  # e.g. serial#1: the single-env rate beside every workload
    }


def parse_workload(text: str) -> tuple[str, int]:
    name, _, n = text.rpartition(":")
    if not name or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"a workload is name:num_envs (at least 1), got {text!r}")
    return name, int(n)


def measure(
    variant: dict, workload: str, num_envs: int, seconds: float, repeats: int, timeout: float, policy_us: float = 0.0
) -> dict:
    """One measurement in a fresh interpreter importing fastvec and the benchmarks from the variant's tree."""
    spec = {
        "engine": variant["engine"],
        "workload": workload,
        "num_envs": num_envs,
        "seconds": seconds,
        "repeats": repeats,
    }
    if policy_us:
        spec["policy_us"] = policy_us
    run = run_child(
        python_argv("benchmarks._measure", json.dumps(spec)),
        timeout,
        env=child_environ(variant["tree"]),
        cwd=variant["tree"],
    )
    return child_result(run, timeout)


def study(
    variants: list[dict],
    workloads: list[tuple[str, int]],
    rounds: int,
    seconds: float,
    repeats: int,
    timeout: float,
    report=print,
    policy_us: float = 0.0,
) -> list[dict]:
    """Every (workload, variant) measured once per round; returns one record per workload."""
    records = []
    for workload, num_envs in workloads:
        rates: dict[str, list[float | None]] = {v["label"]: [] for v in variants}
        loads: list[float] = []
        for r in range(rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for variant in order:
                # (a variant of a fixed number of envs, serial#1, the single-env rate, is measured at that number)
                result = measure(variant, workload, variant["num_envs"] or num_envs, seconds, repeats, timeout, policy_us)
                ok = result.get("status") == "ok"
                rates[variant["label"]].append(result["rate"] if ok else None)
                if ok:
                    loads.append(result.get("other_load", 0.0))
                report(
                    f"  {workload}:{num_envs} round {r + 1} {variant['label']}: "
                    + (f"{result['rate']:,.0f} steps/s" if ok else f"{result.get('status')} {result.get('reason', '')}")
                )
        base = variants[0]["label"]
        ratios = {
            v["label"]: [a / b if a and b else None for a, b in zip(rates[v["label"]], rates[base])]
            for v in variants[1:]
        }
        records.append(
            {
                "workload": workload,
                "num_envs": num_envs,
                "rates": rates,
                "median_rate": {k: _median(v) for k, v in rates.items()},
                "ratios_to": base,
                "ratios": ratios,
                "median_ratio": {k: _median(v) for k, v in ratios.items()},
                "other_load_max": max(loads) if loads else None,
            }
        )
    return records


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def markdown(records: list[dict], variants: list[dict], command: str, facts: dict) -> str:
    labels = [v["label"] for v in variants]
    base = labels[0]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {facts.get('cpu')}, {facts.get('cores')} cores, Python {facts.get('python')}  ",
        "Variants: "
        + ", ".join(
            f"{v['label']} = {v['engine']}"
            + (f" @ {v['tree']}" if v["tree"] != str(ROOT) else "")
            + (f" #{v['num_envs']} (at {v['num_envs']} env{'s' if v['num_envs'] > 1 else ''} in every workload)" if v.get("num_envs") else "")
            for v in variants
        ),
        "",
        "| workload | "
        + " | ".join(f"{label} steps/s (median)" for label in labels)
        + " | "
        + " | ".join(f"{label} / {base}: median (per round)" for label in labels[1:])
        + " | max other load |",
        "|---|" + "---:|" * len(labels) + "---|" * (len(labels) - 1) + "---:|",
    ]
    for rec in records:
        cells = [f"{rec['median_rate'][label]:,.0f}" if rec["median_rate"][label] else "-" for label in labels]
        ratio_cells = []
        for label in labels[1:]:
            per_round = ", ".join(f"{x:.2f}" if x else "-" for x in rec["ratios"][label])
            median = rec["median_ratio"][label]
            ratio_cells.append((f"**{median:.2f}x**" if median else "-") + f" ({per_round})")
        load = rec["other_load_max"]
        lines.append(
            f"| {rec['workload']} x {rec['num_envs']} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(ratio_cells)
            + (f" | {100 * load:.0f}% |" if load is not None else " | - |")
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.interleaved",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variant", action="append", type=parse_variant, required=True)
    parser.add_argument("--workload", action="append", type=parse_workload, required=True)
    parser.add_argument("--rounds", type=_cli.count, default=5)
    parser.add_argument("--seconds", type=_cli.seconds, default=1.0, help="one timed run")
    parser.add_argument("--repeats", type=_cli.count, default=3, help="timed runs per measurement (their median)")
    parser.add_argument("--timeout", type=_cli.seconds, default=120.0)
    parser.add_argument("--out", type=_cli.file_path, default=None, help="write <out>.md and <out>.json")
    parser.add_argument(
        "--policy-us",
        type=_cli.seconds0,
        default=0.0,
        help="a policy's time per call, in us, spent (busy) before each call's step or send: once per step of all "
        "the envs, once per batch with asynchronous batches (a small MLP costs about the same for either)",
    )
    args = parser.parse_args(argv)
    if len(args.variant) < 2:
        parser.error("give at least two --variant")
    labels = [v["label"] for v in args.variant]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        parser.error(f"--variant: label(s) {', '.join(twice)} given twice")
    for tree in dict.fromkeys(v["tree"] for v in args.variant if v["tree"] != str(ROOT)):
        error = _cli.checkout_error(tree, "--variant ...@")
        if error:
            parser.error(error)
    if args.out:
        error = _cli.stem_error(args.out, (".md", ".json"))
        if error:
            parser.error(error)
    if args.policy_us:
        for v in args.variant:
            measure_py = Path(v["tree"]) / "benchmarks" / "_measure.py"
            if "policy_us" not in (measure_py.read_text() if measure_py.is_file() else ""):
                parser.error(f"--policy-us: the checkout {v['tree']} does not spend a policy's time (its benchmarks predate it)")
    if all(v["tree"] == str(ROOT) for v in args.variant):  # (another tree may have engines and workloads of its own)
        from benchmarks.engines import ENGINES
        from benchmarks.workloads import WORKLOADS

        for name, known, what in [(v["engine"], ENGINES, "engine") for v in args.variant] + [
            (w, WORKLOADS, "workload") for w, _ in args.workload
        ]:
            if name not in known:
                parser.error(f"unknown {what} {name!r}; known: {', '.join(known)}")
    command = "python -m benchmarks.interleaved " + " ".join(sys.argv[1:] if argv is None else argv)
    facts = machine_facts()
    print(f"{len(args.variant)} variants x {len(args.workload)} workloads x {args.rounds} rounds", flush=True)
    records = study(
        args.variant,
        args.workload,
        args.rounds,
        args.seconds,
        args.repeats,
        args.timeout,
        report=lambda line: print(line, flush=True),
        policy_us=args.policy_us,
    )
    text = markdown(records, args.variant, command, facts)
    print()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        _cli.stem_file(args.out, ".md").write_text(text)
        _cli.stem_file(args.out, ".json").write_text(
            json.dumps({"command": command, "machine": facts, "variants": args.variant, "records": records}, indent=2)
        )
    return records


if __name__ == "__main__":
    main()
