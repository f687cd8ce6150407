"""Actor-critic networks: an MLP for vector observations, a small Nature-style CNN for images;
a categorical head for Discrete actions, a Gaussian with state-independent log std for Box actions.

The distributions are written out as a few tensor functions instead of
``torch.distributions`` objects: building a Distribution per step (argument
validation, broadcasting) costs more than the whole forward pass of a 64-unit MLP,
and the trainer samples once per env step. ``tests/test_ppo_agent.py`` checks them
against ``torch.distributions``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

from ppo.errors import SpaceError, allocating
from ppo.normalize import RunningMeanStd

__all__ = [
    "Agent",
    "ActOutput",
    "image_layout",
    "is_image_space",
    "layer_init",
    "categorical_sample",
    "categorical_log_prob",
    "categorical_entropy",
    "gaussian_log_prob",
    "gaussian_entropy",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# -- distributions -----------------------------------------------------------------------------
def categorical_sample(logits: torch.Tensor) -> torch.Tensor:
    """One action per row of ``logits [B, n]`` -> int64 ``[B]``.

    Inverse-CDF sampling: one uniform per row against the cumulative probabilities
    (a few elementwise ops; ``torch.multinomial`` costs several times more for a batch of 8).
    """
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), dtype=cdf.dtype, device=cdf.device)
    return (cdf < u).sum(-1).clamp_(max=logits.shape[-1] - 1)


def categorical_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) for ``logits [B, n]`` and integer ``actions [B]`` -> ``[B]``."""
    return torch.log_softmax(logits, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of ``logits [B, n]`` -> ``[B]``."""
    log_probs = torch.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log density of a diagonal Gaussian, summed over action dims: ``[B, A]`` -> ``[B]``."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Entropy of a diagonal Gaussian with per-dim ``log_std [1, A]``, repeated for the batch -> ``[B]``."""
    return (0.5 + _LOG_SQRT_2PI + log_std).sum(-1).expand(batch_size)


# -- networks --------------------------------------------------------------------------------------
def layer_init(layer: nn.Module, std: float = math.sqrt(2.0), bias_const: float = 0.0) -> nn.Module:
    """Orthogonal weights with gain ``std``, constant bias (CleanRL / PPO implementation detail #2)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


def _mlp(in_features: int, hidden_sizes: tuple[int, ...], out_features: int, out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    size = in_features
    for hidden in hidden_sizes:
        layers += [layer_init(nn.Linear(size, hidden)), nn.Tanh()]
        size = hidden
    # small gain on the policy output keeps the initial policy near uniform / near zero mean (detail #2)
    layers.append(layer_init(nn.Linear(size, out_features), std=out_std))
    return nn.Sequential(*layers)


def _mlp_forward(linears: list[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """The forward pass of a Linear/Tanh stack built by ``_mlp``, given its Linear layers, calling
    the ops directly: module-call overhead is a large share of a 64-unit MLP's time at batch size 8."""
    for linear in linears[:-1]:
        x = torch.tanh(F.linear(x, linear.weight, linear.bias))
    last = linears[-1]
    return F.linear(x, last.weight, last.bias)


def image_layout(space: spaces.Space) -> str | None:
    """``"hwc"`` or ``"chw"`` for an image: a 3-D uint8 Box of pixels (bounds 0 and 255) whose sides are at
    least 8 px; as SB3 reads it, channels first where the first axis is the smallest (a frame stack over
    Atari's 84x84, ``FrameStackObservation``: ``(4, 84, 84)``), else channels last (gymnasium's
    ``H x W x C``). None for anything else (vectors, grids of small integers)."""
    if not (isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3):
        return None
    if not (np.all(space.low == 0) and np.all(space.high == 255)):
        return None
    layout = "chw" if int(np.argmin(space.shape)) == 0 else "hwc"
    sides = space.shape[1:] if layout == "chw" else space.shape[:2]
    return layout if min(sides) >= 8 else None


def is_image_space(space: spaces.Space) -> bool:
    """Whether the agent reads this observation space as images (``image_layout``)."""
    return image_layout(space) is not None


class _ImageTrunk(nn.Module):
    """Nature-DQN CNN (Mnih et al. 2015) for images of at least 36 px, two 3x3 convs for smaller ones."""

    def __init__(self, shape: tuple[int, int, int], features: int = 512):
        super().__init__()
        height, width, channels = shape
        if min(height, width) >= 36:
            convs = [(channels, 32, 8, 4), (32, 64, 4, 2), (64, 64, 3, 1)]
        else:
            convs = [(channels, 16, 3, 1), (16, 32, 3, 1)]
        layers: list[nn.Module] = []
        for c_in, c_out, kernel, stride in convs:
            layers += [layer_init(nn.Conv2d(c_in, c_out, kernel, stride)), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, channels, height, width)).shape[1]
        self.head = nn.Sequential(layer_init(nn.Linear(flat, features)), nn.ReLU())
        self.features = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(images))


class ActOutput(NamedTuple):
    action: torch.Tensor  # [B] int64 (Discrete) or [B, A] float32 (Box, not clipped)
    log_prob: torch.Tensor  # [B]
    value: torch.Tensor  # [B]


