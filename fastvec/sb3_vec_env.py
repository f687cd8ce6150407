"""fastvec.SubprocVecEnv: a drop-in replacement for Stable-Baselines3's SubprocVecEnv."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastvec import kernels
from fastvec.async_batches import OBS_ONLY
from fastvec.errors import raise_unusable_info
from fastvec.options import PoolOptions
from fastvec.pool import Pool
from fastvec.protocol import SAME_STEP
from fastvec.spaces import is_single_array, leaves

_SB3_BASE = "stable_baselines3.common.vec_env.base_vec_env"

# SB3's own VecEnv as the base when SB3 is already imported; otherwise fastvec's implementation
# of the same contract, registered as a virtual subclass of SB3's VecEnv when (if) SB3 is imported
# later: isinstance checks and SB3's wrappers work either way, and a program that does not use SB3
# does not pay for importing it (and torch with it: over a second of start-up).
if _SB3_BASE in sys.modules:
    _VecEnvBase = sys.modules[_SB3_BASE].VecEnv
else:
    from fastvec.sb3_contract import VecEnv as _VecEnvBase

__all__ = ["SubprocVecEnv"]


class SubprocVecEnv(_VecEnvBase):
    """Steps N envs in worker processes that exchange data through shared memory.

    Same constructor and contract as SB3's ``SubprocVecEnv(env_fns, start_method)``:
    ``step`` returns ``(obs, rewards, dones, infos)`` with float64 rewards; infos carry
    ``TimeLimit.truncated`` and, at an episode's end, ``terminal_observation``; the env is
    reset in the same step. ``reset()`` uses the seeds and options set by ``seed()`` /
    ``set_options()``, once.

    Args:
        env_fns: callables that each build one gymnasium env.
        start_method: "fork", "forkserver" or "spawn" (default: forkserver where available, as SB3).
        copy: return copies (True, default) or views of the ring slot, valid for the next
            ``ring_slots - 1`` steps (False; needs ring_slots >= 2).
        config: a PoolOptions, or a dict / JSON file from ``python -m fastvec.tune``;
            explicit keyword arguments win.
        **options: any field of fastvec.PoolOptions (its docstring says what each does): num_workers,
            ring_slots, step_in_parent, spin_ns, step_timeout, daemon, pin, pin_workers, batch_size
            (asynchronous batches: async_reset / send / recv), on_error, check, monitor,
            monitor_interval. With
            ``on_error="restart"`` a re-created env's episode ends (``dones[i]`` True,
            ``TimeLimit.truncated`` True, its last observation as ``terminal_observation``) and
            ``infos[i]["fastvec.restarted"]`` names the error.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], Any]],
        start_method: str | None = None,
        *,
        copy: bool = True,
        config: PoolOptions | dict | str | os.PathLike | None = None,
        **options: Any,
    ):
        env_fns = list(env_fns)
        settings = PoolOptions.merged(config, len(env_fns), {"start_method": start_method, **options})
        if not copy and settings.ring_slots < 2:
            raise ValueError(
                f"copy=False needs ring_slots >= 2 (got {settings.ring_slots}): SB3 keeps the previous observation "
                "while the next step runs, so a one-slot ring would overwrite it"
            )
        self.copy = bool(copy)
        self._infos: list[dict] | None = None  # the next step's infos, made in step_async (None: not yet)
        self.waiting = False
        self.closed = False
        # SB3 asks env 0 for the spaces and checks nothing else: envs whose observation and action spaces
        # differ only in their bounds are accepted (their shapes and dtypes may not differ: they must stack)
        self.pool = Pool(
            env_fns, settings, autoreset_mode=SAME_STEP, observation_mode="different", action_mode="different",
            fewest_ring_slots=1 if copy else 2,
        )  # fmt: skip
        try:
            super().__init__(self.pool.num_envs, self.pool.observation_space, self.pool.action_space)
            # env 0's metadata (render_fps...) beside SB3's render_modes: SB3's wrappers read the env's own from
            # SB3's SubprocVecEnv (get_attr) and a VecEnv's metadata from any other (VecVideoRecorder: at 30 fps)
            try:
                metadata = self.get_attr("metadata", 0)[0]
            except Exception:  # (one that cannot travel back from its worker, a lock in it: SB3's alone, as before)
                metadata = None
            if isinstance(metadata, dict):
                self.metadata = {**metadata, "render_modes": self.metadata["render_modes"]}
        except BaseException:
            self.pool.close()
            raise
        # structured action spaces: SB3 passes one action per env (a list of dicts / tuples)
        self._per_env_actions = not is_single_array(leaves(self.action_space))
        # a part of another byte order than this machine's (Box(dtype=">f4")): SB3's pipe and np.stack hand it
        # back in native order (torch takes no other); the ring holds the space's dtype
        self._swap = any(leaf.array and not leaf.dtype.isnative for leaf in leaves(self.observation_space))
        # asynchronous batches called without the pool's layer in between (issue 12: one call less per recv and send)
        self._batches = self.pool._async
        self._resetting: set[int] = set()  # envs an async_reset() reset whose batch recv() has not returned yet

    def _options_for_reset(self) -> list | None:
        """The options of set_options(), one per env; as in SB3, env i takes entry i of the list as
        given (a longer list's extra entries go unused, a shorter one raises IndexError)."""
        options = [self._options[i] for i in range(self.num_envs)]
        return options if any(options) else None

    def reset(self) -> Any:
        if self.pool.pending == "step":  # (after step_async, or a step_wait() cut short by Ctrl-C)
            # SB3's contract: a reset cancels a pending step_async (its DummyVecEnv drops the actions). Here the step
            # began at step_async: it is collected and its results dropped (it was refused with AlreadyPendingCallError)
            self.waiting = False
            self.pool.step_wait()
        batch = self.pool.reset(self._seeds, self._options_for_reset())
        self._resetting = set()
        self.reset_infos = [_reset_info(batch, i) for i in range(self.num_envs)]
        # seeds and options are used once, as SB3 does
        self._reset_seeds()
        self._reset_options()
        obs = batch.observations(self.copy, _stack)
        return _native(obs) if self._swap else obs

    def step_async(self, actions: np.ndarray) -> None:
        # (none until this step's are made: an interrupt once the step was issued, before they were, left the previous
        # step's infos, and their final observations, for the step_wait() that collects it)
        self._infos = None
        self.pool.step_async(actions, per_env=self._per_env_actions)
        self.waiting = True
        # the usual infos, made while the workers step (where the parent would otherwise wait for them)
        self._infos = kernels.info_dicts(self.num_envs, "TimeLimit.truncated", False)

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict]]:
        self.waiting = False
        batch = self.pool.step_wait()
        # dones, rewards (float64, as SB3's SubprocVecEnv stacks the envs' float rewards) and the envs
        # whose episode ended, in one kernel call
        dones, rewards, ended = kernels.done_flags(batch.terminated, batch.truncated, batch.rewards)
        obs = batch.observations(self.copy, _stack)
        if self._swap:
            obs = _native(obs)
        infos = self._infos
        if infos is None:  # (step_async was interrupted before it made them)
            infos = kernels.info_dicts(self.num_envs, "TimeLimit.truncated", False)
        if not ended and not batch.has_extras:
            return obs, rewards, dones, infos
        if batch.infos:
            infos = [batch.infos.get(i, {}) for i in range(self.num_envs)]  # (those there said something)
            try:
                for info in infos:
                    info["TimeLimit.truncated"] = False
            except Exception as exc:  # (an info that is no dict: named)
                raise_unusable_info(exc, (batch.infos, "step"), writable=True)
                raise
        # (else most steps of most envs: only episode ends to report, visited alone below)
        terminated, truncated = batch.terminated, batch.truncated
        reset_infos = batch.reset_infos
        for i, final in zip(ended, batch.terminal_observations(ended)):
            info = infos[i]
            info["TimeLimit.truncated"] = truncated.item(i) and not terminated.item(i)  # (Python bools)
            info["terminal_observation"] = _native(final) if self._swap else final
            self.reset_infos[i] = reset_infos.get(i, {})
        for i, error in batch.restarted.items():
            infos[i]["fastvec.restarted"] = error
        return obs, rewards, dones, infos

    # -- asynchronous batches (batch_size below num_envs), EnvPool's API --------------------------
    def async_reset(self) -> None:
        """Start resetting every env (with the seeds of ``seed()`` and the options of ``set_options()``, used
        once, as by ``reset()``); ``recv()`` returns them in batches."""
        before, self._resetting = self._resetting, set(range(self.num_envs))
        try:  # (set before the resets are issued: an interrupt after left recv() to collect them, reset_infos unset)
            self.pool.async_reset(self._seeds, self._options_for_reset())
        except BaseException:
            if not (self._batches is not None and self._batches.busy):  # (refused, or interrupted before any was issued)
                self._resetting = before
            raise
        # (each env's next batch is its reset's: recv() sets reset_infos)
        self._reset_seeds()
        self._reset_options()

    def send(self, actions: Any, env_ids: Any) -> None:
        """Step the envs ``env_ids`` (those ``recv()`` returned) with ``actions``, one row each (for Dict and
        Tuple action spaces also SB3's layout, one action per env, as ``step`` takes)."""
        (self._batches or self.pool).send(actions, env_ids, self._per_env_actions)

    def recv(self, copy: bool | None = None) -> tuple[Any, np.ndarray, np.ndarray, list[dict], np.ndarray]:
        """``(obs, rewards, dones, infos, env_ids)`` of the first ``batch_size`` envs that finished,
        with SB3's infos (``TimeLimit.truncated``, ``terminal_observation``). ``copy=False``
        (default: the ``copy`` it was made with): obs are views into the ring where the batch is one group (see Pool.recv), valid until the next ``send``."""
        copied = self.copy if copy is None else copy
        batch = None
        try:
            batch = (self._batches or self.pool).recv(None, OBS_ONLY if copied else False, _stack)
            # dones, rewards (a float64 copy) and the rows whose episode ended, from the ring in one kernel call
            dones, rewards, ended = kernels.done_flags(batch.terminated, batch.truncated, batch.rewards)
            infos = kernels.info_dicts(len(dones), "TimeLimit.truncated", False)  # the usual infos
            if ended or batch.infos or batch.restarted:  # (only the envs with something to add are visited)
                self._unusual_infos(batch, batch.env_ids.tolist(), ended, infos)
            if self._resetting:  # an async_reset's envs: every one's reset infos set, as reset() sets them, with its
                self._reset_done(batch)  # restart (in a batch of several groups, beside another's episode end)
            return _native(batch.obs) if self._swap else batch.obs, rewards, dones, infos, batch.env_ids
        except BaseException as exc:  # (the outputs not made: AsyncBatches.not_made)
            if batch is not None:
                self._batches.not_made(batch, exc)
            raise

    def _reset_done(self, batch: Any) -> None:
        """The reset infos of the envs of ``batch`` that an async_reset() reset: every one's, as ``reset()`` sets
        them (an env whose reset returned no info: {}, not an earlier reset's), a restart in it beside them."""
        resetting = self._resetting
        for i in batch.env_ids.tolist():
            if i in resetting:
                self.reset_infos[i] = _reset_info(batch, i)
                resetting.discard(i)

    def _unusual_infos(self, batch: Any, ids: list[int], ended: list[int], infos: list[dict]) -> None:
        """What ``recv`` adds to the usual infos (in place): the envs' own info dicts, episode ends
        (``TimeLimit.truncated``, ``terminal_observation``, the reset's infos) and restarts."""
        if batch.infos:
            for k, i in enumerate(ids):
                info = batch.infos.get(i)
                if info is not None:  # the env's own dict, as SB3 returns it (those there said something)
                    try:
                        info["TimeLimit.truncated"] = False
                    except Exception as exc:  # (an info that is no dict: named)
                        raise_unusable_info(exc, ({i: info}, "step"), writable=True)
                        raise
                    infos[k] = info
        terminated, truncated = batch.terminated, batch.truncated
        finals = batch.terminal_observations([ids[k] for k in ended]) if ended else ()  # (copied in one call)
        for k, final in zip(ended, finals):  # (the rows whose episode ended)
            i = ids[k]
            infos[k]["TimeLimit.truncated"] = truncated.item(k) and not terminated.item(k)
            infos[k]["terminal_observation"] = _native(final) if self._swap else final
            self.reset_infos[i] = batch.reset_infos.get(i, {})
        if batch.restarted:
            for k, i in enumerate(ids):
                if i in batch.restarted:
                    infos[k]["fastvec.restarted"] = batch.restarted[i]

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """SB3's ``seed``: per-env seeds ``seed + i`` (used by the next reset); a numpy integer ``seed`` is
        taken as its Python int (SB3's sum wraps in its type, np.uint8(255) + 1 to 0; its envs refuse it)."""
        if isinstance(seed, np.integer):
            seed = int(seed)
        return super().seed(seed)

    def stats(self) -> Any:
        """What each shard did since the previous call (fastvec.stats.PoolStats)."""
        return self.pool.stats()

    @property
    def monitor_events(self) -> list:
        """What the monitor did (monitor=True): re-pinned workers, moved envs."""
        return self.pool.monitor_events

    def close(self) -> None:
        self.closed = True
        self.waiting = False
        self.pool.close()  # (idempotent; after a close() in a signal handler, it lets go of what that one left)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return self.pool.call("get_attr", list(self._get_indices(indices)), (attr_name,))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        targets = list(self._get_indices(indices))
        self.pool.call("set_attr", targets, (attr_name, False), values=[value] * len(targets))

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        return self.pool.call("env_method", list(self._get_indices(indices)), (method_name, method_args, method_kwargs))

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return self.pool.call("is_wrapped", list(self._get_indices(indices)), (wrapper_class,))

    def has_attr(self, attr_name: str) -> bool:
        return all(self.pool.call("has_attr", list(range(self.num_envs)), (attr_name,)))

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but this method assumes it is `rgb_array` to obtain images.",
                stacklevel=2,
            )
            return [None] * self.num_envs
        return self.pool.call("render", list(range(self.num_envs)))

    def __enter__(self) -> SubprocVecEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _reset_info(batch: Any, i: int) -> dict:
    """Env i's reset info in ``batch``, as SB3's ``reset_infos`` hold it ({} where its reset returned none), with a
    restart in that reset beside it (``fastvec.restarted``)."""
    info = batch.reset_infos.get(i, {})
    return {**info, "fastvec.restarted": batch.restarted[i]} if i in batch.restarted else info


def _native(obs: Any) -> Any:
    """``obs`` (an array, or a dict / tuple of them) with every array in this machine's byte order."""
    if isinstance(obs, np.ndarray):
        return obs if obs.dtype.isnative else obs.astype(obs.dtype.newbyteorder("="))
    if isinstance(obs, dict):
        return {key: _native(value) for key, value in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_native(value) for value in obs)
    return obs


def _stack(leaf: Any, values: list) -> np.ndarray:
    """Object parts (Text, Graph, ...) batched as SB3's SubprocVecEnv batches them: np.stack."""
    try:
        return np.stack(values)
    except (ValueError, TypeError):
        batch = np.empty(len(values), dtype=object)
        batch[:] = values
        return batch


class _RegisterWithSB3(importlib.abc.MetaPathFinder):
    """Registers fastvec.SubprocVecEnv with SB3's VecEnv (an ABC) once SB3 defines it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _SB3_BASE:
            return None
        sys.meta_path.remove(self)  # let the real finders find it
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            module.VecEnv.register(SubprocVecEnv)

        spec.loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


if _SB3_BASE not in sys.modules:
    sys.meta_path.insert(0, _RegisterWithSB3())
