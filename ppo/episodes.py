"""Episode returns and lengths, tracked for all envs at once (no Python loop over envs)."""

from __future__ import annotations

import numpy as np

__all__ = ["EpisodeTracker"]


class EpisodeTracker:
    """Running return and length of every env's current episode, and the last ``window`` finished ones.

    ``history()`` gives every finished episode (global step at its end, return, length)
    for the learning curve. In a distributed run each rank tracks its own envs with
    ``step`` and hands its new episodes (``take_new``) to a tracker of all ranks' episodes,
    which only ``record``s them.
    """

    def __init__(self, num_envs: int, window: int = 100):
        self.window = window
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.recent_returns = np.zeros(window, dtype=np.float64)
        self.recent_lengths = np.zeros(window, dtype=np.int64)
        self.count = 0  # episodes finished so far
        self._history: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (end steps, returns, lengths)
        self._taken = 0  # entries of _history already handed out by take_new()

    def step(self, rewards: np.ndarray, done: np.ndarray, global_step: int, envs: np.ndarray | None = None) -> int:
        """Add one step's ``rewards [N]``; close the episodes where ``done [N]``. Returns how many ended.
        With ``envs`` (async_envs), the step of those envs only: ``rewards`` and ``done`` are theirs."""
        rows = slice(None) if envs is None else envs
        self.returns[rows] += rewards
        self.lengths[rows] += 1
        if not done.any():
            return 0
        ended = np.flatnonzero(done) if envs is None else envs[done]
        self.record(np.full(len(ended), global_step, dtype=np.int64), self.returns[ended], self.lengths[ended])
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return len(ended)

    def record(self, steps: np.ndarray, returns: np.ndarray, lengths: np.ndarray) -> None:
        """Add finished episodes, in order: (global step at the end, return, length) of each."""
        if len(returns) == 0:
            return
        self._history.append((np.array(steps, dtype=np.int64), np.array(returns), np.array(lengths, dtype=np.int64)))
        k = min(len(returns), self.window)
        positions = (self.count + np.arange(len(returns) - k, len(returns))) % self.window
        self.recent_returns[positions] = returns[-k:]
        self.recent_lengths[positions] = lengths[-k:]
        self.count += len(returns)

    def take_new(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The episodes finished since the last call, as ``history()`` gives them."""
        new = self._history[self._taken :]
        self._taken = len(self._history)
        return _concatenate(new)

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
        return _concatenate(self._history)

    def restore(self, count: int, steps: np.ndarray, returns: np.ndarray, lengths: np.ndarray) -> None:
        """Take up the finished episodes of the run this one resumes: ``count`` of them in all, of which
        the last ``len(returns)`` (all of them, or at least the last ``window``), as ``history()`` gave
        them. The window's means and the learning curve go on from that run's."""
        n = len(returns)
        if not len(steps) == n == len(lengths) or n > count or (n < min(count, self.window)):
            raise ValueError(
                f"an episode history of {len(steps)}, {n} and {len(lengths)} entries cannot hold the last of {count} episodes"
            )
        self._history, self._taken = [], 0
        self.count = int(count) - n  # (the window's entries land where ``count`` episodes would have left them)
        self.record(np.asarray(steps, np.int64), np.asarray(returns, np.float64), np.asarray(lengths, np.int64))
        self.count = int(count)
        self._taken = len(self._history)  # (no rank's new episodes)


def _concatenate(entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not entries:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    steps, returns, lengths = zip(*entries)
    return np.concatenate(steps), np.concatenate(returns), np.concatenate(lengths)
