"""Small real gymnasium envs used by the tests (importable by spawned workers)."""

from __future__ import annotations

import collections
import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# numpy 1 stores a Python int a dtype cannot hold wrapped (300 as 44 in uint8), warning only: as gymnasium's AsyncVectorEnv
# does there; numpy 2 raises OverflowError, which fastvec names by env
WRAPS_OUT_OF_RANGE_INTS = np.lib.NumpyVersion(np.__version__) < "2.0.0"


class ImageEnv(gym.Env):
    """84x84x4 uint8 frames (an Atari-sized observation) driven by a seeded RNG."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, episode_length: int = 37, render_mode: str | None = None):
        self.observation_space = spaces.Box(0, 255, (84, 84, 4), np.uint8)
        self.action_space = spaces.Discrete(4)
        self.episode_length = episode_length
        self.render_mode = render_mode
        self.t = 0

    def _frame(self) -> np.ndarray:
        return self.np_random.integers(0, 256, size=(84, 84, 4), dtype=np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        reward = float(action) + float(self.np_random.random())
        terminated = bool(self.np_random.random() < 0.02)
        truncated = self.t >= self.episode_length
        return self._frame(), reward, terminated, truncated, {}

    def render(self):
        return np.full((8, 8, 3), self.t % 256, dtype=np.uint8)


class DictEnv(gym.Env):
    """Dict observation (a Box, a Discrete and a MultiBinary) with a continuous action;
    returns non-empty infos on some steps and in reset, to exercise the info path."""

    def __init__(self):
        self.observation_space = spaces.Dict(
            {
                "position": spaces.Box(-10.0, 10.0, (3,), np.float32),
                "mode": spaces.Discrete(5),
                "flags": spaces.MultiBinary(4),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.t = 0

    def _obs(self):
        return {
            "position": self.np_random.uniform(-1, 1, 3).astype(np.float32),
            "mode": int(self.np_random.integers(5)),
            "flags": self.np_random.integers(0, 2, 4).astype(np.int8),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        info = {"start": int(self.np_random.integers(100))}
        if options:
            info["options"] = dict(options)
        return self._obs(), info

    def step(self, action):
        self.t += 1
        reward = float(np.sum(action)) + float(self.np_random.normal())
        terminated = bool(self.np_random.random() < 0.05)
        truncated = self.t >= 25
        info = {"t": self.t} if self.t % 3 == 0 else {}
        return self._obs(), reward, terminated, truncated, info


class FailingEnv(gym.Env):
    """Raises in the method named by ``fail_in`` (or never)."""

    def __init__(self, fail_in: str | None = None, after: int = 0):
        if fail_in == "init":
            raise RuntimeError("boom in __init__")
        self.observation_space = spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.fail_in = fail_in
        self.after = after
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.fail_in == "reset":
            raise ValueError("boom in reset")
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.fail_in == "step" and self.steps > self.after:
            raise ZeroDivisionError("boom in step")
        if self.fail_in == "hang" and self.steps > self.after:
            time.sleep(3600)
        if self.fail_in == "slow" and self.steps > self.after:
            time.sleep(0.15)
        if self.fail_in == "bad_obs":
            return np.zeros(3, np.float32), 0.0, False, False, {}
        if self.fail_in == "die" and self.steps > self.after:
            os._exit(7)
        return np.full(2, 0.5, np.float32), 1.0, False, False, {}

    def explode(self):
        raise KeyError("boom in env_method")

    def render(self):
        return np.zeros((2, 2, 3), np.uint8)

    def pid(self):
        return os.getpid()

    def close(self):
        if self.fail_in == "close":
            raise OSError("boom in close")


class EnvOwnError(Exception):
    """An env's own exception class (importable by the caller, as a user's module would be)."""


class EnvOwnErrorWithCode(Exception):
    """An env's own exception class whose constructor takes more than a message."""

    def __init__(self, code: int, detail: str):
        super().__init__(code, detail)


class EnvOwnErrorKeepingItsMessage(Exception):
    """An exception class that keeps its message itself and never calls Exception.__init__ (common)."""

    def __init__(self, message: str):
        self.message = message

    def __str__(self) -> str:
        return self.message


