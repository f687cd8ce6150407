"""fastvec.VectorEnv: the shared-memory pool behind gymnasium 1.x's VectorEnv API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from fastvec.options import PoolOptions
from fastvec.pool import Pool
from fastvec.protocol import NEXT_STEP, SAME_STEP

__all__ = ["VectorEnv"]


class VectorEnv(gym.vector.VectorEnv):
    """gymnasium ``VectorEnv`` whose envs step in fastvec workers.

    ``step`` returns ``(obs, rewards, terminations, truncations, infos)`` with infos
    batched as gymnasium does (``info[key]`` arrays with ``info["_key"]`` masks).
    Autoreset modes NEXT_STEP (default, as gymnasium) and SAME_STEP (``final_obs`` and
    ``final_info`` in infos). ``reset(options={"reset_mask": mask})`` resets some envs.
    Other arguments as fastvec.SubprocVecEnv; with ``on_error="restart"`` a re-created
    env's episode ends as truncated and ``infos["fastvec_restarted"]`` names the error.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        *,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        config: PoolOptions | dict | str | None = None,
        **options: Any,
    ):
        mode = autoreset_mode if isinstance(autoreset_mode, AutoresetMode) else AutoresetMode(autoreset_mode)
        if mode == AutoresetMode.DISABLED:
            raise ValueError("fastvec.VectorEnv supports autoreset_mode NEXT_STEP and SAME_STEP, not DISABLED")
        settings = PoolOptions.build(config, **options)
        if not copy and settings.ring_slots < 2:
            raise ValueError(f"copy=False needs ring_slots >= 2, got {settings.ring_slots}")
        self.autoreset_mode = mode
        self.copy = copy
        self.pool = Pool(env_fns, settings, autoreset_mode=NEXT_STEP if mode == AutoresetMode.NEXT_STEP else SAME_STEP)
        try:
            self.num_envs = self.pool.num_envs
            self.single_observation_space = self.pool.observation_space
            self.single_action_space = self.pool.action_space
            self.observation_space = batch_space(self.single_observation_space, self.num_envs)
            self.action_space = batch_space(self.single_action_space, self.num_envs)
            self.metadata = dict(self.pool.call("get_attr", [0], ("metadata",))[0])
            self.metadata["autoreset_mode"] = mode
            self.render_mode = self.pool.call("get_attr", [0], ("render_mode",))[0]
        except BaseException:
            self.pool.close()
            raise

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        n = self.num_envs
        if seed is None:
            seeds: list = [None] * n
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(
                    f"If seeds are passed as a list the length must match num_envs={n} but got length={len(seeds)}."
                )
        mask = None
        if options is not None and "reset_mask" in options:
            options = dict(options)
            mask = options.pop("reset_mask")
            if not isinstance(mask, np.ndarray):
                raise TypeError(f"`options['reset_mask']` must be a numpy array, got {type(mask)}")
            if mask.shape != (n,):
                raise ValueError(f"`options['reset_mask']` must have shape `({n},)`, got {mask.shape}")
            if mask.dtype != np.bool_:
                raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got {mask.dtype}")
            if not mask.any():
                raise ValueError(f"`options['reset_mask']` must contain at least one True value, got {mask}")
        batch = self.pool.reset(seeds, None if options is None else [options] * n, mask=mask, pass_options_always=True)
        infos: dict[str, Any] = {}
        for i, info in batch.reset_infos.items():
            infos = self._add_info(infos, info, i)
        for i, error in batch.restarted.items():
            infos = self._add_info(infos, {"fastvec_restarted": error}, i)
        return batch.observations(self.copy), infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self.pool.step_async(actions)
        batch = self.pool.step_wait()
        terminations = batch.terminated.copy()
        truncations = batch.truncated.copy()
        rewards = batch.rewards.copy()
        infos: dict[str, Any] = {}
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            for i in sorted(batch.infos):
                infos = self._add_info(infos, batch.infos[i], i)
        else:
            done = np.logical_or(terminations, truncations)
            for i in range(self.num_envs):
                if done[i]:
                    infos = self._add_info(
                        infos, {"final_obs": batch.terminal_observation(i), "final_info": batch.infos.get(i, {})}, i
                    )
                    infos = self._add_info(infos, batch.reset_infos.get(i, {}), i)
                elif i in batch.infos:
                    infos = self._add_info(infos, batch.infos[i], i)
        for i, error in batch.restarted.items():
            infos = self._add_info(infos, {"fastvec_restarted": error}, i)
        return batch.observations(self.copy), rewards, terminations, truncations, infos

    def render(self) -> tuple[Any, ...] | None:
        return tuple(self.pool.call("render", list(range(self.num_envs))))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return tuple(self.pool.call("call", list(range(self.num_envs)), (name, args, kwargs)))

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return tuple(self.pool.call("get_attr", list(range(self.num_envs)), (name,)))

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(
                "Values must be a list or tuple with length equal to the number of environments. "
                f"Got `{len(values)}` values for {self.num_envs} environments."
            )
        self.pool.call("set_attr", list(range(self.num_envs)), (name, True), values=list(values))

    def close_extras(self, **kwargs: Any) -> None:
        if hasattr(self, "pool"):
            self.pool.close()

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if hasattr(self, "pool"):
                self.pool.close()
        except Exception:
            pass
