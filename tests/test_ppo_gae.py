"""GAE against a plain-Python reference (SB3's formulation), including episode ends and time-limit bootstraps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppo.gae import compute_gae

pytestmark = pytest.mark.one_pass  # trainer mathematics; no engine


def reference_gae(rewards, values, next_value, terminated, truncated, terminal_values, gamma, lam):
    """Element by element, as SB3 does it: a truncated step's reward gets + gamma * V(final obs),
    then every end of episode (terminated or truncated) cuts the chain."""
    num_steps, num_envs = len(rewards), len(rewards[0])
    advantages = [[0.0] * num_envs for _ in range(num_steps)]
    for n in range(num_envs):
        last = 0.0
        for t in reversed(range(num_steps)):
            reward = rewards[t][n]
            if truncated[t][n] and not terminated[t][n]:
                reward += gamma * terminal_values[t][n]
            done = terminated[t][n] or truncated[t][n]
            following = next_value[n] if t == num_steps - 1 else values[t + 1][n]
            non_terminal = 0.0 if done else 1.0
            delta = reward + gamma * following * non_terminal - values[t][n]
            last = delta + gamma * lam * non_terminal * last
            advantages[t][n] = last
    return np.array(advantages)


def random_rollout(rng: np.random.Generator, num_steps: int, num_envs: int, p_end: float):
    rewards = rng.normal(size=(num_steps, num_envs)).astype(np.float32)
    values = rng.normal(size=(num_steps, num_envs)).astype(np.float32)
    next_value = rng.normal(size=num_envs).astype(np.float32)
    terminated = rng.random((num_steps, num_envs)) < p_end
    truncated = rng.random((num_steps, num_envs)) < p_end  # some steps are both: terminated wins
    terminal_values = rng.normal(size=(num_steps, num_envs)).astype(np.float32)
    return rewards, values, next_value, terminated, truncated, terminal_values


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (0.98, 0.8), (1.0, 1.0), (0.9, 0.0)])
def test_matches_reference(seed: int, gamma: float, lam: float) -> None:
    rng = np.random.default_rng(seed)
    num_steps, num_envs = int(rng.integers(1, 40)), int(rng.integers(1, 7))
    arrays = random_rollout(rng, num_steps, num_envs, p_end=float(rng.choice([0.0, 0.05, 0.3])))
    advantages, returns = compute_gae(*(torch.from_numpy(a) for a in arrays), gamma, lam)
    expected = reference_gae(*(a.tolist() for a in arrays), gamma, lam)
    np.testing.assert_allclose(advantages.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns.numpy(), expected + arrays[1], rtol=1e-5, atol=1e-5)


def test_hand_cases() -> None:
    gamma, lam = 0.9, 0.5
    one = torch.ones(1, 1)
    yes, no = torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.bool)
    reward, value, next_value, final_value = 2.0 * one, 0.5 * one, torch.tensor([3.0]), 7.0 * one
    # episode goes on: r + gamma * V(next) - V
    adv, _ = compute_gae(reward, value, next_value, no, no, final_value, gamma, lam)
    assert adv.item() == pytest.approx(2.0 + 0.9 * 3.0 - 0.5)
    # terminated: nothing follows
    adv, _ = compute_gae(reward, value, next_value, yes, no, final_value, gamma, lam)
    assert adv.item() == pytest.approx(2.0 - 0.5)
    # truncated by a time limit: bootstrap from the final observation, not from the next episode's first
    adv, _ = compute_gae(reward, value, next_value, no, yes, final_value, gamma, lam)
    assert adv.item() == pytest.approx(2.0 + 0.9 * 7.0 - 0.5)
    # both flags: terminated wins (gymnasium's convention)
    adv, _ = compute_gae(reward, value, next_value, yes, yes, final_value, gamma, lam)
    assert adv.item() == pytest.approx(2.0 - 0.5)


def test_lambda_one_gives_discounted_returns() -> None:
    """With lambda = 1, returns are the discounted sum of rewards to the episode end (plus bootstraps)."""
    gamma = 0.9
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    values = torch.tensor([[0.3], [-0.2], [0.7], [0.1]])
    terminated = torch.tensor([[False], [True], [False], [False]])
    truncated = torch.zeros(4, 1, dtype=torch.bool)
    next_value = torch.tensor([10.0])
    _, returns = compute_gae(rewards, values, next_value, terminated, truncated, torch.zeros(4, 1), gamma, 1.0)
    expected = [1 + gamma * 2, 2, 3 + gamma * 4 + gamma**2 * 10, 4 + gamma * 10]
    np.testing.assert_allclose(returns[:, 0].numpy(), expected, rtol=1e-6)