class OwnErrorEnv(FailingEnv):
    """Raises its own exception types: EnvOwnError in step, EnvOwnErrorWithCode in env_method."""

    def step(self, action):
        raise EnvOwnError("own error in step")

    def explode_with_code(self):
        raise EnvOwnErrorWithCode(7, "detail")

    def explode_keeping_message(self):
        raise EnvOwnErrorKeepingItsMessage("kept message")


class SecondResetFails(FailingEnv):
    """Episodes of ``length`` steps; a ``bad`` env's second reset (the one after its first episode)
    raises ValueError(``message``)."""

    def __init__(self, bad: bool, length: int = 2, message: str = "boom in autoreset"):
        super().__init__(None)
        self.bad, self.length, self.message, self.resets = bad, length, message, 0

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        if self.bad and self.resets == 2:
            raise ValueError(self.message)
        self.steps = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, _, _, info = super().step(action)
        return obs, reward, self.steps >= self.length, False, info


def make_cartpole():
    return gym.make("CartPole-v1")


def make_pendulum():
    return gym.make("Pendulum-v1")


def make_image():
    return ImageEnv()


def make_dict():
    return DictEnv()


class SloppyEnv(FailingEnv):
    """Returns float64 observations for a float32 space, and a NaN reward on step 2."""

    def step(self, action):
        self.steps += 1
        reward = float("nan") if self.steps == 2 else 1.0
        return np.full(2, 0.25, np.float64), reward, False, False, {}


class RenderFailEnv(FailingEnv):
    render_mode = "rgb_array"

    def render(self):
        raise RuntimeError("boom in render")


class OverflowEnv(gym.Env):
    """A uint8 Box; with ``bad`` its step returns a list with 300 in it: the row cannot hold it."""

    def __init__(self, bad: bool = True):
        self.observation_space = spaces.Box(0, 255, (4,), np.uint8)
        self.action_space = spaces.Discrete(2)
        self.bad = bad

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.uint8), {}

    def step(self, action):
        return [300 if self.bad else 200, 0, 0, 0], 0.0, False, False, {}


