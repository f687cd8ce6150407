"""Episode returns and lengths, tracked for all envs at once (no Python loop over envs)."""

from __future__ import annotations

import numpy as np

__all__ = ["EpisodeTracker"]


class EpisodeTracker:
    """Running return and length of every env's current episode, and the last ``window`` finished ones.

    ``history()`` gives every finished episode (global step at its end, return, length)
    for the learning curve.
    """

    def __init__(self, num_envs: int, window: int = 100):
        self.window = window
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.recent_returns = np.zeros(window, dtype=np.float64)
        self.recent_lengths = np.zeros(window, dtype=np.int64)
        self.count = 0  # episodes finished so far
        self._history: list[tuple[int, np.ndarray, np.ndarray]] = []

    def step(self, rewards: np.ndarray, done: np.ndarray, global_step: int) -> int:
        """Add one step's ``rewards [N]``; close the episodes where ``done [N]``. Returns how many ended."""
        self.returns += rewards
        self.lengths += 1
        if not done.any():
            return 0
        ended = np.flatnonzero(done)
        returns, lengths = self.returns[ended], self.lengths[ended]
        self._history.append((global_step, returns.copy(), lengths.copy()))
        k = min(len(ended), self.window)
        positions = (self.count + np.arange(len(ended) - k, len(ended))) % self.window
        self.recent_returns[positions] = returns[-k:]
        self.recent_lengths[positions] = lengths[-k:]
        self.count += len(ended)
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return len(ended)

    @property
    def full(self) -> bool:
        """At least ``window`` episodes have finished."""
        return self.count >= self.window

    def mean_return(self) -> float:
        """Mean return of the last ``window`` episodes (of all of them while fewer); nan before the first."""
        n = min(self.count, self.window)
        return float(self.recent_returns[:n].mean()) if n else float("nan")

    def mean_length(self) -> float:
        n = min(self.count, self.window)
        return float(self.recent_lengths[:n].mean()) if n else float("nan")

    def history(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(global step at the end, return, length) of every finished episode, in order."""
        if not self._history:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        steps = np.concatenate([np.full(len(r), s, dtype=np.int64) for s, r, _ in self._history])
        returns = np.concatenate([r for _, r, _ in self._history])
        lengths = np.concatenate([ln for _, _, ln in self._history])
        return steps, returns, lengths
