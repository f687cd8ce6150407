"""Selects the kernel implementation: compiled by default, pure Python with FASTVEC_PURE_PYTHON=1.

If the compiled extension is missing (a source checkout that was never built),
fastvec falls back to the pure-Python twin and says so once.
"""

from __future__ import annotations

import os
import warnings

if os.environ.get("FASTVEC_PURE_PYTHON", "") not in ("", "0"):
    from fastvec import _kernels_py as impl
else:
    try:
        from fastvec import _kernels as impl  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - only on unbuilt checkouts
        warnings.warn(
            f"fastvec's compiled kernels are not built ({exc}); using the slow pure-Python twin. "
            "Install with `pip install .` to build them.",
            RuntimeWarning,
            stacklevel=2,
        )
        from fastvec import _kernels_py as impl

IMPLEMENTATION: str = impl.IMPLEMENTATION
wait_all = impl.wait_all
publish = impl.publish
issue = impl.issue
finish = impl.finish
wait_remaining = impl.wait_remaining
wait_any = impl.wait_any
gather_rows = impl.gather_rows
first_nan = impl.first_nan
add_stats = impl.add_stats
write_results = impl.write_results
contended_yields = impl.contended_yields
store_floats = impl.store_floats
store_bools = impl.store_bools
first_outside_int = impl.first_outside_int
first_outside_float = impl.first_outside_float
done_flags = impl.done_flags
info_dicts = impl.info_dicts
row_copies = impl.row_copies
copy_same = impl.copy_same
step_into = impl.step_into
step_watching = impl.step_watching
watch_stops = impl.watch_stops
term_deadline = impl.term_deadline
watch_parent = impl.watch_parent

__all__ = [
    "IMPLEMENTATION",
    "wait_all",
    "publish",
    "issue",
    "finish",
    "wait_remaining",
    "wait_any",
    "gather_rows",
    "first_nan",
    "add_stats",
    "write_results",
    "contended_yields",
    "term_deadline",
    "watch_parent",
    "store_floats",
    "store_bools",
    "first_outside_int",
    "first_outside_float",
    "done_flags",
    "info_dicts",
    "row_copies",
    "copy_same",
    "step_into",
    "step_watching",
    "watch_stops",
]
