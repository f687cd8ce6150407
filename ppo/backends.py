"""The vectorized-env engines the trainer can run on, behind one small interface.

Every backend exposes its results as a ``Ring`` of S slots (see ``ppo.storage``):
``reset`` and ``step`` return the slot they wrote. fastvec's ring *is* its shared
memory block (zero copy). The other engines return fresh arrays each step, which
their adapter copies into a ring of its own, so the same trainer code compares
engines: ``--vec-backend fastvec|sb3-subproc|gym-async|serial``.

Every backend autoresets in the same step (SB3's convention): when an episode ends,
the slot holds the first observation of the next one, and ``ring.terminal_obs`` the
final observation of the one that ended.
"""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ppo.errors import SpaceError, allocating
from ppo.storage import Ring

__all__ = ["Backend", "FastvecBackend", "GymBackend", "SB3SubprocBackend", "make_env", "make_backend"]

# (Discrete, Tuple or Dict observations, FrozenLake's or Blackjack's: what the user can do about it)
_FLATTEN_HINT = (
    "; gymnasium.wrappers.FlattenObservation turns them into one Box (Discrete as one-hot): register the wrapped "
    "env in a module of yours and pass --env-id module:YourEnv-v0"
)


def _flattenable(space: gym.Space) -> bool:
    """Whether gymnasium's FlattenObservation makes one Box of ``space``: numbers all through."""
    if isinstance(space, gym.spaces.Tuple):
        return all(_flattenable(part) for part in space.spaces)
    if isinstance(space, gym.spaces.Dict):
        return all(_flattenable(part) for part in space.spaces.values())
    return isinstance(space, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary))



def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """``gymnasium.make(env_id)``; a module-level function so that worker processes can unpickle it.
    ``render_mode`` is passed only when given: gymnasium passes every keyword on to the env's constructor,
    and one without a ``render_mode`` argument would refuse even ``render_mode=None``."""
    return gym.make(env_id) if render_mode is None else gym.make(env_id, render_mode=render_mode)


class Backend(ABC):
    """N envs stepped together; results land in ``self.ring``."""

    ring: Ring
    num_envs: int
    observation_space: gym.Space  # of one env
    action_space: gym.Space  # of one env

    @abstractmethod
    def reset(self, seeds: list[int]) -> int:
        """Reset env i with ``seeds[i]``; return the slot holding the first observations."""

    @abstractmethod
    def step(self, actions: np.ndarray) -> int:
        """Step every env with its row of ``actions``; return the slot holding the results."""

    def pin_memory(self) -> None:  # noqa: B027 - optional hook
        """Make the ring page-locked so host-to-device copies can be asynchronous (CUDA)."""

    def utilisation(self) -> dict[str, float]:
        """Per shard of the engine, its busy share since the previous call (fastvec only)."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Stop the envs. The caller must have dropped its tensors over ``ring`` first."""

    def abort(self) -> None:
        """Stop the envs after an interrupt (SIGTERM, Ctrl-C), which may have cut a message to a worker in half:
        without a word on the pipes where the engine cannot recover from that (close() then only frees)."""
        self.close()


def _kill_workers(processes: list, pipes: list) -> None:
    """End a reference engine's worker processes at once (SIGKILL: they may ignore SIGTERM, see ppo.train) and
    close its pipes; what it holds is the envs' state, which an interrupted run drops anyway."""
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(5.0)
    for pipe in pipes:
        if pipe is not None:
            pipe.close()


