"""The errors ppo.train refuses a run with at start, besides ValueError: each is also a ValueError, so the
trainer says it in one line (``ppo.train: ...``) as it does a setting given wrongly, while code that
catches the built-in kind (TypeError, RuntimeError) still catches it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["SpaceError", "SetupError", "allocating", "first_line"]


class SpaceError(TypeError, ValueError):
    """An env whose observation or action space the trainer does not take (FrozenLake's Discrete
    observations, Blackjack's Tuple, MultiDiscrete actions)."""


class SetupError(RuntimeError, ValueError):
    """What this machine or launcher does not give the run: a CUDA device, torchrun's environment, a
    checkpoint rank 0 could not read."""


def first_line(exc: BaseException) -> str:
    """An error's message's first line that says something (its type's name where none does)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


@contextlib.contextmanager
def allocating(what: str) -> Iterator[None]:
    """torch's allocator failing inside (a traceback that named no setting) raised as a ValueError naming ``what``
    (the setting and the buffers it sizes): said in one line, as a setting given wrongly."""
    try:
        yield
    except (RuntimeError, OverflowError, MemoryError) as exc:
        raise ValueError(f"{what} cannot be allocated ({first_line(exc)})") from None
