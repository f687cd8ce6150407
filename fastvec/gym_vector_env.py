"""fastvec.VectorEnv: gymnasium's AsyncVectorEnv, on fastvec's shared-memory pool.

Same constructor (``shared_memory``, ``copy``, ``context``, ``daemon``, ``observation_mode``,
``autoreset_mode``, ``max_concurrency``), same API (``reset``/``step``/``call`` and their
``*_async``/``*_wait(timeout)`` halves, ``get_attr``/``set_attr``/``render``,
``np_random_seed``/``np_random``, ``close(timeout, terminate)``), same results and the
same error classes; plus fastvec's own knobs (``num_workers``, ``on_error``, ...; see
fastvec.PoolOptions) as keyword arguments or ``config``.

Where it differs on purpose: array parts of observations always travel through shared
memory (``shared_memory=False`` only means "accept every space", parts without a fixed
size then travel pickled, as gymnasium's do; with ``shared_memory=True`` Text and OneOf
parts travel pickled too, where gymnasium lays them out in its buffers); a ``*_wait`` that times out leaves the call
pending, so calling it again picks it up (gymnasium abandons it); a custom ``worker``
cannot replace fastvec's worker loop.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import logger
from gymnasium.error import CustomSpaceError
from gymnasium.spaces import Dict, Graph, OneOf, Space, Text, Tuple
from gymnasium.spaces import Sequence as SequenceSpace
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_differing_spaces, batch_space, concatenate, create_empty_array

from fastvec.batch import Batch
from fastvec.errors import EnvError, SpaceMismatchError, UnsupportedSpaceError, raise_unusable_info, user_stacklevel
from fastvec.options import PoolOptions, default_num_workers
from fastvec.pool import Pool, _async_workers

__all__ = ["VectorEnv"]


def _check_equivalent(env_spaces: list[Space]) -> None:
    """observation_mode="different": every env's space shares env 0's shapes and dtypes and what fixes them (a
    Text's length and characters, a Graph's node and edge spaces, ...), as gymnasium's is_space_dtype_shape_equiv
    decides (the pool compares only the structure of Text, Sequence, Graph and OneOf parts, which travel pickled).
    A custom space gymnasium cannot compare is left to the pool's check (gymnasium refuses it)."""
    from gymnasium.spaces.utils import is_space_dtype_shape_equiv

    for i, space in enumerate(env_spaces[1:], 1):
        try:
            equivalent = is_space_dtype_shape_equiv(space, env_spaces[0])
        except NotImplementedError:
            continue
        if not equivalent:
            raise SpaceMismatchError(
                f"VectorEnv(..., observation_mode='different'): env {i} has observation space {space}, which does not "
                f"share a common shape and dtype with env 0's {env_spaces[0]} (as gymnasium's vector envs refuse it)"
            )

_NOT_CALLABLE = ("reset", "step", "close", "_setattr", "_check_spaces")  # gymnasium's workers refuse these in call()


