"""Environments the benchmarks step: real gymnasium envs plus synthetic ones with a known cost.

Every factory is a module-level function (picklable by reference), so engines
that start workers with spawn or forkserver can use it.
"""

from __future__ import annotations

import time
from functools import partial

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ImageEnv(gym.Env):
    """84x84x4 uint8 observations (an Atari-sized frame stack): tests the cost of big observations.

    The frame is a cheap roll of a fixed noise buffer, so the env itself costs little
    and the vectorizer's data movement dominates.
    """

    def __init__(self, episode_length: int = 200):
        self.observation_space = spaces.Box(0, 255, (84, 84, 4), np.uint8)
        self.action_space = spaces.Discrete(6)
        self.episode_length = episode_length
        self._noise = np.random.default_rng(0).integers(0, 256, size=(84, 84, 4), dtype=np.uint8)
        self._frame = self._noise.copy()
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame, {}

    def step(self, action):
        self.t += 1
        self._frame = self._noise if self.t % 2 else self._frame  # no per-step allocation
        return self._frame, 1.0, False, self.t >= self.episode_length, {}


class BusyEnv(gym.Env):
    """A CPU-bound env: each step burns a fixed amount of CPU (a busy loop, not a sleep)."""

    def __init__(self, step_seconds: float = 1e-3, episode_length: int = 500):
        self.observation_space = spaces.Box(-1, 1, (8,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.step_seconds = step_seconds
        self.episode_length = episode_length
        self.t = 0
        self._obs = np.zeros(8, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs, {}

    def step(self, action):
        self.t += 1
        end = time.thread_time() + self.step_seconds  # CPU time: fixed work however busy the machine
        while time.thread_time() < end:
            pass
        return self._obs, 0.0, False, self.t >= self.episode_length, {}


class BusyCartPole(gym.Wrapper):
    """CartPole-v1 whose every step first burns ``step_seconds`` of CPU: an env as costly as a small
    policy's forward pass, for the trainer's double-buffering study (ppo.train --async-envs)."""

    def __init__(self, step_seconds: float = 1e-3, render_mode: str | None = None):
        super().__init__(gym.make("CartPole-v1", render_mode=render_mode))
        self.step_seconds = step_seconds

    def step(self, action):
        end = time.thread_time() + self.step_seconds
        while time.thread_time() < end:
            pass
        return self.env.step(action)


# for `python -m ppo.train --env-id benchmarks.workloads:fastvec-bench/CartPole1ms-v1` (solved at 475, as CartPole-v1)
# (25 us: about what the trainer's policy costs per step of 8 envs on 2 cores, the double-buffering
# goal's "policy and envs cost about the same")
for _name, _seconds in (("1ms", 1e-3), ("250us", 250e-6), ("25us", 25e-6)):
    _id = f"fastvec-bench/CartPole{_name}-v1"
    if _id not in gym.registry:
        gym.register(_id, entry_point=BusyCartPole, kwargs={"step_seconds": _seconds}, reward_threshold=475.0)


class TextDictEnv(gym.Env):
    """A Dict observation with a Text part beside a Box: the Text part has no fixed size, so it
    travels pickled while the Box part goes through shared memory (CartPole's dynamics inside)."""

    def __init__(self):
        self.inner = gym.make("CartPole-v1")
        self.observation_space = spaces.Dict(
            {"state": self.inner.observation_space, "mission": spaces.Text(16, charset="abcdefgh ")}
        )
        self.action_space = self.inner.action_space
        self.t = 0

    def _obs(self, state):
        return {"state": state, "mission": "go left" if self.t % 2 else "go right"}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        state, info = self.inner.reset(seed=seed)
        return self._obs(state), info

    def step(self, action):
        self.t += 1
        state, reward, terminated, truncated, info = self.inner.step(action)
        return self._obs(state), reward, terminated, truncated, info


def make(workload: str, index: int = 0, num_envs: int = 1) -> gym.Env:
    """One env of ``workload``; ``index`` (of ``num_envs``) lets heterogeneous workloads differ across envs."""
    if workload in ("CartPole-v1", "Pendulum-v1", "Acrobot-v1"):
        return gym.make(workload)
    if workload == "image84":
        return ImageEnv()
    if workload == "cpu1ms":
        return BusyEnv(1e-3)
    if workload == "hetero":  # step cost from 0.1 ms to 0.8 ms depending on the env
        return BusyEnv(1e-4 * (1 + index % 8))
    if workload == "hetero4":  # the first half of the envs 4x slower than the second: 0.4 ms and 0.1 ms
        return BusyEnv(4e-4 if index < num_envs // 2 else 1e-4)
    if workload == "dict-text":
        return TextDictEnv()
    raise ValueError(f"unknown workload {workload!r}")


def factories(workload: str, num_envs: int) -> list:
    return [partial(make, workload, i, num_envs) for i in range(num_envs)]


WORKLOADS = ["CartPole-v1", "Pendulum-v1", "Acrobot-v1", "image84", "cpu1ms", "hetero", "hetero4", "dict-text"]