class BigEndianEnv(gym.Env):
    """Returns big-endian '>f4' observations for a (native) float32 Box."""

    def __init__(self):
        self.observation_space = spaces.Box(-10, 10, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        return np.array([1.5, -2.25, self.t], dtype=">f4")

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, False, False, {}


class Counter(gym.Env):
    """A deterministic env: the observation counts its steps since reset, offset by its seed;
    can be told (by class attributes, so only in the process that sets them) to raise
    KeyboardInterrupt in a step, and records its close() calls."""

    interrupt_at: int | None = None  # raise KeyboardInterrupt in this step (in the setting process only)
    closed: list = []

    def __init__(self, index: int = 0):
        self.observation_space = spaces.Box(-1e9, 1e9, (2,), np.float64)
        self.action_space = spaces.Discrete(5)
        self.index = index
        self.t = 0
        self.base = 0

    def _obs(self):
        return np.array([self.base + self.t, self.index], dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.base = 1000 * (seed or 0)
        self.t = 0
        info = {"options": dict(options)} if options else {}
        return self._obs(), info

    def step(self, action):
        self.t += 1 + int(action)
        if Counter.interrupt_at is not None and self.t >= Counter.interrupt_at:
            Counter.interrupt_at = None
            raise KeyboardInterrupt
        return self._obs(), float(action), False, self.t >= 40, {}

    def pid(self):
        return os.getpid()

    def imported(self, name: str) -> bool:
        import sys

        return name in sys.modules

    def close(self):
        Counter.closed.append((os.getpid(), self.index))


class DieOnceOnReset(Counter):
    """Kills its process in reset() while the file ``{marker}.{index}`` exists (and removes it, so
    a respawned copy lives)."""

    def __init__(self, index: int, marker: str):
        super().__init__(index)
        self.marker = f"{marker}.{index}"

    def reset(self, *, seed=None, options=None):
        if os.path.exists(self.marker):
            os.remove(self.marker)
            os._exit(7)
        return super().reset(seed=seed, options=options)


class FailingAutoreset(Counter):
    """Its first life raises in every reset after the first (its autoreset)."""

    lives: dict = {}

    def __init__(self, index: int, key: str):
        super().__init__(index)
        FailingAutoreset.lives[key] = FailingAutoreset.lives.get(key, 0) + 1
        self.first_life = FailingAutoreset.lives[key] == 1
        self.resets = 0

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        if self.first_life and self.resets > 1:
            raise RuntimeError("autoreset failed")
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        return obs, reward, self.t >= 3, trunc, info


class EchoEnv(gym.Env):
    """Observations drawn from ``observation_space`` (seeded), and the action it received returned
    in its info dict, so a test can see exactly what reached the env."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, episode_length: int = 5):
        self.observation_space = observation_space
        self.action_space = action_space
        self.episode_length = episode_length
        self.t = 0

    def _obs(self):
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        return self.observation_space.sample()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), False, self.t >= self.episode_length, {"action": action}


class JitteryCartPole(gym.Wrapper):
    """CartPole whose steps take 0-2 ms at random, from the OS's randomness (not the env's seed): which
    of several groups of envs finishes first differs from run to run."""

    def __init__(self, render_mode=None):
        super().__init__(gym.make("CartPole-v1", render_mode=render_mode))
        self._jitter = random.SystemRandom()

    def step(self, action):
        time.sleep(self._jitter.random() * 2e-3)
        return self.env.step(action)


def make_jittery_cartpole(render_mode=None) -> gym.Env:
    return JitteryCartPole(render_mode)


# (a function for entry point: gymnasium before 1.4 reads a class's metadata, a property on a Wrapper class)
gym.register("fastvec-test/JitteryCartPole-v1", entry_point=make_jittery_cartpole, reward_threshold=475.0)


def make_dict_echo(render_mode=None) -> gym.Env:
    """An EchoEnv with a Dict observation (what the PPO trainer refuses), as gymnasium.make builds it."""
    return EchoEnv(spaces.Dict({"a": spaces.Box(-1, 1, (2,), np.float32)}), spaces.Discrete(2))


gym.register("fastvec-test/DictEcho-v0", entry_point=make_dict_echo)


class Opposed(gym.Env):
    """Episodes of 4 steps whatever the actions, returning +k (first reset with an even seed) or -k (odd seed) on
    the env's k-th episode: two envs seeded 0 and 1 end their episodes at the same steps, and after each whole
    step the mean of their episodes is 0; after one env's episode alone it is not."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.sign, self.k, self.t = 0.0, 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None and self.k == 0:
            self.sign = 1.0 if seed % 2 == 0 else -1.0
        self.t, self.k = 0, self.k + 1
        return np.array([self.sign, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= 4
        return np.array([self.sign, self.t / 4], np.float32), self.sign * self.k if done else 0.0, done, False, {}


gym.register("fastvec-test/Opposed-v0", entry_point=Opposed)


class KernelsReporter(gym.Wrapper):
    """CartPole that says which fastvec kernels the process stepping it uses."""

    def __init__(self) -> None:
        super().__init__(gym.make("CartPole-v1"))

    def kernels(self) -> tuple[str, str]:
        """(fastvec.kernels.IMPLEMENTATION, fastvec.KERNELS) in this process."""
        import sys

        return sys.modules["fastvec.kernels"].IMPLEMENTATION, sys.modules["fastvec"].KERNELS


def wrap_last(pool, step) -> None:
    """Move ``pool``'s last env around the ring's end to shard 0, the calling process's (it goes at its episode
    end), calling ``step()`` until it has."""
    assert pool.request_move(1, 0, around=True) == pool.num_envs - 1
    for _ in range(200):
        step()
        if pool.wrap_envs:
            return
    raise AssertionError("the last env never moved")


class ReusesItsArray(gym.Env):
    """Returns one array of its own, changed in place at every reset and step (as simulators that keep their state
    in one buffer do), of ``dtype`` (float64: cast to the space's float32); its episodes last ``length`` steps; its
    close() writes 99 there."""

    observation_space = spaces.Box(-100, 100, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, dtype: Any = np.float32, length: int = 2, size: int = 2):
        self.buf = np.zeros(size, dtype)
        self.length, self.t = length, 0
        if size != 2:
            self.observation_space = spaces.Box(-100, 100, (size,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.buf[:] = -1
        return self.buf, {}

    def step(self, action):
        self.t += 1
        self.buf[:] = self.t
        return self.buf, 0.0, self.t >= self.length, False, {}

    def close(self):
        self.buf[:] = 99  # (a resource released)


class ReusesItsArrayFailingItsSecondReset(ReusesItsArray):
    """A ReusesItsArray whose second reset raises (before it touches its array)."""

    def __init__(self, dtype: Any = np.float32, length: int = 2):
        super().__init__(dtype, length)
        self.resets = 0

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        if self.resets == 2:
            raise RuntimeError("reset fails")
        return super().reset(seed=seed, options=options)


class KeysInItsOwnOrder(gym.Env):
    """A Dict observation whose space lists its keys in another order for odd ``index`` (the same keys, shapes and
    dtypes); its values tell the envs apart."""

    action_space = spaces.Discrete(2)

    def __init__(self, index: int):
        self.index = index
        parts = [("a", spaces.Box(0, 10, (2,), np.float32)), ("b", spaces.Discrete(5))]
        self.observation_space = spaces.Dict(parts if index % 2 == 0 else parts[::-1])

    def _obs(self) -> dict:
        return {"a": np.full(2, self.index + 1.5, np.float32), "b": self.index + 1}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        return self._obs(), 1.0, False, False, {}


class SharesItsClassBuffer(gym.Env):
    """Returns its class's one observation array, written with its own values (as a C extension's static buffer):
    every instance's observation is the same memory."""

    observation_space = spaces.Box(-1e6, 1e6, (1,), np.float32)
    action_space = spaces.Discrete(2)
    buf = np.zeros(1, np.float32)

    def __init__(self, index: int = 0, length: int | None = None, raise_at: int | None = None, die_once: str | None = None):
        self.index, self.length, self.raise_at, self.die_once = index, length, raise_at, die_once
        self.t = self.steps = 0

    def _out(self) -> Any:
        return self.buf

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.buf[0] = self.index
        return self._out(), {}

    def step(self, action):
        self.t += 1
        self.steps += 1
        if self.steps == self.raise_at:
            raise RuntimeError(f"env {self.index} fails")
        if self.die_once and self.steps == 2 and not os.path.exists(self.die_once):  # (its worker dies, once)
            open(self.die_once, "w").close()
            os._exit(7)
        self.buf[0] = 10 * self.index + 1
        return self._out(), 0.0, self.length is not None and self.t >= self.length, False, {"frame": self.buf}

    def frame(self) -> np.ndarray:
        """Its index in the shared buffer (as a render() of a C extension's one frame)."""
        self.buf[0] = self.index
        return self.buf


class SharesAReadOnlyView(SharesItsClassBuffer):
    """A SharesItsClassBuffer returning a read-only view of the buffer (which it writes through the class's)."""

    buf = np.zeros(1, np.float32)

    def _out(self) -> Any:
        view = self.buf.view()
        view.flags.writeable = False
        return view


class SharesAList(SharesItsClassBuffer):
    """A SharesItsClassBuffer whose buffer is a list of its class (a Box observation as a list)."""

    buf = [0.0]  # noqa: RUF012 (shared on purpose)

    def _out(self) -> Any:
        return self.buf


class SharesInANamedTuple(SharesItsClassBuffer):
    """A SharesItsClassBuffer whose observation is a named tuple (a Tuple space) holding the buffer."""

    buf = np.zeros(1, np.float32)
    observation_space = spaces.Tuple((spaces.Box(-1e6, 1e6, (1,), np.float32), spaces.Discrete(5)))

    def _out(self) -> Any:
        return Pair(self.buf, 1)


Pair = collections.namedtuple("Pair", "frame count")


class SharesWithOneStart(SharesItsClassBuffer):
    """A SharesItsClassBuffer whose resets all write the same value (0): only their steps tell them apart."""

    buf = np.zeros(1, np.float32)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.buf[0] = 0
        return obs, info


class SharesAConstant(SharesItsClassBuffer):
    """Returns its class's array, which nothing writes: every env's observation is the same zeros."""

    buf = np.zeros(1, np.float32)

    def reset(self, *, seed=None, options=None):
        gym.Env.reset(self, seed=seed)
        return self.buf, {}

    def step(self, action):
        return self.buf, 0.0, False, False, {}


class Pos(tuple):
    """A coordinate whose constructor takes its items one by one (as a game library's point type)."""

    def __new__(cls, x: int, y: int):
        return super().__new__(cls, (x, y))

    def __getnewargs__(self):
        return tuple(self)


class Tagged(list):
    """A list with an attribute of its own."""

    tag = ""


SHARED_START = np.zeros(2)  # (a module-level constant every env of PosEnv returns at reset: only costs copies)


class LabelledPoint(collections.namedtuple("LabelledPoint", "x y")):
    """A named tuple whose instances take attributes of their own (a subclass without __slots__)."""


class LabelledStart(gym.Env):
    """Reset infos holding a LabelledPoint with a ``label`` attribute and one that is itself (fresh observations)."""

    observation_space = spaces.Box(-1e6, 1e6, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, index: int = 0):
        self.index = index

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        start = LabelledPoint(self.index, 0)
        start.label = f"start of env {self.index}"
        start.me = start  # (an attribute that is itself, as a tree's root is its own parent)
        return np.zeros(1, np.float32), {"start": start}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}


class PosEnv(gym.Env):
    """Observations and infos of containers of its own (a Pos, a Tagged list); with ``box``, a Box observation whose
    resets return one constant array (found over the same memory: the process copies while watched)."""

    action_space = spaces.Discrete(2)

    def __init__(self, index: int = 0, box: bool = False):
        self.index, self.box, self.t = index, box, 0
        self.observation_space = (
            spaces.Box(-1e9, 1e9, (2,), np.float64) if box else spaces.Tuple((spaces.Discrete(1000), spaces.Discrete(1000)))
        )

    def _obs(self) -> Any:
        return np.array([self.index, self.t], np.float64) if self.box else Pos(self.index, self.t)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return (SHARED_START if self.box else self._obs()), {}

    def step(self, action):
        self.t += 1
        tagged = Tagged([self.index, self.t])
        tagged.tag = f"env {self.index}"
        return self._obs(), 1.0, self.t % 3 == 0, False, {"pos": Pos(self.index, self.t), "tagged": tagged}


class SharesItsInfoBuffer(SharesAConstant):
    """A SharesAConstant whose infos hold a buffer its class shares, written with its own values at each step."""

    buf = np.zeros(1, np.float32)
    state = np.zeros(1, np.float32)

    def step(self, action):
        self.steps += 1
        self.state[0] = 10 * self.steps + self.index
        return self.buf, 0.0, False, False, {"state": self.state}


class LockedDict(dict):
    """A dict with a lock of its own: it does not pickle."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()


class SharesInALockedDict(SharesItsClassBuffer):
    """A SharesItsClassBuffer whose observation is a LockedDict holding the buffer (a Dict space)."""

    buf = np.zeros(1, np.float32)
    observation_space = spaces.Dict({"x": spaces.Box(-1e6, 1e6, (1,), np.float32)})

    def _out(self) -> Any:
        return LockedDict(x=self.buf)


class SharesFromStepTen(SharesWithOneStart):
    """A SharesWithOneStart whose steps write the same value (the step's count) until its episode's tenth step, and
    then values of its own."""

    buf = np.zeros(1, np.float32)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.buf[0] = self.t if self.t < 10 else self.t + 1000 * self.index
        return self._out(), reward, terminated, truncated, info


class SharesItsResetInfoBuffer(SharesAConstant):
    """A SharesAConstant whose reset infos hold a buffer its class shares, written with its own values."""

    buf = np.zeros(1, np.float32)
    state = np.zeros(1, np.int64)

    def reset(self, *, seed=None, options=None):
        obs, _ = super().reset(seed=seed, options=options)
        self.state[0] = 1000 + self.index
        return obs, {"state": self.state}


MASK = np.ones(3, bool)  # (a constant every env of ConstantWithInfos puts in its infos)


class ConstantWithInfos(SharesAConstant):
    """A SharesAConstant whose step infos hold a constant they share beside values of their own."""

    buf = np.zeros(1, np.float32)

    def step(self, action):
        self.steps += 1
        return self.buf, 0.0, False, False, {"mask": MASK, "t": 10 * self.steps + self.index}


class SharesWithATag(SharesItsClassBuffer):
    """Envs over one buffer: resets write 0, steps the step's count, plus 100 x ``tag`` from the third step on (envs
    of one tag give the same values)."""

    buf = np.zeros(1, np.float32)

    def __init__(self, index: int = 0, tag: int = 0):
        super().__init__(index)
        self.tag = tag

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.buf[0] = 0
        return obs, info

    def step(self, action):
        self.t += 1
        self.buf[0] = self.t + (100 * self.tag if self.t >= 3 else 0)
        return self.buf, 0.0, False, False, {}


class SharesOnlyInSteps(SharesItsClassBuffer):
    """A SharesItsClassBuffer whose resets return fresh arrays: its buffer is shared only in what step() returns (or
    ``constant``: its steps return the buffer unwritten, zeros)."""

    buf = np.zeros(1, np.float32)

    def __init__(self, index: int = 0, length: int | None = None, constant: bool = False):
        super().__init__(index, length)
        self.constant = constant

    def reset(self, *, seed=None, options=None):
        if self.constant:  # (the buffer unwritten)
            gym.Env.reset(self, seed=seed)
            self.t = 0
        else:
            super().reset(seed=seed, options=options)
        return np.full(1, self.index, np.float32), {}

    def step(self, action):
        if not self.constant:
            return super().step(action)
        self.t += 1
        return self.buf, 0.0, self.length is not None and self.t >= self.length, False, {}


class SharesOnlyInStepsInADict(SharesOnlyInSteps):
    """A SharesOnlyInSteps whose observations are dicts (a Dict space) holding the buffer (a fresh dict each step)."""

    buf = np.zeros(1, np.float32)
    observation_space = spaces.Dict({"frame": spaces.Box(-1e6, 1e6, (1,), np.float32), "k": spaces.Discrete(3)})

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return {"frame": obs, "k": 1}, info

    def step(self, action):
        obs, *rest = super().step(action)
        return ({"frame": obs, "k": 1}, *rest)


class LinkedResetInfo(gym.Env):
    """Reset infos holding a dict that refers to itself and one array twice (a fresh observation each time)."""

    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        node: dict = {"name": "root"}
        node["parent"] = node["root"] = node
        shared = np.arange(3)
        return np.zeros(2, np.float32), {"node": node, "a": shared, "b": shared}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


class DiesAtSecondReset(SharesItsClassBuffer):
    """A SharesItsClassBuffer whose process dies at an env's second reset, once (``flag``: a file made then)."""

    buf = np.zeros(1, np.float32)

    def __init__(self, index: int = 0, flag: str = ""):
        super().__init__(index)
        self.flag, self.resets = flag, 0

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        if self.resets == 2 and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(7)
        return super().reset(seed=seed, options=options)


class SecondResetRaises(SharesItsClassBuffer):
    """A SharesItsClassBuffer (episodes of ``length`` steps) whose second reset raises, with ``raises`` (a re-made one's
    do not: a new instance)."""

    buf = np.zeros(1, np.float32)

    def __init__(self, index: int = 0, length: int | None = 2, raises: bool = False):
        super().__init__(index, length)
        self.raises, self.resets = raises, 0

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        if self.raises and self.resets == 2:
            raise RuntimeError("reset fails")
        return super().reset(seed=seed, options=options)


class OwnArraysOfTheBuffer(SecondResetRaises):
    """A SecondResetRaises (of the same class buffer) returning copies of it: arrays of its own."""

    def _out(self) -> Any:
        return self.buf.copy()


class FreshResets(gym.Env):
    """Resets return a fresh array of the env's index and start its step count ``t`` (the base of the envs below)."""

    observation_space = spaces.Box(-1e6, 1e6, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, index: int = 0):
        self.index, self.t = index, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.full(1, self.index, np.float32), {}


CONSTANT_MASK = np.ones(3, np.int8)  # (every ConstantMaskEnv's observation holds it; nothing writes it)


class ConstantMaskEnv(FreshResets):
    """Dict observations holding one constant array every env shares beside a position of their own."""

    observation_space = spaces.Dict({"mask": spaces.MultiBinary(3), "pos": spaces.Box(-1e6, 1e6, (1,), np.float32)})

    def reset(self, *, seed=None, options=None):
        return {"mask": CONSTANT_MASK, "pos": super().reset(seed=seed, options=options)[0]}, {}

    def step(self, action):
        self.t += 1
        return {"mask": CONSTANT_MASK, "pos": np.array([10 * self.t + self.index], np.float32)}, 0.0, False, False, {}


class OwnObservationsSharedInfos(FreshResets):
    """Observations of its own, infos holding one array its class shares, written with its own values."""

    state = np.zeros(1, np.float32)

    def reset(self, *, seed=None, options=None):
        self.state[0] = 1000 + self.index
        return super().reset(seed=seed, options=options)[0], {"state": self.state}

    def step(self, action):
        self.t += 1
        self.state[0] = 10 * self.t + self.index
        return np.array([self.t], np.float32), 0.0, False, False, {"state": self.state}


class AnyObject(gym.Space):
    """A space of any Python object (it travels pickled)."""

    def __init__(self):
        super().__init__(None, None)

    def sample(self, mask=None, probability=None):
        return None

    def contains(self, x) -> bool:
        return True

    @property
    def is_np_flattenable(self) -> bool:
        return False


def linked_tree(index: int, kind: str) -> dict:
    """A dict that is its own parent (``cycle``), or holds a list of two of one list, 40 levels deep (``dag``)."""
    node: dict = {"name": f"root of env {index}"}
    if kind == "cycle":
        node["parent"] = node
    else:
        shared: list = [0]
        for _ in range(40):
            shared = [shared, shared]
        node["dag"] = shared
    return node


class TreeEnv(gym.Env):
    """Dict observations holding a linked_tree; with ``in_infos``, constant observations and the tree in the step's
    infos instead."""

    action_space = spaces.Discrete(2)

    def __init__(self, index: int = 0, kind: str = "cycle", in_infos: bool = False):
        self.index, self.kind, self.in_infos = index, kind, in_infos
        self.observation_space = (
            spaces.Box(-1, 1, (1,), np.float32) if in_infos
            else spaces.Dict({"x": spaces.Box(-1e6, 1e6, (1,), np.float32), "tree": AnyObject()})
        )

    def _obs(self) -> Any:
        if self.in_infos:
            return SharesAConstant.buf
        return {"x": np.array([self.index], np.float32), "tree": linked_tree(self.index, self.kind)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        return self._obs(), 0.0, False, False, {"tree": linked_tree(self.index, self.kind)} if self.in_infos else {}


class ConstantEpisodes(SharesAConstant):
    """A SharesAConstant whose steps return the constant too, in episodes of ``length`` steps."""

    buf = np.zeros(1, np.float32)

    def step(self, action):
        self.t += 1
        return self.buf, 0.0, self.t >= self.length, False, {}


class OneStepKilledAtSecondReset(gym.Env):
    """Episodes of one step; each reset's info is {"made": 1}; with ``marker``, its second reset kills its process
    (SIGKILL), once (the file ``marker`` made then)."""

    observation_space = spaces.Box(-10, 10, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, marker: str | None = None):
        self.marker, self.resets = marker, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.resets += 1
        if self.resets == 2 and self.marker and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), 9)
        return np.zeros(1, np.float32), {"made": 1}

    def step(self, action):
        return np.ones(1, np.float32), 1.0, True, False, {}


class SharesAtEpisodeEnds(FreshResets):
    """Fresh observations, except at an episode's end (every ``length`` steps): then its class's one array, written
    with 100 x index + the episode's number."""

    end = np.zeros(1, np.float32)

    def __init__(self, index: int = 0, length: int = 20):
        super().__init__(index)
        self.length, self.episode = length, 0

    def reset(self, *, seed=None, options=None):
        self.episode += 1
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.t += 1
        if self.t >= self.length:
            self.end[0] = 100 * self.index + self.episode
            return self.end, 0.0, True, False, {}
        return np.full(1, 10 * self.index + self.t, np.float32), 0.0, False, False, {}


class InPlaceStateInfo(FreshResets):
    """Fresh observations; infos holding a state array of its own it changes in place (episodes of 3 steps; its reset
    writes -index there)."""

    def __init__(self, index: int = 0):
        super().__init__(index)
        self.state = np.zeros(1)

    def reset(self, *, seed=None, options=None):
        self.state[0] = -self.index
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.t += 1
        self.state[0] = 10 * self.index + self.t
        return np.full(1, 10 * self.index + self.t, np.float32), 0.0, self.t >= 3, False, {"state": self.state}


class StepFrame(FreshResets):
    """Steps return its class's one frame, written with 10 x index + t; resets return fresh arrays and leave the frame
    as it is (episodes of 4 steps)."""

    frame = np.zeros(1, np.float32)

    def step(self, action):
        self.t += 1
        self.frame[0] = 10 * self.index + self.t
        return self.frame, 0.0, self.t >= 4, False, {}


class OtherStepFrame(StepFrame):
    """A StepFrame of a frame of its own class."""

    frame = np.zeros(1, np.float32)


TERMINAL = np.full(1, -1.0, np.float32)  # (every InfoFrame's last observation of an episode)
TERMINAL.flags.writeable = False


class InfoFrame(FreshResets):
    """Fresh observations but at an episode's end (every 5 steps: the read-only TERMINAL every env returns); infos
    holding its class's one frame, written with 10 x index + t."""

    frame = np.zeros(1)

    def step(self, action):
        self.t += 1
        self.frame[0] = 10 * self.index + self.t
        end = self.t >= 5
        obs = TERMINAL if end else np.full(1, 10 * self.index + self.t, np.float32)
        return obs, 0.0, end, False, {"frame": self.frame}


class ReadOnlyStepFrame(StepFrame):
    """A StepFrame returning a read-only view of its class's frame (as a C extension's static frame often comes)."""

    frame = np.zeros(1, np.float32)

    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        view = self.frame.view()
        view.flags.writeable = False
        return view, reward, terminated, truncated, info


class Float64StepFrame(StepFrame):
    """A StepFrame whose frame is float64 for its float32 Box (its rows are cast)."""

    frame = np.zeros(1, np.float64)


class CountsEverySteps(FreshResets):
    """Fresh observations; its class counts every step of every instance (``total``), in its step and reset infos
    (episodes of ``length`` steps)."""

    total = np.zeros(1, np.int64)

    def __init__(self, length: int = 3):
        super().__init__(0)
        self.length = length

    def reset(self, *, seed=None, options=None):
        return super().reset(seed=seed, options=options)[0], {"total": self.total}

    def step(self, action):
        self.t += 1
        self.total[0] += 1
        return np.zeros(1, np.float32), 0.0, self.t >= self.length, False, {"total": self.total}

    def count(self) -> int:
        return int(self.total[0])


class InfoFilledByReset(gym.Env):
    """Returns one info dict of its own from every step, empty there, which its reset fills ({"resets": n}); episodes
    of 2 steps."""

    observation_space = spaces.Box(-1, 1, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self):
        self.info: dict = {}
        self.t = self.resets = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.resets = 0, self.resets + 1
        self.info["resets"] = self.resets
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        self.info.clear()
        return np.zeros(1, np.float32), 0.0, self.t >= 2, False, self.info


class FreshEpisodes(FreshResets):
    """Fresh observations (the step's count; its resets' zeros), episodes of ``length`` steps."""

    def __init__(self, length: int = 50):
        super().__init__(0)
        self.length = length

    def step(self, action):
        self.t += 1
        return np.full(1, self.t, np.float32), 0.0, self.t >= self.length, False, {}


class ResetsItsClassFrame(StepFrame):
    """A StepFrame whose resets write -1 into its class's frame (a C extension's start screen)."""

    frame = np.zeros(1, np.float32)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.frame[0] = -1.0
        return obs, info


class DrawsFromItsActionSpace(gym.Env):
    """An env whose step draws its observation from its own action space (a random opponent's move)."""

    observation_space = spaces.Box(-10, 10, (1,), np.float32)

    def __init__(self):
        self.action_space = spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.action_space.seed(int(self.np_random.integers(1 << 30)))
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.array([self.action_space.sample()], np.float32), 0.0, False, False, {}


class DrawsBesideAnIdentitySpace(DrawsFromItsActionSpace):
    """DrawsFromItsActionSpace whose observation space is of a class comparing by identity (gym.Space's own)."""

    def __init__(self):
        super().__init__()
        self.observation_space = AnyObject()


class CountsTo(gym.Env):
    """Observations [index, t]; episodes of ``length`` steps, or ``later_length`` from its ``later``-th episode."""

    observation_space = spaces.Box(-1e9, 1e9, (2,), np.float64)
    action_space = spaces.Discrete(2)

    def __init__(self, index: int, length: int, later: int = 0, later_length: int = 0):
        self.index, self.length, self.later, self.later_length = index, length, later, later_length
        self.episodes = self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.episodes = 0, self.episodes + 1
        return np.array([self.index, 0.0]), {}

    def step(self, action):
        self.t += 1
        length = self.later_length if self.later and self.episodes >= self.later else self.length
        return np.array([self.index, float(self.t)]), 1.0, self.t >= length, False, {}


@contextlib.contextmanager
def ctrl_c_after(seconds: float) -> Iterator[None]:
    """Inside: a KeyboardInterrupt ``seconds`` from now, raised by SIGALRM's handler (a Ctrl-C at that moment)."""
    import signal

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