# -- fastvec ---------------------------------------------------------------------------------------
class FastvecBackend(Backend):
    """fastvec's Pool; the ring tensors share memory with its shared block.

    ``num_workers``: shards stepping the envs (None: fastvec's default, one per core with
    the calling process stepping one of them; 0: every env in the calling process).
    ``settings``: Pool keyword arguments from a ``python -m fastvec.tune`` configuration
    (``num_workers`` above wins over the one in there).
    """

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        num_slots: int,
        num_workers: int | None = None,
        start_method: str | None = None,
        settings: Any = None,
        monitor: bool = False,
        async_envs: bool = False,
    ):
        from fastvec.options import PoolOptions
        from fastvec.pool import Pool
        from fastvec.protocol import SAME_STEP

        # settings: what `python -m fastvec.tune` found fastest (num_workers, step_in_parent, spin_ns, ...)
        options = PoolOptions.build(settings, start_method=start_method).replace(ring_slots=num_slots)
        if num_workers == 0:  # one shard, stepped by the calling process itself (no worker process, still the ring)
            options = options.replace(num_workers=1, step_in_parent=True)
        elif num_workers is not None:
            options = options.replace(num_workers=num_workers)
        if monitor:  # fastvec's monitor: re-pins lagging workers, moves envs off a lagging shard
            options = options.replace(monitor=True)
        if async_envs:  # two halves, each one or more workers' envs, stepping while the policy acts for the other
            # (a tuned num_workers was measured for the synchronous step and need not tile a half: the batches'
            # own default, unless --num-workers gave one, as PoolOptions.build does for a config with batch_size)
            options = options.replace(
                batch_size=len(env_fns) // 2, step_in_parent=False, num_workers=options.num_workers if num_workers else None
            )
        self.pool = Pool(env_fns, options, autoreset_mode=SAME_STEP)
        try:
            ring = self.pool.ring
            if len(ring.obs) != 1 or not isinstance(self.pool.observation_space, gym.spaces.Box):
                raise SpaceError(
                    f"the trainer supports single-array (Box) observations, got {self.pool.observation_space}"
                    + _FLATTEN_HINT * _flattenable(self.pool.observation_space)
                )
            self.ring = Ring.from_numpy(ring.obs[0], ring.rewards, ring.terminated, ring.truncated, ring.terminal_obs[0])
        except BaseException:
            self.pool.close()
            raise
        self.num_envs = self.pool.num_envs
        self.observation_space = self.pool.observation_space
        self.action_space = self.pool.action_space
        self._pinned: int | None = None

    def reset(self, seeds: list[int]) -> int:
        return self.pool.reset(seeds=seeds).slot

    def step(self, actions: np.ndarray) -> int:
        self.pool.step_async(actions)
        return self.pool.step_wait().slot  # infos are not used by the trainer

    def send(self, actions: np.ndarray, env_ids: np.ndarray) -> None:
        """async_envs: step the envs ``env_ids`` (a batch ``recv`` returned)."""
        self.pool.send(actions, env_ids)

    def recv(self) -> Any:
        """async_envs: the next half (or group of workers' envs) that finished: a fastvec AsyncBatch
        whose ``parts`` say which ring slot holds which envs' results."""
        return self.pool.recv(copy=False)

    @property
    def group_size(self) -> int:
        """async_envs: the envs of a group (one worker's), the unit ``recv`` returns them in."""
        return self.pool._async.group_size  # type: ignore[union-attr]

    def utilisation(self) -> dict[str, float]:
        """Each shard's busy share (fastvec.stats) since the previous call, and the monitor's moves."""
        stats = self.pool.stats()
        out = {f"fastvec_busy_shard{s.shard}": s.busy for s in stats.shards}
        out["fastvec_moves"] = float(self.pool.moves_done)
        return out

    def pin_memory(self) -> None:
        """Register the whole shared block with CUDA as page-locked host memory."""
        if self._pinned is not None:
            return
        address, size = self.pool.ring.address, self.pool.ring.nbytes
        # flags 0 = cudaHostRegisterDefault: page-locked, so copies from it can run asynchronously
        try:
            torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(address, size, 0))
        except Exception as exc:
            raise RuntimeError(f"cudaHostRegister of fastvec's shared block ({size} bytes) failed: {exc}") from exc
        self._pinned = address

    def close(self) -> None:
        try:
            if self._pinned is not None:
                address, self._pinned = self._pinned, None
                torch.cuda.synchronize()  # no copy may still read the block
                torch.cuda.check_error(torch.cuda.cudart().cudaHostUnregister(address))
        finally:
            self.ring = None  # type: ignore[assignment]
            self.pool.close()


