"""Start-up time and worker memory of 8 CartPole-v1 envs, per engine, on this machine (issue 9).

    python -m benchmarks.startup                 # 5 interleaved rounds (~2-3 min on 2 cores)
    python -m benchmarks.startup --rounds 3 --engines fastvec fastvec-fork gym-async

Every measurement is a fresh interpreter (``python -c``, so a spawn or forkserver child
re-imports no ``__main__`` module) that imports only what its engine needs, then:

- start-up: the wall time from the engine's ``import`` to a constructed vec env,
  ``reset()`` and ``close()`` (the memory probe between reset and close is not counted);
  the child's whole process time is recorded beside it;
- memory: right after ``reset()``, psutil's RSS and USS of every worker process (a leaf
  of the child's process tree: a forkserver, which has the workers as children, and the
  resource tracker are reported apart), whether libtorch is mapped in it
  (/proc/<pid>/maps), and ``'torch' in sys.modules`` in the child itself.

Engines are measured in interleaved rounds (A B C ... A B C ...) after one discarded
warm-up round (page cache, bytecode), so a slow spell of the machine hits all of them;
each fastvec engine's start-up is divided by gymnasium AsyncVectorEnv's of the same round.
The children run with bytecode caching on (PYTHONDONTWRITEBYTECODE removed), as an
installed package would. Before every round the machine's busy CPU is sampled for
half a second with nothing of this benchmark running: the other load.
Results: a markdown table on stdout and benchmarks/results/<machine>-<date>/startup.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _cli
from benchmarks.vec_env import result_folder
from fastvec.measure import busy_cpu_seconds, child_environ, child_result, cores, machine_facts, run_child

ROOT = Path(__file__).resolve().parent.parent
NUM_ENVS = 8
ENV_ID = "CartPole-v1"
BASELINE = "gym-async"
STARTUP_GOAL = 3.0  # fastvec start-up at most 3x gymnasium AsyncVectorEnv's, in the same run
WORKER_RSS_GOAL_MIB = 80.0  # a CartPole worker under 80 MiB resident
MIB = 2**20


@dataclass(frozen=True)
class Engine:
    """How the child builds one engine (Python source): the imports that bind ``VecEnvClass``,
    the constructor's keyword arguments, the reset call. ``prelude`` runs at the top of the
    child's script, before the timer starts; ``script``: run the child from a file (so spawn
    and forkserver workers re-import it as their ``__main__``) instead of ``python -c``."""

    description: str
    imports: str
    kwargs: str = ""
    reset: str = "venv.reset()"
    family: str = "fastvec"
    goal: bool = False  # checked against the goals
    baseline: str = BASELINE  # the engine its start-up is divided by, in the same round
    prelude: str = ""
    script: bool = False


FASTVEC_SB3 = "import fastvec\nVecEnvClass = fastvec.SubprocVecEnv"
GYM_ASYNC = "import gymnasium\nVecEnvClass = gymnasium.vector.AsyncVectorEnv"
HIDE_SB3 = 'sys.modules["stable_baselines3"] = None  # what-if: SB3 not importable'
TRAINING_SCRIPT = "import torch  # a training script: the learner's imports at the top of __main__"

ENGINES: dict[str, Engine] = {
    "fastvec": Engine("fastvec.SubprocVecEnv, defaults (start_method forkserver)", FASTVEC_SB3, goal=True),
    "fastvec-fork": Engine(
        'fastvec.SubprocVecEnv(start_method="fork")', FASTVEC_SB3, kwargs='start_method="fork"', goal=True
    ),
    "fastvec-vector": Engine(
        "fastvec.VectorEnv, defaults (multiprocessing's default start method, as gymnasium)",
        "import fastvec\nVecEnvClass = fastvec.VectorEnv",
        reset="venv.reset(seed=0)",
        goal=True,
    ),
    BASELINE: Engine(
        "gymnasium.vector.AsyncVectorEnv, defaults", GYM_ASYNC, reset="venv.reset(seed=0)", family="gymnasium"
    ),
    "sb3-subproc": Engine(
        "Stable-Baselines3 SubprocVecEnv, defaults (start_method forkserver)",
        "from stable_baselines3.common.vec_env import SubprocVecEnv as VecEnvClass",
        family="sb3",
    ),
    # diagnostics: why the goals are met or missed
    "what-if:fastvec-no-sb3": Engine(
        "what-if: fastvec.SubprocVecEnv with SB3 hidden (sys.modules), so it derives from fastvec's own "
        "VecEnv contract instead of SB3's (which imports torch)",
        FASTVEC_SB3,
        prelude=HIDE_SB3,
    ),
    "what-if:fastvec-fork-no-sb3": Engine(
        'what-if: fastvec.SubprocVecEnv(start_method="fork") with SB3 hidden',
        FASTVEC_SB3,
        kwargs='start_method="fork"',
        prelude=HIDE_SB3,
    ),
    "script:fastvec": Engine(
        "fastvec.SubprocVecEnv, defaults, built by a script file that imports torch at its top "
        "(timer starts after it), as a training script does",
        FASTVEC_SB3,
        baseline="script:gym-async",
        prelude=TRAINING_SCRIPT,
        script=True,
    ),
    "script:gym-async": Engine(
        "gymnasium.vector.AsyncVectorEnv, defaults, built by the same kind of script",
        GYM_ASYNC,
        reset="venv.reset(seed=0)",
        family="gymnasium",
        baseline="script:gym-async",
        prelude=TRAINING_SCRIPT,
        script=True,
    ),
}

# the child: nothing is imported before t0 but sys, time and the prelude; the factory imports
# gymnasium when called; the guard keeps a worker that re-imports this file as __main__ from running it
CHILD = """
import sys, time
{prelude}

