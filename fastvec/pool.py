"""The pool: worker processes, the shared block, and the command/barrier protocol.

Front-ends (fastvec.SubprocVecEnv for SB3, fastvec.VectorEnv for gymnasium) sit on
a Pool; so does the ppo trainer, which reads the ring buffers directly.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any

import numpy as np

from fastvec import kernels, shm
from fastvec.errors import (
    AlreadyPendingCallError,
    ClosedError,
    EnvError,
    FastvecError,
    NoAsyncCallError,
    SpaceMismatchError,
    StepTimeoutError,
    WorkerDiedError,
    env_error,
)
from fastvec.layout import Control, Stats, Views, plan_layout
from fastvec.shard import RESTARTED, SAME_STEP, WARNING, Shard, ShardError
from fastvec.spaces import ActionChecker, assemble, is_single_array, leaves
from fastvec.worker import (
    CLOSE,
    CONTROL,
    HAS_OPTIONS,
    MASKED,
    OPTIONS_ALWAYS,
    POLL_NS,
    RESET,
    STEP,
    worker_main,
)

__all__ = ["Pool", "default_num_workers", "split_envs"]

_MASK = 0xFFFFFFFF
YIELD_POLL_NS = -200_000  # default poll (yielding the core) before sleeping on the futex
ADAPTIVE = 1  # spin_ns value sent to workers: poll as long as the parent usually takes, up to 2 ms
PENDING_STEP_GRACE_S = 2.0  # close(): how long a pending step may still take before workers are terminated


def default_num_workers() -> int:
    """One per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def split_envs(num_envs: int, num_workers: int) -> list[range]:
    """Contiguous, even split; the first shards get the smaller shares (shard 0 may be the parent's)."""
    base, extra = divmod(num_envs, num_workers)
    ranges, start = [], 0
    for w in range(num_workers):
        count = base + (1 if w >= num_workers - extra else 0)
        ranges.append(range(start, start + count))
        start += count
    return ranges


@dataclass
class _Remote:
    index: int  # worker index (control block)
    envs: range
    process: Any
    conn: Any
    base: int = 0  # control block offset


_LIVE_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:  # runs before multiprocessing joins non-daemonic children
    for pool in list(_LIVE_POOLS):
        try:
            pool.close()
        except Exception:
            pass


