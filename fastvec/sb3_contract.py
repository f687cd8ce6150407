"""Stable-Baselines3's VecEnv contract, for when stable-baselines3 is not imported.

fastvec.SubprocVecEnv derives from SB3's own VecEnv only when SB3 was imported before
fastvec's SB3 front-end; otherwise from this class, which is registered as a virtual
subclass of SB3's VecEnv once SB3 is imported, so ``isinstance(venv,
stable_baselines3.common.vec_env.VecEnv)`` holds and SB3's wrappers accept it either way.
It implements the same public behaviour (written from SB3's documented contract), so code
written for SB3 runs without importing it (nor torch with it).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from copy import deepcopy
from typing import Any

import numpy as np

__all__ = ["VecEnv", "tile_images"]


def tile_images(images: Sequence[np.ndarray]) -> np.ndarray:
    """Arrange N HxWxC images in a near-square grid (blank cells padded with zeros)."""
    batch = np.asarray(images)
    n, height, width, channels = batch.shape
    rows = int(np.ceil(np.sqrt(n)))
    cols = int(np.ceil(n / rows))
    grid = np.zeros((rows * cols, height, width, channels), dtype=batch.dtype)
    grid[:n] = batch
    grid = grid.reshape(rows, cols, height, width, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * height, cols * width, channels)


class VecEnv:
    """N environments behind one batched interface (SB3's VecEnv contract)."""

    def __init__(self, num_envs: int, observation_space: Any, action_space: Any):
        self.num_envs = num_envs
        self.observation_space = observation_space
        self.action_space = action_space
        self.reset_infos: list[dict[str, Any]] = [{} for _ in range(num_envs)]
        self._seeds: list[int | None] = [None] * num_envs
        self._options: list[dict[str, Any]] = [{} for _ in range(num_envs)]
        try:
            modes = self.get_attr("render_mode")
        except AttributeError:
            warnings.warn("The `render_mode` attribute is not defined in your environment. It will be set to None.", stacklevel=2)
            modes = [None] * num_envs
        if any(mode != modes[0] for mode in modes):  # (SB3's VecEnv asserts it: the same exception type)
            raise AssertionError(f"render_mode mode should be the same for all environments, got {modes}")
        self.render_mode = modes[0]
        if self.render_mode is None:
            supported: list[str] = []
        elif self.render_mode == "rgb_array":
            supported = ["human", "rgb_array"]
        else:
            supported = [self.render_mode]
        self.metadata = {"render_modes": supported}

    def _reset_seeds(self) -> None:
        self._seeds = [None] * self.num_envs

    def _reset_options(self) -> None:
        self._options = [{} for _ in range(self.num_envs)]

    def step(self, actions: np.ndarray) -> Any:
        self.step_async(actions)
        return self.step_wait()

    def has_attr(self, attr_name: str) -> bool:
        try:
            self.get_attr(attr_name)
        except AttributeError:
            return False
        return True

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        if seed is None:
            seed = int(np.random.randint(0, np.iinfo(np.uint32).max, dtype=np.uint32))
        self._seeds = [seed + i for i in range(self.num_envs)]
        return self._seeds

    def set_options(self, options: list[dict] | dict | None = None) -> None:
        if options is None:
            options = {}
        self._options = deepcopy([options] * self.num_envs if isinstance(options, dict) else list(options))

    def render(self, mode: str | None = None) -> np.ndarray | None:
        if mode is not None and mode != self.render_mode and not (mode == "human" and self.render_mode == "rgb_array"):
            warnings.warn(f"render(mode={mode!r}) differs from the envs' render_mode {self.render_mode!r}", stacklevel=2)
            return None
        mode = mode or self.render_mode
        if mode is None:
            warnings.warn("You tried to call render() but no `render_mode` was passed to the env constructor.", stacklevel=2)
            return None
        if self.render_mode == "rgb_array":
            big = tile_images(self.get_images())  # type: ignore[arg-type]
            if mode == "rgb_array":
                return big
            import cv2  # shown the way SB3 shows it

            cv2.imshow("vecenv", big[:, :, ::-1])
            cv2.waitKey(1)
            return None
        self.env_method("render")
        return None

    @property
    def unwrapped(self) -> VecEnv:
        return self

    def getattr_depth_check(self, name: str, already_found: bool) -> str | None:
        if hasattr(self, name) and already_found:
            return f"{type(self).__module__}.{type(self).__name__}"
        return None

    def _get_indices(self, indices: None | int | Iterable[int]) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices
