"""The agent's distributions against torch.distributions, and the networks' shapes."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch.distributions import Categorical, Normal

from ppo.agent import (
    Agent,
    categorical_entropy,
    categorical_log_prob,
    categorical_sample,
    gaussian_entropy,
    gaussian_log_prob,
    image_layout,
    is_image_space,
)

pytestmark = pytest.mark.one_pass  # trainer mathematics; no engine


def test_categorical_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=gen) * 3
    actions = torch.randint(0, 5, (64,), generator=gen)
    reference = Categorical(logits=logits)
    torch.testing.assert_close(categorical_log_prob(logits, actions), reference.log_prob(actions))
    torch.testing.assert_close(categorical_entropy(logits), reference.entropy())


def test_categorical_sample_follows_the_probabilities() -> None:
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).expand(20_000, 3)
    counts = torch.bincount(categorical_sample(logits), minlength=3).float() / 20_000
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.6, 0.3]), atol=0.015, rtol=0)


def test_gaussian_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(1)
    mean = torch.randn(32, 3, generator=gen)
    log_std = torch.randn(1, 3, generator=gen) * 0.5
    actions = torch.randn(32, 3, generator=gen) * 2
    reference = Normal(mean, log_std.exp().expand_as(mean))
    torch.testing.assert_close(
        gaussian_log_prob(mean, log_std.expand_as(mean), actions), reference.log_prob(actions).sum(-1)
    )
    torch.testing.assert_close(gaussian_entropy(log_std, 32), reference.entropy().sum(-1))


def test_discrete_agent_evaluate_matches_reference() -> None:
    torch.manual_seed(0)
    agent = Agent(spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(3))
    obs = torch.randn(16, 4)
    action, log_prob, value = agent.act(obs)
    assert action.shape == (16,) and action.dtype == torch.int64 and value.shape == (16,)
    new_log_prob, entropy, new_value = agent.evaluate(obs, action)
    reference = Categorical(logits=agent.actor(obs))
    torch.testing.assert_close(new_log_prob, reference.log_prob(action))
    torch.testing.assert_close(log_prob, new_log_prob)
    torch.testing.assert_close(entropy, reference.entropy())
    torch.testing.assert_close(new_value, agent.critic(obs).squeeze(-1))
    torch.testing.assert_close(agent.act(obs, deterministic=True).action, agent.actor(obs).argmax(-1))


def test_continuous_agent_evaluate_matches_reference() -> None:
    torch.manual_seed(0)
    agent = Agent(spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-2, 2, (2,), np.float32))
    with torch.no_grad():
        agent.actor_logstd.copy_(torch.tensor([[0.3, -0.7]]))
    obs = torch.randn(16, 3)
    action, log_prob, _ = agent.act(obs)
    assert action.shape == (16, 2) and action.dtype == torch.float32
    new_log_prob, entropy, _ = agent.evaluate(obs, action)
    mean = agent.actor(obs)
    reference = Normal(mean, agent.actor_logstd.exp().expand_as(mean))
    torch.testing.assert_close(new_log_prob, reference.log_prob(action).sum(-1))
    torch.testing.assert_close(log_prob, new_log_prob)
    torch.testing.assert_close(entropy, reference.entropy().sum(-1))
    torch.testing.assert_close(agent.act(obs, deterministic=True).action, mean)


def test_cleanrl_initialisation() -> None:
    torch.manual_seed(0)
    agent = Agent(spaces.Box(-1, 1, (8,), np.float32), spaces.Discrete(2))
    hidden, policy_out = agent.actor[0].weight, agent.actor[-1].weight
    # orthogonal rows scaled by the gain: W W^T = gain^2 I (rows <= columns for the 8 -> 64 layer: columns)
    torch.testing.assert_close(hidden.T @ hidden, 2.0 * torch.eye(8), atol=1e-5, rtol=0)
    assert policy_out.abs().max() < 0.05  # gain 0.01: the initial policy is near uniform
    assert all(float(layer.bias.detach().abs().max()) == 0.0 for layer in agent.actor if hasattr(layer, "bias"))


@pytest.mark.parametrize("shape", [(84, 84, 4), (16, 16, 3)])
def test_image_agent_shapes(shape: tuple[int, int, int]) -> None:
    space = spaces.Box(0, 255, shape, np.uint8)
    assert is_image_space(space)
    agent = Agent(space, spaces.Discrete(6))
    obs = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    action, log_prob, value = agent.act(obs)
    assert action.shape == log_prob.shape == value.shape == (5,)
    new_log_prob, entropy, new_value = agent.evaluate(obs, action)
    torch.testing.assert_close(new_log_prob, log_prob)
    assert entropy.shape == (5,) and torch.allclose(new_value, value)


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((84, 84, 4), "hwc"),
        ((4, 84, 84), "chw"),
        ((84, 84, 8), "hwc"),
        ((3, 16, 16), "chw"),
        ((16, 16, 16), "chw"),  # (a tie: channels first, as SB3 reads it)
        ((4, 4, 3), None),
        ((8, 3), None),
    ],
)
def test_images_are_read_channels_last_or_first(shape, layout) -> None:
    """A frame stack over Atari (FrameStackObservation: (4, 84, 84), channels first, as SB3 and CleanRL read
    it) or 8 stacked frames got the vector MLP on raw 0..255 pixels (its first layer saturated)."""
    space = spaces.Box(0, 255, shape, np.uint8)
    assert image_layout(space) == layout
    assert image_layout(spaces.Box(0, 1, shape, np.uint8)) is None  # a grid of small integers is no image
    if layout is None:
        return
    agent = Agent(space, spaces.Discrete(3))
    obs = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    x = agent.preprocess(obs)
    channels_first = obs if layout == "chw" else obs.permute(0, 3, 1, 2)
    torch.testing.assert_close(x, channels_first.float() / 255.0)
    assert agent.act(obs).action.shape == (2,)


def test_integer_box_actions_are_refused_by_name() -> None:
    """The Gaussian's float actions: fastvec's action buffer refused them at the first step with a message
    about numbers the user never sent; the other backends passed floats to an int64 space."""
    with pytest.raises(TypeError, match="floating-point Box action space, got Box"):
        Agent(spaces.Box(-1, 1, (3,), np.float32), spaces.Box(0, 5, (2,), np.int64))


def test_obs_normalization_is_part_of_the_state_dict() -> None:
    agent = Agent(spaces.Box(-10, 10, (2,), np.float32), spaces.Discrete(2), norm_obs=True)
    agent.obs_rms.update(torch.tensor([[1.0, 10.0], [3.0, 30.0]]))
    assert {"obs_rms.mean", "obs_rms.var", "obs_rms.count"} <= set(agent.state_dict())
    x = agent.preprocess(torch.tensor([[2.0, 20.0]]))
    torch.testing.assert_close(x, torch.zeros(1, 2), atol=1e-3, rtol=0)  # the mean maps to 0


@pytest.mark.parametrize("continuous", [False, True])
def test_sample_matches_act(continuous: bool) -> None:
    """The rollout's actor-only sample() draws the same actions as act() from the same random state."""
    torch.manual_seed(0)
    action_space = spaces.Box(-1, 1, (2,), np.float32) if continuous else spaces.Discrete(4)
    agent = Agent(spaces.Box(-1, 1, (5,), np.float32), action_space)
    obs = torch.randn(8, 5)
    torch.manual_seed(1)
    sampled = agent.sample(obs)
    torch.manual_seed(1)
    torch.testing.assert_close(sampled, agent.act(obs).action)
    torch.testing.assert_close(agent.sample(obs, deterministic=True), agent.act(obs, deterministic=True).action)


