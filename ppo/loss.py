"""PPO's losses: the clipped surrogate objective and the (optionally clipped) value loss."""

from __future__ import annotations

import torch

__all__ = ["clipped_policy_loss", "value_loss"]


def clipped_policy_loss(
    new_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO-clip (Schulman et al. 2017, eq. 7), as a loss to minimise.

    ``L = mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))`` with ``r = exp(new - old)``.

    Returns:
        (loss, approx_kl, clip_fraction): approx_kl is the low-variance estimator
        ``mean((r - 1) - log r)`` (Schulman's "k3"), clip_fraction the share of samples
        whose ratio left [1 - eps, 1 + eps]. Both are detached, for logging and early stopping.
    """
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    loss = torch.max(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return loss, approx_kl, clip_fraction


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_coef: float | None,
) -> torch.Tensor:
    """``0.5 * mean((V - R)^2)``; with ``clip_coef``, the pessimistic max of that and the loss of
    V clipped to ``old_values +- clip_coef`` (PPO2's value clipping, CleanRL detail #9)."""
    unclipped = (new_values - returns).square()
    if clip_coef is None:
        return 0.5 * unclipped.mean()
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_coef, clip_coef)
    clipped = (clipped_values - returns).square()
    return 0.5 * torch.max(unclipped, clipped).mean()
