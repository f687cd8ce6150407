"""PPO's clipped surrogate and value losses on cases worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ppo.loss import clipped_policy_loss, value_loss

pytestmark = pytest.mark.one_pass  # trainer mathematics; no engine

CLIP = 0.2


def _loss_and_grad(ratio: float, advantage: float) -> tuple[float, float, float, float]:
    new = torch.tensor([math.log(ratio)], requires_grad=True)
    loss, kl, clip_fraction = clipped_policy_loss(new, torch.zeros(1), torch.tensor([advantage]), CLIP)
    loss.backward()
    return loss.item(), new.grad.item(), kl.item(), clip_fraction.item()


def test_ratio_one_is_the_plain_policy_gradient() -> None:
    new = torch.tensor([-0.3, -1.2, -0.1], requires_grad=True)
    advantages = torch.tensor([1.0, -2.0, 0.5])
    loss, kl, clip_fraction = clipped_policy_loss(new, new.detach().clone(), advantages, CLIP)
    assert loss.item() == pytest.approx(-advantages.mean().item())
    assert kl.item() == pytest.approx(0.0, abs=1e-7)
    assert clip_fraction.item() == 0.0
    loss.backward()
    # d/dlogp of -A * exp(logp - old) at ratio 1 is -A / B
    torch.testing.assert_close(new.grad, -advantages / 3)


@pytest.mark.parametrize(
    "ratio, advantage, expected_loss, clipped",
    [
        (1.5, 2.0, -2.0 * 1.2, True),  # good action already made much likelier: clipped, no push further
        (1.5, -2.0, 2.0 * 1.5, False),  # bad action made likelier: the pessimistic (unclipped) term
        (0.5, 2.0, -2.0 * 0.5, False),  # good action made less likely: unclipped, gradient pulls it back
        (0.5, -2.0, 2.0 * 0.8, True),  # bad action already much less likely: clipped, no push further
        (1.1, 3.0, -3.0 * 1.1, False),  # inside the trust region: plain ratio * advantage
    ],
)
def test_clipping_cases(ratio: float, advantage: float, expected_loss: float, clipped: bool) -> None:
    loss, grad, kl, _ = _loss_and_grad(ratio, advantage)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    if clipped:
        assert grad == 0.0
    else:
        assert grad == pytest.approx(-advantage * ratio, rel=1e-5)
    assert kl == pytest.approx((ratio - 1) - math.log(ratio), rel=1e-5)


def test_clip_fraction_counts_ratios_outside_the_range() -> None:
    ratios = torch.tensor([1.0, 1.19, 1.21, 0.79, 0.81, 2.0])
    _, _, clip_fraction = clipped_policy_loss(ratios.log(), torch.zeros(6), torch.ones(6), CLIP)
    assert clip_fraction.item() == pytest.approx(3 / 6)


def test_value_loss_unclipped_and_clipped() -> None:
    new = torch.tensor([1.0, 3.0, -1.0])
    old = torch.tensor([0.0, 2.9, 0.0])
    returns = torch.tensor([2.0, 3.0, 1.0])
    assert value_loss(new, old, returns, None).item() == pytest.approx(0.5 * (1 + 0 + 4) / 3)
    # clip 0.5: V clipped to old +- 0.5 -> [0.5, 3.0, -0.5]; per sample max of the squared errors
    # sample 0: max(1, 2.25) = 2.25; sample 1: max(0, 0) = 0; sample 2: max(4, 2.25) = 4
    assert value_loss(new, old, returns, 0.5).item() == pytest.approx(0.5 * (2.25 + 0 + 4) / 3)
