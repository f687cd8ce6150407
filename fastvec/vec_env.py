"""fastvec.SubprocVecEnv: a drop-in replacement for Stable-Baselines3's SubprocVecEnv."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastvec.pool import Pool
from fastvec.shard import INFO, RESET_INFO, RESTARTED, SAME_STEP

try:  # SB3's own base class when SB3 is installed: isinstance checks and wrappers work
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv as _VecEnvBase
except ImportError:  # pragma: no cover - exercised in environments without SB3
    from fastvec.vec_env_base import VecEnv as _VecEnvBase

__all__ = ["SubprocVecEnv", "load_config"]

_CONFIG_KEYS = ("num_workers", "step_in_parent", "spin_ns", "ring_slots", "start_method", "pin_workers")


def load_config(config: dict | str | os.PathLike | None) -> dict[str, Any]:
    """A tuning configuration: a dict, or the path of a JSON file written by ``python -m fastvec.tune``."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        with open(config) as f:
            config = json.load(f)
        config = config.get("config", config)
    unknown = set(config) - set(_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; expected some of {list(_CONFIG_KEYS)}")
    return dict(config)


class SubprocVecEnv(_VecEnvBase):
    """Steps N envs in worker processes that exchange data through shared memory.

    Same constructor and contract as SB3's ``SubprocVecEnv(env_fns, start_method)``:
    ``step`` returns ``(obs, rewards, dones, infos)``; infos carry
    ``TimeLimit.truncated`` and, at an episode's end, ``terminal_observation``; the
    env is reset in the same step. ``reset()`` uses the seeds and options set by
    ``seed()`` / ``set_options()``.

    Args:
        env_fns: callables that each build one gymnasium env.
        start_method: "fork", "forkserver" or "spawn" (default: forkserver where available).
        num_workers: how many shards step the envs (default: one per available core).
        copy: return copies (True, default) or views of the ring slot, valid for the
            next ``ring_slots - 1`` steps (False).
        ring_slots: ring depth (default 2; at least 2 with copy=False).
        step_in_parent: let this process step its own share of envs (default: True
            when num_workers >= 2). See fastvec.pool.Pool.
        spin_ns, step_timeout, daemon, pin_workers: see fastvec.pool.Pool.
        on_error: "raise" (default) or "restart": re-create an env that raised in step or
            reset (or a dead worker's envs); its episode ends as truncated
            (``dones[i]`` True, ``TimeLimit.truncated`` True, the last observation as
            ``terminal_observation``) and ``infos[i]["fastvec.restarted"]`` names the error.
        check: "warn" (default), "raise" or "off": what to do when an env returns an
            observation of another dtype than its space, or a NaN reward.
        config: a dict or JSON file from ``python -m fastvec.tune`` with any of
            num_workers, step_in_parent, spin_ns, ring_slots, start_method; explicit
            arguments win.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], Any]],
        start_method: str | None = None,
        *,
        num_workers: int | None = None,
        copy: bool = True,
        ring_slots: int | None = None,
        step_in_parent: bool | None = None,
        spin_ns: int | None = None,
        step_timeout: float | None = None,
        daemon: bool = False,
        config: dict | str | os.PathLike | None = None,
        pin_workers: bool | None = None,
        on_error: str = "raise",
        check: str = "warn",
    ):
        settings = load_config(config)
        explicit = {
            "num_workers": num_workers,
            "step_in_parent": step_in_parent,
            "spin_ns": spin_ns,
            "ring_slots": ring_slots,
            "start_method": start_method,
            "pin_workers": pin_workers,
        }
        settings.update({k: v for k, v in explicit.items() if v is not None})
        slots = settings.pop("ring_slots", None) or 2
        if not copy and slots < 2:
            raise ValueError(
                f"copy=False needs ring_slots >= 2 (got {slots}): SB3 keeps the previous observation "
                "while the next step runs, so a one-slot ring would overwrite it"
            )
        self.copy = bool(copy)
        self.waiting = False
        self.closed = False
        self.pool = Pool(
            env_fns,
            ring_slots=slots,
            autoreset_mode=SAME_STEP,
            step_timeout=step_timeout,
            daemon=daemon,
            on_error=on_error,
            check=check,
            **settings,
        )
        try:
            super().__init__(self.pool.num_envs, self.pool.observation_space, self.pool.action_space)
        except BaseException:
            self.pool.close()
            raise

    # -- observations --------------------------------------------------------------------
    def _obs(self, slot: int) -> Any:
        return self.pool.observations(slot, self.copy)

    def reset(self) -> Any:
        options = self._options if any(self._options) else None
        slot, extras = self.pool.reset(self._seeds, options)
        self.reset_infos = [{} for _ in range(self.num_envs)]
        for i, kind, info in extras or ():
            if kind == RESET_INFO:
                self.reset_infos[i] = info
        self._reset_seeds()
        self._reset_options()
        return self._obs(slot)

    def step_async(self, actions: np.ndarray) -> None:
        self.pool.step_async(actions)
        self.waiting = True

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict]]:
        self.waiting = False
        slot, extras = self.pool.step_wait()
        views = self.pool.views
        terminated = views.terminated[slot]
        truncated = views.truncated[slot]
        dones = terminated | truncated
        rewards = views.rewards[slot].astype(np.float32)  # float32, as SB3's DummyVecEnv
        obs = self._obs(slot)
        if extras is None and not dones.any():
            return obs, rewards, dones, [{"TimeLimit.truncated": False} for _ in range(self.num_envs)]
        infos: list[dict] = [{} for _ in range(self.num_envs)]
        reset_infos: dict[int, dict] = {}
        restarted: dict[int, str] = {}
        for i, kind, info in extras or ():
            if kind == INFO:
                infos[i] = info
            elif kind == RESET_INFO:
                reset_infos[i] = info
            elif kind == RESTARTED:
                restarted[i] = info["error"]
        for info in infos:
            info["TimeLimit.truncated"] = False
        for i in np.flatnonzero(dones).tolist():
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            infos[i]["terminal_observation"] = self.pool.terminal_observation(i)
            self.reset_infos[i] = reset_infos.get(i, {})
        for i, error in restarted.items():
            infos[i]["fastvec.restarted"] = error
        return obs, rewards, dones, infos

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seeds for the next reset: ``seed + i`` for env i (as SB3). With no seed, independent
        seeds drawn from one fresh ``numpy.random.SeedSequence`` (no overlap between runs)."""
        if seed is None:
            children = np.random.SeedSequence().spawn(self.num_envs)
            self._seeds = [int(c.generate_state(1)[0]) for c in children]
            return self._seeds
        return super().seed(seed)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.waiting = False
        self.pool.close()

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return self.pool.control("get_attr", list(self._get_indices(indices)), (attr_name,))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        targets = list(self._get_indices(indices))
        self.pool.control("set_attr", targets, (attr_name, False), values=[value] * len(targets))

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        return self.pool.control(
            "env_method", list(self._get_indices(indices)), (method_name, method_args, method_kwargs)
        )

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return self.pool.control("is_wrapped", list(self._get_indices(indices)), (wrapper_class,))

    def has_attr(self, attr_name: str) -> bool:
        return all(self.pool.control("has_attr", list(range(self.num_envs)), (attr_name,)))

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but this method assumes it is `rgb_array` to obtain images.",
                stacklevel=2,
            )
            return [None] * self.num_envs
        return self.pool.control("render", list(range(self.num_envs)))

    def __enter__(self) -> SubprocVecEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
