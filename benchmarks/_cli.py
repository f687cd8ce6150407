"""Argument types of the benchmarks' command lines: a count or a duration given wrongly (0, -1, nan) is named by
argparse in one line ("argument --repeats: must be at least 1, got 0") instead of failing later in a traceback,
or worse, writing a results file of nothing."""

from __future__ import annotations

import argparse
import math


def count(text: str) -> int:
    """An int of at least 1 (rounds, repeats, envs, commands)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count0(text: str) -> int:
    """An int of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def file_path(text: str):  # type: ignore[no-untyped-def]
    """A file's path or a results stem: one written as a folder's (``runs/``, which ``Path`` reads as ``runs``, whose
    results then went to ``runs.md`` beside it) is refused."""
    import os
    from pathlib import Path

    last = text.replace(os.altsep or os.sep, os.sep).rsplit(os.sep, 1)[-1]
    if last in ("", ".", ".."):  # (runs/, runs/. and runs/.. are folders: Path reads the first two as runs)
        raise argparse.ArgumentTypeError(f"{text}: give a file's path or stem, not a folder's")
    return Path(text)


def seconds(text: str) -> float:
    """A finite number above 0 (a duration)."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def seconds0(text: str) -> float:
    """A finite number of at least 0 (a pause, a warm-up)."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text}")
    return value


def checkout_error(tree: str, flag: str) -> str | None:
    """What is wrong with ``tree`` as another checkout to measure (``flag`` names the option), or None: it must hold
    fastvec and its benchmarks, with fastvec's extension built (else its children would load this checkout's
    kernels through the editable install, or crash in every round)."""
    from pathlib import Path

    root = Path(tree)
    if not (root / "fastvec" / "__init__.py").is_file() or not (root / "benchmarks" / "_measure.py").is_file():
        return f"{flag} {tree}: not a fastvec checkout (no fastvec/__init__.py and benchmarks/_measure.py there)"
    if not any((root / "fastvec").glob("_kernels*.so")):
        return f"{flag} {tree}: fastvec's extension is not built there (python setup.py build_ext --inplace)"
    return None


def out_error(path, folder: bool = False) -> str | None:
    """Whether results can be written at ``path`` (a file's path or stem, or with ``folder`` a folder), checked
    before any measuring: a path found unwritable after the run lost its results in a traceback. Nothing is made
    (a --dry-run makes no folder)."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    if not folder and path.is_dir():
        return f"--out {path}: is a folder; give a file's path"
    if folder and path.exists() and not path.is_dir():
        return f"--out {path}: is a file; give a folder"
    where = path if folder else path.parent
    existing = where
    while not existing.exists():  # (the folders still to make: the nearest one there must take them)
        existing = existing.parent
    if not existing.is_dir():
        return f"--out {path}: {existing} is not a folder"
    try:  # (a folder made there and removed at once: os.access says yes to root where making one fails, /proc)
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as exc:
        return f"--out {path}: nothing can be made in {existing} ({exc.strerror or exc})"
    return None


def env_error(env_id: str) -> str | None:
    """What is wrong with a gymnasium env id, or None: one env made here by ``gymnasium.make`` as the study will
    make it (``module:id`` imports its module, an unversioned id takes the latest version); an id it refuses ended
    in a traceback per process that made the env."""
    import warnings

    import gymnasium as gym

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gym.make(env_id).close()
    except Exception as exc:  # noqa: BLE001 - said in one line
        return f"{env_id}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def stem_file(out, suffix: str):
    """The file ``<out><suffix>`` of a results stem (``out.with_suffix`` cut a stem holding a dot, ``run-1.5ms``;
    a stem given with one of the files' own suffixes, ``x.md``, stands for ``x``)."""
    from pathlib import Path

    out = Path(out)
    if out.suffix in (".md", ".json", ".png"):
        out = out.with_suffix("")
    return out.with_name(out.name + suffix)


def stem_error(out, suffixes: tuple[str, ...]) -> str | None:
    """``out_error`` for a results stem, and none of its files a folder (found after the run, it lost the results)."""
    from pathlib import Path

    if Path(out).name in ("", ".", "..") or Path(out).is_dir():
        return f"--out {out}: give a file stem (the results go to <stem>{', <stem>'.join(suffixes)}), not a folder"
    error = out_error(stem_file(out, suffixes[0]))
    if error:
        return error
    folders = [str(stem_file(out, s)) for s in suffixes if stem_file(out, s).is_dir()]
    return f"--out {out}: {', '.join(folders)} is a folder" if folders else None