# -- engines that return fresh arrays ----------------------------------------------------------------
class _CopyBackend(Backend):
    """Owns a ring of plain (optionally pinned) buffers and copies every step's results into it."""

    def _allocate_or_close(self, num_slots: int, pin: bool) -> None:
        try:
            self._allocate(num_slots, pin)
        except BaseException:  # (a space the trainer cannot take: the vector env's workers must not outlive it)
            self.venv.close()
            raise

    def _allocate(self, num_slots: int, pin: bool) -> None:
        space, n = self.observation_space, self.num_envs
        if not isinstance(space, gym.spaces.Box):  # (as the fastvec backend says)
            raise SpaceError(
                f"the trainer supports single-array (Box) observations, got {space}"
                + _FLATTEN_HINT * _flattenable(space)
            )

        def buffer(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
            with allocating(f"num_steps x num_envs: the rollout ring of {num_slots} slots of {n} envs"):
                return torch.zeros(shape, dtype=dtype, pin_memory=pin).numpy()

        self._obs = buffer((num_slots, n, *space.shape), space.dtype)
        self._rewards = buffer((num_slots, n), np.float64)  # what gymnasium returns, and fastvec's ring holds
        self._terminated = buffer((num_slots, n), np.bool_)
        self._truncated = buffer((num_slots, n), np.bool_)
        self._terminal_obs = buffer((n, *space.shape), space.dtype)
        self.ring = Ring.from_numpy(self._obs, self._rewards, self._terminated, self._truncated, self._terminal_obs)
        self._num_slots = num_slots
        self._slot = 0

    def _write(
        self,
        obs: np.ndarray,
        rewards: np.ndarray | None = None,
        terminated: np.ndarray | None = None,
        truncated: np.ndarray | None = None,
    ) -> int:
        slot = (self._slot + 1) % self._num_slots  # the next slot, as fastvec does
        self._obs[slot] = obs
        self._rewards[slot] = 0.0 if rewards is None else rewards
        self._terminated[slot] = False if terminated is None else terminated
        self._truncated[slot] = False if truncated is None else truncated
        self._slot = slot
        return slot


class GymBackend(_CopyBackend):
    """gymnasium's SyncVectorEnv ("serial": every env in this process) or AsyncVectorEnv ("gym-async")."""

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        num_slots: int,
        asynchronous: bool,
        start_method: str | None = None,
        pin: bool = False,
    ):
        mode = gym.vector.AutoresetMode.SAME_STEP
        if asynchronous:
            # copy=False: the adapter copies into its ring at once, a second copy would be wasted
            self.venv = gym.vector.AsyncVectorEnv(env_fns, context=start_method, copy=False, autoreset_mode=mode)
        else:
            self.venv = gym.vector.SyncVectorEnv(env_fns, copy=False, autoreset_mode=mode)
        self.num_envs = self.venv.num_envs
        self.observation_space = self.venv.single_observation_space
        self.action_space = self.venv.single_action_space
        self._allocate_or_close(num_slots, pin)

    def reset(self, seeds: list[int]) -> int:
        obs, _info = self.venv.reset(seed=list(seeds))
        return self._write(obs)

    def step(self, actions: np.ndarray) -> int:
        obs, rewards, terminated, truncated, info = self.venv.step(actions)
        mask = info.get("_final_obs")
        if mask is not None and mask.any():
            ended = np.flatnonzero(mask)
            self._terminal_obs[ended] = np.stack(info["final_obs"][ended])
        return self._write(obs, rewards, terminated, truncated)

    def close(self) -> None:
        self.ring = None  # type: ignore[assignment]
        self.venv.close()

    def abort(self) -> None:
        venv = self.venv
        if isinstance(venv, gym.vector.AsyncVectorEnv) and not venv.closed:
            venv.closed = True  # (its close() would talk to the workers: not after an interrupt)
            _kill_workers(venv.processes, venv.parent_pipes)
        self.close()


class SB3SubprocBackend(_CopyBackend):
    """Stable-Baselines3's SubprocVecEnv (one process per env, pickled pipe messages)."""

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        num_slots: int,
        start_method: str | None = None,
        pin: bool = False,
    ):
        try:
            from stable_baselines3.common.vec_env import SubprocVecEnv
        except ImportError as exc:  # (the reference engine is not the train extra's)
            raise ValueError(
                f"--vec-backend sb3-subproc needs stable-baselines3, which could not be imported ({exc}): pip install "
                "'.[sb3]' in fastvec's folder"
            ) from None

        # one env made here first: a wrong env id, module or dependency is said in one line (SB3's workers print a
        # traceback each, and the parent then dies of a broken pipe)
        env_fns[0]().close()
        # (the instance made before its constructor runs: the workers it started are within reach where it raises,
        # to be ended here, or a library user, a test, a notebook, a sweep, keeps them, dead and unreaped)
        venv = self.venv = SubprocVecEnv.__new__(SubprocVecEnv)
        try:
            venv.__init__(env_fns, start_method=start_method)  # type: ignore[misc]
        except BaseException as exc:
            _kill_workers(getattr(venv, "processes", []), getattr(venv, "remotes", []))
            if not isinstance(exc, (EOFError, BrokenPipeError, ConnectionResetError)):
                raise
            raise ValueError(
                f"SB3's SubprocVecEnv: its workers could not make the env ({type(exc).__name__}; their tracebacks are "
                "above)"
            ) from None
        self.num_envs = self.venv.num_envs
        self.observation_space = self.venv.observation_space
        self.action_space = self.venv.action_space
        self._allocate_or_close(num_slots, pin)

    def reset(self, seeds: list[int]) -> int:
        if list(seeds) != list(range(seeds[0], seeds[0] + len(seeds))):
            raise ValueError("SB3's VecEnv.seed(seed) seeds env i with seed + i; other seed lists are not supported")
        self.venv.seed(seeds[0])
        return self._write(self.venv.reset())

    def step(self, actions: np.ndarray) -> int:
        obs, rewards, dones, infos = self.venv.step(actions)
        terminated = dones.copy()
        truncated = np.zeros_like(dones)
        # SB3 folds truncation into `dones`; the split is in the infos of the envs that ended
        for i in np.flatnonzero(dones):
            info = infos[i]
            truncated[i] = info.get("TimeLimit.truncated", False)
            terminated[i] = not truncated[i]
            self._terminal_obs[i] = info["terminal_observation"]
        return self._write(obs, rewards, terminated, truncated)

    def close(self) -> None:
        self.ring = None  # type: ignore[assignment]
        self.venv.close()

    def abort(self) -> None:
        venv = self.venv
        if not venv.closed:
            venv.closed = True  # (its close() would wait for the workers' replies: not after an interrupt)
            _kill_workers(venv.processes, venv.remotes)
        self.close()


