"""Find the fastest fastvec settings for one env on this machine, and say when processes do not pay off.

    python -m fastvec.tune --env-id CartPole-v1 --num-envs 64 --output tuned.json
    python -m fastvec.tune --env-module mypackage.envs:make_env --num-envs 16 --quick

then ``fastvec.SubprocVecEnv(env_fns, config="tuned.json")``.

The search is staged, so it stays near two minutes on a small machine:

1. layout: num_workers from 1 to twice the cores, each with and without
   step_in_parent (num_workers=1 with step_in_parent=True is no worker process at
   all: every env stepped in the calling process);
2. spin budget (spin_ns) for the best layout that uses worker processes;
3. core pinning (pin_workers) for the best of those;
4. asynchronous batches (batch_size = num_envs / 2, EnvPool's send/recv), in the pool's
   default groups (a worker per batch on 2 cores, a worker per core where there are more),
   with the calling process stepping one group itself (step_in_parent) and without: the
   better one is reported beside the best synchronous setting, which is what the
   configuration file holds (batch_size changes the API: the caller must use send/recv).

Every candidate runs in its own child process (its own session, killed when it
returns): build the envs, step them with the same seeded random actions, warm up,
then the median of ``repeats`` timed runs. The CPU time other processes used is
recorded; a candidate disturbed by more than 2% is measured once more. Workers are
started with fork for the search (start-up cost is not what is measured); the
configuration written leaves start_method to the caller.
"""

from __future__ import annotations

import argparse
import importlib
import json
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from fastvec.measure import (
    CLOSE_WAIT,
    child_environ,
    child_main,
    child_result,
    cores,
    ends_within,
    machine_facts,
    python_argv,
    repository_root,
    run_child,
    time_steps,
)
from fastvec.options import TUNABLE

__all__ = ["search", "worker_counts", "verdict", "is_in_process", "main"]

SPIN_CHOICES = (0, 20_000, 50_000, 200_000, -200_000)
QUICK_SPIN_CHOICES = (0, 50_000, -200_000)
MAX_OTHER_LOAD = 0.02
# what a candidate varies: the knobs a tuning file may set (fastvec.options.TUNABLE), less the two that
# do not change a rate: ring_slots (the depth of the result ring) and start_method (start-up only)
NOT_SEARCHED = ("ring_slots", "start_method", "pin")  # pin: the tuner tries pin_workers (spread) against the default (auto)
CONFIG_KEYS = tuple(k for k in TUNABLE if k not in NOT_SEARCHED)
NOISE = 0.05  # differences below this are within run-to-run noise


def worker_counts(num_envs: int, num_cores: int, quick: bool = False) -> list[int]:
    """num_workers to try: 1 to twice the cores (powers of two, the core count and its neighbours), at most num_envs."""
    if quick:
        wanted = {1, num_cores, 2 * num_cores}
    else:
        wanted = {1, num_cores - 1, num_cores, num_cores + 1, 2 * num_cores}
        k = 2
        while k < 2 * num_cores:
            wanted.add(k)
            k *= 2
    return sorted(w for w in wanted if 1 <= w <= min(num_envs, 2 * num_cores))


def is_in_process(config: dict) -> bool:
    """num_workers=1 with step_in_parent: every env stepped by the caller, no worker process."""
    return config.get("num_workers") == 1 and bool(config.get("step_in_parent"))


def _default_layout(num_envs: int, num_cores: int) -> dict:
    workers = min(num_cores, num_envs)  # fastvec.pool's defaults
    return {"num_workers": workers, "step_in_parent": workers >= 2}


# -- one candidate, in a child process ------------------------------------------------------------
def _factory_name(env_module: str) -> tuple[str, str]:
    """(module, factory) of ``--env-module``'s ``module:factory``."""
    module_name, _, attr = env_module.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--env-module wants 'module:factory', got {env_module!r}")
    return module_name, attr


def _make_env(env_id: str | None, env_module: str | None) -> Any:
    if env_module:
        module_name, attr = _factory_name(env_module)
        return getattr(importlib.import_module(module_name), attr)()
    import gymnasium

    return gymnasium.make(env_id)