def _concurrent_workers(n: int, settings: PoolOptions, limit: int) -> int:
    """The shards of a pool whose processes step at most ``limit`` envs at a time (gymnasium's
    ``max_concurrency``): a limit, never more processes than the layout would have without it (the
    given ``num_workers``, else one per core); with asynchronous batches, the default layout's groups
    within the limit, which are never fewer than one per batch."""
    given = settings.num_workers
    batch = settings.batch_size
    if batch is not None and 0 < batch < n and n % batch == 0:
        if n // batch > limit:
            raise ValueError(
                f"max_concurrency={limit} with batch_size={batch} and {n} envs: each of the {n // batch} batches "
                f"is a group of envs stepped by a process of its own, so at least {n // batch} processes step "
                "at a time (raise max_concurrency or batch_size)"
            )
        if given is None:
            return _async_workers(n, batch, min(default_num_workers(), limit))
        if given <= limit:
            return given  # (the layout's own check names a count whose groups do not tile a batch)
        # the most workers within the limit whose groups tile a batch (one group per batch always does)
        return max(w for w in range(n // batch, limit + 1) if n % w == 0 and batch % (n // w) == 0)
    return min(given or default_num_workers(), limit)


class VectorEnv(gym.vector.VectorEnv):
    """gymnasium's ``AsyncVectorEnv`` API whose envs step in fastvec workers through shared memory.

    ``step`` returns ``(obs, rewards, terminations, truncations, infos)`` with infos batched as
    gymnasium batches them (``info[key]`` arrays with ``info["_key"]`` masks). Autoreset modes
    NEXT_STEP (default), SAME_STEP (``final_obs`` and ``final_info`` in infos) and DISABLED;
    ``reset(options={"reset_mask": mask})`` resets some envs. With ``on_error="restart"`` a
    re-created env's episode ends as truncated and ``infos["fastvec_restarted"]`` names the error.
    ``max_concurrency`` bounds the processes that step envs (each steps its envs one at a time): it
    lowers ``num_workers`` (given, or one per core) to at most that many, and never raises it.
    ``context`` is the start method; ``config`` and ``**options`` are the pool's (any field of
    fastvec.PoolOptions, whose docstring says what each does: num_workers, ring_slots, step_in_parent,
    spin_ns, step_timeout, pin, pin_workers, batch_size (asynchronous batches: async_reset / send /
    recv), on_error, check, monitor, monitor_interval).
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        shared_memory: bool = True,
        copy: bool = True,
        context: str | None = None,
        daemon: bool | None = None,
        worker: Callable | None = None,
        observation_mode: str | Space | tuple = "same",
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        max_concurrency: int | None = None,
        *,
        config: PoolOptions | dict | str | None = None,
        **options: Any,
    ):
        if worker is not None:
            raise ValueError(
                "fastvec.VectorEnv runs its own worker loop (shared-memory batches, several envs per process); "
                "a custom `worker` cannot replace it: use gymnasium.vector.AsyncVectorEnv for custom workers"
            )
        if max_concurrency is not None:
            if not isinstance(max_concurrency, (int, np.integer)):
                raise ValueError(f"`max_concurrency` must be an integer or None, got {type(max_concurrency)}.")
            if max_concurrency < 1:
                raise ValueError(f"`max_concurrency` must be a positive or None, got {max_concurrency}.")
        self.env_fns = env_fns
        self.shared_memory = shared_memory
        self.copy = copy
        self.context = context
        self.daemon = daemon
        self.worker = None
        self.observation_mode = observation_mode
        self.max_concurrency = max_concurrency
        self.autoreset_mode = (
            autoreset_mode if isinstance(autoreset_mode, AutoresetMode) else AutoresetMode(autoreset_mode)
        )
        self.num_envs = len(env_fns)
        self._gym_state = "default"

        # as gymnasium: one env made here gives metadata, render mode and the spaces, so a space
        # that cannot be batched is refused before any process starts
        dummy_env = env_fns[0]()
        self.metadata = dict(dummy_env.metadata)
        self.metadata["autoreset_mode"] = self.autoreset_mode
        self.render_mode = dummy_env.render_mode
        self.single_action_space = dummy_env.action_space
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        given_space = None
        if isinstance(observation_mode, tuple) and len(observation_mode) == 2:
            if not isinstance(observation_mode[0], Space) or not isinstance(observation_mode[1], Space):
                raise TypeError(
                    f"Expected both elements of observation_mode to be Spaces, got {type(observation_mode[0])} "
                    f"and {type(observation_mode[1])}"
                )
            self.observation_space, self.single_observation_space = observation_mode
            given_space, pool_mode = self.single_observation_space, "different"
        elif observation_mode == "same":
            self.single_observation_space = dummy_env.observation_space
            self.observation_space = batch_space(self.single_observation_space, self.num_envs)
            pool_mode = "same"
        elif observation_mode == "different":
            env_spaces = [env().observation_space for env in env_fns]  # as gymnasium: made and dropped
            self.single_observation_space = env_spaces[0]
            self.observation_space = batch_differing_spaces(env_spaces)  # (spaces of other kinds: its TypeError)
            _check_equivalent(env_spaces)
            pool_mode = "different"
        else:
            raise ValueError(
                "Invalid `observation_mode`, expected: 'same' or 'different' or tuple of single and batch observation "
                f"space, actual got {observation_mode}"
            )
        dummy_env.close()
        del dummy_env
        if shared_memory:
            _check_static(self.single_observation_space)

        # the arguments given win; then the config's; then gymnasium's defaults (multiprocessing's default
        # context, daemonic workers)
        base = PoolOptions.load(config)
        if context is not None or base.start_method is None:
            start_method = multiprocessing.get_context(context).get_start_method()
        else:
            start_method = base.start_method
        if daemon is None:
            daemon = base.daemon if isinstance(config, PoolOptions) else True
        else:  # (any truth value, as gymnasium's Process.daemon takes it; fastvec's own options want a bool)
            daemon = bool(daemon)
        # (the config itself, not ``base``: build() keeps a file's or dict's layout out of batches)
        settings = PoolOptions.merged(config, self.num_envs, {"start_method": start_method, "daemon": daemon, **options})
        self.daemon = settings.daemon
        if max_concurrency is not None:  # at most that many processes step envs at a time
            settings = settings.replace(num_workers=_concurrent_workers(len(env_fns), settings, int(max_concurrency)))
        if not copy and settings.ring_slots < 2:
            raise ValueError(f"copy=False needs ring_slots >= 2, got {settings.ring_slots}")
        self.pool = Pool(
            env_fns,
            settings,
            autoreset_mode=self.autoreset_mode,  # (the pool maps gymnasium's modes)
            observation_mode=pool_mode,
            observation_space=given_space,
            fewest_ring_slots=1 if copy else 2,
        )
        self._empty_objects: dict[int, Any] = {}
        # asynchronous batches called without the pool's layer in between (issue 12: one call less per recv and send)
        self._batches = self.pool._async

    # -- gymnasium's state names, for its messages ----------------------------------------------
    @property
    def np_random_seed(self) -> tuple[int, ...]:
        """The sub-envs' np_random seeds."""
        return self.get_attr("np_random_seed")

    @property
    def np_random(self) -> tuple[np.random.Generator, ...]:
        """The sub-envs' random number generators."""
        return self.get_attr("np_random")

    # -- reset --------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self.reset_async(seed=seed, options=options)
        return self.reset_wait()

    def reset_async(self, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None) -> None:
        """Start resetting the envs (see gymnasium.vector.AsyncVectorEnv.reset_async)."""
        self._assert_is_running()
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
            self.pool._check_idle("reset_async")  # (before the mask leaves the caller's dict, as gymnasium checks first)
            mask = options.pop("reset_mask")  # from the caller's dict, as gymnasium does (its wrappers see it gone)
            if not isinstance(mask, np.ndarray):
                raise TypeError(f"`options['reset_mask']` must be a numpy array, got {type(mask)}")
            if mask.shape != (n,):
                raise ValueError(f"`options['reset_mask']` must have shape `({n},)`, got {mask.shape}")
            if mask.dtype != np.bool_:
                raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got {mask.dtype}")
            if not mask.any():
                raise ValueError(
                    f"`options['reset_mask']` must contain a boolean array with at least one True value, got reset_mask={mask}"
                )
        self.pool.reset_async(seeds, None if options is None else [options] * n, mask=mask, pass_options_always=True)

    def reset_wait(self, timeout: float | None = None) -> tuple[Any, dict[str, Any]]:
        """Finish the reset (``timeout``: multiprocessing.TimeoutError, the reset stays pending)."""
        self._assert_is_running()
        batch = self._wait(self.pool.reset_wait, timeout)
        infos: dict[str, Any] = {}
        try:  # (a reset's info that is no dict: named, as in step)
            for i in sorted(batch.reset_infos):
                infos = self._add_info(infos, batch.reset_infos[i], i)
            for i, error in batch.restarted.items():
                infos = self._add_info(infos, {"fastvec_restarted": error}, i)
        except Exception as exc:
            raise_unusable_info(exc, (batch.reset_infos, "reset"))
            raise
        return self._observations(batch), infos

    # -- step ---------------------------------------------------------------------------------
    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: Any) -> None:
        """Start a step with a batch of actions (an element of ``action_space``)."""
        self._assert_is_running()
        self.pool.step_async(actions)

    def step_wait(self, timeout: float | None = None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Finish the step (``timeout``: multiprocessing.TimeoutError, the step stays pending)."""
        self._assert_is_running()
        batch = self._wait(self.pool.step_wait, timeout)
        terminations = batch.terminated.copy()
        truncations = batch.truncated.copy()
        rewards = batch.rewards.copy()
        infos: dict[str, Any] = {}
        try:  # (an info that is no dict: named, below)
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                ended = np.flatnonzero(terminations | truncations).tolist()
                finals = dict(zip(ended, batch.terminal_observations(ended))) if ended else {}
                # envs in index order, as gymnasium adds them (only those with something to say)
                for i in sorted({*ended, *batch.infos}) if batch.infos else ended:
                    if i in finals:
                        final = {"final_info": batch.infos.get(i, {}), "final_obs": finals[i]}
                        infos = self._add_info(infos, {**final, **batch.reset_infos.get(i, {})}, i)
                    else:
                        infos = self._add_info(infos, batch.infos[i], i)
            elif batch.reset_infos:  # (a replacement worker's fresh envs reset in this step: their reset's info, as recv())
                for i in sorted({*batch.infos, *batch.reset_infos}):
                    infos = self._add_info(infos, {**batch.infos.get(i, {}), **batch.reset_infos.get(i, {})}, i)
            else:
                for i in sorted(batch.infos):
                    infos = self._add_info(infos, batch.infos[i], i)
            for i, error in batch.restarted.items():
                infos = self._add_info(infos, {"fastvec_restarted": error}, i)
        except Exception as exc:  # (a step's or an autoreset's info that is no dict: named)
            raise_unusable_info(exc, (batch.infos, "step"), (batch.reset_infos, "reset"))
            raise
        return self._observations(batch), rewards, terminations, truncations, infos

    def _wait(self, wait: Callable[[float | None], Batch], timeout: float | None) -> Any:
        try:
            return wait(timeout)
        except EnvError as err:
            _log_env_errors(err)  # (in a function of its own: a local here holding the error would be a cycle)
            raise

    def _observations(self, batch: Batch) -> Any:
        return batch.observations(self.copy, self._batch_object)

    def _batch_object(self, leaf: Any, values: list) -> Any:
        """Object parts batched exactly as gymnasium batches them (a tuple, for its dynamic spaces)."""
        return concatenate(leaf.space, values, create_empty_array(leaf.space, self.num_envs))

    # -- rare calls ---------------------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        self.call_async(name, *args, **kwargs)
        return self.call_wait()

    def call_async(self, name: str, /, *args: Any, **kwargs: Any) -> None:
        """Start calling method (or reading attribute) ``name`` of every env."""
        self._assert_is_running()
        if name in _NOT_CALLABLE:
            raise ValueError(f"Trying to call function `{name}` with `call`, use `{name}` directly instead.")
        self.pool.call_async("call", list(range(self.num_envs)), (name, args, kwargs))

    def call_wait(self, timeout: float | None = None) -> tuple[Any, ...]:
        self._assert_is_running()
        return tuple(self._wait(self.pool.call_wait, timeout))

    def render(self) -> tuple[Any, ...] | None:
        return self.call("render")

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        self._assert_is_running()
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(
                "Values must be a list or tuple with length equal to the number of environments. "
                f"Got `{len(values)}` values for {self.num_envs} environments."
            )
        self.pool.call("set_attr", list(range(self.num_envs)), (name, True), values=list(values))

    # -- asynchronous batches (batch_size below num_envs), EnvPool's gymnasium API ---------------
    def async_reset(self, seed: int | Sequence[int | None] | None = None) -> None:
        """Start resetting every env; ``recv()`` returns them in batches."""
        self._assert_is_running()
        n = self.num_envs
        seeds = [None] * n if seed is None else ([int(seed) + i for i in range(n)] if isinstance(seed, (int, np.integer)) else list(seed))
        self.pool.async_reset(seeds)

    def send(self, actions: Any, env_ids: Any) -> None:
        """Step the envs ``env_ids`` (those ``recv()`` returned) with ``actions``, one row each."""
        if self.closed:
            self._assert_is_running()
        (self._batches or self.pool).send(actions, env_ids)

    def recv(self, copy: bool | None = None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """``(obs, rewards, terminated, truncated, infos)`` of the first ``batch_size`` envs that
        finished, with ``infos["env_id"]`` saying which, as EnvPool's gymnasium API returns them.
        ``copy=False`` (default: the ``copy`` the env was made with): views into the ring where the batch is one group (see Pool.recv), valid until the next ``send``."""
        if self.closed:
            self._assert_is_running()
        batch = None
        try:
            batch = (self._batches or self.pool).recv(None, self.copy if copy is None else copy)
            infos: dict[str, Any] = {}
            done = None
            if self.autoreset_mode == AutoresetMode.SAME_STEP:  # an episode's end adds final_obs and final_info
                done = np.logical_or(batch.terminated, batch.truncated).tolist()
            if (done is not None and True in done) or batch.infos or batch.reset_infos or batch.restarted:
                try:
                    infos = self._recv_infos(batch, done)  # (else: only env_id)
                except Exception as exc:  # (an info that is no dict: named)
                    raise_unusable_info(exc, (batch.infos, "step"), (batch.reset_infos, "reset"))
                    raise
                if "env_id" in infos:  # (an env's own key of that name: replaced, said once)
                    self._replaced_env_id(infos)
            infos["env_id"] = batch.env_ids
            return batch.obs, batch.rewards, batch.terminated, batch.truncated, infos
        except BaseException as exc:  # (the outputs not made: AsyncBatches.not_made)
            if batch is not None:
                self._batches.not_made(batch, exc)
            raise

    def _replaced_env_id(self, infos: dict[str, Any]) -> None:
        """An env's info holds "env_id", the key recv() gives the batch's env ids (EnvPool's): its values are
        replaced, with a warning the first time (gymnasium's mask for the env's key goes too)."""
        infos.pop("_env_id", None)
        if not getattr(self, "_warned_env_id", False):
            self._warned_env_id = True
            warnings.warn(
                "fastvec: an env's info holds the key 'env_id', which recv() sets to the batch's env ids (as EnvPool's "
                "gymnasium API): the env's values are replaced; give them another key to keep them",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

    def _recv_infos(self, batch: Any, done: list[bool] | None) -> dict[str, Any]:
        """A batch's infos, batched as gymnasium batches them: the envs' infos, episode ends (``done``, per row,
        in SAME_STEP mode; None in the others), restarts."""
        infos: dict[str, Any] = {}
        batched = _BatchInfos(len(batch.env_ids))  # gymnasium's info batching, over the batch's envs
        ids = batch.env_ids.tolist()
        ended = [i for i, d in zip(ids, done) if d] if done is not None else []
        finals = dict(zip(ended, batch.terminal_observations(ended))) if ended else {}  # (copied in one call)
        for k, i in enumerate(ids):
            info = dict(batch.infos.get(i, {}))
            if done is not None and done[k]:
                info = {"final_info": info, "final_obs": finals[i], **batch.reset_infos.get(i, {})}
            elif i in batch.reset_infos:
                info.update(batch.reset_infos[i])
            if i in batch.restarted:
                info["fastvec_restarted"] = batch.restarted[i]
            if info:
                infos = batched.add(infos, info, k)
        return infos

    def stats(self) -> Any:
        """What each shard did since the previous call (fastvec.stats.PoolStats)."""
        return self.pool.stats()

    @property
    def monitor_events(self) -> list:
        """What the monitor did (monitor=True): re-pinned workers, moved envs."""
        return self.pool.monitor_events

    # -- closing ------------------------------------------------------------------------------
    def close(self, **kwargs: Any) -> None:
        """gymnasium's close(); once closed, the pool's close() still runs (it does nothing more than let go of what
        a close() from a signal handler left to the command it cut short, if that command could not: gymnasium's
        returned at once, and the shared block and this process's envs were kept while the object lived)."""
        if self.closed:
            pool = getattr(self, "pool", None)
            if pool is not None:
                pool.close()
            return
        super().close(**kwargs)

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        """Close the envs and stop the workers (``terminate``: without waiting for a pending command; each
        worker closes its envs as it exits, and one still running 1 s later is killed)."""
        pool = getattr(self, "pool", None)
        if pool is None:
            return
        if pool.pending is not None:
            logger.warn(f"Calling `close` while waiting for a pending call to `{pool.pending_kind}` to complete.")
        if terminate:
            pool.terminate()
        else:
            pool.close(timeout=10.0 if timeout is None else timeout)

    def _assert_is_running(self) -> None:
        if self.closed:
            from fastvec.errors import ClosedError

            pool = getattr(self, "pool", None)
            if pool is not None:
                pool.close()  # (lets go of what a close() in a signal handler had to leave to the loop it cut)

            raise ClosedError(f"Trying to operate on `{type(self).__name__}`, after a call to `close()`.")

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            pool = getattr(self, "pool", None)
            if pool is not None:
                pool.close(timeout=2.0)
        except Exception:
            pass


def _log_env_errors(err: EnvError) -> None:
    """What gymnasium logs for every env that raised (its tests count these warnings)."""
    for each in [err, *err.others]:
        logger.error(f"Received the following error from Worker-{each.env_index} - Shutting it down")
        logger.error(each.remote_traceback)
    logger.error("Raising the last exception back to the main process.")


class _BatchInfos:
    """gymnasium's ``VectorEnv._add_info`` over ``num_envs`` = a batch's size."""

    def __init__(self, num_envs: int):
        self.num_envs = num_envs

    def add(self, infos: dict[str, Any], info: dict[str, Any], k: int) -> dict[str, Any]:
        return gym.vector.VectorEnv._add_info(self, infos, info, k)  # type: ignore[arg-type]

    def _add_info(self, infos: dict[str, Any], info: dict[str, Any], k: int) -> dict[str, Any]:
        return self.add(infos, info, k)


def _check_static(space: Space) -> None:
    """As gymnasium's shared_memory=True: refuse the spaces it has no shared-memory layout for, with
    its errors (Graph and Sequence; a Text, or a OneOf of laid-out spaces, it takes: fastvec pickles
    those parts, as with shared_memory=False)."""
    if isinstance(space, (Graph, SequenceSpace)):
        raise UnsupportedSpaceError(
            f"Space of type `{type(space)}` has a dynamic shape so its not possible to make a static shared memory. "
            "Use fastvec.VectorEnv(..., shared_memory=False): fastvec then pickles this part (its array parts still "
            "go through shared memory)."
        )
    if isinstance(space, Text):
        return
    if isinstance(space, OneOf):
        for sub in space.spaces:
            _check_static(sub)
    elif isinstance(space, Dict):
        for sub in space.spaces.values():
            _check_static(sub)
    elif isinstance(space, Tuple):
        for sub in space.spaces:
            _check_static(sub)
    elif not isinstance(space, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        raise ValueError(  # (gymnasium's words first, for what matches them; then what holds for fastvec)
            "Using `AsyncVector(..., shared_memory=True)` caused an error, you can disable this feature with "
            "`shared_memory=False`: fastvec.VectorEnv(..., shared_memory=False) pickles this space's values (its "
            "array parts still go through shared memory)."
        ) from CustomSpaceError(f"Space of type `{type(space)}` doesn't have a registered shared memory layout")