class Agent(nn.Module):
    """Actor-critic for one observation space and one action space.

    Vector observations: separate actor and critic MLPs (CleanRL's ``ppo.py``; sharing a
    trunk couples the two losses' gradients). Image observations: one shared CNN trunk
    with linear actor and critic heads (CleanRL's ``ppo_atari.py``).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        hidden_sizes: tuple[int, ...] = (64, 64),
        norm_obs: bool = False,
    ):
        super().__init__()
        if not isinstance(observation_space, spaces.Box):
            raise SpaceError(
                f"the agent supports Box observations (vectors, or uint8 images HxWxC or CxHxW), got {observation_space}"
            )
        if isinstance(action_space, spaces.Discrete):
            if int(action_space.start) != 0:
                raise ValueError(f"Discrete action spaces must start at 0, got {action_space}")
            self.discrete = True
            policy_outputs = int(action_space.n)
        elif isinstance(action_space, spaces.Box):
            if not np.issubdtype(action_space.dtype, np.floating):
                raise SpaceError(
                    f"the agent's Gaussian policy needs a floating-point Box action space, got {action_space} "
                    "(wrap the env to take float actions, or give it a Discrete space)"
                )
            self.discrete = False
            policy_outputs = int(np.prod(action_space.shape))
        else:
            raise SpaceError(f"the agent supports Discrete and Box action spaces, got {action_space}")
        self.action_shape: tuple[int, ...] = tuple(action_space.shape)
        self.obs_shape: tuple[int, ...] = tuple(observation_space.shape)
        self.image_layout = image_layout(observation_space)
        self.image = self.image_layout is not None
        if self.image:
            a, b, c = self.obs_shape
            self.trunk = _ImageTrunk((a, b, c) if self.image_layout == "hwc" else (b, c, a))
            self.actor = layer_init(nn.Linear(self.trunk.features, policy_outputs), std=0.01)
            self.critic = layer_init(nn.Linear(self.trunk.features, 1), std=1.0)
            self.obs_rms = None  # pixels are scaled by 1/255 instead
        else:
            obs_dim = int(np.prod(self.obs_shape))
            self.trunk = None
            sizes = tuple(hidden_sizes)  # (once: a generator given gave its sizes to the actor only, hunt85 bug 2)
            with allocating(f"hidden_sizes {list(sizes)}: the actor and critic layers"):
                self.actor = _mlp(obs_dim, sizes, policy_outputs, out_std=0.01)
                self.critic = _mlp(obs_dim, sizes, 1, out_std=1.0)
            self.obs_rms = RunningMeanStd(self.obs_shape) if norm_obs else None
            # plain lists (not registered twice): the layers _mlp_forward runs
            self._actor_linears = [m for m in self.actor if isinstance(m, nn.Linear)]
            self._critic_linears = [m for m in self.critic if isinstance(m, nn.Linear)]
        if not self.discrete:
            # state-independent log std, initialised to std 1 (CleanRL continuous detail #1)
            self.actor_logstd = nn.Parameter(torch.zeros(1, policy_outputs))

    # -- inputs -------------------------------------------------------------------------------
    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations ``[B, *obs_shape]`` (any dtype) -> network input (float32)."""
        if self.image:  # uint8 -> CHW in [0, 1]; never in place: obs may be the env's ring
            return (obs.permute(0, 3, 1, 2) if self.image_layout == "hwc" else obs).float() / 255.0
        x = obs.reshape(obs.shape[0], -1).float()
        if self.obs_rms is not None:
            x = self.obs_rms.normalize(x.reshape(obs.shape)).reshape(obs.shape[0], -1)
        return x

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(obs)
        return self.trunk(x) if self.trunk is not None else x

    def _actor_out(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n]`` (Discrete) or Gaussian mean ``[B, A]`` (Box) from features."""
        return self.actor(x) if self.trunk is not None else _mlp_forward(self._actor_linears, x)

    def _critic_out(self, x: torch.Tensor) -> torch.Tensor:
        return (self.critic(x) if self.trunk is not None else _mlp_forward(self._critic_linears, x)).squeeze(-1)

    # -- what the trainer calls ------------------------------------------------------------------
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) ``[B]``."""
        return self._critic_out(self._features(obs))

    def sample(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """An action per observation from the policy alone (no critic, no log-prob): the per-step call
        of a rollout. ``deterministic``: the most likely action (argmax / Gaussian mean)."""
        out = self._actor_out(self._features(obs))
        if self.discrete:
            return out.argmax(-1) if deterministic else categorical_sample(out)
        if not deterministic:
            out = out + torch.randn_like(out) * self.actor_logstd.exp()
        return out.reshape(-1, *self.action_shape)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> ActOutput:
        """Sample (or take the mode of) the policy; returns action, its log-prob and V(s)."""
        x = self._features(obs)
        out, value = self._actor_out(x), self._critic_out(x)
        if self.discrete:
            action = out.argmax(-1) if deterministic else categorical_sample(out)
            return ActOutput(action, categorical_log_prob(out, action), value)
        log_std = self.actor_logstd.expand_as(out)
        action = out if deterministic else out + torch.randn_like(out) * log_std.exp()
        log_prob = gaussian_log_prob(out, log_std, action)
        return ActOutput(action.reshape(-1, *self.action_shape), log_prob, value)

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, with_entropy: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``evaluate``, as the module's call: the update's pass goes through ``forward`` because
        DistributedDataParallel hooks ``forward`` to average the gradients across ranks."""
        return self.evaluate(obs, actions, with_entropy)

    def evaluate(
        self, obs: torch.Tensor, actions: torch.Tensor, with_entropy: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(log pi(a|s), entropy or None, V(s)), each ``[B]``, for the update."""
        x = self._features(obs)
        out, value = self._actor_out(x), self._critic_out(x)
        if self.discrete:
            entropy = categorical_entropy(out) if with_entropy else None
            return categorical_log_prob(out, actions), entropy, value
        log_std = self.actor_logstd.expand_as(out)
        log_prob = gaussian_log_prob(out, log_std, actions.reshape(out.shape))
        entropy = gaussian_entropy(self.actor_logstd, out.shape[0]) if with_entropy else None
        return log_prob, entropy, value