def _measure_here(spec: dict) -> dict:
    import multiprocessing as mp

    import numpy as np

    from fastvec.sb3_vec_env import SubprocVecEnv

    if spec.get("sys_path"):  # (the caller's, in its order; this fastvec first, as the caller has it)
        sys.path[:] = list(dict.fromkeys([*spec["sys_path"], *sys.path]))
    n, seconds, repeats = spec["num_envs"], spec["seconds"], spec["repeats"]
    fns = [partial(_make_env, spec.get("env_id"), spec.get("env_module")) for _ in range(n)]
    probe = fns[0]()
    space = probe.action_space
    _close_within(probe, CLOSE_WAIT)  # (before the pool forks: the probe is not its workers' to hold)
    space.seed(0)
    samples = [[space.sample() for _ in range(n)] for _ in range(64)]
    try:
        batches: Any = np.stack([np.stack(batch) for batch in samples])
    except (ValueError, TypeError):  # (a Tuple of mixed parts, a Sequence: one action per env, as SB3 takes them)
        batches = samples
    options = {"start_method": "fork" if "fork" in mp.get_all_start_methods() else None, **spec["config"]}
    began = time.perf_counter()
    venv = SubprocVecEnv(fns, **options)
    try:
        pool = venv.pool
        resolved = {key: getattr(pool, key) for key in CONFIG_KEYS}
        # (what a candidate set beyond the searched keys, pin or ring_slots: the file reproduces what was measured)
        resolved.update({key: value for key, value in spec["config"].items() if key not in resolved})
        if spec["config"].get("spin_ns") is None:
            # the default is the parent's yield-poll and workers that adapt theirs (pool.spin_ns is only the
            # parent's): recorded as the default, so that the file reproduces it and spin_ns=-200000 is tried too
            resolved["spin_ns"] = None
        startup = time.perf_counter() - began
        batch = spec["config"].get("batch_size")
        if batch:  # asynchronous batches: each call receives `batch` envs and sends them their actions

            def step(actions: np.ndarray) -> None:
                ids = venv.recv()[4]
                venv.send(actions[: len(ids)], ids)

            resolved["batch_size"] = batch
            venv.async_reset()
            timing = time_steps(step, batches, batch, seconds, repeats)
        else:
            venv.reset()
            timing = time_steps(venv.step, batches, n, seconds, repeats)
    except BaseException:
        venv.close()
        raise
    return {
        "then": venv.close,  # (after the result is printed: an env's close() that hangs costs it nothing)
        "status": "ok",
        "resolved": resolved,
        "rate": timing["rate"],
        "rates": timing["rates"],
        "other_load": timing["other_load"],
        "startup_s": startup,
    }


def _close_within(env: Any, seconds: float) -> None:
    """``env.close()``, refused as the env's error where it does not return within ``seconds``."""
    if not ends_within(env.close, seconds):
        raise RuntimeError(f"the env's close() did not return within {seconds:g} s")


def measure(spec: dict, timeout: float) -> dict:
    """Measure one candidate in a child process; a hang or crash is a result with its status."""
    # this fastvec first on the child's path, also from a source checkout
    # (and the caller's own sys.path, in its order, set at the child's start: a program's folder, where an
    # env_module it imports lies; on PYTHONPATH, folders after site-packages would have come before it)
    spec = {**spec, "sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path]}
    env = child_environ(repository_root(), os.getcwd())
    run = run_child(python_argv("fastvec.tune", "--child", json.dumps(spec)), timeout, env=env)
    return child_result(run, timeout)


# -- the search -----------------------------------------------------------------------------------
def _argument_error(flag: Callable[[str], str], required: bool = False, **values: float | None) -> str | None:
    """What is wrong with the first of the search's counts (whole numbers, at least 1) and durations
    (positive, finite seconds) in ``values``, named by ``flag(name)``; None when all are right. A value
    None is a default still to come (the command line's), unless ``required`` (the API's)."""
    for name, value in values.items():
        if value is None:
            if required:
                return f"{flag(name)} must be given, not None"
            continue
        count = name in ("num_envs", "repeats", "attempts")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if count else numbers.Real):
            return f"{flag(name)} must be {'a whole number' if count else 'a number of seconds'}, not {value!r}"
        if count and value < 1:
            return f"{flag(name)} must be at least 1, not {value}"
        if not count and not 0 < value < float("inf"):
            return f"{flag(name)} must be a positive number of seconds, not {value}"
    return None


def _time_error(flag: Callable[[str], str], seconds: float, repeats: int, timeout: float) -> str | None:
    """A ``timeout`` that a candidate's own measuring (``repeats`` runs of ``seconds``, after a warm-up and the
    pool's start) cannot fit in: every candidate was killed as hung, the default's failure blamed."""
    needed = seconds * repeats + min(0.3, seconds / 3)
    if needed >= timeout:
        return (
            f"{flag('timeout')} {timeout:g} s leaves no time to measure a candidate: {flag('repeats')} {repeats} x "
            f"{flag('seconds')} {seconds:g} take {needed:g} s before the pool's start; give a longer "
            f"{flag('timeout')} or a shorter measurement"
        )
    return None


