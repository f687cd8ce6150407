"""The pool: worker processes, the shared block, and the command protocol, as a state machine.

A pool is IDLE, PENDING (one command issued and not yet complete), BROKEN or CLOSED.
Every command goes the same way:

1. check the arguments and pickle every payload: nothing is issued if that fails;
2. issue: bump the sequence word of every worker (one kernel call), send payloads;
3. run the parent's own shard (``step_in_parent``), if any;
4. wait until every worker's DONE word says it finished (a dead worker is respawned
   with ``on_error="restart"``, else reported);
5. read the messages of the workers that have one (infos, errors, call results).

A wait (``step_wait``, ``reset_wait``, ``call_wait``) can be interrupted (Ctrl-C) or time
out while it waits in step 4 and be called again: nothing was consumed. Anything that
stops a command part-way through steps 2, 3 or 5 (an interrupt while the parent's envs
step or while a message is read, a dead worker, a timeout) leaves workers and parent out
of step: the pool becomes BROKEN, with that exception as the cause, and says so on its
next use until it is closed. Front-ends (fastvec.SubprocVecEnv, fastvec.VectorEnv) and the
ppo trainer sit on a Pool and read its results as typed ``Batch`` objects.
"""

from __future__ import annotations

import atexit
import collections
import copy
import errno
import math
import multiprocessing
import os
import pickle
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from types import FrameType
from typing import Any

import numpy as np

from fastvec import kernels, placement, shm
from fastvec import shard as shard_module
from fastvec.async_batches import AsyncBatch, AsyncBatches
from fastvec.batch import Batch, RingViews
from fastvec.checks import ActionWriter, emit_warnings
from fastvec.env_calls import CALLS, own_copies, private, private_payload, private_shares
from fastvec.errors import (
    AlreadyPendingCallError,
    BrokenPoolError,
    ClosedError,
    EnvError,
    FastvecError,
    NoAsyncCallError,
    SeedError,
    ShardError,
    SpaceMismatchError,
    StepTimeoutError,
    WorkerDiedError,
    detached,
    env_error,
    env_errors,
    exit_status,
    user_stacklevel,
)
from fastvec.factories import Distinct, OwnFactory
from fastvec.layout import Views, plan_layout
from fastvec.monitor import Monitor
from fastvec.moves import ShardMoves
from fastvec.options import PoolOptions, default_num_workers, shown_value, wait_seconds
from fastvec.protocol import (
    ADAPTIVE_POLL,
    DISABLED,
    HEADER_TIMING,
    NEXT_STEP,
    POLL_NS,
    SAME_STEP,
    SEQ_MASK,
    YIELD_POLL_NS,
    Command,
    Control,
    Extra,
    PoolState,
    ResetFlag,
    Stats,
    StepFlag,
    dumps_payload,
)
from fastvec.remote import (
    Remote,
    ReplyNotLoaded,
    SpacesNotPickled,
    holds_not_loaded,
    kill_all,
    lenient_loads,
    pickle_factories,
    stop,
)
from fastvec.restart import describe, restart_reason
from fastvec.shard import Shard, StepRun, WrappedShard, close_each
from fastvec.spaces import Leaf, assemble, is_single_array, leaves, object_leaves
from fastvec.stats import PoolStats, Sampler

__all__ = ["Pool", "PoolState", "split_envs", "default_num_workers"]

_BRIEF_HOLD_S = 0.05  # send(): how long it waits for another thread's hold before it refuses (not for a close)
PENDING_STEP_GRACE_S = 2.0  # close(): how long a pending step may still take before workers are terminated
_get_ident = threading.get_ident


def split_envs(num_envs: int, num_workers: int) -> list[range]:
    """Contiguous, even split; the first shards get the smaller shares (shard 0 may be the parent's)."""
    base, extra = divmod(num_envs, num_workers)
    ranges, start = [], 0
    for w in range(num_workers):
        count = base + (1 if w >= num_workers - extra else 0)
        ranges.append(range(start, start + count))
        start += count
    return ranges


class _Pending:
    """The command in flight and how far its completion got (so a wait can resume)."""

    __slots__ = (
        "command", "code", "name", "slot", "arg", "payloads", "local_args", "reset_options", "local", "waited",
        "respawned", "replies", "plan", "count", "sync", "lost", "hung", "waited_s", "local_run", "local_busy",
        "local_began",
    )

    def __init__(
        self,
        command: Command,
        name: str,  # what errors call it: "step", "reset", "get_attr", ...
        slot: int,
        arg: int = 0,
        payloads: dict[int, bytes] | None = None,  # worker index -> pickled request
        local_args: tuple = (),  # what the parent's own shard runs
        reset_options: list | None = None,  # a reset's per-env options (a respawned worker needs them)
        plan: dict[int, list[int]] | None = None,  # a call: shard -> positions in its indices
        count: int = 0,  # a call: how many envs it asked
    ):
        self.command, self.name, self.slot, self.arg = command, name, slot, arg
        self.code = int(command)
        self.payloads, self.local_args, self.reset_options = payloads, local_args, reset_options
        self.plan, self.count = plan, count
        self.local: tuple | None = None  # (extras, errors) once the parent's shard has run
        self.waited = False  # every worker's DONE word was seen
        self.respawned: dict[int, list | None] = {}  # position -> extras of its replacement
        self.replies: dict[int, Any] = {}  # position -> message read (None: had none)
        self.sync = False  # started by reset() / call(): the next command finishes it if interrupted
        self.lost: set[int] = set()  # positions of workers found dead during a call (on_error="restart")
        self.hung: set[int] = set()  # positions of the workers _respawn replaced that the pool had ended, hung
        self.waited_s = 0.0  # time its earlier waits for the workers took (cut short by the caller's timeout)
        # a step's own share stepped in parts, cut short by the caller's timeout (Pool._step_local_within): the run
        # so far, the time its parts took, and when its first began
        self.local_run: StepRun | None = None
        self.local_busy = self.local_began = 0

    def rearm_step(self, slot: int) -> _Pending:
        """This completed usual step, as the next one into ``slot`` (issue 14: making a _Pending costs
        about as much as the rest of step_async's bookkeeping)."""
        self.slot = slot
        self.local_args = (slot, None)
        self.local = None
        self.local_run = None
        self.waited = False
        self.waited_s = 0.0
        if self.respawned:
            self.respawned = {}
        if self.replies:
            self.replies = {}
        if self.lost:
            self.lost = set()
        if self.hung:
            self.hung = set()
        return self


_HAS_MESSAGE = Control.HAS_MESSAGE
_STEP, _RESET, _CONTROL = Command.STEP, Command.RESET, Command.CONTROL
_STEP_CODE = int(Command.STEP)
# (the usual step's states as module names: reading an Enum member through its class runs the
# metaclass's attribute lookup, about 0.2 us, three times a step)
_IDLE, _PENDING = PoolState.IDLE, PoolState.PENDING
_WAIT_NAMES = {
    Command.STEP: "step_wait",
    Command.RESET: "reset_wait",
    Command.CONTROL: "call_wait",
    Command.CLOSE: "close",
}
_ASYNC_NAMES = {Command.STEP: "step", Command.RESET: "reset", Command.CONTROL: "call", Command.CLOSE: "close"}  # gymnasium's


_LIVE_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:  # runs before multiprocessing joins non-daemonic children
    for pool in list(_LIVE_POOLS):
        try:
            pool.close()
        except Exception:
            pass


_FINALIZER_PID: list[int] = []  # the process that registered _close_live_pools with multiprocessing's exit


def _close_pools_at_multiprocessing_exit() -> None:
    """A multiprocessing child's end skips atexit: its exit (``multiprocessing.util._exit_function``) runs its
    finalizers, then joins the non-daemonic children, which the workers of a pool left open are (they waited for
    a command for good). ``_close_live_pools`` is registered as one of those finalizers too, once per process (a
    forked child's registry starts empty)."""
    pid = os.getpid()
    if _FINALIZER_PID != [pid]:
        from multiprocessing import util

        util.Finalize(None, _close_live_pools, exitpriority=100)
        _FINALIZER_PID[:] = [pid]


def _disown_live_pools() -> None:
    """In a child forked (``os.fork``) from a process with open pools: those pools, their workers and
    the envs of their own shards belong to the parent. The child's copies are disowned: using one
    raises BrokenPoolError, and closing one (the child's exit hooks, ``__del__``) only marks it
    closed, without telling the parent's workers to exit. Multiprocessing's own exit hook would
    SIGTERM them (it takes them for the child's daemonic children): they leave its list too."""
    children = getattr(multiprocessing.process, "_children", None)
    for pool in list(_LIVE_POOLS):
        try:
            pool._disown()
            if children is not None:
                for remote in pool._all_remotes():
                    children.discard(remote.process)
        except Exception:  # (a hook's exception would only be printed, in every forked process)
            pass
    _LIVE_POOLS.clear()


os.register_at_fork(after_in_child=_disown_live_pools)