class _Endless(gym.Env):
    """Episodes that never end (no time limit registered)."""

    observation_space = spaces.Box(-1, 1, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(4, np.float32), 1.0, False, False, {}


def test_an_evaluation_of_episodes_that_never_end_ends() -> None:
    """ppo.eval.evaluate on an env without a time limit whose episodes the policy never ends looped for ever (after a
    finished training, before its summary: hunt79 bug 6). An episode past max_episode_steps counts as ended there,
    said with a warning, and its env plays no more."""
    import warnings

    from ppo.eval import evaluate

    if "fastvec-test/Endless-v0" not in gym.registry:
        gym.register("fastvec-test/Endless-v0", entry_point=_Endless)
    agent = Agent(spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        returns = evaluate(agent, "fastvec-test/Endless-v0", episodes=6, max_episode_steps=50, max_envs=3)
    assert returns.tolist() == [50.0] * 3
    assert any("ran 50 steps without ending" in str(w.message) for w in caught)
    returns = evaluate(agent, "CartPole-v1", episodes=3, seed=1)  # (bounded episodes: as before)
    assert len(returns) == 3 and (returns <= 500).all()
    # an env with a time limit of its own, longer than the cap, is not cut by it (hunt83 bug 2)
    if "fastvec-test/LongEndless-v0" not in gym.registry:
        gym.register("fastvec-test/LongEndless-v0", entry_point=_Endless, max_episode_steps=120)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        returns = evaluate(agent, "fastvec-test/LongEndless-v0", episodes=4, max_episode_steps=50, max_envs=2)
    assert returns.tolist() == [120.0] * 4


class _EndlessFilm(_Endless):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def render(self):
        return np.zeros((2, 2, 3), np.uint8)


def test_a_video_of_an_episode_that_never_ends_ends(tmp_path, monkeypatch) -> None:
    """ppo.eval's video of an env without a time limit appended a frame a step for ever (hunt83 bug 6): it ends at
    the evaluation's step cap, with a warning (hunt84 bug 3)."""
    import warnings

    from ppo import eval as evaluation

    if "fastvec-test/EndlessFilm-v0" not in gym.registry:
        gym.register("fastvec-test/EndlessFilm-v0", entry_point=_EndlessFilm)
    monkeypatch.setattr(evaluation, "MAX_EPISODE_STEPS", 20)
    monkeypatch.setitem(sys.modules, "imageio", None)  # (the frames written as .npz, read back below)
    agent = Agent(spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = evaluation.record_video(agent, "fastvec-test/EndlessFilm-v0", tmp_path / "video")
    assert any("the episode ran 20 steps without ending" in str(w.message) for w in caught)
    assert len(np.load(out)["frames"]) == 21


def test_hidden_sizes_may_be_any_iterable() -> None:
    """A generator of sizes gave them to the actor only, and since 8212cde to neither (hunt85 bug 2)."""
    sizes = [[m.out_features for m in net if isinstance(m, torch.nn.Linear)] for net in (
        Agent(spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2), hidden_sizes=(size for size in (16, 8))).actor,
        Agent(spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2), hidden_sizes=iter([16, 8])).critic,
    )]
    assert sizes == [[16, 8, 2], [16, 8, 1]]


def test_an_allocation_error_is_said_by_its_first_line_that_says_something() -> None:
    from ppo.errors import allocating, first_line

    assert first_line(RuntimeError("\n  out of memory\nmore")) == "out of memory"
    assert first_line(MemoryError()) == "MemoryError"
    with pytest.raises(ValueError, match=r"^the ring cannot be allocated \(out of memory\)$"):
        with allocating("the ring"):
            raise RuntimeError("\nout of memory")