def make_backend(
    name: str,
    env_id: str,
    num_envs: int,
    num_slots: int,
    *,
    num_workers: int | None = None,
    start_method: str | None = None,
    default_start_method: str | None = None,
    pin: bool = False,
    fastvec_config: str | None = None,
    monitor: bool = False,
    async_envs: bool = False,
    rank_cores: list[int] | None = None,
) -> Backend:
    """The backend called ``name`` running ``num_envs`` copies of ``env_id`` with a ring of ``num_slots``.

    ``fastvec_config``: path of a ``python -m fastvec.tune`` JSON (fastvec only).
    ``rank_cores``: the cores ``--pin-rank-cores`` restricted this rank to (named when the config's pin leaves them).
    ``start_method``: the workers' start method; where neither it nor ``fastvec_config`` names one,
    ``default_start_method``.
    """
    env_fns = [functools.partial(make_env, env_id) for _ in range(num_envs)]
    backend: Backend
    if fastvec_config is not None and name != "fastvec":
        raise ValueError(f"fastvec_config applies to the fastvec backend, not {name!r}")
    if monitor and name != "fastvec":
        raise ValueError(f"monitor is fastvec's, not {name!r}'s")
    if async_envs and name != "fastvec":
        raise ValueError(f"async_envs is fastvec's, not {name!r}'s")
    settings = None
    if fastvec_config is not None:
        from fastvec.options import PoolOptions

        try:
            settings = PoolOptions.load(fastvec_config)
        except (OSError, ValueError, TypeError) as exc:  # (a JSONDecodeError is a ValueError)
            raise ValueError(f"--fastvec-config {fastvec_config}: {exc}") from None
    start_method = start_method or (settings.start_method if settings is not None else None) or default_start_method
    if name == "fastvec":
        try:
            backend = FastvecBackend(
                env_fns,
                num_slots,
                num_workers=num_workers,
                start_method=start_method,
                settings=settings,
                monitor=monitor,
                async_envs=async_envs,
            )
        except ValueError as exc:
            pin_list = settings.pin if settings is not None and isinstance(settings.pin, (list, tuple)) else []
            if not hasattr(os, "sched_getaffinity") or not set(pin_list) - os.sched_getaffinity(0):
                raise
            # the config's pin names cores this process may not run on: said with the file, and, under torchrun,
            # with the share --pin-rank-cores gave the rank (the user restricted no process: "this process" misled)
            share = (
                f"; --pin-rank-cores gave this rank cores {rank_cores}: pin within them, or pass --no-pin-rank-cores"
                if rank_cores is not None else ""
            )  # fmt: skip
            raise ValueError(f"--fastvec-config {fastvec_config}: {exc}{share}") from None
        if pin:
            try:
                backend.pin_memory()
            except BaseException:
                backend.close()
                raise
    elif name == "serial":
        backend = GymBackend(env_fns, num_slots, asynchronous=False, pin=pin)
    elif name == "gym-async":
        backend = GymBackend(env_fns, num_slots, asynchronous=True, start_method=start_method, pin=pin)
    elif name == "sb3-subproc":
        backend = SB3SubprocBackend(env_fns, num_slots, start_method=start_method, pin=pin)
    else:
        raise ValueError(f"unknown vec_backend {name!r}; expected fastvec, sb3-subproc, gym-async or serial")
    return backend
