"""Generalized advantage estimation (Schulman et al. 2016) over a rollout, with time-limit bootstrapping."""

from __future__ import annotations

import torch

__all__ = ["compute_gae"]


@torch.no_grad()
def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_value: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    terminal_values: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (advantages + values) of a rollout.

    Args:
        rewards: ``[T, N]`` reward of step t (the action taken in observation t).
        values: ``[T, N]`` V(observation t) under the policy that collected the rollout.
        next_value: ``[N]`` V(observation T), the observation after the last step.
        terminated: ``[T, N]`` bool, the episode reached a terminal state at step t.
        truncated: ``[T, N]`` bool, the episode was cut at step t (time limit) without terminating.
        terminal_values: ``[T, N]`` V(final observation) for envs truncated at step t; other entries ignored.
        gamma, gae_lambda: discount and GAE lambda.

    An episode that ends at step t cuts the advantage chain there (the next
    observation in the rollout belongs to the next episode). Its bootstrap value is
    0 if it terminated, and V(final observation) if it was only truncated: a time
    limit is not part of the MDP, so the return does not end there (Pardo et al.
    2018; SB3 adds gamma * V(terminal_observation) to the reward, which is the same).

    Returns:
        (advantages ``[T, N]``, returns ``[T, N]``), float32.
    """
    rewards = rewards.float()
    values = values.float()
    not_done = (~(terminated | truncated)).float()
    # V of what follows step t: the next observation's value inside an episode, the
    # final observation's value after a truncation, nothing after a termination
    following = torch.cat([values[1:], next_value.float().unsqueeze(0)])
    bootstrap = torch.where(truncated & ~terminated, terminal_values.float(), torch.zeros_like(rewards))
    deltas = rewards + gamma * (following * not_done + bootstrap) - values
    # A_t = delta_t + gamma * lambda * A_{t+1} within an episode: a backward recursion of one fused op per step
    decay = (gamma * gae_lambda) * not_done
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(deltas[0])
    for t in reversed(range(rewards.shape[0])):
        last = torch.addcmul(deltas[t], decay[t], last)
        advantages[t] = last
    return advantages, advantages + values
