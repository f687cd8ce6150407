"""CleanRL's continuous-action PPO loop shape on fastvec.VectorEnv (issue 10).

A Gaussian policy samples actions outside the Box; CleanRL sends them unclipped and lets
each env's ClipAction wrapper clip them. A vector env that refused out-of-range actions
would stop this loop at its first step.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions.normal import Normal

from fastvec import VectorEnv

NUM_ENVS, NUM_STEPS, UPDATES = 4, 64, 2


def make_env() -> gym.Env:
    env = gym.make("Pendulum-v1")
    env = gym.wrappers.RecordEpisodeStatistics(env)
    return gym.wrappers.ClipAction(env)


class Agent(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(obs_dim, 32), nn.Tanh(), nn.Linear(32, 1))
        self.actor_mean = nn.Sequential(nn.Linear(obs_dim, 32), nn.Tanh(), nn.Linear(32, act_dim))
        self.actor_logstd = nn.Parameter(torch.full((1, act_dim), 1.0))  # wide: samples leave [-2, 2] often

    def get_action_and_value(self, x, action=None):
        mean = self.actor_mean(x)
        dist = Normal(mean, self.actor_logstd.expand_as(mean).exp())
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action).sum(1), dist.entropy().sum(1), self.critic(x)


def test_cleanrl_continuous_ppo_loop_with_unclipped_actions() -> None:
    torch.manual_seed(0)
    envs = VectorEnv([make_env] * NUM_ENVS, context="fork", num_workers=2)
    try:
        obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
        agent = Agent(obs_dim, act_dim)
        optimizer = torch.optim.Adam(agent.parameters(), lr=3e-4)
        before = [p.detach().clone() for p in agent.parameters()]
        obs_buf = torch.zeros((NUM_STEPS, NUM_ENVS, obs_dim))
        act_buf = torch.zeros((NUM_STEPS, NUM_ENVS, act_dim))
        logp_buf, rew_buf, done_buf, val_buf = (torch.zeros((NUM_STEPS, NUM_ENVS)) for _ in range(4))
        next_obs = torch.tensor(envs.reset(seed=1)[0])
        next_done = torch.zeros(NUM_ENVS)
        outside = 0
        for _ in range(UPDATES):
            for step in range(NUM_STEPS):
                obs_buf[step], done_buf[step] = next_obs, next_done
                with torch.no_grad():
                    action, logprob, _, value = agent.get_action_and_value(next_obs)
                act_buf[step], logp_buf[step], val_buf[step] = action, logprob, value.flatten()
                outside += int((action.abs() > 2.0).sum())
                next_obs_np, reward, terminations, truncations, _ = envs.step(action.numpy())  # unclipped
                assert np.isfinite(reward).all() and (reward <= 0).all()  # Pendulum's cost, on clipped torques
                next_done = torch.tensor(np.logical_or(terminations, truncations), dtype=torch.float32)
                rew_buf[step], next_obs = torch.tensor(reward), torch.tensor(next_obs_np)
            with torch.no_grad():  # GAE, as CleanRL computes it
                next_value = agent.get_action_and_value(next_obs)[3].reshape(1, -1)
                advantages, lastgaelam = torch.zeros_like(rew_buf), 0
                for t in reversed(range(NUM_STEPS)):
                    nonterminal = 1.0 - (next_done if t == NUM_STEPS - 1 else done_buf[t + 1])
                    nextvalues = next_value if t == NUM_STEPS - 1 else val_buf[t + 1]
                    delta = rew_buf[t] + 0.99 * nextvalues * nonterminal - val_buf[t]
                    advantages[t] = lastgaelam = delta + 0.99 * 0.95 * nonterminal * lastgaelam
                returns = advantages + val_buf
            b_obs, b_act = obs_buf.reshape(-1, obs_dim), act_buf.reshape(-1, act_dim)
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs, b_act)
            ratio = (newlogprob - logp_buf.reshape(-1)).exp()
            adv = advantages.reshape(-1)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
            v_loss = 0.5 * ((newvalue.view(-1) - returns.reshape(-1)) ** 2).mean()
            loss = pg_loss - 0.0 * entropy.mean() + 0.5 * v_loss
            assert torch.isfinite(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert outside > 0, "the Gaussian policy must have sampled outside the Box"
        assert any(not torch.equal(a, b) for a, b in zip(before, agent.parameters()))
    finally:
        envs.close()