NUM_ENVS = {num_envs}


def make():
    import gymnasium

    return gymnasium.make({env_id!r})


def probe():
    import psutil

    def mapped(pid, name):
        try:
            with open(f"/proc/{{pid}}/maps") as f:
                return name in f.read()
        except OSError:
            return None

    def memory(p):
        info = p.memory_full_info()
        return {{"pid": p.pid, "rss": info.rss, "uss": info.uss, "pss": getattr(info, "pss", None),
                 "libtorch": mapped(p.pid, "libtorch")}}

    def started_as(p, module):  # multiprocessing starts its helpers with -c "from multiprocessing.<module> import main..."
        return any(arg.startswith("from multiprocessing." + module) for arg in p.cmdline())

    me = psutil.Process()
    workers, helpers = [], []
    for p in me.children(recursive=True):
        try:
            entry = {{**memory(p), "cmd": " ".join(p.cmdline())[:120]}}
            if started_as(p, "resource_tracker"):
                helpers.append({{**entry, "role": "resource_tracker"}})
            elif started_as(p, "forkserver") and p.ppid() == me.pid:
                helpers.append({{**entry, "role": "forkserver"}})
            else:
                workers.append(entry)
        except psutil.Error:
            pass
    heavy = ("torch", "stable_baselines3", "gymnasium", "fastvec", "cloudpickle", "psutil")
    return {{
        "parent": {{**memory(me), "modules": {{m: m in sys.modules for m in heavy}},
                   "num_modules": len(sys.modules)}},
        "workers": workers,
        "helpers": helpers,
    }}


def run():
    t0 = time.perf_counter()
{imports}
    t1 = time.perf_counter()
    venv = VecEnvClass([make] * NUM_ENVS, {kwargs})
    t2 = time.perf_counter()
    {reset}
    t3 = time.perf_counter()
    memory = probe()
    t4 = time.perf_counter()
    venv.close()
    t5 = time.perf_counter()
    phases = {{"import_s": t1 - t0, "construct_s": t2 - t1, "reset_s": t3 - t2, "close_s": t5 - t4}}
    result = {{"status": "ok", "startup_s": sum(phases.values()), **phases, "probe_s": t4 - t3, **memory}}
    print("RESULT " + __import__("json").dumps(result), flush=True)


if __name__ == "__main__":
    run()
"""


def child_code(engine: Engine) -> str:
    return CHILD.format(
        prelude=engine.prelude,
        num_envs=NUM_ENVS,
        env_id=ENV_ID,
        imports=textwrap.indent(engine.imports, "    "),
        kwargs=engine.kwargs,
        reset=engine.reset,
    )


def measure(name: str, timeout: float) -> dict:
    """One fresh interpreter for ``name``; its whole session is killed when it returns."""
    engine = ENGINES[name]
    env = child_environ(ROOT, PYTHONDONTWRITEBYTECODE=None)
    with tempfile.TemporaryDirectory(prefix="fastvec-startup-") as folder:
        if engine.script:
            path = Path(folder) / "train.py"
            path.write_text(child_code(engine))
            argv = [sys.executable, "-W", "ignore", str(path)]
        else:
            argv = [sys.executable, "-W", "ignore", "-c", child_code(engine)]
        busy0 = busy_cpu_seconds()
        run = run_child(argv, timeout, env=env, cwd=ROOT)
        busy = busy_cpu_seconds() - busy0
    result = {"engine": name, **child_result(run, timeout), "process_s": run.seconds}
    result["machine_busy"] = busy / (run.seconds * cores())  # ours and others', a share of the machine
    return result


def other_load(seconds: float = 0.5) -> float:
    """The share of the machine's CPU busy over ``seconds`` while this benchmark runs nothing."""
    busy0, wall0 = busy_cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return (busy_cpu_seconds() - busy0) / ((time.perf_counter() - wall0) * cores())


