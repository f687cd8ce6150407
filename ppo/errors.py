"""The errors ppo.train refuses a run with at start, besides ValueError: each is also a ValueError, so the
trainer says it in one line (``ppo.train: ...``) as it does a setting given wrongly, while code that
catches the built-in kind (TypeError, RuntimeError) still catches it."""

from __future__ import annotations

__all__ = ["SpaceError", "SetupError"]


class SpaceError(TypeError, ValueError):
    """An env whose observation or action space the trainer does not take (FrozenLake's Discrete
    observations, Blackjack's Tuple, MultiDiscrete actions)."""


class SetupError(RuntimeError, ValueError):
    """What this machine or launcher does not give the run: a CUDA device, torchrun's environment, a
    checkpoint rank 0 could not read."""