def option_error(**values: float | None) -> str | None:
    """``_argument_error`` for command-line options (``num_envs`` named ``--num-envs``; None: a default)."""
    return _argument_error(lambda name: "--" + name.replace("_", "-"), **values)


def search(
    env_id: str | None = None,
    env_module: str | None = None,
    num_envs: int = 64,
    *,
    seconds: float = 1.0,
    repeats: int = 3,
    quick: bool = False,
    candidates: Iterable[dict] | None = None,
    timeout: float = 120.0,
    attempts: int = 2,
    report: Callable[[str], None] = print,
) -> dict:
    """Measure fastvec settings for ``num_envs`` copies of one env; returns the tuning record.

    ``candidates`` replaces the staged search with an explicit list of configs
    (dicts of num_workers, step_in_parent, spin_ns, pin_workers). The default
    configuration ({}) is always measured. Returns a dict with ``config`` (the best,
    every value resolved), ``throughput``, ``default_throughput``, ``verdict``,
    ``machine`` and ``candidates`` (all measurements, ranked). A candidate disturbed by
    other load is measured up to ``attempts`` times; the least disturbed run counts.
    """
    if (env_id is None) == (env_module is None):
        raise ValueError("give exactly one of env_id and env_module")
    error = _argument_error(
        str, required=True, num_envs=num_envs, repeats=repeats, seconds=seconds, timeout=timeout, attempts=attempts
    )
    if error is None:
        error = _time_error(str, seconds, repeats, timeout)
    if error is None and candidates is not None:
        candidates = [dict(config) for config in candidates]
        for config in candidates:  # (a key measured but not recorded would be lost from the file)
            unknown = sorted(set(config) - set(TUNABLE) - {"batch_size"})
            if unknown:
                error = f"candidate {config}: {', '.join(unknown)} is not a tuning option (those are {', '.join(TUNABLE)} and batch_size)"
                break
    if error is not None:  # (before any child runs: num_envs=0 failed inside one, seconds=0 measured noise)
        raise ValueError(error)
    # (numpy's scalars pass the checks, and the children's specs are JSON, which takes Python's numbers only)
    num_envs, repeats, attempts, seconds, timeout = int(num_envs), int(repeats), int(attempts), float(seconds), float(timeout)
    num_cores = cores()
    base = {"env_id": env_id, "env_module": env_module, "num_envs": num_envs, "seconds": seconds, "repeats": repeats}
    measured: list[dict] = []
    seen: dict[str, dict] = {}

    def run(config: dict) -> dict:
        key = json.dumps(config, sort_keys=True)
        if key in seen:
            return seen[key]
        result = {"config": config, **measure({**base, "config": config}, timeout)}
        for _ in range(attempts - 1):
            if result["status"] != "ok" or result["other_load"] <= MAX_OTHER_LOAD:
                break
            again = {"config": config, **measure({**base, "config": config}, timeout)}
            if again["status"] == "ok" and again["other_load"] < result["other_load"]:
                result = again
        result["disturbed"] = result["status"] == "ok" and result["other_load"] > MAX_OTHER_LOAD
        if result["status"] == "ok":
            resolved_key = json.dumps(result["resolved"], sort_keys=True)
            twin = next((m for m in measured if json.dumps(m.get("resolved"), sort_keys=True) == resolved_key), None)
            result["same_as"] = twin["config"] if twin else None
        seen[key] = result
        measured.append(result)
        report(_describe(result))
        return result

    default = run({})
    if default["status"] != "ok":  # (the env cannot be made, steps too slowly or hangs, crashes: in every candidate)
        raise RuntimeError(
            f"the default configuration failed ({default['status']}), so no other is measured: {default.get('reason', '')}"
        )
    if candidates is not None:
        for config in candidates:  # (numpy values, as from np.arange: the spec is JSON)
            run({k: v.item() if isinstance(v, numbers.Number) and hasattr(v, "item") else v for k, v in dict(config).items()})
    else:
        layout_default = _default_layout(num_envs, num_cores)
        for workers in worker_counts(num_envs, num_cores, quick):
            for in_parent in (True, False):
                layout = {"num_workers": workers, "step_in_parent": in_parent}
                if layout != layout_default:  # the default already measured this layout
                    run(layout)
        with_processes = [m for m in _ranked(measured) if not is_in_process(m["resolved"])]
        if with_processes:
            best = with_processes[0]
            layout = {k: best["resolved"][k] for k in ("num_workers", "step_in_parent")}
            for spin in QUICK_SPIN_CHOICES if quick else SPIN_CHOICES:
                if spin != best["resolved"]["spin_ns"]:
                    run({**layout, "spin_ns": spin})
            best = next(m for m in _ranked(measured) if not is_in_process(m["resolved"]))
            run({**{k: best["resolved"][k] for k in ("num_workers", "step_in_parent", "spin_ns")}, "pin_workers": True})
        if num_envs >= 2 and num_envs % 2 == 0:
            for in_parent in (True, False):
                run({"batch_size": num_envs // 2, "step_in_parent": in_parent})
    # asynchronous batches are reported beside the synchronous settings, not ranked with them
    batched = [m for m in measured if "batch_size" in m["config"]]
    asynchronous = next(iter(_ranked(batched)), None)
    if asynchronous is None and candidates is None:  # (said in the verdict: why none is compared)
        if batched:
            reasons = "; ".join(f"{m['status']} ({m.get('reason', '')})" for m in batched)
            not_async = f"asynchronous batches could not be measured: {reasons}"
        else:
            not_async = f"asynchronous batches (batch_size = num_envs / 2) are measured for an even num_envs, not {num_envs}"
    else:
        not_async = None
    measured = [m for m in measured if "batch_size" not in m["config"]]
    ranked = _ranked(measured)
    if not ranked:
        reasons = "; ".join(f"{m['config']}: {m['status']} {m.get('reason', '')}" for m in measured)
        raise RuntimeError(f"no candidate could be measured: {reasons}")
    best = ranked[0]
    default_rate = default["rate"] if default["status"] == "ok" else None
    return {
        "config": dict(best["resolved"]),
        "throughput": best["rate"],
        "default_throughput": default_rate,
        "default_config": default.get("resolved"),
        "speedup": best["rate"] / default_rate if default_rate else None,
        "verdict": verdict(best, default if default_rate else None, num_envs, asynchronous)
        + (f" ({not_async}.)" if not_async else ""),
        "async": asynchronous,
        "env": env_id or env_module,
        "num_envs": num_envs,
        "seconds": seconds,
        "repeats": repeats,
        "machine": machine_facts(),
        "candidates": ranked + [m for m in measured if m["status"] != "ok"] + [m for m in batched if m["status"] != "ok"],
    }


def _ranked(measured: list[dict]) -> list[dict]:
    return sorted((m for m in measured if m["status"] == "ok"), key=lambda m: -m["rate"])


def verdict(best: dict, default: dict | None, num_envs: int, asynchronous: dict | None = None) -> str:
    """One plain sentence on what to use (``best``/``default``: measurements with resolved config and rate;
    ``asynchronous``: the measurement of asynchronous batches, if any)."""
    cfg = best["resolved"]
    vs_default = f"{best['rate'] / default['rate']:.2f}x the default" if default else "the default failed"
    within = bool(default) and best is not default and best["rate"] < (1 + NOISE) * default["rate"]  # type: ignore[index]
    if is_in_process(cfg) and within:  # (a lead the tuner's own noise margin says nothing of: no advice to drop processes)
        return (
            f"stepping all {num_envs} envs in this process (num_workers=1, step_in_parent=True) measured "
            f"{best['rate']:,.0f} steps/s, {vs_default}: within {100 * NOISE:.0f}% of it, so worker processes neither "
            "pay off nor cost here; keeping the default is as good."
        ) + _async_verdict(best, asynchronous)
    if is_in_process(cfg):
        text = (
            f"processes do not pay off here: stepping all {num_envs} envs in this process (num_workers=1, "
            f"step_in_parent=True) is fastest at {best['rate']:,.0f} steps/s, {vs_default}. "
            "An in-process vectorizer (SB3's DummyVecEnv, or fastvec with this config) is the right choice."
        )
    else:
        text = (
            f"best: num_workers={cfg['num_workers']}, step_in_parent={cfg['step_in_parent']}, "
            f"spin_ns={cfg['spin_ns']}, pin_workers={cfg['pin_workers']} at {best['rate']:,.0f} steps/s, {vs_default}."
        )
    if within:
        text += f" That is within {100 * NOISE:.0f}% of the default: keeping the default is as good."
    return text + _async_verdict(best, asynchronous)


def _async_verdict(best: dict, asynchronous: dict | None) -> str:
    """The verdict's sentence on asynchronous batches (their measurement, if any, against ``best``)."""
    if asynchronous is None:
        return ""
    ratio = asynchronous["rate"] / best["rate"]
    batch = asynchronous["config"]["batch_size"]
    setting = f"batch_size={batch}, step_in_parent={asynchronous['config'].get('step_in_parent')}"
    if ratio > 1 + NOISE:
        return (
            f" Asynchronous batches pay off: {setting} with send/recv gives {asynchronous['rate']:,.0f} "
            f"steps/s, {ratio:.2f}x (for a learner that can act on {batch} envs at a time)."
        )
    return f" Asynchronous batches ({setting}) do not pay off here: {ratio:.2f}x."


def _describe(m: dict) -> str:
    label = json.dumps(m["config"]) if m["config"] else "default"
    if m["status"] != "ok":
        return f"  {label}: {m['status']} ({m.get('reason', '')})"
    flag = " (disturbed)" if m.get("disturbed") else ""
    note = f"; {m['note']}" if m.get("note") else ""
    return f"  {label}: {m['rate']:,.0f} steps/s, other load {100 * m['other_load']:.1f}%{flag}{note}"


def table(record: dict) -> str:
    """The ranked candidates as a plain-text table."""
    default = record["default_throughput"]
    rows = [
        ("rank", "num_workers", "step_in_parent", "spin_ns", "pin_workers", "steps/s", "vs default", "load", "tried")
    ]
    for i, m in enumerate(record["candidates"], 1):
        if m["status"] != "ok":
            rows.append(("-", *(str(m["config"].get(k, "")) for k in CONFIG_KEYS), m["status"], "", "", ""))
            continue
        r = m["resolved"]
        tried = "default" if not m["config"] else ",".join(f"{k}={v}" for k, v in m["config"].items())
        rows.append(
            (
                str(i),
                str(r["num_workers"]),
                str(r["step_in_parent"]) + (" (no process)" if is_in_process(r) else ""),
                str(r["spin_ns"]),
                str(r["pin_workers"]),
                f"{m['rate']:,.0f}",
                f"{m['rate'] / default:.2f}x" if default else "",
                f"{100 * m['other_load']:.1f}%" + ("*" if m.get("disturbed") else ""),
                tried,
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def write(record: dict, path: str | os.PathLike) -> None:
    """Write the record as JSON; ``fastvec.SubprocVecEnv(..., config=path)`` reads its "config"."""
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(_measure_here, argv[1])
    parser = argparse.ArgumentParser(
        prog="python -m fastvec.tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--env-id", help="a gymnasium env id, built with gymnasium.make")
    which.add_argument("--env-module", help="module:factory, a callable with no arguments returning one env")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=None, help="one timed run (default 1.0, --quick 0.3)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per candidate, median (default 3, --quick 1)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer candidates and shorter runs (about 30 s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a candidate is declared hung")
    parser.add_argument("--output", type=Path, default=None, help="write the best configuration here (JSON)")
    args = parser.parse_args(argv)
    error = option_error(num_envs=args.num_envs, repeats=args.repeats, seconds=args.seconds, timeout=args.timeout)
    if error is not None:
        parser.error(error)
    if args.env_module is not None:
        try:
            _factory_name(args.env_module)
        except ValueError as exc:
            parser.error(str(exc))
    if args.output is not None:  # (refused now, not after minutes of measuring)
        folder = args.output.parent
        if args.output.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
            parser.error(f"--output {args.output}: cannot write a file there")
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 1.0)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    error = _time_error(lambda name: "--" + name, seconds, repeats, args.timeout)
    if error is not None:
        parser.error(error)
    print(
        f"tuning fastvec for {args.num_envs} x {args.env_id or args.env_module} on {cores()} cores "
        f"({seconds:g} s x {repeats} per candidate)",
        flush=True,
    )
    try:
        record = search(
            args.env_id,
            args.env_module,
            args.num_envs,
            seconds=seconds,
            repeats=repeats,
            quick=args.quick,
            timeout=args.timeout,
            report=lambda line: print(line, flush=True),
        )
    except RuntimeError as exc:
        raise SystemExit(f"fastvec.tune: {exc}") from None
    except KeyboardInterrupt:  # (each candidate's child is ended with its session: nothing is left to say)
        print("fastvec.tune: interrupted; no configuration written", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    print()
    print(table(record))
    print()
    default = record["default_throughput"]
    print(f"default: {json.dumps(record['default_config'])} at " + (f"{default:,.0f} steps/s" if default else "failed"))
    print(f"best:    {json.dumps(record['config'])} at {record['throughput']:,.0f} steps/s")
    print(record["verdict"])
    if args.output:
        write(record, args.output)
        print(f'wrote {args.output}: fastvec.SubprocVecEnv(env_fns, config="{args.output}")')
    return record


if __name__ == "__main__":
    main()
