"""Microbenchmark of fastvec's copy and check kernels: Cython vs its pure-Python twin vs plain numpy.

    python -m benchmarks.kernels            # about 15 s
    python -m benchmarks.kernels --quick    # a few seconds

What each kernel does in fastvec, and the numpy a straightforward engine would write instead:

- gather_rows(items, slot, start): a shard copies the observations its envs returned
  (a list of arrays) into its rows of the ring slot. numpy: ``np.stack(items, out=slot)``,
  or a loop of ``slot[j] = item`` (slice assignment).
- store_floats / store_bools: rewards and terminated/truncated flags (Python floats and
  bools) into the ring. numpy: ``slot[start:start + n] = items``.
- first_outside_int: the parent checks a batch of Discrete actions against the space's
  bounds. numpy: ``((a < low) | (a > high)).any()`` (which only says whether, not where).

Times are ns per call, best of ``--repeats`` timeit rounds (the least disturbed).
Writes kernels.md to the results folder beside the study's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import timeit
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _cli
from fastvec import _kernels_py

try:
    from fastvec import _kernels as compiled  # type: ignore[attr-defined]
except ImportError:  # an unbuilt checkout: the compiled column says so
    compiled = None

ROOT = Path(__file__).resolve().parent.parent


def _time_ns(fn: Any, repeats: int, min_seconds: float) -> float:
    timer = timeit.Timer(fn)
    number, elapsed = 1, 0.0
    while True:  # like Timer.autorange, but with our own minimum duration
        elapsed = timer.timeit(number)
        if elapsed >= min_seconds:
            break
        number *= 2 if elapsed == 0 else max(2, int(min_seconds / elapsed * 1.2))
    best = min([elapsed, *timer.repeat(repeat=repeats - 1, number=number)]) if repeats > 1 else elapsed
    return best / number * 1e9


def cases() -> list[tuple[str, str, int, dict]]:
    """(kernel, observation, rows, {variant: callable}) for every case measured."""
    out = []
    rng = np.random.default_rng(0)
    for label, shape, dtype in (("4 float32", (4,), np.float32), ("84x84x4 uint8", (84, 84, 4), np.uint8)):
        for rows in (8, 64):
            items = [rng.integers(0, 255, size=shape).astype(dtype) for _ in range(rows)]
            slot = np.empty((rows, *shape), dtype)
            variants = {
                "python": lambda items=items, slot=slot: _kernels_py.gather_rows(items, slot, 0),
                "numpy stack": lambda items=items, slot=slot: np.stack(items, out=slot),
                "numpy slices": lambda items=items, slot=slot: _slice_loop(items, slot),
            }
            if compiled is not None:
                variants["cython"] = lambda items=items, slot=slot: compiled.gather_rows(items, slot, 0)
            out.append(("gather_rows", label, rows, variants))
    for rows in (8, 64):
        floats = [float(x) for x in rng.random(rows)]
        bools = [bool(x) for x in rng.random(rows) < 0.1]
        rewards = np.empty(rows, np.float64)
        flags = np.empty(rows, np.uint8)
        actions = rng.integers(0, 2, size=rows).astype(np.int64)
        low, high = np.zeros(1, np.int64), np.ones(1, np.int64)
        for kernel, variants in (
            (
                "store_floats",
                {
                    "python": lambda f=floats, d=rewards: _kernels_py.store_floats(f, d, 0),
                    "numpy slices": lambda f=floats, d=rewards: d.__setitem__(slice(0, len(f)), f),
                    "cython": (lambda f=floats, d=rewards: compiled.store_floats(f, d, 0)) if compiled else None,
                },
            ),
            (
                "store_bools",
                {
                    "python": lambda b=bools, d=flags: _kernels_py.store_bools(b, d, 0),
                    "numpy slices": lambda b=bools, d=flags: d.__setitem__(slice(0, len(b)), b),
                    "cython": (lambda b=bools, d=flags: compiled.store_bools(b, d, 0)) if compiled else None,
                },
            ),
            (
                "first_outside_int",
                {
                    "python": lambda a=actions, lo=low, hi=high: _kernels_py.first_outside_int(a, lo, hi),
                    "numpy any": lambda a=actions, lo=low, hi=high: bool(((a < lo[0]) | (a > hi[0])).any()),
                    "cython": (lambda a=actions, lo=low, hi=high: compiled.first_outside_int(a, lo, hi))
                    if compiled
                    else None,
                },
            ),
        ):
            out.append(
                (
                    kernel,
                    "Discrete(2)" if kernel == "first_outside_int" else "scalars",
                    rows,
                    {k: v for k, v in variants.items() if v is not None},
                )
            )
    return out


def _slice_loop(items: list, slot: np.ndarray) -> None:
    for j, item in enumerate(items):
        slot[j] = item


VARIANTS = ["cython", "python", "numpy stack", "numpy slices", "numpy any"]


def run(repeats: int, min_seconds: float) -> list[dict]:
    rows = []
    for kernel, label, n, variants in cases():
        row = {"kernel": kernel, "data": label, "rows": n}
        for name, fn in variants.items():
            fn()  # warm caches, check it runs
            row[name] = _time_ns(fn, repeats, min_seconds)
        rows.append(row)
    order = ["gather_rows", "store_floats", "store_bools", "first_outside_int"]
    return sorted(rows, key=lambda r: order.index(r["kernel"]))  # stable: data and rows keep their order


def markdown(rows: list[dict]) -> str:
    used = [v for v in VARIANTS if any(v in r for r in rows)]
    head = (
        "| kernel | data | rows | "
        + " | ".join(f"{v} (ns)" for v in used)
        + " | python / cython | best numpy / cython |"
    )
    lines = [head, "|---|---|---:|" + "---:|" * (len(used) + 2)]
    for r in rows:
        cells = [f"{r[v]:,.0f}" if v in r else "" for v in used]
        numpy_best = min((r[v] for v in used if v.startswith("numpy") and v in r), default=None)
        if "cython" in r:
            ratio_py = f"{r['python'] / r['cython']:.1f}x"
            ratio_np = f"{numpy_best / r['cython']:.1f}x" if numpy_best else ""
        else:
            ratio_py = ratio_np = "not built"
        lines.append(
            f"| {r['kernel']} | {r['data']} | {r['rows']} | " + " | ".join(cells) + f" | {ratio_py} | {ratio_np} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kernels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=_cli.count, default=5, help="timeit rounds per variant; the best is reported")
    parser.add_argument("--min-seconds", type=_cli.seconds, default=0.05, help="length of one round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 10 ms")
    parser.add_argument("--machine", default=None, help="results folder name prefix (default: <cores>core)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default benchmarks/results/<machine>-<date>)"
    )
    args = parser.parse_args(argv)
    if args.out is not None:  # (checked before measuring: found after, it lost the results in a traceback)
        out_error = _cli.out_error(args.out, folder=True)
        if out_error:
            parser.error(out_error)
    if args.quick:
        args.repeats, args.min_seconds = 2, 0.01
    from benchmarks.vec_env import machine_facts, result_folder

    facts = machine_facts()
    rows = run(args.repeats, args.min_seconds)
    table = markdown(rows)
    out = args.out or result_folder(args.machine, facts)
    out.mkdir(parents=True, exist_ok=True)
    report = (
        f"# fastvec kernels: Cython vs pure Python vs numpy ({dt.date.today().isoformat()})\n\n"
        f"ns per call, best of {args.repeats} rounds of at least {args.min_seconds:g} s. "
        f"CPU: {facts['cpu']}, {facts['cores']} cores, Python {facts['python']}, numpy {facts['numpy']}.\n\n{table}\n"
    )
    (out / "kernels.md").write_text(report)
    print(report)
    print(f"written to {out / 'kernels.md'}")


if __name__ == "__main__":
    main()
