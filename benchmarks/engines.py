"""The vectorizers a benchmark can run, each behind one tiny adapter: reset(), step(actions), close().

An engine whose package is missing raises EngineUnavailable with the reason; the
study reports it as such instead of dropping it silently.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


class EngineUnavailable(Exception):
    """The engine cannot run here (package missing, workload unsupported)."""


class SerialLoop:
    """N envs stepped by a plain Python loop with autoreset: the no-vectorizer baseline."""

    def __init__(self, fns: list):
        self.envs = [fn() for fn in fns]

    def reset(self) -> None:
        for i, env in enumerate(self.envs):
            env.reset(seed=i)

    def step(self, actions: np.ndarray) -> None:
        for env, action in zip(self.envs, actions):
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()

    def close(self) -> None:
        for env in self.envs:
            env.close()


class _SB3:
    def __init__(self, venv: Any):
        self.venv = venv

    def reset(self) -> None:
        self.venv.seed(0)
        self.venv.reset()

    def step(self, actions: np.ndarray) -> None:
        self.venv.step(actions)

    def close(self) -> None:
        self.venv.close()


class _Gym:
    def __init__(self, venv: Any):
        self.venv = venv

    def reset(self) -> None:
        self.venv.reset(seed=0)

    def step(self, actions: np.ndarray) -> None:
        self.venv.step(actions)

    def close(self) -> None:
        self.venv.close()


def _sb3(kind: str, **kwargs: Any) -> Callable:
    def build(fns: list, workload: str) -> Any:
        try:
            from stable_baselines3.common import vec_env
        except ImportError as exc:
            raise EngineUnavailable(f"stable-baselines3 not installed: {exc}") from exc
        return _SB3(getattr(vec_env, kind)(fns, **kwargs))

    return build


def _gym(kind: str, **kwargs: Any) -> Callable:
    def build(fns: list, workload: str) -> Any:
        import gymnasium

        return _Gym(getattr(gymnasium.vector, kind)(fns, **kwargs))

    return build


def _fastvec(**kwargs: Any) -> Callable:
    def build(fns: list, workload: str) -> Any:
        import fastvec

        return _SB3(fastvec.SubprocVecEnv(fns, **kwargs))

    return build


ENGINES: dict[str, Callable] = {
    "serial": lambda fns, workload: SerialLoop(fns),
    "sb3-dummy": _sb3("DummyVecEnv"),
    "sb3-subproc": _sb3("SubprocVecEnv", start_method="forkserver"),
    "sb3-subproc-fork": _sb3("SubprocVecEnv", start_method="fork"),
    "gym-sync": _gym("SyncVectorEnv"),
    "gym-async": _gym("AsyncVectorEnv", shared_memory=False, context="fork"),
    "gym-async-shm": _gym("AsyncVectorEnv", shared_memory=True, context="fork"),
    "fastvec": _fastvec(start_method="fork"),
    "fastvec-no-parent": _fastvec(start_method="fork", step_in_parent=False),
    "fastvec-w1": _fastvec(start_method="fork", num_workers=1),
    "fastvec-w4": _fastvec(start_method="fork", num_workers=4),
    "fastvec-w8": _fastvec(start_method="fork", num_workers=8),
    "fastvec-nospin": _fastvec(start_method="fork", spin_ns=0),
}
