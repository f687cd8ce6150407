"""Rollout storage whose observations, rewards and flags *are* the env engine's ring buffers.

fastvec writes step t's results into ring slot t mod S. With S = num_steps + 1 the
ring holds a whole rollout: the num_steps observations the policy acted on plus the
one after the last step (to bootstrap from). ``Ring`` wraps those buffers with
``torch.from_numpy`` (no copy), so on CPU the policy reads each step's observations
straight from shared memory, and the only copy is the one gather of the finished
rollout into sample order that the update's batched passes need (CleanRL copies
every step into its buffer, then every minibatch out of it).

Each rollout starts in the slot where the previous one ended, so time step t of a
rollout lives in slot ``(start_slot + t) % S``: the storage keeps that mapping instead
of moving data. What only the learner produces (actions, log-probs, values, the
values of truncated episodes' final observations) lives in ordinary tensors.

On CUDA the storage keeps a device mirror of the observation ring, filled one slot
per step with ``non_blocking=True`` copies from the (pinned) host ring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Ring", "RolloutStorage"]


@dataclass
class Ring:
    """An engine's step results as torch tensors over its buffers (S slots, N envs).

    For fastvec these share memory with the pool's shared block; the other engines
    own plain buffers that they copy every step into.
    """

    obs: torch.Tensor  # [S, N, *obs_shape], the observation after the step that wrote the slot
    rewards: torch.Tensor  # [S, N] float64
    terminated: torch.Tensor  # [S, N] bool
    truncated: torch.Tensor  # [S, N] bool
    terminal_obs: torch.Tensor  # [N, *obs_shape]: final observation of envs whose episode ended in the latest step

    @classmethod
    def from_numpy(
        cls,
        obs: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        terminal_obs: np.ndarray,
    ) -> Ring:
        """Wrap numpy buffers without copying (``torch.from_numpy`` shares memory)."""
        return cls(
            torch.from_numpy(obs),
            torch.from_numpy(rewards),
            torch.from_numpy(terminated),
            torch.from_numpy(truncated),
            torch.from_numpy(terminal_obs),
        )

    @property
    def num_slots(self) -> int:
        return self.obs.shape[0]

    @property
    def num_envs(self) -> int:
        return self.obs.shape[1]


class RolloutStorage:
    """One rollout of ``num_steps`` steps of ``N`` envs, over a ring of ``num_steps + 1`` slots.

    Time-major flat sample index ``b = t * N + n`` (the order CleanRL flattens in)
    maps to ring row ``slot(t) * N + n``.
    """

    def __init__(
        self,
        ring: Ring,
        num_steps: int,
        action_shape: tuple[int, ...],
        action_dtype: torch.dtype,
        device: torch.device,
    ):
        if ring.num_slots != num_steps + 1:
            raise ValueError(f"the ring must have num_steps + 1 = {num_steps + 1} slots, got {ring.num_slots}")
        self.ring = ring
        self.num_steps = num_steps
        self.num_envs = ring.num_envs
        self.num_slots = ring.num_slots
        self.device = device
        self.on_host = device.type == "cpu"
        # what the networks read: the ring itself on CPU (zero copy), a device mirror elsewhere
        self.obs = ring.obs if self.on_host else torch.empty(ring.obs.shape, dtype=ring.obs.dtype, device=device)
        shape = (num_steps, self.num_envs)
        self.actions = torch.zeros((*shape, *action_shape), dtype=action_dtype, device=device)
        self.log_probs = torch.zeros(shape, device=device)
        self.values = torch.zeros(shape, device=device)
        # V(final observation) of envs truncated at step t (time-limit bootstrap); 0 elsewhere
        self.terminal_values = torch.zeros(shape, device=device)
        self.start_slot = 0
        self._obs_slots = list(self.obs.unbind(0))  # one view per slot: a list lookup per step, not a tensor index
        self._env_index = torch.arange(self.num_envs, device=device)
        self._step_index = torch.arange(num_steps + 1, device=device)

    # -- collecting ---------------------------------------------------------------------------
    def begin(self, slot: int) -> None:
        """Start a rollout whose first observation is in ring slot ``slot``."""
        self.start_slot = slot
        self.terminal_values.zero_()

    def slot(self, t: int) -> int:
        """Ring slot of time step ``t`` (0..num_steps) of the current rollout."""
        return (self.start_slot + t) % self.num_slots

    def arrived(self, slot: int) -> None:
        """The engine wrote ``slot``: on an accelerator, start copying its observations over."""
        if not self.on_host:
            self.obs[slot].copy_(self.ring.obs[slot], non_blocking=True)

    def arrived_rows(self, slot: int, start: int, stop: int) -> None:
        """async_envs: the engine wrote envs ``start..stop-1`` of ``slot`` (see ``arrived``)."""
        if not self.on_host:
            self.obs[slot, start:stop].copy_(self.ring.obs[slot, start:stop], non_blocking=True)

    def rows(self, slot: int, start: int, stop: int) -> torch.Tensor:
        """async_envs: the observations of envs ``start..stop-1`` in ``slot``, on the learner's device (a view)."""
        return self.obs[slot, start:stop]

    def obs_at(self, t: int) -> torch.Tensor:
        """Observations ``[N, *obs_shape]`` of time step t, on the learner's device (a view on CPU)."""
        return self._obs_slots[(self.start_slot + t) % self.num_slots]

    # -- reading a finished rollout ----------------------------------------------------------------
    def _result_slots(self) -> torch.Tensor:
        """Slots holding the results of steps 0..T-1 (step t's reward lands with observation t + 1)."""
        return (self.start_slot + 1 + self._step_index[:-1]) % self.num_slots

    def results(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rewards, terminated, truncated), each ``[T, N]`` in time order, on the device (the ring's dtypes)."""
        slots = self._result_slots().cpu()
        ring = self.ring
        out = (
            ring.rewards.index_select(0, slots),
            ring.terminated.index_select(0, slots),
            ring.truncated.index_select(0, slots),
        )
        if self.on_host:
            return out
        return tuple(x.to(self.device, non_blocking=True) for x in out)  # type: ignore[return-value]

    def flat_obs(self) -> torch.Tensor:
        """The whole observation ring as ``[S * N, *obs_shape]`` (a view, no copy)."""
        return self.obs.view(self.num_slots * self.num_envs, *self.obs.shape[2:])

    def obs_rows(self) -> torch.Tensor:
        """``[T * N]`` rows of ``flat_obs()`` holding the rollout's samples, time-major."""
        slots = (self.start_slot + self._step_index[:-1]) % self.num_slots
        return (slots[:, None] * self.num_envs + self._env_index[None, :]).reshape(-1)

    def rollout_obs(self) -> torch.Tensor:
        """All ``T * N`` observations the policy acted on, gathered time-major (one copy)."""
        return self.flat_obs().index_select(0, self.obs_rows())

    def release(self) -> None:
        """Drop every reference to the engine's buffers, so the engine can unmap them."""
        self.ring = None  # type: ignore[assignment]
        self.obs = None  # type: ignore[assignment]
        self._obs_slots = []
