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
