"""Selects the kernel implementation: compiled by default, pure Python with FASTVEC_PURE_PYTHON=1.

If the compiled extension is missing (a source checkout that was never built),
fastvec falls back to the pure-Python twin and says so once: not again in the workers
a pool starts (under spawn and forkserver each imports fastvec anew).
"""

from __future__ import annotations

import os
import sys
import warnings

_WARNED = "_FASTVEC_KERNELS_FALLBACK_WARNED"

_HERE = os.path.dirname(os.path.realpath(__file__))  # (this package's folder: where its compiled kernels belong)

_refused: str | None = None  # why another checkout's compiled kernels were refused here (once found, for good)


class _Refusing:
    """A finder ahead of every other refusing another checkout's compiled kernels, once found (see _compiled)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "fastvec._kernels" and _refused is not None:
            raise ImportError(_refused, name=name)
        return None


def _compiled():  # type: ignore[no-untyped-def]
    """The compiled kernels built in this package's folder; ImportError where there are none. Another checkout's
    (an unbuilt checkout, with fastvec installed editable from another: setuptools' editable finder hands out that
    tree's extension, of another version maybe) are refused, and every later import of them fails too
    (``from fastvec import _kernels``, ``select("cython")``), as on an unbuilt checkout without the other."""
    global _refused
    if _refused is not None:
        raise ImportError(_refused)
    # (not ``from fastvec import _kernels``: that, run while fastvec's __init__ is, said "cannot import name
    # '_kernels' from partially initialized module 'fastvec' (most likely due to a circular import)")
    import fastvec._kernels as module  # type: ignore[no-redef]

    if os.path.dirname(os.path.realpath(module.__file__)) != _HERE:
        _refused = f"the compiled kernels found are another checkout's, {module.__file__}"
        del sys.modules["fastvec._kernels"]
        sys.meta_path.insert(0, _Refusing())  # (an import of it now fails, saying why)
        package = sys.modules.get("fastvec")
        if package is not None and getattr(package, "_kernels", None) is module:
            del package._kernels  # (set by the import above: ``from fastvec import _kernels`` would read it)
        raise ImportError(_refused)
    return module


if os.environ.get("FASTVEC_PURE_PYTHON", "") not in ("", "0"):
    from fastvec import _kernels_py as impl
else:
    try:
        impl = _compiled()
    except ImportError as exc:  # pragma: no cover - only on unbuilt checkouts
        if not os.environ.get(_WARNED):
            warnings.warn(
                f"fastvec's compiled kernels are not built in {_HERE} ({exc}); using the slow pure-Python twin. Build "
                "them there (`python setup.py build_ext --inplace`, or `pip install -e .`); or, where fastvec is installed "
                "elsewhere, run Python from another folder than this checkout, so that the installed one is imported.",
                RuntimeWarning,
                stacklevel=2,
            )
            os.environ[_WARNED] = "1"  # (the workers a pool starts inherit it: one warning, not one per worker)
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


def select(implementation: str) -> None:
    """Use ``implementation`` ("cython" or "python") from now on, in this process: a worker takes its
    pool's, which it was told at its start. (A worker imports fastvec itself under spawn and forkserver,
    and reads FASTVEC_PURE_PYTHON then: set after the pool's process imported fastvec, it made a pure
    worker of a compiled pool, whose countdown that worker never counted: every step waited out the
    pool's 100 ms poll.) Callers that read the functions from this module at each call switch; an object made
    before (a pool's action writer keeps the check kernels it took) goes on with the other kernels, which give
    the same results."""
    global impl, IMPLEMENTATION
    if implementation == IMPLEMENTATION:
        return
    if implementation == "python":
        from fastvec import _kernels_py as chosen
    elif implementation == "cython":
        try:
            chosen = _compiled()
        except ImportError as exc:
            raise ImportError(f"fastvec's compiled kernels are not built in {_HERE} ({exc})") from None
    else:
        raise ValueError(f"unknown kernels {implementation!r} (expected 'cython' or 'python')")
    impl, IMPLEMENTATION = chosen, chosen.IMPLEMENTATION
    for name in __all__:
        if name != "IMPLEMENTATION":
            globals()[name] = getattr(chosen, name)
    package = sys.modules.get("fastvec")
    if package is not None:  # (fastvec.KERNELS, read from here at its import)
        package.KERNELS = IMPLEMENTATION


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