class Pool:
    """N envs stepped by worker processes through one shared-memory block.

    Args:
        env_fns: one callable per env, each returning a new gymnasium.Env.
        num_workers: how many shards step the envs (default: one per available core,
            at most num_envs). With ``step_in_parent`` one of them is the calling process.
        start_method: "fork", "forkserver" or "spawn" (default: forkserver where available).
        ring_slots: S, the number of ring slots; results of step t land in slot t mod S.
        step_in_parent: step shard 0 in the calling process instead of a worker
            process (default: True when num_workers >= 2). On a machine with few cores
            this keeps the learner's core busy instead of idle.
        autoreset_mode: fastvec.shard.SAME_STEP (SB3) or NEXT_STEP (gymnasium default).
        spin_ns: how long a waiter polls before sleeping on the futex. Positive: busy-poll
            with a pause instruction; negative: poll for ``-spin_ns`` while yielding the
            core with sched_yield (a waiter that shares a core with the process it waits
            for hands it the core; a pure spin there starves it); 0: sleep at once.
            Default: the parent yield-polls 200 us; a worker yield-polls about 1.5 times
            the usual gap between commands (20 us to 2 ms), or 200 us when processes
            outnumber cores. Waking a sleeping process costs tens of microseconds on a VM.
        step_timeout: seconds a command may take before StepTimeoutError (default: none).
        daemon: start workers as daemonic processes (they then cannot start children).
        pin_workers: pin shard w to core w mod cores (the parent, when it steps shard 0,
            to the first core). Off by default: pinning helps only on an otherwise idle
            machine; ``python -m fastvec.tune`` measures whether it does.
        on_error: "raise" (default): an env's exception in step or reset is raised as
            EnvError and a dead worker as WorkerDiedError. "restart": the failing env
            (or the dead worker's envs) is re-created from its factory, its episode ends
            as truncated, the others keep going, and the step reports it in its infos.
        check: what to do when an env returns an observation of another dtype than its
            space (it is cast) or a NaN reward: "warn" (default; once per env and kind,
            naming the env), "raise" (EnvError naming the env) or "off". An observation
            of the wrong shape is always an error.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], Any]],
        *,
        num_workers: int | None = None,
        start_method: str | None = None,
        ring_slots: int = 2,
        step_in_parent: bool | None = None,
        autoreset_mode: int = SAME_STEP,
        spin_ns: int | None = None,
        step_timeout: float | None = None,
        daemon: bool = False,
        pin_workers: bool = False,
        on_error: str = "raise",
        check: str = "warn",
    ):
        self._closed = False
        self._broken: str | None = None
        self._pending: str | None = None
        self._remotes: list[_Remote] = []
        self._local: Shard | None = None
        self._local_envs: list = []
        self._segment = None
        self.views: Views | None = None

        env_fns = list(env_fns)
        if not env_fns:
            raise ValueError("need at least one env factory, got an empty list")
        for i, fn in enumerate(env_fns):
            if not callable(fn):
                raise TypeError(
                    f"env_fns[{i}] must be a callable that returns an env, got {type(fn).__name__}; "
                    "pass e.g. lambda: gymnasium.make('CartPole-v1')"
                )
        self.num_envs = n = len(env_fns)
        if num_workers is None:
            num_workers = default_num_workers()
        if not isinstance(num_workers, (int, np.integer)) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        self.num_workers = num_workers = int(min(num_workers, n))
        if step_in_parent is None:
            step_in_parent = num_workers >= 2
        self.step_in_parent = bool(step_in_parent)
        if not isinstance(ring_slots, (int, np.integer)) or ring_slots < 1:
            raise ValueError(f"ring_slots must be an int >= 1, got {ring_slots!r}")
        self.ring_slots = int(ring_slots)
        self.autoreset_mode = autoreset_mode
        self.step_timeout = step_timeout
        self._daemon = bool(daemon)
        self.pin_workers = bool(pin_workers)
        self._parent_affinity: list[int] | None = None  # set by _pin(), restored by close()
        if on_error not in ("raise", "restart"):
            raise ValueError(f"on_error must be 'raise' or 'restart', got {on_error!r}")
        self.on_error = on_error
        self.worker_restarts = 0
        self._restarts_of_dead_workers = 0
        if check not in ("off", "warn", "raise"):
            raise ValueError(f"check must be 'off', 'warn' or 'raise', got {check!r}")
        self.check = check
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        if start_method not in mp.get_all_start_methods():
            raise ValueError(f"start_method must be one of {mp.get_all_start_methods()}, got {start_method!r}")
        self.start_method = start_method
        self.shard_envs = split_envs(n, num_workers)
        remote_shards = list(range(1 if self.step_in_parent else 0, num_workers))
        self.oversubscribed = len(remote_shards) + 1 > default_num_workers()
        self.spin_ns = int(spin_ns) if spin_ns is not None else YIELD_POLL_NS
        # workers: by default adapt the poll to the gap between commands (a learner's forward
        # pass between steps), as long as every process has a core of its own
        self._worker_spin_ns = (
            int(spin_ns) if spin_ns is not None else (YIELD_POLL_NS if self.oversubscribed else ADAPTIVE)
        )
        self._seq = 0
        self.slot = 0
        shm.sweep_stale()
        _LIVE_POOLS.add(self)
        try:
            self._start(env_fns, remote_shards)
            if self.pin_workers:
                self._pin()
        except BaseException:
            self._terminate()
            raise

    # -- start-up -----------------------------------------------------------------------
    def _start(self, env_fns: list, remote_shards: list[int]) -> None:
        self._env_fns = env_fns
        for w in remote_shards:
            self._remotes.append(self._spawn(w))

        if self.step_in_parent:  # the parent's own envs are made while workers make theirs
            envs = self.shard_envs[0]
            for i in envs:
                try:
                    self._local_envs.append(env_fns[i]())
                except Exception as exc:
                    raise env_error(*ShardError(i, "make (env constructor)", exc).payload()) from exc

        env_spaces: list[tuple] = [(env.observation_space, env.action_space) for env in self._local_envs]
        for remote in self._remotes:
            kind, payload = self._recv(remote, "make")
            if kind == "error":
                raise env_error(*payload)
            env_spaces.extend(payload)
        self.observation_space, self.action_space = env_spaces[0]
        for i, (obs_space, act_space) in enumerate(env_spaces):
            if obs_space != self.observation_space:
                raise SpaceMismatchError(
                    f"env {i} has observation space {obs_space}, but env 0 has {self.observation_space}; "
                    "all envs of a pool must share their spaces"
                )
            if act_space != self.action_space:
                raise SpaceMismatchError(
                    f"env {i} has action space {act_space}, but env 0 has {self.action_space}; "
                    "all envs of a pool must share their spaces"
                )
        self.obs_leaves = leaves(self.observation_space)
        self._single_leaf = is_single_array(self.obs_leaves)
        self._actions = ActionChecker(self.action_space, self.num_envs, kernels)
        self.layout = plan_layout(
            self.obs_leaves,
            tuple(self.action_space.shape),
            self._actions.dtype,
            self.num_envs,
            self.num_workers,
            self.ring_slots,
        )
        self._segment = shm.create(self.layout.size)
        # drop the name at once: workers get the file descriptor instead, so nothing can
        # be left in /dev/shm whatever happens to any process from here on
        shm.unlink(self._segment)
        self.views = views = Views(self.layout, self._segment.buf)
        views.write_header()
        for w, envs in enumerate(self.shard_envs):
            views.env_worker[envs.start : envs.stop] = w
        for remote in self._remotes:
            remote.base = views.control_base(remote.index)
            self._send_attach(remote, first_seq=1, restart=None)
        for remote in self._remotes:
            self._recv(remote, "attach")
        if self.step_in_parent:
            self._local = Shard(
                self._local_envs,
                0,
                views,
                self.autoreset_mode,
                env_fns=env_fns[: self.shard_envs[0].stop],
                restart_on_error=self.on_error == "restart",
                check=self.check,
            )
        self._done_index = np.array([r.base + Control.DONE_SEQ for r in self._remotes], dtype=np.intp)
        self._bases = np.array([r.base for r in self._remotes], dtype=np.intp)
        self._remaining_index = views.control_base(self.num_workers) + Control.REMAINING
        self._control = views.control

    def _spawn(self, w: int) -> _Remote:
        """Start the worker process of shard ``w`` (it makes its envs and reports their spaces)."""
        ctx = mp.get_context(self.start_method)
        envs = self.shard_envs[w]
        fns = self._env_fns[envs.start : envs.stop]
        if self.start_method != "fork":
            fns = _pickle_factories(fns, envs.start, self.start_method)
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        # with fork, the child inherits the parent's ends of its siblings' pipes: it closes them
        inherited = [r.conn.fileno() for r in self._remotes if r.index != w] + [parent_conn.fileno()]
        process = ctx.Process(
            target=worker_main,
            args=(
                child_conn,
                w,
                os.getpid(),
                fns,
                envs.start,
                self.autoreset_mode,
                self._worker_spin_ns,
                inherited if self.start_method == "fork" else [],
                threading.current_thread() is threading.main_thread(),
                self.on_error == "restart",
                self.check,
            ),
            daemon=self._daemon,
            name=f"fastvec-worker-{w}",
        )
        process.start()
        child_conn.close()
        return _Remote(w, envs, process, parent_conn)

    def _respawn(self, position: int, command: str, slot: int, truncate: bool) -> None:
        """on_error="restart": replace the dead worker at ``self._remotes[position]``.

        The new worker makes fresh envs; their old episodes end (truncated) and new ones
        start in ``slot``. The dead worker's share of the current command counts as done.
        """
        dead = self._remotes[position]
        exitcode = dead.process.exitcode
        self._restarts_of_dead_workers += int(self.views.worker_stats[dead.index, Stats.ENV_RESTARTS])
        dead.conn.close()
        dead.process.join(1.0)
        try:
            dead.process.close()
        except ValueError:
            pass
        remote = self._spawn(dead.index)
        remote.base = dead.base
        self._remotes[position] = remote
        kind, payload = self._recv(remote, "make (worker restart)")
        if kind == "error":
            raise env_error(*payload)
        for k, (obs_space, act_space) in enumerate(payload):
            if obs_space != self.observation_space or act_space != self.action_space:
                raise SpaceMismatchError(f"re-created env {remote.envs.start + k} has other spaces than env 0")
        self._send_attach(remote, first_seq=(self._seq + 1) & _MASK, restart=(slot, truncate))
        reply = self._recv(remote, "attach (worker restart)")
        if reply[0] == "error":
            raise env_error(*reply[1])
        kernels.finish(self._control, remote.base + Control.DONE_SEQ, self._seq, self._remaining_index)
        self.worker_restarts += 1
        warnings.warn(
            f"fastvec: worker {dead.index} (envs {dead.envs.start}..{dead.envs.stop - 1}) died during {command!r} "
            f"with exit code {exitcode}; restarted it with fresh envs (on_error='restart')",
            RuntimeWarning,
            stacklevel=4,
        )

    # -- reading results ---------------------------------------------------------------------
    def observations(self, slot: int, copy: bool = True) -> Any:
        """The batch of observations in ring ``slot``, in the observation space's structure
        (an array, or an OrderedDict / tuple of arrays): copies, or views of the ring."""
        rings = self.views.obs
        if self._single_leaf:
            return rings[0][slot].copy() if copy else rings[0][slot]
        return assemble(self.observation_space, [r[slot].copy() if copy else r[slot] for r in rings])

    def terminal_observation(self, i: int) -> Any:
        """A copy of env ``i``'s final observation of the episode that ended in the latest step."""
        buffers = self.views.terminal_obs
        if self._single_leaf:
            return buffers[0][i].copy()
        return assemble(self.observation_space, [b[i].copy() for b in buffers])

    def _send_attach(self, remote: _Remote, first_seq: int, restart: tuple | None) -> None:
        remote.conn.send(("attach", self.layout, first_seq, restart))
        reduction.send_handle(remote.conn, self._segment._fd, remote.process.pid)  # type: ignore[union-attr]

    # -- the step path --------------------------------------------------------------------
    def step_async(self, actions: Any) -> None:
        """Validate ``actions`` (shape ``[num_envs, *action_space.shape]``) and start a step."""
        self._check_usable()
        if self._pending is not None:
            raise AlreadyPendingCallError(
                f"step_async() called while {self._pending!r} is pending; call step_wait() first"
            )
        self._actions.write(actions, self.views.actions)
        slot = self.slot + 1
        if slot == self.ring_slots:
            slot = 0
        self._next_slot = slot
        self._issue(STEP, slot, 0)
        self._pending = "step"
        self._local_stepped = False
        self._local_extras = self._local_error = None

    def step_wait(self) -> tuple[int, list | None]:
        """Finish the pending step; returns (ring slot holding the results, extras or None).

        extras: ``[(env_index, kind, info_dict), ...]`` for envs that returned non-empty infos.
        """
        if self._pending != "step":
            self._check_usable()
            raise NoAsyncCallError("step_wait() called without a pending step_async()")
        if self._local is not None and not self._local_stepped:
            self._local_stepped = True  # a step_wait interrupted by Ctrl-C must not step twice
            try:
                self._local_extras = self._local.step(self._next_slot)
            except ShardError as err:
                self._local_error = err.payload()
        remote_extras, remote_error = self._finish("step", self._next_slot, truncate=True)
        extras, error = self._local_extras, _first(self._local_error, remote_error)
        self._local_extras = self._local_error = None
        self._pending = None
        if remote_extras:
            extras = (extras or []) + remote_extras
        if extras and self.check == "warn":
            extras = _emit_warnings(extras)
        self.slot = self._next_slot
        if error is not None:
            raise env_error(*error)
        return self.slot, extras

    def reset(
        self,
        seeds: Sequence[int | None] | None = None,
        options: Sequence[Any] | None = None,
        mask: np.ndarray | None = None,
        pass_options_always: bool = False,
    ) -> tuple[int, list | None]:
        """Reset every env (or those where ``mask`` is True) with per-env seeds and options.

        A full reset writes into the next ring slot; a masked reset overwrites the
        masked envs' rows of the current slot. Returns (slot, extras).
        """
        self._check_usable()
        if self._pending is not None:
            raise AlreadyPendingCallError(f"reset() called while {self._pending!r} is pending; call step_wait() first")
        n = self.num_envs
        views = self.views
        if seeds is None:
            views.seed_mask[:] = False
        else:
            if len(seeds) != n:
                raise ValueError(f"expected {n} seeds (one per env), got {len(seeds)}")
            for i, s in enumerate(seeds):
                if s is not None and not isinstance(s, (int, np.integer)):
                    raise TypeError(f"seed for env {i} must be an int or None, got {s!r}")
            views.seed_mask[:] = [s is not None for s in seeds]
            views.reset_seeds[:] = [0 if s is None else int(s) for s in seeds]
        if options is not None and len(options) != n:
            raise ValueError(f"expected {n} option dicts (one per env), got {len(options)}")
        send_options = options is not None and (pass_options_always or any(options))
        arg = (HAS_OPTIONS if send_options else 0) | (OPTIONS_ALWAYS if pass_options_always else 0)
        if mask is not None:
            views.reset_mask[:] = mask
            arg |= MASKED
            slot = self.slot
        else:
            slot = self.slot + 1 if self.slot + 1 < self.ring_slots else 0
        self._issue(RESET, slot, arg)
        self._pending = "reset"
        if send_options:
            for remote in self._remotes:
                remote.conn.send(list(options[remote.envs.start : remote.envs.stop]))
        first_error = None
        extras = None
        if self._local is not None:
            local = self._local
            local_options = list(options[local.start : local.stop]) if send_options else None
            try:
                extras = local.reset(slot, local_options, mask is not None, pass_options_always)
            except ShardError as err:
                first_error = err.payload()
        remote_extras, remote_error = self._finish("reset", slot, truncate=False)
        self._pending = None
        if remote_extras:
            extras = (extras or []) + remote_extras
        if extras and self.check == "warn":
            extras = _emit_warnings(extras)
        self.slot = slot
        error = _first(first_error, remote_error)
        if error is not None:
            raise env_error(*error)
        return slot, extras

    def control(self, request: str, indices: Sequence[int], args: tuple = (), values: Sequence | None = None) -> list:
        """Run a rare command (get_attr, env_method, render, ...) on the envs at ``indices``.

        ``values`` (aligned with ``indices``) are per-env values, for set_attr.
        Returns the results in the order of ``indices``.
        """
        self._check_usable()
        if self._pending is not None:
            raise AlreadyPendingCallError(f"{request}() called while {self._pending!r} is pending; call step_wait() first")
        indices = [self._check_index(i) for i in indices]
        results: list = [None] * len(indices)
        plan: dict[int, list[int]] = {}  # shard -> positions in indices
        shard_of = self.views.env_worker
        for pos, i in enumerate(indices):
            plan.setdefault(int(shard_of[i]), []).append(pos)

        def shard_args(positions: list[int]) -> tuple:
            if values is None:
                return args
            return (args[0], [values[p] for p in positions], *args[1:])

        self._issue(CONTROL, self.slot, 0)
        self._pending = request
        for remote in self._remotes:
            positions = plan.get(remote.index, [])
            remote.conn.send((request, [indices[p] for p in positions], shard_args(positions)))
        first_error = None
        if self._local is not None and 0 in plan:
            positions = plan[0]
            try:
                local_results = self._local.control(request, [indices[p] for p in positions], shard_args(positions))
                for p, r in zip(positions, local_results):
                    results[p] = r
            except ShardError as err:
                first_error = err.payload()
        remote_error = None
        try:
            for remote in self._remotes:
                kind, payload = self._recv(remote, request)
                if kind == "error":
                    remote_error = _first(remote_error, payload)
                else:
                    for p, r in zip(plan.get(remote.index, []), payload):
                        results[p] = r
            self._wait_done(request)
        finally:
            self._pending = None
        error = _first(first_error, remote_error)
        if error is not None:
            raise env_error(*error)
        return results

    # -- protocol helpers -------------------------------------------------------------------
    def _issue(self, command: int, slot: int, arg: int) -> None:
        self._seq = (self._seq + 1) & _MASK
        if self._remotes:
            kernels.issue(self._control, self._bases, command, slot, arg, self._seq, self._remaining_index)

    def _finish(self, command: str, slot: int | None = None, truncate: bool = True) -> tuple[list | None, tuple | None]:
        """Wait for every worker, then collect the messages of those that have one."""
        if not self._remotes:
            return None, None
        respawned = self._wait_done(command, slot, truncate)
        extras = None
        error = None
        control = self._control
        for position, remote in enumerate(self._remotes):
            if position in respawned:
                extras = (extras or []) + [
                    (i, RESTARTED, {"error": "worker process died", "command": command}) for i in remote.envs
                ]
                continue
            if control[remote.base + Control.HAS_MESSAGE]:
                kind, payload = self._recv(remote, command)
                if kind == "error":
                    error = _first(error, payload)
                else:
                    extras = (extras or []) + payload
        return extras, error

    def _wait_done(self, command: str, slot: int | None = None, truncate: bool = True) -> set[int]:
        """Wait until every worker finished the current command; return the positions of
        workers that died and were respawned (on_error="restart", step and reset only)."""
        respawned: set[int] = set()
        if not self._remotes:
            return respawned
        control, done_index, seq = self._control, self._done_index, self._seq
        remaining = self._remaining_index
        k = kernels.wait_remaining(control, remaining, done_index, seq, self.spin_ns, POLL_NS)
        if k == -1:
            return respawned
        began = time.monotonic()
        while True:
            remote = self._remotes[k]
            exitcode = remote.process.exitcode
            if exitcode is not None:
                if self.on_error == "restart" and slot is not None and k not in respawned:
                    self._respawn(k, command, slot, truncate)
                    respawned.add(k)
                else:
                    self._broken = f"worker {remote.index} died"
                    raise WorkerDiedError(remote.index, remote.envs, exitcode, command)
            elif self.step_timeout is not None and time.monotonic() - began > self.step_timeout:
                self._broken = f"{command!r} timed out in worker {remote.index}"
                raise StepTimeoutError(remote.index, remote.envs, command, self.step_timeout)
            k = kernels.wait_remaining(control, remaining, done_index, seq, 0, POLL_NS)
            if k == -1:
                return respawned

    def _recv(self, remote: _Remote, command: str, timeout: float | None = None) -> Any:
        """Receive one message from ``remote``, noticing its death instead of hanging."""
        began = time.monotonic()
        limit = timeout if timeout is not None else self.step_timeout
        conn = remote.conn
        while True:
            try:
                if conn.poll(POLL_NS / 1e9):
                    return conn.recv()
            except (EOFError, OSError):
                remote.process.join(1.0)
                self._broken = f"worker {remote.index} died"
                raise WorkerDiedError(remote.index, remote.envs, remote.process.exitcode, command) from None
            if remote.process.exitcode is not None and not conn.poll(0):
                self._broken = f"worker {remote.index} died"
                raise WorkerDiedError(remote.index, remote.envs, remote.process.exitcode, command)
            if limit is not None and time.monotonic() - began > limit:
                self._broken = f"{command!r} timed out in worker {remote.index}"
                raise StepTimeoutError(remote.index, remote.envs, command, limit)

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedError("this vectorized env is closed")
        if self._broken is not None:
            raise ClosedError(f"this vectorized env cannot be used any more ({self._broken}); close() it")

    def _check_index(self, i: Any) -> int:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"env indices must be ints, got {i!r}")
        if not -self.num_envs <= i < self.num_envs:
            raise IndexError(f"env index {i} out of range for {self.num_envs} envs")
        return int(i) % self.num_envs

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> str | None:
        return self._pending

    def _pin(self) -> None:
        """Pin shard w (worker process, or the parent for shard 0) to core w mod cores."""
        import psutil

        cores = sorted(os.sched_getaffinity(0))
        if self.step_in_parent:
            self._parent_affinity = cores
            psutil.Process().cpu_affinity([cores[0]])
        for remote in self._remotes:
            psutil.Process(remote.process.pid).cpu_affinity([cores[remote.index % len(cores)]])

    def shard_restarts(self) -> int:
        """How many envs were re-created after raising (on_error="restart"), over all shards."""
        local = self._local.restarts if self._local is not None else 0
        remote = int(sum(self.views.worker_stats[r.index, Stats.ENV_RESTARTS] for r in self._remotes))
        return local + remote + self._restarts_of_dead_workers

    def worker_stats(self) -> list[dict]:
        """Per worker: commands run, env steps and seconds spent busy (read from the shared block)."""
        stats = self.views.worker_stats
        return [
            {
                "worker": r.index,
                "pid": r.process.pid,
                "commands": int(stats[r.index, Stats.COMMANDS]),
                "env_steps": int(stats[r.index, Stats.ENV_STEPS]),
                "busy_s": float(stats[r.index, Stats.BUSY_NS]) / 1e9,
            }
            for r in self._remotes
        ]

    @property
    def worker_pids(self) -> list[int]:
        return [r.process.pid for r in self._remotes]

    # -- shutdown -----------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Close every env, stop the workers and free the shared block. Idempotent.

        Returns within about ``timeout`` seconds even if a worker hangs (it is then
        terminated). Raises EnvError if an env raised in its close(), after cleaning up.
        """
        if self._closed:
            return
        self._closed = True
        error = None
        grace = 0.2
        try:
            if self._broken is None and self.views is not None:
                error = self._close_gracefully(timeout)
                grace = timeout
        except (FastvecError, OSError, EOFError):
            pass
        finally:
            self._terminate(grace=grace)
        if error is not None:
            raise env_error(*error)

    def _close_gracefully(self, timeout: float) -> tuple | None:
        saved_timeout = self.step_timeout
        try:
            if self._pending == "step":  # finish it, briefly: close() during a pending step is allowed
                self.step_timeout = min(timeout, PENDING_STEP_GRACE_S)
                try:
                    self.step_wait()
                except EnvError:
                    pass
            self.step_timeout = min(saved_timeout or timeout, timeout)
            if self._pending is not None:  # interrupted reset/control: state unknown, terminate
                raise ClosedError("interrupted command")
            self._issue(CLOSE, self.slot, 0)
            error = None
            if self._local is not None:
                try:
                    self._local.close()
                except ShardError as err:
                    error = err.payload()
            for remote in self._remotes:
                kind, payload = self._recv(remote, "close")
                if kind == "error":
                    error = _first(error, payload)
            self._wait_done("close")
            return error
        finally:
            self.step_timeout = saved_timeout

    def _terminate(self, grace: float = 1.0) -> None:
        self._closed = True
        deadline = time.monotonic() + grace
        for remote in self._remotes:
            remote.process.join(max(0.0, deadline - time.monotonic()))
        for remote in self._remotes:
            if remote.process.exitcode is None:
                remote.process.terminate()
        for remote in self._remotes:
            remote.process.join(1.0)
            if remote.process.exitcode is None:
                remote.process.kill()
                remote.process.join(1.0)
        for remote in self._remotes:
            remote.conn.close()
            try:
                remote.process.close()
            except ValueError:
                pass
        if self._local is None:
            for env in self._local_envs:
                try:
                    env.close()
                except Exception:
                    pass
        self._local = None
        self._local_envs = []
        if self.views is not None:
            self.views.release()
        self._control = None
        if self._segment is not None:
            shm.unlink(self._segment)
            try:
                self._segment.close()
            except BufferError:
                pass  # views handed out with copy=False keep the mapping alive until freed
            self._segment = None
        if self._parent_affinity:
            os.sched_setaffinity(0, self._parent_affinity)
            self._parent_affinity = None
        _LIVE_POOLS.discard(self)

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close(timeout=2.0)
        except Exception:
            pass

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _emit_warnings(extras: list) -> list | None:
    """Turn WARNING extras into Python warnings naming the env; return the rest."""
    rest = []
    for entry in extras:
        if entry[1] == WARNING:
            warnings.warn(f"fastvec: env {entry[0]} {entry[2]}", RuntimeWarning, stacklevel=4)
        else:
            rest.append(entry)
    return rest or None


def _first(a: tuple | None, b: tuple | None) -> tuple | None:
    """The error payload with the lowest env index."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a[0] <= b[0] else b


def _pickle_factories(fns: list, start: int, start_method: str) -> bytes:
    import cloudpickle

    for j, fn in enumerate(fns):
        try:
            cloudpickle.dumps(fn)
        except Exception as exc:
            raise TypeError(
                f"env factory {start + j} cannot be pickled for start_method={start_method!r}: {exc!r}. "
                "Workers started with 'spawn' or 'forkserver' receive their factories by pickle: make the factory "
                "a module-level function or functools.partial, or use start_method='fork'."
            ) from exc
    return cloudpickle.dumps(fns)