# -- reporting --------------------------------------------------------------------------------------
def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _worker_summary(r: dict) -> dict:
    workers = r.get("workers", [])
    return {
        "workers": len(workers),
        "rss_mib": _median([w["rss"] / MIB for w in workers]),
        "uss_mib": _median([w["uss"] / MIB for w in workers]),
        "all_uss_mib": sum(w["uss"] for w in workers) / MIB if workers else None,
        "libtorch": any(w["libtorch"] for w in workers),
        "forkserver_libtorch": any(h["libtorch"] for h in r.get("helpers", []) if h["role"] == "forkserver"),
    }


def summarize(results: list[dict], engines: list[str]) -> dict:
    """Per engine: medians of start-up, its phases and memory; per-round ratios to the baseline."""
    rounds = sorted({r["round"] for r in results})
    summary: dict = {}
    for name in engines:
        ok = [r for r in results if r["engine"] == name and r["status"] == "ok"]
        mem = [_worker_summary(r) for r in ok]
        ratios = []
        for k in rounds:
            mine = next((r for r in ok if r["round"] == k), None)
            baseline = ENGINES[name].baseline
            base = next(
                (r for r in results if r["engine"] == baseline and r["round"] == k and r["status"] == "ok"), None
            )
            if mine and base:
                ratios.append(mine["startup_s"] / base["startup_s"])
        summary[name] = {
            "description": ENGINES[name].description,
            "baseline": ENGINES[name].baseline,
            "measured": len(ok),
            "failed": [
                f"round {r['round']}: {r['status']} {r.get('reason', '')}"
                for r in results
                if r["engine"] == name and r["status"] != "ok"
            ],
            "startup_s": _median([r["startup_s"] for r in ok]),
            "startup_all": [round(r["startup_s"], 3) for r in ok],
            "process_s": _median([r["process_s"] for r in ok]),
            **{p: _median([r[p] for r in ok]) for p in ("import_s", "construct_s", "reset_s", "close_s")},
            "ratio_to_baseline": [round(x, 2) for x in ratios],
            "ratio_median": _median(ratios),
            "workers": _median([m["workers"] for m in mem]),
            "worker_rss_mib": _median([m["rss_mib"] for m in mem if m["rss_mib"] is not None]),
            "worker_uss_mib": _median([m["uss_mib"] for m in mem if m["uss_mib"] is not None]),
            "all_workers_uss_mib": _median([m["all_uss_mib"] for m in mem if m["all_uss_mib"] is not None]),
            "parent_rss_mib": _median([r["parent"]["rss"] / MIB for r in ok]),
            "torch_in_parent": sorted({r["parent"]["modules"]["torch"] for r in ok}),
            "sb3_in_parent": sorted({r["parent"]["modules"]["stable_baselines3"] for r in ok}),
            "parent_modules": _median([r["parent"]["num_modules"] for r in ok]),
            "torch_in_worker": sorted({m["libtorch"] for m in mem}),
            "torch_in_forkserver": sorted({m["forkserver_libtorch"] for m in mem}),
        }
    return summary


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _yes_no(values: list[bool]) -> str:
    return "/".join("yes" if v else "no" for v in values) or "-"


