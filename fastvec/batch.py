"""What a finished command returns: a typed view of one ring slot and its extras.

Front-ends (SB3's API, gymnasium's) and the ``ppo`` trainer read results only
through ``Batch`` and ``RingViews``; they never index the shared block's fields or
decode the pool's extras tuples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from fastvec.protocol import Extra

if TYPE_CHECKING:
    from fastvec.pool import Pool

__all__ = ["Batch", "RingViews", "sort_extras"]

_EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True)
class RingViews:
    """The pool's whole ring, as numpy views of the shared block (S slots, N envs).

    Valid until the pool is closed. Step t's results are in slot ``Batch.slot``; a
    slot is overwritten S steps later.
    """

    obs: tuple[np.ndarray, ...]  # one [S, N, *shape] array per observation leaf
    rewards: np.ndarray  # [S, N] float64
    terminated: np.ndarray  # [S, N] bool
    truncated: np.ndarray  # [S, N] bool
    terminal_obs: tuple[np.ndarray, ...]  # one [N, *shape] array per leaf: final observations of the latest step
    address: int  # where the shared block starts in this process (for registering it as pinned memory)
    nbytes: int  # the block's size


class Batch:
    """The results of one step or reset, in ring slot ``slot``.

    Attributes:
        slot: the ring slot holding the results.
        rewards, terminated, truncated: ``[N]`` views of that slot (float64, bool, bool).
        infos: env index -> the non-empty info dict its step returned (NEXT_STEP: or its
            autoreset's reset); a reset's infos are in ``reset_infos``.
        reset_infos: env index -> the info dict of a reset (a reset command, or SAME_STEP's
            reset after an episode ended), non-empty ones only.
        restarted: env index -> what made fastvec re-create the env (on_error="restart").
        has_extras: whether any of these three has an entry.
    """

    __slots__ = (
        "slot",
        "rewards",
        "terminated",
        "truncated",
        "infos",
        "reset_infos",
        "restarted",
        "final_obs",
        "has_extras",
        "_objects",
        "_pool",
        "_made",
    )

    def __init__(self, pool: Pool, slot: int, extras: list | None):
        self._pool = pool
        self.slot = slot
        self._made = pool._results_made
        self.rewards, self.terminated, self.truncated = pool.slot_views[slot]
        if not extras:  # the usual step: nothing but the ring (read-only empty mappings, shared)
            self.infos = self.reset_infos = self.restarted = self.final_obs = _EMPTY
            self.has_extras = False
            self._objects = pool.object_columns() if pool.obs_has_objects else None
            return
        # final_obs: env index -> the env's own final observation object, where sent
        self.infos, self.reset_infos, self.restarted, self.final_obs = sort_extras(extras)
        # whether a front-end has per-env dicts or restarts to report (a plain attribute: a property's call
        # costs about as much as the rest of a usual Batch, and SB3's step_wait asks on every step)
        self.has_extras = bool(self.infos or self.reset_infos or self.restarted)
        # object parts (Text, Graph, ...) are not in the ring: keep this step's
        self._objects = pool.object_columns() if pool.obs_has_objects else None

    def observations(self, copy: bool = True, batch_object: Any = None) -> Any:
        """The observations, in the observation space's structure (an array, or a dict / tuple of
        batches): copies, or views of the ring slot (valid for S - 1 further steps). Object parts
        (Text, Graph, ...) are batched by ``batch_object(leaf, values)`` (default: a tuple)."""
        if self._objects is None:
            slots = self._pool.obs_slots
            if slots is not None:  # one array leaf (the usual case): the slot's rows, without a further call
                return slots[self.slot].copy() if copy else slots[self.slot]
            return self._pool.observations(self.slot, copy)
        if batch_object is None:
            return self._pool.observations(self.slot, copy, self._objects)
        return self._pool.observations(self.slot, copy, self._objects, batch_object)

    def terminal_observation(self, i: int) -> Any:
        """Env ``i``'s final observation, when its episode ended in this step (SAME_STEP): the env's
        own object where it was sent (spaces with object or scalar parts), else a copy from the buffers."""
        self._pool._check_final_obs()  # (the autoreset mode first: a Batch one step old was told it was too old)
        if i in self.final_obs:
            return self.final_obs[i]
        _check_latest(self)
        return self._pool.terminal_observation(i)

    def terminal_observations(self, indices: list[int]) -> list:
        """``terminal_observation(i)`` for each env in ``indices`` (those whose episode ended), in one call."""
        self._pool._check_final_obs()  # (the autoreset mode first, as terminal_observation)
        if self.final_obs:
            return [self.terminal_observation(i) for i in indices]
        _check_latest(self)
        return self._pool.terminal_observations(indices)

    @property
    def ring(self) -> RingViews:
        return self._pool.ring


def _check_latest(batch: Any) -> None:
    """A Batch's final observations are in the pool's one terminal-obs buffer until the next step (a reset does not
    write it; an AsyncBatch's until its envs are sent again: it has no ``_made``)."""
    made = getattr(batch, "_made", None)
    if made is not None and batch._pool._results_made != made:
        raise ValueError(
            "this Batch's final observations were overwritten by a later step: read terminal_observation() "
            "before the next step (it returns a copy)"
        )


def sort_extras(extras: list) -> tuple[dict[int, dict], dict[int, dict], dict[int, str], dict[int, Any]]:
    """A step's extras by kind, each keyed by env index: (infos, reset infos, restart errors, final observations)."""
    infos: dict[int, dict] = {}
    reset_infos: dict[int, dict] = {}
    restarted: dict[int, str] = {}
    final_obs: dict[int, Any] = {}
    for i, kind, value in extras:
        if kind == Extra.INFO:
            infos[i] = value
        elif kind == Extra.RESET_INFO:
            reset_infos[i] = value
        elif kind == Extra.RESTARTED:
            restarted[i] = value["error"]
        elif kind == Extra.FINAL_OBS:
            final_obs[i] = value
    return infos, reset_infos, restarted, final_obs