class Pool(ShardMoves):
    """N envs stepped by worker processes through one shared-memory block.

    Args:
        env_fns: one callable per env, each returning a new gymnasium.Env.
        options: a PoolOptions (or a tuning dict / JSON path); ``knobs`` (any PoolOptions
            field) override it. See fastvec.options.PoolOptions for every knob.
        autoreset_mode: fastvec.protocol.SAME_STEP (SB3), NEXT_STEP (gymnasium's default) or DISABLED.
        observation_mode: "same": every env must have env 0's observation space (gymnasium's
            default); "different": only its structure, shapes and dtypes (bounds may differ,
            as SB3, which looks at env 0 only, and gymnasium's "different" allow).
        observation_space: the single-env observation space to lay out (default: env 0's); the
            envs' spaces must match its structure, shapes and dtypes.
        action_mode: "same": every env must have env 0's action space (gymnasium); "different": only
            its structure, shapes and dtypes (SB3 takes envs whose bounds differ, e.g. randomised
            torque limits; range checks use env 0's bounds).

    Each env is made from a private copy of its factory (pickled once, loaded for each making,
    as a process of its own would get it): envs do not share what their factories capture, and
    the caller's objects are left alone. A factory that cannot be pickled (fork) is called as it is.
    """

    _foreign = False  # a copy in a child forked from the pool's process (_disown)
    _owner_pid = 0  # the process that made it (0: its __init__ did not get that far)

    def __init__(
        self,
        env_fns: Sequence[Callable[[], Any]],
        options: PoolOptions | dict | str | os.PathLike | None = None,
        *,
        autoreset_mode: int = SAME_STEP,
        observation_mode: str = "same",
        observation_space: Any = None,
        action_mode: str = "same",
        fewest_ring_slots: int = 1,
        **knobs: Any,
    ):
        self._owner_pid = os.getpid()  # (first: a pool collected in a fork of this process is not the fork's: _is_foreign)
        self._fewest_ring_slots = fewest_ring_slots  # (what a front-end's settings allow: copy=False needs 2)
        self._state = PoolState.IDLE
        self._cause: BaseException | None = None
        self._cause_text = _describe_cause(None)
        self._pending: _Pending | None = None
        self._usual_step: _Pending | None = None  # the usual step's record, re-armed for every such step
        self._remotes: list[Remote] = []
        self._local: Shard | WrappedShard | None = None  # the envs this process steps itself (shard 0)
        self._head: Shard | None = None  # shard 0's envs from env 0 on
        self._tail: Shard | None = None  # shard 0's envs past the last worker's (wrap_envs), once some moved there
        self._local_envs: list = []
        self._closed_local: set[int] = set()  # ids of this process's envs whose close() was called (close_each)
        # (this process's pid, the workers) an interrupted close() signalled and did not wait for: close() again does
        self._left_running: tuple[int, list] | None = None
        self._stopping = False  # a _terminate() stopping the workers now (a close() meanwhile leaves them to it)
        self._segment = None
        self._views: Views | None = None
        self.slot_views: list | None = None
        self._ring: RingViews | None = None
        self.obs_slots: list | None = None  # per slot, the observation rows where they are one array leaf
        self._pins_caller: int | None = None  # the thread this pool pinned (pin="spread"): close() gives it back
        # One token, taken (list.pop: atomic, and cheaper than a lock's acquire, on every command) by the thread
        # completing a command and by close() for its whole teardown: a second thread waits for it instead of
        # running this process's shard beside it. The same thread may go on without it (close() completes a
        # pending step itself; an env move runs a command inside a step): ``_enter_slowly`` tells by the stack.
        self._token: list = [object()]
        self._token_waiters: set[int] = set()  # threads asleep in _take_token (they hold no token)
        # tokens given back (or made), ever: a recovery that saw the count move meanwhile makes none. Counted just before
        # the token goes back: an interrupt between the two loses the token (which a recovery makes again), where one
        # after would leave a return uncounted (and a recovery could make a second token)
        self._releases = 0
        self._recovering: dict[int, tuple[int, float]] = {}  # _recover_lost_token's claim: (thread, since)
        self._closer = 0  # the thread running close() with the token
        # close() from several threads (or a signal handler inside close()): the first takes the ticket and tears
        # the pool down, from before it waits for a running command; the others wait for it to be done
        self._close_ticket: list = [object()]
        self._closing_thread = 0
        self._close_done = threading.Event()
        self._reentered = False  # close() ran in a signal handler while its thread was inside the pool
        # set once the pool is torn down, never unset: code a signal handler's close() interrupted may still
        # write the state it was about to (IDLE, PENDING); the error paths read this instead
        self._terminated = False
        self._release_deferred = False  # closed while a thread was inside: it releases the block
        self._release_lock = threading.Lock()
        # threads inside _release: a signal handler's close() in one of them returns (its lock would never be given)
        self._releasing: set[int] = set()

        env_fns = list(env_fns)
        opts = PoolOptions.merged(options, len(env_fns), knobs)
        if not env_fns:
            raise ValueError("need at least one env factory, got an empty list")
        for i, fn in enumerate(env_fns):
            if not callable(fn):
                raise TypeError(
                    f"env_fns[{i}] must be a callable that returns an env, got {type(fn).__name__}; "
                    "pass e.g. lambda: gymnasium.make('CartPole-v1')"
                )
        self.num_envs = n = len(env_fns)
        if opts.batch_size is not None and opts.batch_size > n:
            raise ValueError(
                f"batch_size={shown_value(opts.batch_size)} is more than the {n} envs: a batch is at most every env "
                f"(batch_size={n}, or none, is the synchronous step)"
            )
        asynchronous = opts.batch_size is not None and opts.batch_size < n
        if asynchronous:
            num_workers, step_in_parent = _async_layout(n, opts)
        else:
            num_workers = int(min(opts.num_workers or default_num_workers(), n))
            step_in_parent = num_workers >= 2 if opts.step_in_parent is None else bool(opts.step_in_parent)
        start_method = opts.start_method or (
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        self.options = opts = opts.replace(
            num_workers=num_workers, step_in_parent=step_in_parent, start_method=start_method
        )
        self.num_workers = num_workers
        self.step_in_parent = step_in_parent
        self.ring_slots = int(opts.ring_slots)
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.start_method = start_method
        self.step_timeout = opts.step_timeout
        self.on_error = opts.on_error
        self.check = opts.check
        self.pin_workers = opts.pin_workers
        self.pin = opts.placement
        self.cores: dict[int, list[int]] = {}  # worker index -> the cores it is pinned to
        self._allowed_cores = placement.allowed_cores()  # the affinity this process was started with
        self._told_unpinned = False  # (a pin the host refused is said once)
        if isinstance(self.pin, (list, tuple)) and num_workers > (1 if step_in_parent else 0):
            # (cores this process may not use: refused now, not once every env was made)
            placement.plan(self.pin, [1], False, self._allowed_cores)
        self._inside_ns = 0
        self._sampler: Sampler | None = None
        self._monitor: Monitor | None = None
        self._async: AsyncBatches | None = None
        self.worker_restarts = 0
        self.moves_done = 0
        # moves done per route (source, target, around the ring's end): the monitor undoes only the moves of a
        # trial that happened (the pool refuses some it was asked for). Read by key from the monitor's thread.
        self.moves_by_route: collections.Counter = collections.Counter()
        # parkings and unparkings asked from another thread (queue_park) that the pool then refused: the monitor
        # reports them, so that its events do not say a worker sleeps that does not
        self.refused_requests: collections.deque = collections.deque(maxlen=64)
        # the workers parked at the monitor's request (queue_park), not by hand: the only ones it brings back
        self.monitor_parked: set[int] = set()
        self._told_dead_parked: set[int] = set()  # (a parked worker found dead, without restart: said once)
        self._sync_next = False  # reset() / call() are issuing their command (it is then finished if interrupted)
        self._moves: dict[int, tuple[int, int, bool]] = {}  # env index -> (source, target, around the ring's end), pending
        self._movable: dict[int, bool] = {}  # env index -> whether it can move keeping its state, once asked
        self.unmovable: frozenset[int] = frozenset()  # those that cannot (read by the monitor's thread)
        self._move_requests: collections.deque = collections.deque()  # ("move" | "park" | "unpark" | "parked", ...)
        self._parked: dict[int, tuple[Remote, int]] = {}  # shard -> its idle worker and its command count
        self._draining: set[int] = set()  # shards whose envs are all leaving, to be parked once empty
        self.shard_envs = split_envs(n, num_workers)
        # shard 0's envs past the last worker's: the shards are arcs of a ring, and the calling process's
        # own may wrap around its end (request_move(..., around=True)); empty until an env moves there
        self.wrap_envs = range(n, n)
        remote_shards = list(range(1 if step_in_parent else 0, num_workers))
        self.oversubscribed = len(remote_shards) + 1 > default_num_workers()
        self.spin_ns = int(opts.spin_ns) if opts.spin_ns is not None else YIELD_POLL_NS
        # workers: by default adapt the poll to the gap between commands (a learner's forward
        # pass between steps), as long as every process has a core of its own
        self._worker_spin_ns = (
            int(opts.spin_ns) if opts.spin_ns is not None else (YIELD_POLL_NS if self.oversubscribed else ADAPTIVE_POLL)
        )
        if observation_mode not in ("same", "different"):
            raise ValueError(f"observation_mode must be 'same' or 'different', got {shown_value(observation_mode)}")
        self._observation_mode = observation_mode
        self._given_observation_space = observation_space
        self.slot = 0
        self._results_made = 0  # steps completed: a Batch's terminal observations are the latest step's only
        # (each env from a copy of its factory; under fork one holding what processes share is called as it is; with
        # restarts, each factory's copy is taken now, so that an env made again is made as at first: factories.py)
        fork, snapshot = self.start_method == "fork", self.on_error == "restart"
        self._env_fns = [OwnFactory(fn, fork, snapshot) for fn in env_fns]
        self._action_mode = action_mode
        shm.sweep_stale()
        _close_pools_at_multiprocessing_exit()
        _LIVE_POOLS.add(self)
        try:
            self._start(remote_shards)
            self._async = AsyncBatches(self, opts.batch_size) if asynchronous else None
            self._pin()
            # (the sampler and the monitor hold the pool by weak references, as its AsyncBatches do: a pool dropped
            # unclosed is freed, and closed, at once, not by the cyclic garbage collector, nor kept alive for ever
            # by the monitor's thread)
            self._sampler = Sampler(weakref.proxy(self))  # (the first stats() covers the time since the start)
            if opts.monitor:
                self._monitor = Monitor(weakref.proxy(self), interval=opts.monitor_interval)
                self._monitor.start()
        except StepTimeoutError as exc:  # (said as the constructor's: there is no pool to close)
            self._terminate(grace=0.2)
            raise StepTimeoutError(exc.worker_index, exc.env_indices, exc.command, exc.timeout, made=False) from None
        except BaseException:
            self._terminate(grace=0.2)
            raise

    # -- start-up -----------------------------------------------------------------------------
    def _start(self, remote_shards: list[int]) -> None:
        for w in remote_shards:
            self._spawn(w, self._remotes.append)
        if self.step_in_parent:  # the parent's own envs are made while workers make theirs
            if self.start_method != "fork":  # (refused as a worker's is, whichever process would step its env: a
                # factory that cannot be pickled was called as it is here, so that the same program started on a 2-core
                # machine and not on a 1-core one, where a worker steps every env; the references refuse it)
                pickle_factories(self._env_fns[self.shard_envs[0].start : self.shard_envs[0].stop], 0, self.start_method)
            distinct = Distinct(self.start_method == "fork")
            for i in self.shard_envs[0]:
                try:
                    self._local_envs.append(distinct.own(self._env_fns[i](), i))
                except shard_module.ENV_ERRORS as exc:  # (read now: a worker widens it, and a pool may run in one)
                    raise env_error(*ShardError(i, "make (env constructor)", exc).payload()) from exc
        try:
            env_spaces: list[tuple] = shard_module.spaces_of(self._local_envs)
        except ShardError as err:
            raise env_error(*err.payload()) from None
        for remote in self._remotes:
            env_spaces.extend(self._handshake(remote, "make"))
        first = env_spaces[0]
        if self._local_envs:
            # env 0's own space objects, copied: what a wrapper does to the pool's spaces (VecNormalize replaces a
            # Dict's image part) or draws from them (action_space.sample()) is not done to env 0 alone, as the
            # references' workers send copies
            first = tuple(_copied_space(space) for space in first)
        self.observation_space = self._given_observation_space or first[0]
        self.action_space = first[1]
        self._check_env_spaces(0, env_spaces)
        self.obs_leaves = leaves(self.observation_space)
        self._single_leaf = is_single_array(self.obs_leaves)
        # final observations come in native byte order, whichever way they travel (the env's own object, pickled,
        # is native: AsyncVectorEnv's are too), so a big-endian part's is native from the terminal-obs buffers too
        self._swapped_final = any(leaf.array and not leaf.dtype.isnative for leaf in self.obs_leaves)
        self._object_leaves = object_leaves(self.obs_leaves)
        self.obs_has_objects = bool(self._object_leaves)
        # each env's latest object parts (Text, Graph, ... observations travel pickled)
        self._objects: list[list | None] = [None] * self.num_envs
        self._big_seeds: dict[int, int] = {}  # env index -> its seed beyond int64 in the latest reset (_send_big_seeds)
        self._actions = ActionWriter(self.action_space, self.num_envs, kernels, self.check)
        self.layout = plan_layout(
            self.obs_leaves,
            leaves(self.action_space),
            self.num_envs,
            self.num_workers,
            self.ring_slots,
            final_obs=self.autoreset_mode == SAME_STEP,  # (else never read: no room for them in /dev/shm)
        )
        free = shm.room()
        if self.layout.size > free > 0:
            # (a block past any room failed as it was made with a bare EFBIG or ENOSPC; one within the room but past
            # /dev/shm's goes to a file, with a warning)
            raise ValueError(self._no_room(free))
        # its name dropped at once: workers get the file descriptor instead, so nothing can
        # be left in /dev/shm whatever happens to any process from here on
        try:
            self._segment = shm.create_block(self.layout.size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # (said already: no room, neither in /dev/shm nor in the temp directory)
                raise
            raise shm.mapping_error(exc, self.layout.size, "this process") from exc
        self._views = views = Views(self.layout, self._segment.buf)
        views.write_header()
        for w, envs in enumerate(self.shard_envs):
            views.env_worker[envs.start : envs.stop] = w
        for remote in self._remotes:
            remote.base = views.control_base(remote.index)
            try:
                remote.attach(self.layout, self._segment._fd, 1, None)  # type: ignore[union-attr]
            except SpacesNotPickled as exc:  # (as where env 0's worker reports them: worker._dumps_spaces)
                raise env_error(*ShardError(0, "make (reporting spaces)", exc.args[0]).payload()) from None
        for remote in self._remotes:
            kind, payload = self._recv(remote, "attach")
            if kind == "error":  # (it could not map the block)
                raise env_error(*payload)
        if self.step_in_parent:
            self._local = self._head = self._own_shard(self._local_envs, 0, self._env_fns[: self.shard_envs[0].stop])
        self._control = views.control
        self._control_words = views.control_words
        self._local_stats = views.worker_stats[0]
        self._local_finished = time.perf_counter_ns()
        # the own shard's commands, counted as they start (Pool.in_flight); the count of the one running now (0:
        # none; an asynchronous step stopped between envs is not running); that of the last one in its counters
        self._local_commands = self._local_running = self._local_counted = 0
        self._index_remotes()
        # per slot: the rewards / terminated / truncated rows a Batch hands out, and the observations
        self.slot_views = [(views.rewards[s], views.terminated[s], views.truncated[s]) for s in range(self.ring_slots)]
        self.obs_slots = [views.obs[0][s] for s in range(self.ring_slots)] if self._single_leaf else None
        self._ring = RingViews(
            obs=tuple(views.obs),
            rewards=views.rewards,
            terminated=views.terminated,
            truncated=views.truncated,
            terminal_obs=tuple(views.terminal_obs),
            address=views.header.ctypes.data,  # the header is at offset 0
            nbytes=self.layout.size,
        )

    def _check_env_spaces(self, start: int, spaces: list) -> None:
        """``_check_spaces`` for envs ``start``, ``start + 1``, ... (their (observation, action) spaces, or None for
        one whose spaces cannot be pickled, of an env other than env 0: not compared, as SB3 compares none)."""
        for k, pair in enumerate(spaces):
            if pair is not None:
                self._check_spaces(start + k, *pair)

    def _check_spaces(self, i: int, obs_space: Any, act_space: Any) -> None:
        """Env i's spaces against the pool's: equal ("same"), or the same structure, shapes and dtypes."""
        if self._observation_mode == "same" and self._given_observation_space is None:
            if obs_space != self.observation_space:
                raise SpaceMismatchError(
                    f"env {i} has observation space {obs_space}, env 0 {self.observation_space}: with "
                    "observation_mode='same' the sub-environments observation spaces are not equivalent. If this is "
                    "intentional, use `observation_mode='different'` instead (spaces that differ only in their bounds)."
                    + _twin_classes(obs_space, self.observation_space)
                )
        elif not _equivalent(leaves(obs_space), leaves(self.observation_space)):
            raise SpaceMismatchError(
                f"env {i} has observation space {obs_space}, which does not share the structure, shapes and dtypes "
                f"of {self.observation_space}"
            )
        if act_space != self.action_space and not (
            self._action_mode == "different" and _equivalent(leaves(act_space), leaves(self.action_space))
        ):
            raise SpaceMismatchError(
                f"env {i} has action space {act_space}, but env 0 has {self.action_space}; "
                "all envs of a pool must share it (actions are batched into one buffer)"
                + _twin_classes(act_space, self.action_space)
            )

    def _index_remotes(self, seqs: list[int] | None = None) -> None:
        """The arrays the kernels read for the workers in ``self._remotes`` (those given commands),
        with each worker's command count so far (``seqs``; zeros at the start)."""
        views = self._views
        # each worker counts its own commands (asynchronous batches give commands to some only)
        self._seqs = np.array(seqs if seqs is not None else [0] * len(self._remotes), dtype=np.uint32)
        self._done_index = np.array([r.base + Control.DONE_SEQ for r in self._remotes], dtype=np.intp)
        self._bases = np.array([r.base for r in self._remotes], dtype=np.intp)
        self._message_words = [r.base + _HAS_MESSAGE for r in self._remotes]  # a worker's "read my pipe" flag
        # the same, read one at a time by asynchronous batches: the DONE word's index as a Python int, and the
        # command counts through a memoryview (numpy's .item() costs about 650 instructions a read)
        self._done_words = self._done_index.tolist()
        self._seq_words = memoryview(self._seqs)
        # per worker, its words as one-element views of the arrays above, for issuing to it alone
        # (asynchronous batches; a slice made per call costs as much as the rest of the call)
        self._worker_words = [(self._bases[k : k + 1], self._seqs[k : k + 1]) for k in range(len(self._remotes))]
        self._remaining_index = views.control_base(self.num_workers) + Control.REMAINING

    def _spawn(self, w: int, place: Callable[[Remote], None], replacing: bool = False) -> Remote:
        """Start worker ``w``, recorded by ``place`` (Remote.spawn). ``replacing`` a dead one (on_error="restart"):
        an env its factory cannot make again is reported as that command's error, and made at its next step
        (restart.Unmade)."""
        envs = self.shard_envs[w]
        return Remote.spawn(
            w,
            envs,
            self._env_fns[envs.start : envs.stop],
            start_method=self.start_method,
            daemon=self.options.daemon,
            autoreset_mode=self.autoreset_mode,
            spin_ns=self._worker_spin_ns,
            restart_on_error=self.on_error == "restart",
            check=self.check,
            siblings=self._remotes,
            replacing=(self.observation_space, self.action_space) if replacing and self.on_error == "restart" else None,
            place=place,
        )

    def _no_room(self, free: int) -> str:
        """Why the shared block cannot be made where there is ``free`` room at most, and what would make it fit."""
        # (the fewest ring slots the pool's settings allow)
        fewest = max(self._fewest_ring_slots, 2 if self.on_error == "restart" else 1)
        plan = partial(
            plan_layout, self.obs_leaves, leaves(self.action_space), self.num_envs, self.num_workers,
            final_obs=self.autoreset_mode == SAME_STEP,
        )  # fmt: skip
        most = None  # the most slots that fit, below ring_slots (a block grows by one slot's rows per slot)
        base = plan(fewest).size
        if self.ring_slots > fewest and base <= free:
            per_slot = max(1, plan(fewest + 1).size - base)
            most = min(self.ring_slots - 1, fewest + (free - base) // per_slot)
            while most > fewest and plan(most).size > free:  # (alignment: a few bytes more, at most)
                most -= 1
        remedy = (
            f"lower ring_slots to {most}"
            if most is not None
            else "fewer envs, smaller observations, or more room in /dev/shm (a container's --shm-size)"
        )
        return (
            f"the shared block of {self.num_envs} envs with ring_slots={self.ring_slots} would be "
            f"{shm.amount(self.layout.size)}; /dev/shm or {tempfile.gettempdir()} have {shm.amount(free)} free at most: {remedy}"
        )

    def _handshake(self, remote: Remote, command: str) -> list:
        """The (observation space, action space) of each of the worker's envs, once it made them (None for an env
        whose spaces cannot be pickled: worker._dumps_spaces)."""
        kind, payload = self._recv(remote, command)
        if kind == "error":
            raise env_error(*payload)
        if isinstance(payload, bytes):  # (every env's at once, the usual case)
            try:
                return pickle.loads(payload)
            except Exception as exc:  # (a class only the worker has: what did load, the rest as if unpicklable)
                loaded = lenient_loads(payload)
                if loaded is None or (remote.envs.start == 0 and holds_not_loaded(loaded[0])):
                    raise env_error(*ShardError(remote.envs.start, f"{command} (reading the spaces)", exc).payload()) from None
                return [None if holds_not_loaded(pair) else pair for pair in loaded]
        spaces: list = []
        for k, pickled in enumerate(payload):
            try:
                spaces.append(None if pickled is None else pickle.loads(pickled))
            except Exception as exc:  # (a class only the worker has: as one that cannot be pickled, unless env 0's)
                if remote.envs.start + k == 0:
                    raise env_error(*ShardError(0, f"{command} (reading the spaces)", exc).payload()) from None
                spaces.append(None)
        return spaces

    # -- state --------------------------------------------------------------------------------
    @property
    def state(self) -> PoolState:
        return self._state

    @property
    def pending(self) -> str | None:
        """The name of the command in flight, or None."""
        return self._pending.name if self._pending is not None else None

    @property
    def pending_kind(self) -> str | None:
        """The kind of the command in flight as gymnasium names it ("step", "reset", "call"), or None."""
        return _ASYNC_NAMES[self._pending.command] if self._pending is not None else None

    @property
    def closed(self) -> bool:
        return self._state is PoolState.CLOSED or self._terminated

    def _check_idle(self, call: str) -> None:
        self._check_usable()
        if self._async is not None and self._async.busy:
            raise AlreadyPendingCallError(
                f"Calling `{call}` while asynchronous batches are running: recv() them first", "step"
            )
        self._finish_interrupted()
        if self._pending is not None:
            name = _ASYNC_NAMES[self._pending.command]
            raise AlreadyPendingCallError(
                f"Calling `{call}` while waiting for a pending call to `{name}` to complete "
                f"({self._pending.name!r}); complete it first with {_WAIT_NAMES[self._pending.command]}()",
                name,
            )

    def _held(self, call: str, body: Callable, *args: Any) -> None:
        """``body(*args)`` (a command's check and issue) holding the pool, as ``step_async`` does: a close(), or a park
        or unpark, from another thread waits for it, or it for them. Another thread's command pending: said at once,
        not after waiting for that thread (for as long as its envs take)."""
        tokens = self._token
        token = tokens.pop() if tokens else self._enter_slowly(None, check=call)
        try:
            body(*args)
        finally:
            self._leave(token)

    def _check_usable(self) -> None:
        if self._state is PoolState.CLOSED or self._terminated:
            self._release_if_deferred()
            raise ClosedError("this vectorized env is closed")
        if self._closer and self._closer != _get_ident():  # (its close command may be the one pending)
            raise ClosedError("this vectorized env is being closed (by close() in another thread)")
        if self._state is PoolState.BROKEN:
            cause = self._cause
            raise BrokenPoolError(
                f"this vectorized env cannot be used any more: {self._cause_text}; close() it"
            ) from cause

    def _break(self, cause: BaseException) -> None:
        """A command could not complete: workers and parent may be out of step. (The cause is kept detached from
        its traceback, whose frames hold this pool: see errors.detached.)"""
        if self._state is not PoolState.CLOSED:
            self._state = PoolState.BROKEN
            self._cause_text = _describe_cause(cause)  # (from the error itself: a copy may say less)
            self._cause = detached(cause)
        self._pending = None

    def _broken(self, cause: BaseException) -> BaseException:
        """``cause``, once it broke the pool (``_break``), for the caller to raise: ``raise pool._broken(Error(...))``
        leaves no local in the raising frame that holds the error (its traceback keeps that frame: a cycle)."""
        self._break(cause)
        return cause

    def _take_pending(self, command: Command, call: str) -> _Pending:
        p = self._pending
        if p is None or p.command is not command:
            self._check_usable()
            pending = "" if p is None else f" ({p.name!r} is pending: {_WAIT_NAMES[p.command]}() completes it)"
            raise NoAsyncCallError(
                f"Calling `{call}` without any prior call to `{call.replace('_wait', '_async')}`.{pending}",
                _ASYNC_NAMES[command],
            )
        return p

    # -- issuing --------------------------------------------------------------------------------
    def _issue(self, p: _Pending) -> None:
        """Publish ``p`` to every worker and send its payloads; from here on it must complete or break."""
        if self._terminated:  # close() from another thread gave up waiting for this command's issue
            raise self._closed_meanwhile(p.name)
        try:
            p.sync = self._sync_next  # (set before it is published: an interrupt right after must find it)
            self._pending = p
            self._state = PoolState.PENDING
            if self._remotes:
                kernels.issue(self._control, self._bases, p.code, p.slot, p.arg, self._seqs, self._remaining_index)  # (counts _seqs)
            if p.payloads:
                for remote in self._remotes:
                    payload = p.payloads.get(remote.index)
                    if payload is not None:
                        remote.send_bytes(payload)
        except BaseException as exc:
            self._break(exc)
            if self._terminated:  # close() (a signal handler's, another thread's) released the pipes under the send
                raise self._closed_meanwhile(p.name) from None
            raise

    def _next_slot(self) -> int:
        return self.slot + 1 if self.slot + 1 < self.ring_slots else 0

    # -- step -------------------------------------------------------------------------------------
    def step_async(self, actions: Any, per_env: bool = False) -> None:
        """Check ``actions`` and start a step.

        ``actions``: a batch (an array ``[num_envs, *shape]``; for Dict/Tuple action spaces a
        dict/tuple of such batches, gymnasium's layout), or with ``per_env`` a sequence of one
        action per env (SB3's layout for structured spaces).
        """
        entered = time.perf_counter_ns()
        # held from the state check through the issue (as a command's completion is): a close(), or a park or unpark,
        # from another thread waits for the issue, or this for them; else close() could issue its command while this
        # issued a step, or a worker unparked meanwhile count as part of this step
        tokens = self._token
        token = tokens.pop() if tokens else self._enter_slowly(None, check="step_async")
        try:
            if self._pending is not None or self._state is not _IDLE or self._async is not None:
                if self._async is not None:
                    raise ValueError(
                        f"this pool hands out batches of {self._async.batch_size} envs: use send(actions, env_ids) and "
                        "recv() (or make it without batch_size for the synchronous step)"
                    )
                self._check_idle("step_async")
            if self._move_requests:
                self._take_move_requests()
            views = self._views
            try:
                objects = self._actions.write(actions, views.actions, views.action_tags, per_env)
            except BaseException:
                # close() from another thread (or a signal handler) released the block under this step (the actions'
                # conversion can take a while: a lazy tensor): a bare TypeError from the released views otherwise
                if self._terminated:
                    raise self._closed_meanwhile("step") from None
                raise
            if self._terminated:  # close() from another thread gave up waiting for this step's issue (and broke the pool)
                raise self._closed_meanwhile("step")
            slot = self.slot + 1 if self.slot + 1 < self.ring_slots else 0
            if objects is None:  # the usual step: the workers start first, the bookkeeping follows while they run
                try:
                    if self._remotes:
                        kernels.issue(self._control, self._bases, _STEP_CODE, slot, 0, self._seqs, self._remaining_index)
                    reused = self._usual_step
                    if reused is None:
                        reused = self._usual_step = _Pending(_STEP, "step", slot, 0, None, (slot, None))
                    self._pending = reused.rearm_step(slot)
                    self._state = _PENDING
                except BaseException as exc:  # (as in _issue) issued or not, the pool cannot tell: broken
                    self._break(exc)
                    if self._terminated:  # (closed meanwhile: as above)
                        raise self._closed_meanwhile("step") from None
                    raise
                self._inside_ns += time.perf_counter_ns() - entered
                return
            # object leaves (Text, ...) of the actions travel pickled, each worker its envs' share
            payloads = {
                r.index: dumps_payload([column[r.envs.start : r.envs.stop] for column in objects], "actions", r.envs)
                for r in self._remotes
            }
            local = None
            if self._local is not None:  # (the copy a worker's envs get: an env that changes its action changes its own)
                own = self._local
                local = private_payload([own.part(column) for column in objects], "actions", self._own_envs())
            self._issue(_Pending(Command.STEP, "step", slot, int(StepFlag.HAS_OBJECTS), payloads, local_args=(slot, local)))
        finally:  # (_leave and _give_back, inline)
            if token is not None:
                self._releases += 1
                tokens.append(token)
            if self._release_deferred and not self._reentered:  # closed meanwhile by a signal handler
                self._release()

    def step_wait(self, timeout: float | None = None) -> Batch:
        """Finish the pending step: the results in the next ring slot, as a Batch.

        ``timeout``: seconds to wait for the workers before ``multiprocessing.TimeoutError``
        (the step stays pending: call again). Raises EnvError naming the env when an env raised.
        """
        p = self._pending
        if p is None or p.command is not _STEP:
            p = self._take_pending(Command.STEP, "step_wait")  # (raises)
        if timeout is not None:
            timeout = wait_seconds(timeout)
        if timeout is None and p.local is None and not p.waited and p.local_run is None:
            return Batch(self, p.slot, self._complete_step(p))
        return Batch(self, p.slot, self._complete(p, timeout))

    def step(self, actions: Any) -> Batch:
        self.step_async(actions)
        return self.step_wait()

    # -- reset ------------------------------------------------------------------------------------
    def reset_async(
        self,
        seeds: Sequence[int | None] | None = None,
        options: Sequence[Any] | None = None,
        mask: np.ndarray | None = None,
        pass_options_always: bool = False,
    ) -> None:
        """Start resetting every env (or those where ``mask`` is True) with per-env seeds and options.

        A reset writes into the next ring slot; a masked one copies the latest rows there first and
        rewrites the masked envs' (with one ring slot, in place). Between asynchronous batches a masked
        reset overwrites the masked envs' rows of the current slot, which first takes each group's
        latest rows: a group's ``recv(copy=False)`` views in that slot change. ``options[i]`` goes to
        env i, omitted when falsy (SB3) unless ``pass_options_always`` (gymnasium passes ``options=None``).
        """
        self._held("reset_async", self._reset_async, seeds, options, mask, pass_options_always)

    def _reset_async(
        self, seeds: Sequence[int | None] | None, options: Sequence[Any] | None, mask: np.ndarray | None,
        pass_options_always: bool,
    ) -> None:
        self._check_idle("reset_async")
        n = self.num_envs
        if options is not None:
            options = list(options)
            if len(options) != n:
                raise ValueError(f"expected {n} option dicts (one per env), got {len(options)}")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (n,):
                raise ValueError(f"reset mask must have shape ({n},), got {mask.shape}")
        seeds = self._checked_seeds(seeds, mask)
        send_options = options is not None and (pass_options_always or any(options))
        arg = (ResetFlag.HAS_OPTIONS if send_options else 0) | (ResetFlag.OPTIONS_ALWAYS if pass_options_always else 0)
        payloads = self._option_payloads(options) if send_options else {}
        local_options = None
        if send_options and self._local is not None:
            local_options = self._own_options(options)  # (before any seed is handed out)
        self._write_seeds(seeds, mask)
        views = self._views
        if mask is not None:
            views.reset_mask[:] = mask
            arg |= ResetFlag.MASKED
            if self._async is not None:  # (each group's latest rows are in its own slot: the others read them here)
                slot = self.slot
                self._async.latest_into(self, slot)
            else:
                # the next slot, the latest rows copied into it, the masked envs' then rewritten: the step the
                # caller holds keeps its observations, rewards and flags for S - 1 commands, as after any
                # other (written in place, a DISABLED loop's Batch lost its episodes' last rewards and dones)
                slot = self._next_slot()
                if slot != self.slot:
                    for ring in (*views.obs, views.rewards, views.terminated, views.truncated):
                        ring[slot] = ring[self.slot]
        else:
            slot = self._next_slot()
        self._issue(
            _Pending(
                Command.RESET,
                "reset",
                slot,
                int(arg),
                payloads,
                local_args=(slot, local_options, mask is not None, pass_options_always),
                reset_options=options if send_options else None,
            )
        )

    def _checked_seeds(self, seeds: Sequence | None, mask: np.ndarray | None) -> list | None:
        """Per-env reset ``seeds`` as the envs will get them: one per env, and those of the envs ``mask`` leaves out
        None (gymnasium hands seeds only to the envs it resets). A bool is an int, as gymnasium's envs take it; a seed
        of another type they refuse, as here, with their words."""
        if seeds is None:
            return None
        n = self.num_envs
        if len(seeds) != n:
            raise ValueError(f"expected {n} seeds (one per env), got {len(seeds)}")
        seeds = [s if mask is None or mask[i] else None for i, s in enumerate(seeds)]
        for i, s in enumerate(seeds):
            if s is not None and not isinstance(s, (int, np.integer)):
                raise SeedError(f"Seed must be a python integer, actual type: {type(s)} (the seed for env {i}: {s!r})")
        return seeds

    def _own_options(self, options: list) -> list:
        """This process's envs' share of per-env ``options``: the copy a worker's envs get (pickled, loaded); one
        that cannot be pickled is named by its env."""
        own = self._local
        values = own.part(options)  # (a WrappedShard's: every env's, each part taking its own)
        envs = range(len(values)) if isinstance(own, WrappedShard) else range(own.start, own.stop)
        return private_shares(values, envs, "reset options", self._own_envs())

    def _own_envs(self) -> range | str:
        """The envs this process steps, for a message: shard 0's range, or its two parts once envs moved to it
        around the ring's end (a WrappedShard)."""
        own = self._local
        if isinstance(own, WrappedShard):
            return f"envs {own.head.start}..{own.head.stop - 1} and {own.tail.start}..{own.tail.stop - 1}"
        return self.shard_envs[0]

    def _option_payloads(self, options: list) -> dict[int, bytes]:
        """Each worker's share of per-env reset ``options``, pickled before anything is issued (an option
        that cannot be pickled leaves the pool idle), loaded here first and its copy pickled (one that cannot be
        loaded is named by its env: a worker refused them naming its first env, whichever env's they were)."""
        payloads = {}
        for remote in self._remotes:  # (the copy is sent: a value that loads once only, a torch tensor's storage, loads
            envs = remote.envs  # in the worker)
            share = private_shares(options[envs.start : envs.stop], envs, "reset options", envs)
            payloads[remote.index] = dumps_payload(share, "reset options", envs)
        return payloads

    def _write_seeds(self, seeds: Sequence[int | None] | None, mask: np.ndarray | None) -> None:
        """A reset's per-env seeds into the shared block (None: no seeds; seeds beyond its int64 words
        go to their envs first, ``_send_big_seeds``)."""
        views = self._views
        self._big_seeds = {}
        if seeds is None:
            views.seed_mask[:] = False
            return
        seeds = self._send_big_seeds(seeds, mask)
        views.seed_mask[:] = [s is not None for s in seeds]
        views.reset_seeds[:] = [0 if s is None else int(s) for s in seeds]

    def _send_big_seeds(self, seeds: Sequence[int | None], mask: np.ndarray | None) -> list[int | None]:
        """Seeds beyond the shared block's int64 words (SB3 and gymnasium pass any int on to the env):
        given to their envs first, by a call that keeps them for the reset that follows. Returns the
        other seeds, for the block."""
        big = [i for i, s in enumerate(seeds) if s is not None and not _INT64_MIN <= int(s) <= _INT64_MAX]
        if not big:
            return list(seeds)
        reset = [i for i in big if mask is None or mask[i]]  # (an env left out of a masked reset keeps none)
        if reset:
            self.call("seed_next_reset", reset, (), [int(seeds[i]) for i in reset])
            # (kept for a worker that dies in the reset: its replacement's envs need them too)
            self._big_seeds = {i: int(seeds[i]) for i in reset}
        taken = set(big)
        return [None if i in taken else s for i, s in enumerate(seeds)]

    def reset_wait(self, timeout: float | None = None) -> Batch:
        """Finish the pending reset; its infos are in ``Batch.reset_infos``."""
        p = self._take_pending(Command.RESET, "reset_wait")
        return Batch(self, p.slot, self._complete(p, wait_seconds(timeout)))

    def reset(
        self,
        seeds: Sequence[int | None] | None = None,
        options: Sequence[Any] | None = None,
        mask: np.ndarray | None = None,
        pass_options_always: bool = False,
    ) -> Batch:
        """``reset_async`` then ``reset_wait``. A reset() interrupted while it waited (Ctrl-C) is
        finished by the next command, so calling reset() (or anything else) again just works."""
        outer = self._sync_next  # (a reset with seeds past 64 bits runs a call() first: nested)
        try:
            self._sync_next = True
            self.reset_async(seeds, options, mask, pass_options_always)
        finally:
            self._sync_next = outer
        return self.reset_wait()

    # -- asynchronous batches (batch_size below num_envs; fastvec.async_batches) ------------------
    def async_reset(self, seeds: Sequence[int | None] | None = None, options: Sequence[Any] | None = None) -> None:
        """Start resetting every env (per-env ``seeds`` and ``options``); ``recv()`` returns them, ``batch_size`` at a time."""
        self._asynchronous("async_reset").async_reset(
            None if seeds is None else list(seeds), None if options is None else list(options)
        )

    def send(self, actions: Any, env_ids: Any, per_env: bool = False) -> None:
        """Step the envs ``env_ids`` (those a ``recv()`` returned) with ``actions`` (a row each; ``per_env``:
        as in step_async)."""
        self._asynchronous("send").send(actions, env_ids, per_env)

    def recv(self, timeout: float | None = None, copy: bool = True, batch_object: Any = None) -> AsyncBatch:
        """The first ``batch_size`` envs whose step or reset finished (``AsyncBatch.env_ids``);
        ``copy=False``: views into the ring where the batch is one group (a worker's or the caller's own).
        Object parts (Text, Graph, ...) are batched by ``batch_object(leaf, values)`` (default: a tuple)."""
        return self._asynchronous("recv").recv(wait_seconds(timeout), copy, batch_object)

    def _asynchronous(self, call: str) -> AsyncBatches:
        if self._async is None:
            raise ValueError(f"{call}() needs a pool made with batch_size below num_envs ({self.num_envs})")
        return self._async

    # -- rare calls ---------------------------------------------------------------------------
    def call_async(
        self, request: str, indices: Sequence[int], args: tuple = (), values: Sequence | None = None
    ) -> None:
        """Start a rare call (get_attr, env_method, call, set_attr, render, is_wrapped, has_attr)
        on the envs at ``indices``; ``values`` (aligned with ``indices``) are per-env values, for set_attr."""
        self._held(request, self._call_async, request, indices, args, values)

    def _call_async(self, request: str, indices: Sequence[int], args: tuple, values: Sequence | None) -> None:
        self._check_idle(request)
        if request not in CALLS and request not in Shard.POOL_CALLS:
            raise ValueError(f"unknown request {request!r}: one of {', '.join(sorted(CALLS))}")
        indices = [self._check_index(i) for i in indices]
        if values is not None and len(values) != len(indices):
            raise ValueError(f"expected {len(indices)} values (one per env), got {len(values)}")
        plan: dict[int, list[int]] = {}  # shard -> positions in indices
        shard_of = self._views.env_worker
        for pos, i in enumerate(indices):
            plan.setdefault(int(shard_of[i]), []).append(pos)

        def part(positions: list[int]) -> tuple:  # (a worker none of whose envs is called gets no arguments)
            return (
                request,
                [indices[p] for p in positions],
                args if positions else (),
                None if values is None else [values[p] for p in positions],
            )

        def called(positions: list[int]) -> str:
            return ("env " if len(positions) == 1 else "envs ") + ", ".join(str(i) for i in sorted(indices[p] for p in positions))

        # pickled before anything is issued: an unpicklable argument leaves the pool idle. A called worker's share is
        # loaded here first and its copy sent: one that cannot be loaded is named by the envs called (a worker named its
        # first env); and a value that loads once only (a torch tensor's storage, passed by a one-shot descriptor) is
        # loaded by its worker from the copy's pickle, not from the one this process loaded
        # (no pickle made only to be checked: never loaded, it held a torch tensor's one-shot descriptor open; the
        # shares in the order of their lowest env, so that an argument no env can take is said for the lowest envs)
        try:
            copies = {
                shard: private_payload(part(plan[shard]), f"{request} arguments", called(plan[shard]))
                for shard in sorted(plan, key=lambda shard: min(indices[p] for p in plan[shard]))
            }
        except Exception:
            shared = values is None or all(value is values[0] for value in values)  # (set_attr's one value)
            if shared and len(plan) > 1:  # (arguments every env shares: refused for every env called, named so)
                every = list(range(len(indices)))
                private_payload(part(every), f"{request} arguments", called(every))  # (raises, naming them)
            raise
        payloads = {r.index: dumps_payload(copies.get(r.index, part([])), f"{request} arguments", r.envs) for r in self._remotes}
        # (the own shard's copy, as a worker's envs get: only where one of its envs is called, else it named envs the
        # call does not concern)
        local = () if not self._local else copies.get(0, part([]))
        self._issue(
            _Pending(Command.CONTROL, request, self.slot, 0, payloads, local_args=local, plan=plan, count=len(indices))
        )

    def call_wait(self, timeout: float | None = None) -> list:
        """Finish the pending call; the results in the order of its ``indices``."""
        p = self._take_pending(Command.CONTROL, "call_wait")
        self._complete(p, wait_seconds(timeout))
        results: list = [None] * p.count
        plan = p.plan or {}
        if p.local is not None and p.local[0] is not None:
            for pos, value in zip(plan.get(0, []), p.local[0]):
                results[pos] = value
        for position, remote in enumerate(self._remotes):
            reply = p.replies.get(position)
            if reply is not None:
                for pos, value in zip(plan.get(remote.index, []), reply[1]):
                    results[pos] = value
        return results

    def call(self, request: str, indices: Sequence[int], args: tuple = (), values: Sequence | None = None) -> list:
        """``call_async`` then ``call_wait`` (an interrupted call() is finished by the next command, as reset())."""
        outer = self._sync_next
        try:
            self._sync_next = True
            self.call_async(request, indices, args, values)
        finally:
            self._sync_next = outer
        return self.call_wait()

    def _finish_interrupted(self) -> None:
        """Complete a reset() or call() that was interrupted in its wait (where nothing was
        consumed) before starting another command; its results are dropped. A step is never
        finished behind the caller's back: its results matter (step_wait() says so)."""
        p = self._pending
        if p is not None and p.sync:
            try:
                self._complete(p, None)
            except EnvError:
                pass

    def _check_index(self, i: Any) -> int:
        if not isinstance(i, (int, np.integer)):  # (True and False are 1 and 0, as SB3's list indexing takes them)
            raise TypeError(f"env indices must be ints, got {i!r}")
        if not -self.num_envs <= i < self.num_envs:
            raise IndexError(f"env index {i} out of range for {self.num_envs} envs")
        return int(i) % self.num_envs

    # -- completing a command -------------------------------------------------------------------
    def _complete(self, p: _Pending, timeout: float | None) -> list | None:
        """Run the parent's share, wait for the workers, read their messages; return the
        extras, or raise the first env error (by env index). Resumable in the wait only.

        ``timeout`` counts the parent's own share too: when that alone took longer, the command
        stays pending (multiprocessing.TimeoutError) and the next wait collects the workers.
        """
        entered = time.perf_counter_ns()
        tokens = self._token
        token = tokens.pop() if tokens else self._enter_slowly(p)
        try:
            return self._complete_command(p, timeout)
        finally:
            self._leave(token)
            self._inside_ns += time.perf_counter_ns() - entered

    def _complete_step(self, p: _Pending) -> list | None:
        """The usual ``step_wait()`` in one pass (issue 14: the parent's per-command Python is on
        every step's critical path): the parent's shard, the wait, and the bookkeeping, without the
        general path's per-worker reads. Anything out of the ordinary (an env error, a worker with
        a message on its pipe, a worker that died) goes on in ``_complete_command``, which resumes
        from what this one recorded in ``p``."""
        entered = time.perf_counter_ns()
        tokens = self._token
        token = tokens.pop() if tokens else self._enter_slowly(p)
        try:
            if self._terminated:  # closed by another thread just now, which completed this step and let go of the block
                raise self._closed_meanwhile(p.name)
            if self._local is not None:  # _start_local's work, with this call's clock reading
                try:
                    extras = self._step_local(p.local_args, entered)
                    p.local = (extras, None)
                except ShardError as err:
                    self._keep_objects(self._local.take_objects())  # (as _run_local, and a worker's error reply)
                    p.local = (None, err.payloads())
                    return self._complete_command(p, None)  # an env of the parent's shard raised
                except BaseException as exc:  # an interrupt while the parent's envs ran: their state is unknown
                    self._break(exc)
                    raise
            else:
                extras = None
            if self._remotes:
                control = self._control
                if self.step_timeout is None:
                    first_ns, waiting_since = POLL_NS, None
                else:  # (the clock is read only with a step_timeout: the usual step reads none)
                    first_ns, waiting_since = _slice_ns(self.step_timeout), time.monotonic()
                k = kernels.wait_remaining(
                    control, self._remaining_index, self._done_index, self._seqs, self.spin_ns, first_ns
                )
                if k != -1:  # a worker is late (or dead): the general wait, which knows what to do
                    self._wait_workers(p, None, k, waiting_since)
                p.waited = True
                if p.respawned or p.lost:
                    return self._complete_command(p, None)
                words = self._control_words
                for index in self._message_words:
                    if words[index]:  # (a memoryview read: a Python int, no numpy call)
                        return self._complete_command(p, None)
            if self._terminated:  # closed by another thread (or a signal handler) while this one stepped
                raise self._closed_meanwhile(p.name)  # (its own envs, or waited: the workers had already finished)
            # _settle(p), inline: a synchronous step (asynchronous pools refuse step_async)
            self.slot = p.slot
            self._results_made += 1  # (a step: the terminal-obs buffer was written)
            self._pending = None
            self._state = _IDLE
            return self._digest(extras, p.slot) if extras else None
        finally:  # (_leave and _give_back, inline: the usual step makes no call it can do without)
            if token is not None:
                self._releases += 1
                tokens.append(token)
            if self._release_deferred and not self._reentered:  # closed meanwhile by another thread
                self._release()
            self._inside_ns += time.perf_counter_ns() - entered

    def _complete_command(self, p: _Pending, timeout: float | None) -> list | None:
        began = time.monotonic() if timeout is not None else 0.0
        if p.local is None and self._local is not None and p.local_args:
            if p.local_run is not None or (timeout is not None and p.command is _STEP and hasattr(self._local, "begin_step")):
                # (env by env, the wait bounded as asked; or on from where a wait given a timeout stopped)
                done = self._step_local_within(p, math.inf if timeout is None else began + timeout)
            else:
                self._start_local(p)
                done = timeout is None or time.monotonic() - began <= timeout
            if not done:
                raise multiprocessing.TimeoutError(
                    f"{p.name!r} did not finish within {float(timeout):g} s (this process's own envs took longer); "
                    "it is still pending"
                )
        if not p.waited:
            self._wait_workers(p, None if timeout is None else max(0.0, timeout - (time.monotonic() - began)), asked=timeout)
            p.waited = True
        if self._terminated:  # closed by another thread (or a signal handler) meanwhile: its workers' pipes are gone
            raise self._closed_meanwhile(p.name)
        control = self._control
        for position, remote in enumerate(self._remotes):
            if position in p.replies or position in p.respawned or position in p.lost:
                continue
            if control[remote.base + _HAS_MESSAGE]:
                try:
                    p.replies[position] = self._recv(remote, p.name)
                except ReplyNotLoaded as exc:  # (read whole: the pool stays in step, and the error names the envs)
                    try:
                        p.replies[position] = exc.reply()
                    except BaseException as interrupt:  # (read, and not recorded: out of step)
                        self._break(interrupt)
                        raise
                except (WorkerDiedError, StepTimeoutError) as exc:
                    self._reply_lost(remote, exc, p.name)
                    if p.command is _STEP or p.command is _RESET:  # its results are lost with the message
                        self._respawn(position, p)
                    else:  # a call: it fails naming the worker, and the next step or reset replaces it
                        p.lost.add(position)
                except BaseException as exc:  # a message half read leaves the pipe out of step
                    self._break(exc)
                    raise
            else:
                p.replies[position] = None
        self._settle(p)
        return self._gather(p)

    def _settle(self, p: _Pending) -> None:
        """``p`` is complete: its results are the ring's latest, and the pool is idle."""
        if p.command is _STEP or p.command is _RESET:
            self.slot = p.slot
            if p.command is _STEP:  # (a reset never writes the terminal-obs buffer)
                self._results_made += 1
            if self._async is not None:  # a synchronous reset: every group's ring slot is this one
                self._async.slots = [p.slot] * len(self._async.slots)
        self._pending = None
        self._state = PoolState.IDLE

    def _start_local(self, p: _Pending) -> None:
        """Run the parent's own shard's share of ``p`` (into ``p.local``)."""
        try:
            p.local = self._run_local(p)
        except BaseException as exc:  # an interrupt while the parent's envs ran: their state is unknown
            self._break(exc)
            raise

    def _step_local_within(self, p: _Pending, deadline: float) -> bool:
        """Step the parent's own share of step ``p`` env by env until every env stepped (True, its results in
        ``p.local``) or ``deadline`` (time.monotonic()) passed between two envs (False: the next wait goes on from the
        next env). A wait given a timeout runs past it by one env's step at most, as gymnasium's does not at all."""
        local = self._local
        try:
            try:
                run = p.local_run
                if run is None:
                    p.local_began, p.local_busy = time.perf_counter_ns(), 0
                    run = p.local_run = local.begin_step(*p.local_args)
                n = len(local.envs)
                while len(run.results) < n:
                    began = time.perf_counter_ns()
                    self._step_local_part(run, None, len(run.results) + 1)
                    p.local_busy += time.perf_counter_ns() - began
                    if len(run.results) < n and time.monotonic() > deadline:
                        return False
                p.local_run = None
                p.local = (self._end_local(run, p.local_busy, p.local_began), None)
            except ShardError as err:  # (its envs' errors: as _run_local has them)
                p.local_run = None
                self._keep_objects(local.take_objects())
                p.local = (None, err.payloads())
        except BaseException as exc:  # an interrupt while the parent's envs ran: their state is unknown
            self._break(exc)
            raise
        return True

    def _run_local(self, p: _Pending) -> tuple:
        local = self._local
        try:
            if p.command is _STEP:
                return self._step_local(p.local_args, time.perf_counter_ns()), None
            if p.command is _RESET:
                return self._reset_local(*p.local_args), None
            if p.command is Command.CONTROL:
                request, indices, args, values = p.local_args
                if not indices:
                    return [], None
                began, steps = time.perf_counter_ns(), local.steps
                self._local_commands += 1
                self._local_running = self._local_commands
                try:
                    return local.call(request, indices, args, values), None
                finally:
                    self._count_local(0.0, began, steps)
            local.close(self._closed_local)  # (every env, even if one raises; each counted closed as it is)
            return None, None
        except ShardError as err:
            self._keep_objects(local.take_objects())  # (as a worker's error reply carries them)
            return None, err.payloads()

    def _step_local(self, args: tuple, began: int) -> list | None:
        """Step the parent's own shard with ``args`` (ring slot, action objects) (``began``: the clock
        when this process started on it); its counters grow as a worker's do (shard 0's row). Returns
        the shard's extras."""
        local = self._local
        steps = local.steps
        self._local_commands += 1
        self._local_running = self._local_commands
        try:
            extras = local.step(*args)
        finally:  # (a step that raised is counted too, as a worker counts it)
            self._local_running = 0
            ended = time.perf_counter_ns()
            kernels.add_stats(self._local_stats, 1.0, local.steps - steps, ended - began, 0.0, began - self._local_finished)
            self._local_finished = ended
            self._local_counted = self._local_commands
        return own_copies(extras, "step") if extras else extras

    def _step_local_part(self, run: StepRun, watch: tuple | None, stop: int | None = None) -> bool:
        """Step the parent's own shard's envs of ``run`` (Shard.begin_step) until every env stepped (True),
        or, with ``watch`` (Shard.step_envs), until it stops between envs for a worker that finished, or up to
        local position ``stop`` (False: the run goes on at a later call, from the next env)."""
        local = self._local
        n = len(local.envs)
        if not run.results:  # (its first part: a command begins; it is counted at _end_local)
            self._local_commands += 1
        self._local_running = self._local_commands
        try:
            local.step_envs(run, n if stop is None else stop, watch)
        finally:
            self._local_running = 0
        return len(run.results) == n

    def _end_local(self, run: StepRun, busy_ns: int, began_ns: int) -> list | None:
        """Write the parent's own shard's ``run`` (every env stepped: _step_local_part); returns its extras,
        copied. Its counters grow as a worker's do, by one command begun at ``began_ns`` that took
        ``busy_ns`` over its parts (the stops between them are neither its time nor a wait)."""
        local = self._local
        began = time.perf_counter_ns()
        steps = local.steps
        try:
            extras = local.end_step(run)
        finally:
            ended = time.perf_counter_ns()
            kernels.add_stats(
                self._local_stats, 1.0, local.steps - steps, busy_ns + ended - began, 0.0, began_ns - self._local_finished
            )
            self._local_finished = ended
            self._local_counted = self._local_commands
        return own_copies(extras, "step") if extras else extras

    def _reset_local(self, *args: Any) -> list | None:
        """Reset the parent's own shard (Shard.reset's arguments); returns its extras, copied. Counted as a
        worker counts a reset: its time, not a step command."""
        local = self._local
        began, steps = time.perf_counter_ns(), local.steps
        self._local_commands += 1
        self._local_running = self._local_commands
        try:
            extras = local.reset(*args)
        finally:
            self._count_local(0.0, began, steps)
        return own_copies(extras, "reset") if extras else extras

    def _count_local(self, commands: float, began: int, steps: int) -> None:
        """The parent's own shard's counters (shard 0's row) grow by a command begun at ``began``, when the
        shard had taken ``steps`` env steps, that ended now."""
        ended = time.perf_counter_ns()
        self._local_running = 0
        kernels.add_stats(
            self._local_stats, commands, self._local.steps - steps, ended - began, 0.0, began - self._local_finished
        )
        self._local_finished = ended
        self._local_counted = self._local_commands

    def _gather(self, p: _Pending) -> list | None:
        """Merge the parent's and the workers' extras; raise the error of the lowest env index
        (every env that raised is in its ``others``)."""
        extras: list | None = None
        errors: list[tuple] = []
        if p.local is not None:
            if p.command is not Command.CONTROL:
                extras = p.local[0]
            errors += p.local[1] or []
        if not errors and not p.respawned and not p.lost and not any(p.replies.values()):  # the usual step
            if extras:  # only the parent's own shard had something to say
                return self._digest(extras, p.slot)
            return None
        for position, remote in enumerate(self._remotes):
            if position in p.respawned:
                why = restart_reason(self.step_timeout if position in p.hung else None)
                reports = [(i, Extra.RESTARTED, describe(why, p.name)) for i in remote.envs]
                extras = (extras or []) + reports + (p.respawned[position] or [])
                if remote.unmade:  # envs its replacement could not make: this command's errors
                    errors += remote.unmade
                    remote.unmade = None
                continue
            reply = p.replies.get(position)
            if reply is None:
                continue
            kind, payload = reply[0], reply[1]
            if kind == "error":
                errors += payload
                if len(reply) > 2:  # (the object parts of the observations the worker's rows now hold)
                    self._keep_objects(reply[2])
            elif kind == "extras" and payload:
                extras = (extras or []) + payload
        if extras:
            extras = self._digest(extras, p.slot)
        if errors:
            raise env_errors(errors)
        # (a call fails for a worker lost with envs it calls; one none of whose envs it calls is replaced at the next
        # step or reset all the same, as SB3's SubprocVecEnv sends a call to the called envs' remotes only)
        lost = [k for k in p.lost if p.command is not Command.CONTROL or self._remotes[k].index in (p.plan or {})]
        if lost:
            k = min(lost)
            remote = self._remotes[k]
            raise WorkerDiedError(
                remote.index, remote.envs, remote.exitcode, p.name, replaced_later=True,
                ended_after=self.step_timeout if remote.hung else None,
            )
        return extras

    def _digest(self, extras: list, slot: int) -> list | None:
        """Envs that left their shard move in with their neighbour; warnings become Python
        warnings; object parts of observations are kept per env."""
        self._keep_objects(extras)  # (first: a worker replaced as envs move in needs this step's)
        stayed = None
        if self._moves and any(kind == Extra.NOT_MOVED for _, kind, _ in extras):
            stayed = [i for i, kind, _ in extras if kind == Extra.NOT_MOVED]
            extras = [entry for entry in extras if entry[1] != Extra.NOT_MOVED]
        try:
            if self._moves and any(kind == Extra.RELEASED for _, kind, _ in extras):
                moved = [entry for entry in extras if entry[1] == Extra.RELEASED]
                extras = [entry for entry in extras if entry[1] != Extra.RELEASED]
                try:
                    settled = self._settle_moves(moved, slot)
                except (EnvError, WorkerDiedError) as exc:
                    # every env arrived, and one's reset after moving raised, as an autoreset can; or, with
                    # on_error="restart", the worker died as an env arrived: its replacement makes them all
                    if isinstance(exc, WorkerDiedError) and not exc.replaced_later:
                        self._break(exc)
                    raise
                except BaseException as exc:  # an env left one shard and did not arrive in the other
                    self._break(exc)
                    raise
                self._keep_objects(settled)  # (the arrived envs' and a replacement worker's)
                extras += settled
        finally:
            if stayed:  # (after the envs that left in the same step have arrived: their moves are done)
                self._not_moved(stayed)
        if self.check != "off":
            extras = emit_warnings(extras)
        return extras

    def _keep_objects(self, extras: list | None) -> None:
        """Each env's latest object parts of its observation (OBJECTS extras), kept per env."""
        if extras and self._object_leaves:
            for i, kind, value in extras:
                if kind == Extra.OBJECTS:
                    self._objects[i] = value

    def _wait_workers(
        self,
        p: _Pending,
        timeout: float | None,
        k: int | None = None,
        waiting_since: float | None = None,
        asked: float | None = None,
    ) -> None:
        """Until every worker's DONE word equals the command's sequence number.

        A dead worker: respawned with ``on_error="restart"`` (step and reset; its share of
        the command is done by its replacement), else WorkerDiedError; a worker past
        ``step_timeout``: killed and respawned, or StepTimeoutError. Both errors break the
        pool. ``timeout`` (the caller's): multiprocessing.TimeoutError, the command stays pending.
        ``k``: the worker a first wait (``_complete_step``'s, begun at ``waiting_since``, read where
        there is a step_timeout) found unfinished, where there was one. ``step_timeout`` counts from
        the start of the first wait (after the parent's own shard), and no wait sleeps past it; a
        wait cut short (a signal) counts only the time it took. ``asked``: the caller's whole timeout,
        for the message.
        """
        if not self._remotes:
            return
        if self._terminated:  # by another thread while this one stepped its shard
            raise self._closed_meanwhile(p.name)
        control, done_index, seq = self._control, self._done_index, self._seqs
        # step_timeout counts every wait of the command (a caller polling with a shorter timeout restarted its clock
        # at each call, and a hung env was never reported); the caller's timeout, this wait only
        limit = None if self.step_timeout is None else self.step_timeout - p.waited_s

        def slice_after(elapsed: float) -> int:  # the next wait: up to the caller's timeout and the step_timeout
            ns = POLL_NS if timeout is None else _slice_ns(timeout - elapsed)
            return ns if limit is None else min(ns, _slice_ns(limit - elapsed))

        if k is None:
            waiting_since = time.monotonic()
            k = kernels.wait_remaining(control, self._remaining_index, done_index, seq, self.spin_ns, slice_after(0.0))
        if k == -1:
            return
        began = time.monotonic() if waiting_since is None else waiting_since
        restartable = self.on_error == "restart" and p.command in (Command.STEP, Command.RESET)
        try:
            while True:
                if self._terminated:  # by another thread, which gave up waiting for this one
                    raise self._closed_meanwhile(p.name)
                remote = self._remotes[k]
                elapsed = time.monotonic() - began
                if remote.exitcode is not None:
                    if self._terminated:  # (stopped by close() in a signal handler just now)
                        raise self._closed_meanwhile(p.name)
                    if restartable and k not in p.respawned:
                        self._respawn(k, p)
                    elif self.on_error == "restart" and k not in p.lost:
                        # a call (get_attr, env_method...) has nothing to restart: the others finish it,
                        # the call fails naming the worker, and the next step or reset replaces it
                        p.lost.add(k)
                        kernels.finish(control, remote.base + Control.DONE_SEQ, int(seq[k]), self._remaining_index)
                    else:
                        raise self._broken(WorkerDiedError(remote.index, remote.envs, remote.exitcode, p.name))
                elif limit is not None and elapsed > limit:
                    if self.on_error == "restart":
                        # a hung env: ended, and then as a dead worker (the next pass): in a step or reset its
                        # replacement takes over; a call (an env moving in, env_method...) fails naming it, and the
                        # next step or reset replaces it
                        remote.end()
                        remote.hung = True  # (what names it as hung, here and where it is replaced: _respawn)
                        continue
                    raise self._broken(StepTimeoutError(remote.index, remote.envs, p.name, self.step_timeout))
                elif timeout is not None and elapsed > timeout:
                    raise multiprocessing.TimeoutError(
                        f"{p.name!r} did not finish within {float(asked if asked is not None else timeout):g} s (worker {remote.index}); "
                        "it is still pending"
                    )
                k = kernels.wait_remaining(control, self._remaining_index, done_index, seq, 0, slice_after(elapsed))
                if k == -1:
                    return
        finally:  # (this wait's time counts for the command's step_timeout in its next wait: p.waited_s)
            p.waited_s += time.monotonic() - began

    def _respawn(self, position: int, p: _Pending) -> None:
        """on_error="restart": replace the dead worker at ``self._remotes[position]``.

        Its replacement makes fresh envs and does the dead worker's share of ``p``: in a
        step, the old episodes end (truncated) and new ones start; in a reset, the envs are
        reset with the requested seeds and options. Either way its envs are reported as
        restarted, and its DONE word is set for it.
        """
        dead = self._remotes[position]
        exitcode = dead.exitcode
        if dead.hung:  # ended past step_timeout (in this command, or in an earlier call)
            p.hung.add(position)
        if p.command is Command.STEP:
            restart: tuple = (int(Command.STEP), p.slot, True, self._objects_of(dead.envs), False)
        else:
            payload = p.payloads.get(dead.index) if p.payloads and p.reset_options else None
            options = pickle.loads(payload) if payload is not None else None  # (as at the call, as the other workers' envs)
            big = {i: seed for i, seed in self._big_seeds.items() if i in dead.envs}
            restart = (int(Command.RESET), p.slot, options, p.arg, big)
        try:
            remote, extras = self._replace_worker(
                dead, lambda remote: self._remotes.__setitem__(position, remote), int(self._seqs[position]) + 1, restart
            )
            kernels.finish(self._control, remote.base + Control.DONE_SEQ, int(self._seqs[position]), self._remaining_index)
        except BaseException as exc:
            self._break(exc)
            raise
        p.respawned[position] = extras
        self.worker_restarts += 1
        how = (
            f"was ended in {p.name!r}, still running after step_timeout={self.step_timeout:g} s"
            if position in p.hung
            else f"died during {p.name!r} with {exit_status(exitcode)}"
        )
        warnings.warn(
            f"fastvec: worker {dead.index} (envs {dead.envs.start}..{dead.envs.stop - 1}) {how}; restarted it with "
            "fresh envs (on_error='restart')",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )

    def _objects_of(self, envs: range) -> list | None:
        """The latest object parts (Text, Graph, ...) each of ``envs`` returned, for a replacement worker's
        final observations of them (its fresh envs never made any); None without object parts."""
        return [self._objects[i] for i in envs] if self._object_leaves else None

    def _replace_worker(self, dead: Remote, place: Callable[[Remote], None], first_seq: int, restart: tuple | None) -> tuple:
        """Start a worker in place of the dead one, making its shard's envs afresh (``place`` records it
        before the start returns, so that close() stops it, or the start ends it), attached at command count ``first_seq`` with
        ``restart`` (its share of the command it died in, if any) and pinned where the dead one was.
        Returns it and what it reported; envs it could not make are errors of the command, in ``remote.unmade``.
        A replacement that dies too while it makes its envs (a crashing constructor, the OOM killer) is
        replaced again, up to ``RESPAWN_ATTEMPTS`` workers in all."""
        for attempt in range(1, RESPAWN_ATTEMPTS + 1):
            # (closed meanwhile, by another thread or a signal handler: close() stopped the workers it found, and one
            # started now would outlive it; a replacement that close() ended is not replaced again)
            if self._terminated:
                raise self._closed_meanwhile("make (worker restart)")
            try:
                dead.process.join(1.0)
            except ValueError:  # (released by close() meanwhile)
                pass
            if not dead.released:
                dead.release()  # (listed until placed over: close() skips a released worker)

            def placing(remote: Remote, base: int = dead.base) -> None:
                remote.base = base
                place(remote)

            remote = self._spawn(dead.index, placing, replacing=True)
            try:
                self._check_env_spaces(remote.envs.start, self._handshake(remote, "make (worker restart)"))
                remote.attach(self.layout, self._segment._fd, first_seq & SEQ_MASK, restart)  # type: ignore[union-attr]
                try:
                    kind, extras = self._recv(remote, "attach (worker restart)")
                except ReplyNotLoaded as exc:  # (attached: its envs' values that cannot be loaded are the command's errors)
                    kind, extras = "attached-unmade", (None, exc.reply()[1])
                break
            except (WorkerDiedError, BrokenPipeError, ConnectionResetError, EOFError):
                # (a pipe error: it died between saying it was ready and taking the block; anything else raises)
                if self._terminated:
                    raise self._closed_meanwhile("make (worker restart)") from None
                remote.process.join(0.5)
                if attempt == RESPAWN_ATTEMPTS or remote.exitcode is None:
                    raise
                dead = remote
        if kind == "error":
            raise env_error(*extras)
        if kind == "attached-unmade":
            extras, remote.unmade = extras
        if dead.index in self.cores:
            self._pin_remote(remote, self.cores[dead.index])
        elif self.pin == "none" and placement.can_pin():
            self._unpin_remote(remote)
        return remote, extras

    def _recv(self, remote: Remote, command: str) -> Any:
        return remote.recv(command, self.step_timeout)

    def _reply_lost(self, remote: Remote, exc: WorkerDiedError | StepTimeoutError, during: str) -> None:
        """The worker finished its command, then died before its message was read, or hung sending it past
        step_timeout (``exc``): its results are lost. A death of close()'s making (another thread's, or a signal
        handler's) is ClosedError; without restarts ``exc`` is raised, the pool broken; else a worker still running is
        ended (hung: so marked, and replaced as a worker past step_timeout is; dying, its pipe closed: never left
        running past close()), for the caller to replace."""
        if self.closed or self._terminated:
            raise self._closed_meanwhile(during) from None
        if self.on_error != "restart":
            self._break(exc)
            raise exc
        if remote.exitcode is None:
            remote.end()
            remote.hung = isinstance(exc, StepTimeoutError)

    def _own_shard(self, envs: list, start: int, env_fns: list) -> Shard:
        """A Shard this process steps (shard 0's envs from 0, or its envs past the last worker's)."""
        shard = Shard(
            envs,
            start,
            self._views,
            self.autoreset_mode,
            env_fns=env_fns,
            restart_on_error=self.on_error == "restart",
            check=self.check,
        )
        shard.in_caller = True
        shard.stats_row = self._views.worker_stats[0]
        return shard

    # -- reading results ------------------------------------------------------------------------
    def observations(
        self,
        slot: int,
        copy: bool = True,
        objects: list[list] | None = None,
        batch_object: Callable[[Leaf, list], Any] = lambda leaf, values: tuple(values),
    ) -> Any:
        """The batch of observations in ring ``slot``, in the observation space's structure (an
        array, or a dict / tuple of batches): copies, or views of the ring. Object parts come from
        ``objects`` (one list of num_envs values per object leaf; default: the latest), batched
        by ``batch_object`` (default: a tuple, as gymnasium batches them); with ``copy`` they are copies
        too (the pool keeps its own: a caller's edit in place came back in a masked reset's observations,
        or a restarted env's final one)."""
        if self.obs_slots is not None:
            return self.obs_slots[slot].copy() if copy else self.obs_slots[slot]
        self._check_mapped()
        rings = self._views.obs
        arrays = iter([r[slot].copy() if copy else r[slot] for r in rings])
        if objects is None:
            objects = self.object_columns()
        if copy and objects:
            objects = [[private(value) for value in column] for column in objects]
        columns = iter(objects)
        parts = [next(arrays) if leaf.array else batch_object(leaf, next(columns)) for leaf in self.obs_leaves]
        return assemble(self.observation_space, parts)

    @property
    def ring(self) -> RingViews:
        """The whole ring (views of the shared block); ClosedError once the pool is closed."""
        ring = self._ring
        if ring is None:
            self._check_mapped("its ring")
        return ring

    def _check_mapped(self, what: str = "the observations of its batches") -> None:
        """The shared block is still there (a Batch, or the counters, read after close() would meet released
        views): else ClosedError naming ``what``."""
        if self._state is PoolState.CLOSED or self._terminated or self._views is None:
            self._release_if_deferred()
            raise ClosedError(f"this vectorized env is closed: {what} went with its shared memory")

    def object_columns(self) -> list[list]:
        """The latest object parts of every env, one list of num_envs values per object leaf."""
        if not self._object_leaves:
            return []
        rows = [values or [None] * len(self._object_leaves) for values in self._objects]
        return [[row[m] for row in rows] for m in range(len(self._object_leaves))]

    def _check_final_obs(self) -> None:
        if self.autoreset_mode != SAME_STEP:
            raise ValueError(
                "final observations are kept apart only with autoreset SAME_STEP: with "
                f"{'NEXT_STEP' if self.autoreset_mode == NEXT_STEP else 'DISABLED'} an episode's last observation is "
                "the step's own"
            )

    def terminal_observation(self, i: int) -> Any:
        """A copy of env ``i``'s final observation of the episode that ended in the latest step, from
        the terminal-obs buffers (``Batch.terminal_observation`` prefers the env's own object)."""
        self._check_mapped()
        self._check_final_obs()
        buffers = self._views.terminal_obs
        if self._swapped_final:
            arrays = iter([b[i].astype(b.dtype.newbyteorder("=")) for b in buffers])
        else:
            arrays = iter([b[i].copy() for b in buffers])
        if self._single_leaf:
            return next(arrays)
        return assemble(self.observation_space, [next(arrays) if leaf.array else None for leaf in self.obs_leaves])

    def terminal_observations(self, indices: list[int]) -> list:
        """``terminal_observation(i)`` for each env in ``indices``: for one array leaf, copied in one kernel call."""
        self._check_mapped()
        self._check_final_obs()
        if self._single_leaf and not self._swapped_final:
            return kernels.row_copies(self._views.terminal_obs[0], indices)
        return [self.terminal_observation(i) for i in indices]

    # -- monitoring ------------------------------------------------------------------------------
    def _pin(self) -> None:
        """Place the workers (and, with "spread", this process) on cores, per the pin setting."""
        if not self._remotes or not placement.can_pin():
            return
        if self.pin == "none":
            for remote in self._remotes:
                self._unpin_remote(remote)
            return
        workers, parent = placement.plan(
            self.pin, [r.index for r in self._remotes], self.step_in_parent, self._allowed_cores
        )
        for remote in self._remotes:
            self._pin_remote(remote, workers.get(remote.index))
        if parent is not None:
            self._pins_caller = placement.pin_caller(parent)

    def _pin_remote(self, remote: Remote, cores: list[int] | None, asked: bool = False) -> None:
        """``asked``: by repin, whose caller learns of a refusal (a RuntimeError), not only the first time."""
        if cores:
            try:
                placement.apply(remote.pid, cores)
                self.cores[remote.index] = cores
            except Exception as exc:  # the process ended meanwhile: its replacement is pinned when it starts
                if remote.exitcode is not None:
                    self.cores[remote.index] = cores
                elif asked:
                    raise RuntimeError(
                        f"repin: worker {remote.index} could not be pinned to core(s) {cores}: {type(exc).__name__}: {exc}"
                    ) from None
                elif not self._told_unpinned:  # (the host refused: a cpuset, a sandbox's seccomp; said once)
                    self._told_unpinned = True
                    warnings.warn(
                        f"fastvec: worker {remote.index} could not be pinned to core(s) {cores} (pin={self.pin!r}): "
                        f"{type(exc).__name__}: {exc}; it runs on any core",
                        RuntimeWarning,
                        stacklevel=user_stacklevel(),
                    )

    def _unpin_remote(self, remote: Remote) -> None:
        """pin="none": the worker may run on every core this process may. (A worker inherits its parent's
        affinity: a thread another pool pinned, pin="spread", or a fork server started while it was.)"""
        try:
            if sorted(os.sched_getaffinity(remote.pid)) != self._allowed_cores:
                placement.apply(remote.pid, self._allowed_cores)
        except Exception:  # (the process ended meanwhile)
            pass

    def repin(self, shard: int, cores: list[int]) -> None:
        """Move worker ``shard`` to ``cores`` (the monitor's re-pinning)."""
        self._check_mapped("its workers")
        remotes = {r.index: r for r in self._all_remotes()}
        remote = remotes.get(shard)
        if remote is None:
            raise ValueError(f"repin: shard {shard} is not a worker's (the workers' shards: {sorted(remotes)})")
        cores = list(cores)
        if not cores:
            raise ValueError(f"repin: no core given for worker {shard}")
        outside = sorted(set(cores) - set(self._allowed_cores))
        if outside:
            raise ValueError(
                f"repin: core(s) {outside} are not among the cores this process may run on ({self._allowed_cores})"
            )
        self._pin_remote(remote, cores, asked=True)

    # -- what the shards are doing (fastvec.stats) -------------------------------------------------
    def shard_counters(self) -> np.ndarray:
        """A copy of every shard's counters (rows: shards; columns: fastvec.protocol.Stats)."""
        self._check_mapped("its counters")
        return self._views.worker_stats.copy()

    def env_step_ns(self) -> np.ndarray:
        """A copy of each env's accumulated time in env.step (collected while ``timing`` is on)."""
        self._check_mapped("its step times")
        return self._views.env_step_ns.copy()

    def inside_seconds(self) -> float:
        """Seconds the calling process has spent inside the pool's step/reset/call so far."""
        return self._inside_ns / 1e9

    def in_flight(self) -> tuple[dict[int, int], bool, int]:
        """What runs now, as the Sampler reads it from any thread: (shard -> the count of the command it is
        running, for each worker given one it has not finished, and the calling process's own shard while it
        steps envs; whether a thread waits inside the pool: step_wait, recv, a call's wait; the count of the own
        shard's last command in its counters). The counters grow only when a command or a wait ends: these tell
        a shard busy for a whole interval from an idle one."""
        self._check_mapped("its counters")
        words, done, seqs = self._control_words, self._done_words, self._seq_words
        running = {}
        try:  # (a worker replaced meanwhile by the stepping thread: that reading only misses it)
            for k, remote in enumerate(self._remotes):
                # (a dead worker's DONE word stays behind for good: it runs nothing)
                if words[done[k]] != seqs[k] and remote.exitcode is None:
                    running[remote.index] = seqs[k]
        except (IndexError, ValueError):
            pass
        if self._local_running:  # the calling process steps its own shard (told from its next command by the count)
            running[0] = self._local_running
        return running, not self._token, self._local_counted

    def shard_pid(self, shard: int) -> int | None:
        if self.step_in_parent and shard == 0:
            return os.getpid()
        remote = next((r for r in self._all_remotes() if r.index == shard), None)
        return remote.pid if remote is not None else None

    @property
    def timing(self) -> bool:
        """Whether shards time each env's step (the monitor turns it on)."""
        self._check_mapped("its step timing")
        return bool(self._views.header[HEADER_TIMING])

    @timing.setter
    def timing(self, on: bool) -> None:
        self._check_mapped("its step timing")
        self._views.header[HEADER_TIMING] = 1 if on else 0

    def stats(self) -> PoolStats:
        """What every shard did since the previous call (or since the pool started): steps/s, busy
        share, command-time percentiles, CPU use, cores, and for the pool the throughput, the
        straggler ratio and the share of time the calling process spends outside the pool."""
        self._check_mapped("its stats")
        return self._sampler.sample()  # type: ignore[union-attr]

    @property
    def monitor_events(self) -> list:
        """What the monitor did (re-pinned a worker, moved an env), with why and when."""
        return self._monitor.events if self._monitor is not None else []

    def shard_restarts(self) -> int:
        """How many envs were re-created after raising (on_error="restart"), over all shards."""
        self._check_mapped("its counters")
        # (every shard's row, the calling process's too: each shard counts its restarts there as they happen)
        return int(self._views.worker_stats[:, Stats.ENV_RESTARTS].sum())

    def worker_stats(self) -> list[dict]:
        """Per worker: step commands run, env steps and seconds spent busy (read from the shared block)."""
        self._check_mapped("its workers' counters")
        stats = self._views.worker_stats
        return [
            {
                "worker": r.index,
                "pid": r.pid,
                "commands": int(stats[r.index, Stats.COMMANDS]),
                "env_steps": int(stats[r.index, Stats.ENV_STEPS]),
                "busy_s": float(stats[r.index, Stats.BUSY_NS]) / 1e9,
            }
            for r in self._all_remotes()
        ]

    @property
    def worker_pids(self) -> list[int]:
        self._check_mapped("its workers")
        return [r.pid for r in self._all_remotes()]

    # -- shutdown -------------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Close every env, stop the workers and free the shared block. Idempotent.

        Returns within about ``timeout`` seconds even if a worker hangs (it is then
        terminated). A broken pool is torn down as ``terminate`` does: its workers close their
        envs as they exit on SIGTERM, and the parent closes its own.
        Raises EnvError if an env raised in its close(), after cleaning up.
        In a child forked from the pool's process, only marks the child's copy closed.
        """
        if self._is_foreign():  # (first: a fork made while the pool stopped its workers copied a release it would do here,
            self._state = PoolState.CLOSED  # closing its copies of this process's envs)
            return
        if self._state is PoolState.CLOSED or self._terminated:
            if not self._stopping:  # (a close() still stopping them, in another thread or under this handler: it does)
                left, self._left_running = self._left_running, None
                if left is not None and left[0] == os.getpid():  # (not in a fork: they are not its children)
                    stop(left[1], 1.0)  # (workers an interrupted close() only signalled: ended and let go of now)
            self._release_if_deferred()
            return
        # (any number, as gymnasium's close takes; unbounded ones are bounded: process joins take int milliseconds;
        # one that is no number (NaN) does not keep the pool open: the default)
        try:
            timeout = wait_seconds(timeout)
        except (TypeError, ValueError):
            timeout = 10.0
        timeout = CLOSE_TIMEOUT_LIMIT_S if timeout is None else min(timeout, CLOSE_TIMEOUT_LIMIT_S)
        segment = self._segment
        if segment is not None and getattr(segment, "_mmap", True) is None:
            # the block's mapping was let go of under the pool (shm.close, by another path). No command can be
            # issued (a write to the block would crash): tear down only
            self._state = PoolState.BROKEN
        me = _get_ident()
        if self._closing_thread == me:  # a signal handler inside this thread's own close(): that one finishes
            return
        deadline = time.monotonic() + timeout
        while True:
            if self._state is PoolState.CLOSED or self._terminated:  # (by the close() it waited for)
                return
            try:
                ticket = self._close_ticket.pop()  # (atomic: of two threads in close() at once, one tears down)
                break
            except IndexError:  # another thread's close() is tearing the pool down: wait for it
                done = self._close_done
                left = deadline - time.monotonic()
                if left <= 0:
                    return  # (still closing there: that close() finishes the teardown)
                if not done.wait(min(left, 0.1)) and not self._closing_elsewhere():
                    ticket = object()  # lost: an interrupt between its pop and the try below; nobody is closing
                    break
        try:
            self._closing_thread = me
            token = self._enter_to_close(timeout, sys._getframe())
            try:
                if self._state is not PoolState.CLOSED and not self._terminated:
                    self._close(timeout)
            finally:
                if token is not None:
                    self._closer = 0
                    self._give_back(token)
        finally:
            self._closing_thread = 0
            done = self._close_done
            if self._state is not PoolState.CLOSED and not self._terminated:  # (interrupted before it tore down)
                self._close_done = threading.Event()  # (the next teardown's: its waiters wait for that one)
                self._close_ticket.append(ticket)
            done.set()  # (the waiters look again: closed, or the ticket is back for one of them)

    def _closing_elsewhere(self) -> bool:
        """Whether another thread is inside close() holding the ticket (its frame has taken one)."""
        me, code = _get_ident(), Pool.close.__code__
        for ident, frame in sys._current_frames().items():
            while ident != me and frame is not None:
                if frame.f_code is code and frame.f_locals.get("self") is self and "ticket" in frame.f_locals:
                    return True
                frame = frame.f_back
        return False

    def _close(self, timeout: float) -> None:
        error = None
        # a broken pool's workers were never told to exit (they wait for the next command, or are
        # still in the one that broke it): waiting for them only delays the SIGTERM on which they close their envs
        grace = 0.0 if self._state is PoolState.BROKEN else 0.2
        try:
            if self._state is not PoolState.BROKEN and self._views is not None:
                error = self._close_gracefully(timeout)
                grace = timeout
        except (FastvecError, OSError, EOFError, multiprocessing.TimeoutError):
            pass
        finally:
            self._terminate(grace=grace)
        if error is not None:
            try:
                raise error
            finally:
                error = None  # (this frame stays in the error's traceback: a reference cycle otherwise)

    def _leave(self, token: object | None) -> None:
        """The end of a command's completion: the token back (if this thread took it), and the block let go
        of if another thread closed the pool meanwhile (after a signal handler's close(), the code it cut
        short may still use it: ``_release_if_deferred`` does it later)."""
        if token is not None:
            self._give_back(token)
        if self._release_deferred and not self._reentered:
            self._release()

    def _give_back(self, token: object) -> None:
        """``token`` back in the pool, counted first (``_releases``: a lost-token recovery that saw the count move
        during its look makes none). The usual step's and batches' ends write these two lines out (a call less)."""
        self._releases += 1
        self._token.append(token)

    def _release_if_deferred(self, holding: bool = False) -> None:
        """Closed by a signal handler (or another thread) that left the block to the code it cut short:
        let go of it now, if nobody is inside the pool any more (or ``holding``: only this thread is,
        and nothing of the pool runs after it)."""
        if self._release_deferred and (holding or self._token):
            self._reentered = False
            self._release()

    def _closed_meanwhile(self, during: str) -> ClosedError:
        """What a thread raises when it finds the pool closed by another one (or by a signal handler)
        while it completed a command; nothing of the pool runs after it in this thread, so the block and
        this process's envs, if close() left them, are let go of here."""
        self._release_if_deferred(holding=True)
        return ClosedError(f"this vectorized env was closed (by another thread or a signal handler) during {during!r}")

    def _inside_here(self, entering: FrameType, anywhere: bool = False) -> bool:
        """Whether this thread is already completing a command of this pool further up its stack than
        ``entering`` (the frame of the call that enters the pool: a command run inside a step, as an env move
        does), or with ``anywhere``, inside any of the pool's code (a signal handler's close() interrupting a
        step). Read only off the usual path (the token taken, or close())."""
        frame = entering.f_back
        own_files = _own_files() if anywhere else ()
        owners = self._owners()
        while frame is not None:
            code = frame.f_code
            if code in _COMMAND_CODES:
                if frame.f_locals.get("self") in owners:
                    return True
            elif anywhere and code.co_filename in own_files and code.co_name not in _CLOSING_NAMES:
                owner = frame.f_locals.get("self")
                if owner in owners or getattr(owner, "pool", None) is self or getattr(owner, "_pool", None) is self:
                    return True
            frame = frame.f_back
        return False

    def _owners(self) -> tuple:
        """The objects whose frames (their ``self``) are this pool's code running: the pool, and its asynchronous
        batches if any (never None: a function of the pool's files with no ``self``, the atexit hook's, was taken
        for the pool's own code, and its close() for a signal handler's, leaving this process's envs and the block
        unreleased)."""
        return (self,) if self._async is None else (self, self._async)

    def _enter_slowly(self, p: _Pending | None, refuse: str = "", check: str = "") -> object | None:
        """The token is taken (called by the method entering the pool, whose caller ``_inside_here`` looks at
        first). By close() or a command further up this thread's stack: go on without it (None). By another
        thread: wait for it, then go on only if ``p`` (None: any) is still the pending command; else that thread
        completed it (or closed the pool), and this raises. ``refuse``: the call (send) that waits only for a
        close() or a brief hold: a recv() in another thread may wait for this very call's envs (a hang), so it is
        refused. ``check``: the call (a command's issue) for which a step or call_async another thread left
        pending is said at once (AlreadyPendingCallError), not after waiting for that thread for as long as its
        envs take; a call() it runs (a park's) is waited for: it completes it itself."""
        if check:
            pending = self._pending
            if pending is not None and not pending.sync:
                self._check_idle(check)
        if self._closer == _get_ident() or self._inside_here(sys._getframe(1)):
            return None
        token = self._take_token(time.monotonic() + _BRIEF_HOLD_S if refuse else None)
        if token is None:  # (only with refuse)
            if not self._closing_thread:
                raise AlreadyPendingCallError(
                    f"{refuse}() called while another thread is inside this pool (a recv() or a call): a pool is used "
                    "from one thread at a time",
                    "step",
                )
            token = self._take_token(None)  # (close() ends within its timeout)
        try:
            self._check_usable()  # closed meanwhile: ClosedError
            if p is not None and self._pending is not p:
                raise NoAsyncCallError(f"{p.name!r} was completed by another thread", _ASYNC_NAMES.get(p.command, ""))
        except BaseException:
            self._give_back(token)
            raise
        return token

    def _enter_to_close(self, timeout: float, entering: FrameType) -> object | None:
        """Keep other threads out of the pool for close()'s teardown: wait (up to the pending-step grace) for a
        thread completing a command to finish it, so that no env of this process's shard is stepped twice at
        once. Where it does not, or where close() runs inside that command (a signal handler), the pool is
        broken instead: its workers are stopped, and the waiting thread raises ClosedError. The token, or None."""
        if self._entered_by_a_handler(entering, "close"):
            return None
        token = self._take_token(time.monotonic() + min(timeout, PENDING_STEP_GRACE_S))
        if token is None:
            self._break(ClosedError("close(): another thread's command was still running"))
        else:
            self._closer = _get_ident()
        return token

    def _entered_by_a_handler(self, entering: FrameType, call: str) -> bool:
        """Whether ``call`` (close, terminate; ``entering``: its frame) runs in a signal handler that interrupted this
        thread inside the pool's code: then the pool is broken and the block stays until that code leaves (it goes on
        after the handler, and lets it go: _check_usable, or a command's end)."""
        if not self._inside_here(entering, anywhere=True):
            return False
        self._reentered = True
        self._break(ClosedError(f"{call}(): it was called while this thread was inside the pool (a signal handler)"))
        return True

    def _take_token(self, deadline: float | None) -> object | None:
        """Wait for the token another thread holds (until ``deadline``, a time.monotonic() reading: then
        None; None: for as long as it takes)."""
        tokens = self._token
        waiters, me = self._token_waiters, _get_ident()
        try:
            while True:
                waiters.discard(me)  # (first: out of the set before it can hold the token; see _recover_lost_token)
                try:
                    return tokens.pop()
                except IndexError:
                    pass
                if deadline is not None and time.monotonic() > deadline:
                    return None
                waiters.add(me)  # (holding nothing while it waits: _recover_lost_token passes over it)
                time.sleep(0.0005)
                self._recover_lost_token()
        finally:
            waiters.discard(me)  # (an interrupt anywhere in the wait leaves no stale entry, which recovery passed over)

    def _recover_lost_token(self) -> None:
        """The token is taken, yet no thread is in this pool's commands or close() (an interrupt landed
        between taking it and the ``try`` that gives it back): make a new one."""
        released = self._releases  # (first: a token given back from here on may be taken again before the check below)
        if self._token:
            return
        me, now = _get_ident(), time.monotonic()
        owners = self._owners()
        # one thread at a time (two made two tokens), without a lock, which an interrupt inside could leave taken: a
        # claim, which another thread takes over once it is a second old
        claim = self._recovering.setdefault(0, (me, now))
        if claim[0] != me:
            if now - claim[1] < 1.0:
                return
            self._recovering[0] = (me, now)
        try:
            # (a thread waiting in _take_token holds nothing, whatever frames it is in: two waiters took each other for
            # the holder. One leaves the set before it takes the token, which it may hold while still in that frame)
            waiting = set(self._token_waiters)
            for ident, frame in sys._current_frames().items():
                if ident == me or ident in waiting:
                    continue
                while frame is not None:
                    if frame.f_code in _HOLDING_CODES and frame.f_locals.get("self") in owners:
                        return
                    frame = frame.f_back
            if self._token or self._releases != released or not waiting <= self._token_waiters:
                return  # (a token came back, or a waiter left the wait meanwhile and may hold it now: looked at again later)
            # (counted: a recovery beside this one, past its claim, makes none; this thread's own nested case never
            # waits: _enter_slowly, _enter_to_close)
            self._give_back(object())
        finally:
            self._recovering.pop(0, None)

    def terminate(self) -> None:
        """Stop without waiting for a pending command: each worker gets SIGTERM, closes its envs and exits
        (an env that runs a helper process ends it in close()); a worker still running 1 s later (an env
        stuck in native code, or slow to close) is killed. The parent's own envs are closed too."""
        if self._state is not PoolState.CLOSED:
            if self._is_foreign():
                self._state = PoolState.CLOSED
                return
            self._entered_by_a_handler(sys._getframe(), "terminate")
            self._terminate(grace=0.0)

    def _is_foreign(self) -> bool:
        """Whether this is a copy in a child forked from the pool's process: disowned by the fork's hook, or not yet
        (the cyclic collector can free a pool inside the fork's hooks, before fastvec's: its close() stopped the
        parent's workers and closed the child's copies of the parent's envs)."""
        if not self._foreign and self._owner_pid not in (0, os.getpid()):
            self._disown()
        return self._foreign

    def _disown(self) -> None:
        """This process is a fork of the pool's (``_disown_live_pools``): the pool is not its to use or stop."""
        self._foreign = True
        self._monitor = None  # (its thread did not survive the fork)
        if self._state is not PoolState.CLOSED:
            self._break(
                RuntimeError(
                    f"this process (pid {os.getpid()}) is a fork of the process that made the pool; "
                    "only that process can use it or stop its workers"
                )
            )

    def _close_gracefully(self, timeout: float) -> EnvError | None:
        saved_timeout = self.step_timeout
        try:
            if self._async is not None and self._async.busy:  # batches still running: wait for them, briefly
                self._async.drain(self, min(timeout, PENDING_STEP_GRACE_S))
                if self._async.inflight:
                    raise ClosedError("asynchronous batches still running")
            p = self._pending
            if p is not None and p.command is Command.STEP:  # close() during a pending step is allowed: finish it
                if p.local is None and self._local is not None:
                    # this process's own share not stepped (or cut short by a wait's timeout): not stepped now only
                    # to be dropped, for as long as its envs take (unbounded, an env that hangs), but closed as it is
                    p.local, p.local_run = (None, None), None
                self.step_timeout = min(timeout, PENDING_STEP_GRACE_S)
                try:
                    self.step_wait()
                except EnvError:
                    pass
            if self._pending is not None:  # another command in flight: its state is unknown, terminate
                raise ClosedError("a command is pending")
            self.step_timeout = min(saved_timeout or timeout, timeout)
            for shard in list(self._parked):  # parked workers close as the others (they have no envs)
                self._unpark_now(shard)
            p = _Pending(Command.CLOSE, "close", self.slot, local_args=(self.slot,))
            self._issue(p)
            try:
                self._complete(p, None)
            except EnvError as err:
                return err
            return None
        finally:
            self.step_timeout = saved_timeout

    def _terminate(self, grace: float = 1.0) -> None:
        remotes = self._all_remotes()
        # (until stopped, the next close() ends and lets go of them, and of this process's envs and the block: a second
        # interrupt in the finally below, on its way to kill_all, left them all for good)
        self._left_running = (os.getpid(), remotes)
        stopped = False
        try:
            self._stopping = True
            self._terminated = True
            # (after the pool says it is closed: a thread leaving a command releases the block when this is set)
            self._release_deferred = True
            if self._monitor is not None:
                self._monitor.stop()
            self._state = PoolState.CLOSED
            self._pending = None
            stop(remotes, grace)
            stopped = True
            self._left_running = None
        # (an interrupt, a second Ctrl-C, in stop's waits or before them: the rest is still done, then it goes on; an
        # interrupt once the pool said it was closed left its workers running, and every later close() returned at once)
        finally:
            self._stopping = False
            self._terminated = True
            self._state = PoolState.CLOSED
            if not stopped:
                kill_all(remotes)  # (and the next close() waits for them and lets go of them: _left_running)
            if self._segment is not None:
                shm.unlink(self._segment)  # the name goes now; the mapping with _release()
            if self._pins_caller is not None:
                thread, self._pins_caller = self._pins_caller, None
                placement.release_caller(thread)
            _LIVE_POOLS.discard(self)
            self._release_deferred = True
            if (self._token or self._closer == _get_ident()) and not self._reentered:
                self._release()
            # else a thread is inside a command (another thread's, or the one a signal handler interrupted):
            # it still runs this process's envs over the shared block, and releases both when it leaves

    def _release(self) -> None:
        """Close this process's envs and let go of the shared block (once, from whichever thread gets here)."""
        me = _get_ident()
        if me in self._releasing:  # (a signal handler's close() inside this thread's release: that one finishes)
            return
        self._releasing.add(me)
        try:
            self._release_holding()
        finally:
            self._releasing.discard(me)

    def _release_holding(self) -> None:
        with self._release_lock:
            if not self._release_deferred:
                return
            interrupt: BaseException | None = None
            try:  # a broken or failed pool (or a close interrupted in them): its own envs not yet closed are closed
                own = self._local_envs + (self._tail.envs if self._tail is not None else [])
                left = [env for env in own if id(env) not in self._closed_local]
                if left:
                    close_each(left, 0, self._closed_local)
            except ShardError:
                pass
            except BaseException as exc:  # (a Ctrl-C in an env's close(): the block is still let go of first)
                interrupt = exc
            self._release_deferred = False
            self._local = self._head = self._tail = None
            self._local_envs = []
            # (what broke the pool: its traceback's frames hold views of the block, which kept the mapping, and a
            # file descriptor, open as long as the pool object lived)
            self._cause = None
            self._ring = None
            self.slot_views = self.obs_slots = self._local_stats = None  # type: ignore[assignment]
            if self._async is not None:
                self._async.release()
            if self._views is not None:
                self._views.release()
            self._control = self._control_words = None
            if self._segment is not None:
                shm.close(self._segment)
                self._segment = None
            if interrupt is not None:
                try:
                    raise interrupt
                finally:
                    interrupt = None  # (this frame stays in its traceback: a reference cycle otherwise)

    def __del__(self) -> None:
        try:
            if self._is_foreign():
                self._state = PoolState.CLOSED
                return
            if self._state is not PoolState.CLOSED:  # (close() tears down only, where the block was unmapped)
                self.close(timeout=2.0)
            elif self._release_deferred:  # (closed by a signal handler, and never used since)
                self._release()
        except Exception:
            pass

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# on_error="restart": workers started in place of a dead one, in all, before the pool gives up (each replacement
# that dies too while it makes its envs is replaced again)
RESPAWN_ATTEMPTS = 3


def _async_layout(n: int, opts: PoolOptions) -> tuple[int, bool]:
    """(num_workers, step_in_parent) for asynchronous batches of ``opts.batch_size`` envs: the envs
    split into ``num_workers`` groups, each one shard, and a batch is whole groups. By default
    there is a group per batch, or more, smaller ones where the cores allow: as many workers as
    cores (as the synchronous default), with groups that tile a batch (``_async_workers``). With
    ``step_in_parent=True`` the calling process steps the first group itself, in ``recv()``. By default
    it does so where a worker per group and the caller would be more processes than cores (on 2
    cores: 3 processes) and a batch is one group (its step can then stop between envs for a worker's
    group that finished meanwhile), and steps none otherwise. Measured on 2 cores (benchmarks/README.md,
    "The own group's step stops between envs"), with a policy of 50 us or 1 ms between recv() and
    send() it was as fast as a worker per group or faster (1.00-1.24x, 1.17x with 1 ms envs), and
    1.04-1.50x on CartPole without one; slower only with half the envs 4x slower, the slow half its
    own, and no policy at all (0.80x: a quicker worker gets its next batch only between two of its env
    steps). ``python -m fastvec.tune`` measures both on the user's env."""
    batch = int(opts.batch_size)
    # (never more workers than envs, as in the synchronous layout: a tuned num_workers from a larger machine)
    if n % batch and not opts.num_workers:  # (no num_workers given: the sizes alone are wrong)
        raise ValueError(
            f"batch_size={batch} with {n} envs: a batch is whole groups of envs, so num_envs must be a multiple of "
            "batch_size"
        )
    workers = min(int(opts.num_workers), n) if opts.num_workers else _async_workers(n, batch, default_num_workers())
    if n % batch or n % workers or batch % (n // workers):
        raise ValueError(
            f"batch_size={batch} with {n} envs and num_workers={workers}: every worker steps a group of "
            f"num_envs / num_workers envs and a batch is whole groups, so num_envs must be a multiple of batch_size "
            f"and batch_size of the group size"
        )
    if opts.step_in_parent is not None:
        return workers, bool(opts.step_in_parent)
    return workers, workers + 1 > default_num_workers() and n // workers == batch


def _async_workers(n: int, batch: int, cores: int) -> int:
    """The default number of groups for batches of ``batch`` of ``n`` envs on ``cores`` cores: the
    most, up to one per core, whose size divides the batch, and never fewer than a group per batch.

    A group is one worker's envs, stepped one after another. On the lent 16-core machine, a group
    per batch (64 CartPole envs, batches of 32: two workers of 32 envs) left 14 cores idle, and
    ``ppo.train --async-envs`` ran at 0.26x the synchronous rollout (benchmarks/README.md, "The
    16-core GPU machine"); there, 16 groups of 4 step each half on 8 cores. Where the cores are
    no more than the batches (2 cores: any batch of at most half the envs), this is a group per
    batch, as before."""
    if n % batch:
        return n // batch  # refused by the caller's check, naming the sizes
    fewest = n // batch
    sizes = [g for g in range(1, batch + 1) if batch % g == 0 and n // g <= max(fewest, cores)]
    return n // min(sizes)


def _copied_space(space: Any) -> Any:
    """A copy of a space, or the space itself where none can stand for it: one that cannot be copied (holding a
    lock), or whose copy is not equal to it (a class comparing by identity: env 0's own would then differ from the
    pool's)."""
    try:
        copied = copy.deepcopy(space)
        return copied if copied == space else space
    except Exception:
        return space


def _twin_classes(space: Any, other: Any) -> str:
    """A word on two spaces whose classes are different classes of one name (a copy of a class, as cloudpickle makes
    of a class defined in a function, or in the script under spawn), which print the same: '' where they are not."""
    a, b = type(space), type(other)
    if a is b or (a.__module__, a.__name__) != (b.__module__, b.__name__):  # (a copy's qualified name may be lost)
        return ""
    return (
        f" Their classes are two different classes named {b.__module__}.{b.__qualname__} (a class defined in a "
        "function is a new class at each call, and a pickled copy of one is another, as is a copy of a class of the "
        "script under spawn or forkserver): define it at the top level of a module the workers import, or make its "
        "__eq__ compare what the spaces hold rather than their class."
    )


def _equivalent(a: list[Leaf], b: list[Leaf]) -> bool:
    """Same structure, and the same shape and dtype leaf by leaf (gymnasium's is_space_dtype_shape_equiv): leaves
    found by their path, so that Dicts of the same keys in another order are the same structure, as gymnasium's
    compares their keys (the pool's leaves are env 0's; every env's parts are read by key)."""

    def form(leaves: list[Leaf]) -> dict:
        return {leaf.path: (leaf.array, leaf.shape, leaf.dtype) for leaf in leaves}

    return len(a) == len(b) and form(a) == form(b)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
def _slice_ns(seconds: float) -> int:
    """A wait of at most ``seconds`` (at least 1 ns), in one slice of at most POLL_NS."""
    return max(1, min(POLL_NS, int(seconds * 1e9)))


_AUTORESET_MODES = {  # (gymnasium's AutoresetMode values too)
    SAME_STEP: SAME_STEP,
    NEXT_STEP: NEXT_STEP,
    DISABLED: DISABLED,
    "SameStep": SAME_STEP,
    "NextStep": NEXT_STEP,
    "Disabled": DISABLED,
}


def _autoreset_mode(mode: Any) -> int:
    """fastvec.protocol's SAME_STEP, NEXT_STEP or DISABLED, or gymnasium's AutoresetMode (or its value); anything
    else was taken for DISABLED (no autoreset: envs stepped past their episode's end)."""
    value = getattr(mode, "value", mode)
    if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer, str)) or value not in _AUTORESET_MODES:
        raise ValueError(
            f"autoreset_mode must be SAME_STEP, NEXT_STEP or DISABLED (fastvec.protocol) or a gymnasium AutoresetMode, got {shown_value(mode)}"
        )
    return _AUTORESET_MODES[value]


CLOSE_TIMEOUT_LIMIT_S = 1e6  # close(timeout): at most this (multiprocessing's joins take int milliseconds)


def _describe_cause(cause: BaseException | None) -> str:
    if cause is None:
        return "a command did not complete"
    if isinstance(cause, KeyboardInterrupt):
        return "a command was interrupted (KeyboardInterrupt) while its envs were being stepped or its results read"
    try:
        text = str(cause)
    except Exception:  # (an error whose __str__ raises: its type names it)
        text = ""
    text = text.splitlines()[0] if text else ""
    return f"{type(cause).__name__}" + (f": {text}" if text else "")


_COMMAND_CODES = frozenset((
    Pool._complete.__code__, Pool._complete_step.__code__, AsyncBatches.recv.__code__,
    # (a command's issue: a command a move or a big seed runs inside it goes on under its hold)
    Pool.step_async.__code__, Pool._held.__code__, AsyncBatches.send.__code__,
    Pool._held_request.__code__,  # (a park asks the workers whether its envs can move, under its hold)
))  # fmt: skip
_HOLDING_CODES = _COMMAND_CODES | {Pool.close.__code__}  # (the frames that may hold the token)
# the names of close()'s own chain (a close() in a signal handler looks for the pool's code below it)
# (and a front-end's constructor, which closes the pool it made when the rest of it fails)
_CLOSING_NAMES = frozenset(
    ("close", "_close", "close_extras", "terminate", "__exit__", "__del__", "_enter_to_close", "__init__")
)
_OWN_MODULES = ("pool", "moves", "async_batches", "batch", "shard", "gym_vector_env", "sb3_vec_env", "sb3_contract")


def _own_files() -> frozenset:
    """The source files of the pool's code and its front-ends (as their code objects name them)."""
    return frozenset(
        module.__file__
        for module in (sys.modules.get(f"fastvec.{name}") for name in _OWN_MODULES)
        if module is not None and getattr(module, "__file__", None)
    )