def markdown(summary: dict, loads: list[float], results: list[dict], facts: dict, command: str, rounds: int) -> str:
    lines = [
        f"# Start-up and worker memory: {NUM_ENVS} x {ENV_ID} ({dt.date.today().isoformat()})",
        "",
        f"Command: `{command}`",
        "",
        f"{rounds} interleaved rounds after a discarded warm-up; medians. Start-up: `import` of the engine to a "
        "constructed, reset and closed vec env, in a fresh interpreter. Ratio: start-up / gymnasium "
        "AsyncVectorEnv's (gym-async; script:gym-async for the script: rows) in the same round, median of the rounds. "
        "Rows named what-if: or script: are diagnostics, not goals. Memory: one worker process right after "
        "reset (median over its workers and the rounds); USS is what the worker alone holds.",
        "",
        "| engine | start-up s | per round | vs baseline | import s | construct s | reset s | close s "
        "| workers | worker RSS MiB | worker USS MiB | all workers USS MiB | parent RSS MiB "
        "| torch in parent | torch in worker |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, s in summary.items():
        ratio = ""
        if s["ratio_median"] is not None and name != s["baseline"]:
            ratio = f"{s['ratio_median']:.2f}x {s['baseline']} {s['ratio_to_baseline']}"
        lines.append(
            f"| {name} | {_fmt(s['startup_s'])} | {s['startup_all']} | {ratio} | {_fmt(s['import_s'])} "
            f"| {_fmt(s['construct_s'])} | {_fmt(s['reset_s'])} | {_fmt(s['close_s'])} | {_fmt(s['workers'], 0)} "
            f"| {_fmt(s['worker_rss_mib'], 0)} | {_fmt(s['worker_uss_mib'], 0)} | {_fmt(s['all_workers_uss_mib'], 0)} "
            f"| {_fmt(s['parent_rss_mib'], 0)} | {_yes_no(s['torch_in_parent'])} | {_yes_no(s['torch_in_worker'])} |"
        )
    lines += ["", "Goals (issue 9):"]
    for name, s in summary.items():
        if not ENGINES[name].goal:
            continue
        ratio, rss = s["ratio_median"], s["worker_rss_mib"]
        met = ratio is not None and ratio <= STARTUP_GOAL
        lines.append(
            f"- {name}: start-up {_fmt(ratio)}x gym-async (goal <= {STARTUP_GOAL:g}x) -> "
            + ("met" if met else "MISSED" if ratio is not None else "not measured")
            + f"; worker RSS {_fmt(rss, 0)} MiB (goal < {WORKER_RSS_GOAL_MIB:g}) -> "
            + (
                "met"
                if rss is not None and rss < WORKER_RSS_GOAL_MIB
                else "MISSED"
                if rss is not None
                else "not measured"
            )
            + f" (USS {_fmt(s['worker_uss_mib'], 0)} MiB)"
        )
    busy = [r["machine_busy"] for r in results if r.get("status") == "ok"]
    lines += [
        "",
        f"Other load (machine busy CPU over 0.5 s before each round, nothing of ours running): median "
        f"{100 * statistics.median(loads):.0f}%, max {100 * max(loads):.0f}% of {facts['cores']} cores. "
        f"During the measurements the machine was busy a median {100 * statistics.median(busy):.0f}% "
        "(ours and others')."
        if loads and busy
        else "",
    ]
    failures = [f"- {name}: {f}" for name, s in summary.items() for f in s["failed"]]
    if failures:
        lines += ["", "Measurements without a result:", *failures]
    lines += ["", "Engines:", *(f"- `{n}`: {ENGINES[n].description}" for n in summary)]
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.startup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=_cli.count, default=5, help="interleaved rounds (after one warm-up)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--timeout", type=_cli.seconds, default=120.0, help="seconds before a measurement is declared hung")
    parser.add_argument("--machine", default=None, help="results folder name prefix (default: <cores>core)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default benchmarks/results/<machine>-<date>)"
    )
    parser.add_argument("--print-child", choices=list(ENGINES), help="print one engine's child script and exit")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.engines:  # (a name given twice was measured twice)
        args.engines = list(dict.fromkeys(args.engines))
    if args.out is not None:  # (checked before measuring: found after, it lost the results in a traceback)
        out_error = _cli.out_error(args.out, folder=True)
        if out_error:
            parser.error(out_error)
    if args.print_child:
        print(child_code(ENGINES[args.print_child]))
        return
    engines = list(args.engines)
    for name in list(engines):  # the ratios need each engine's baseline
        if ENGINES[name].baseline not in engines:
            engines.append(ENGINES[name].baseline)
    facts = machine_facts(("gymnasium", "stable_baselines3"))
    print(f"{args.rounds} rounds (+1 warm-up) of {', '.join(engines)}: {NUM_ENVS} x {ENV_ID}", flush=True)
    results, loads = [], []
    for k in range(args.rounds + 1):
        load = other_load()
        if k:
            loads.append(load)
        for name in engines:
            result = {**measure(name, args.timeout), "round": k, "other_load_before_round": load}
            label = "warm-up" if k == 0 else f"round {k}"
            if result["status"] == "ok":
                w = _worker_summary(result)
                print(
                    f"[{label}] {name}: {result['startup_s']:.2f} s (process {result['process_s']:.2f} s), "
                    f"{w['workers']} workers, worker RSS {_fmt(w['rss_mib'], 0)} MiB USS {_fmt(w['uss_mib'], 0)} MiB, "
                    f"other load before round {100 * load:.0f}%",
                    flush=True,
                )
            else:
                print(f"[{label}] {name}: {result['status']} {result.get('reason', '')}", flush=True)
            if k:
                results.append(result)
    summary = summarize(results, engines)
    command = ("python -m benchmarks.startup " + " ".join(argv)).strip()
    report = markdown(summary, loads, results, facts, command, args.rounds)
    out = args.out or result_folder(args.machine, facts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "startup.md").write_text(report + "\n")
    record = {"command": command, "machine": facts, "summary": summary, "other_load": loads, "results": results}
    (out / "startup.json").write_text(json.dumps(record, indent=2) + "\n")
    print()
    print(report)
    print(f"\nresults: {out / 'startup.md'} and startup.json")


if __name__ == "__main__":
    main()
