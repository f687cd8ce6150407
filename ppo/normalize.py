"""Running mean and variance (Welford / Chan's parallel update), as a module so it lives in checkpoints."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RunningMeanStd"]


class RunningMeanStd(nn.Module):
    """Mean and variance of every element of ``shape`` over all batches seen so far.

    The statistics are buffers, so ``state_dict()`` carries them: a checkpoint of an
    agent with observation normalization evaluates exactly as it was trained.
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4, clip: float = 10.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        # epsilon counts as a prior observation of mean 0 / var 1, so the first update does not divide by 0
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))
        self.clip = clip

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        """Fold in ``batch`` of shape ``[B, *shape]``."""
        batch = batch.to(self.mean.device, torch.float64).reshape(-1, *self.mean.shape)
        if batch.shape[0] == 0:
            return
        self.update_from_moments(batch.mean(0), batch.var(0, unbiased=False), batch.shape[0])

    @torch.no_grad()
    def update_from_moments(self, batch_mean: torch.Tensor, batch_var: torch.Tensor, batch_count: int) -> None:
        """Fold in a batch given by its mean, population variance and size (Chan et al.'s parallel
        combination, which is what lets ranks of a distributed run add their batches' moments together)."""
        if batch_count == 0:
            return
        batch_mean = batch_mean.to(self.mean.device, torch.float64)
        batch_var = batch_var.to(self.mean.device, torch.float64)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        new_mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta.square() * self.count * batch_count / total
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """``(x - mean) / std``, clipped to +-clip, in x's dtype."""
        mean = self.mean.to(x.dtype)
        std = (self.var + eps).sqrt().to(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)

    def scale(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """``x / std`` without centring (reward scaling), clipped to +-clip."""
        std = (self.var + eps).sqrt().to(x.dtype)
        return (x / std).clamp(-self.clip, self.clip)
