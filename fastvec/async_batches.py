"""Asynchronous partial batches (EnvPool's send/recv): envs and the policy never wait for each other.

With ``batch_size=B`` below ``num_envs`` every worker owns a group of envs (a batch is one
or more whole groups) and the calling process computes actions for one batch while the
workers step the others. With ``step_in_parent=True`` (the default on few cores: see pool._async_layout)
the calling process owns the first group itself and steps it inside ``recv()``, when no worker's
group has finished: on few cores, envs as cheap as CartPole's then step faster than in a third
process. Its step stops between envs when a worker's group finishes meanwhile (that group is the
batch, and the next ``recv()`` goes on from the next env), but a worker still waits for its next
batch until the own group's env in progress has stepped.

    pool.async_reset()                      # every env starts; nothing returns yet
    while True:
        batch = pool.recv()                 # the first B envs whose step (or reset) finished
        pool.send(policy(batch.observations()), batch.env_ids)

Each worker counts its own commands (its CMD_SEQ / DONE_SEQ words in the block), so
some workers can be given a step while others still run one; ``recv`` sleeps on the
pool's countdown word, which the first worker to finish brings to 0, and checks every
worker's DONE word, so nothing is missed. Autoreset and terminal observations follow
the same rules as the synchronous API, per env; each group keeps its own ring slot.
"""

from __future__ import annotations

import collections
import functools
import itertools
import multiprocessing
import time
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from fastvec import kernels
from fastvec.batch import _EMPTY, Batch, sort_extras
from fastvec.checks import ActionWriter
from fastvec.env_calls import private, private_payload, private_shares
from fastvec.errors import (
    AlreadyPendingCallError,
    NoAsyncCallError,
    ShardError,
    StepTimeoutError,
    WorkerDiedError,
    env_errors,
)
from fastvec.protocol import POLL_NS, TAG_PICKLED, Command, Extra, ResetFlag, StepFlag, dumps_payload
from fastvec.remote import ReplyNotLoaded

if TYPE_CHECKING:
    from fastvec.pool import Pool
    from fastvec.shard import StepRun


__all__ = ["AsyncBatches", "AsyncBatch"]

_HAS_OBJECTS = int(StepFlag.HAS_OBJECTS)
_STEP = Command.STEP  # (an Enum member read through its class costs a metaclass lookup: once per call here)
_STEP_CODE = int(_STEP)
_INTP = np.dtype(np.intp)  # (a dtype compared with a dtype: np.intp, a type, costs numpy a conversion per call)


# recv(copy=OBS_ONLY): the observations copied, rewards and flags views (the front-ends', which make their own
# arrays of them in one kernel call, before the views can change)
OBS_ONLY = "obs"

WORKERS_CHECK_S = 0.1  # how often workers in flight are checked on while other groups are collected
_CHECK_EVERY = 4  # (the clock is read every few collections only)


def _integral(ids: np.ndarray) -> bool:
    """Whether ids numpy did not store as integers are integers all the same: Python ints in an object array,
    or floats with integral values (numpy makes float64 of np.uint64 mixed with ints), never booleans."""
    if ids.dtype.kind == "f":
        return bool(np.all(np.isfinite(ids)) and np.all(ids == np.trunc(ids)))
    if ids.dtype.kind == "O":
        return all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in ids.flat)
    return False


class AsyncBatch:
    """The results of the first ``batch_size`` envs that finished, in ``env_ids`` order (copies)."""

    __slots__ = ("env_ids", "obs", "rewards", "terminated", "truncated", "infos", "reset_infos", "restarted",
                 "final_obs", "parts", "_pool", "taken")

    def __init__(self, pool: Pool, env_ids: np.ndarray, obs: Any, rewards: np.ndarray, terminated: np.ndarray,
                 truncated: np.ndarray, extras: list, parts: tuple[tuple[int, int, int], ...]):
        self._pool = pool
        self.env_ids = env_ids
        self.parts = parts  # (ring slot, first env, end env) of each group, in env_ids order
        self.obs, self.rewards, self.terminated, self.truncated = obs, rewards, terminated, truncated
        if extras:
            self.infos, self.reset_infos, self.restarted, self.final_obs = sort_extras(extras)
        else:  # the usual batch: read-only empty mappings, shared
            self.infos = self.reset_infos = self.restarted = self.final_obs = _EMPTY

    def observations(self) -> Any:
        return self.obs

    def terminal_observation(self, i: int) -> Any:
        """Env ``i``'s final observation, when its episode ended in this step (SAME_STEP)."""
        if i in self.final_obs:
            self._pool._check_final_obs()
            return self.final_obs[i]
        return self._pool.terminal_observation(i)  # (which checks the mode itself)

    # (those of the envs whose episode ended, in one call: as a synchronous Batch gives them)
    terminal_observations = Batch.terminal_observations


class AsyncBatches:
    """The asynchronous side of a Pool (see the module's docstring)."""

    def __init__(self, pool: Pool, batch_size: int):
        from fastvec.pool import PoolState

        # (a weak reference: the pool holds this, and a pool dropped unclosed is then freed, and closed, at once
        # instead of by the cyclic garbage collector; recv() and send() call it once and pass the pool down)
        self._pool = weakref.ref(pool)
        self.batch_size = batch_size
        # (the states a pool is usable / closed in, kept here: an Enum member read through its class costs a
        # metaclass lookup, and recv/send check the pool's state on every batch)
        self._IDLE, self._CLOSED = PoolState.IDLE, PoolState.CLOSED
        # groups of envs, one per shard: the calling process's own first (when it steps one), then the
        # workers'; a group is addressed by its position in this list (a worker's is its position in
        # pool._remotes plus self.first_remote)
        local = pool._local
        self.first_remote = 1 if local is not None else 0
        groups = ([range(local.start, local.stop)] if local is not None else []) + [r.envs for r in pool._remotes]
        self.groups = groups
        self.group_size = pool.num_envs // len(groups)
        self.groups_per_batch = batch_size // self.group_size  # (every group has group_size envs: none move here)
        self.inflight: dict[int, tuple[Command, int]] = {}  # position -> (command, slot)
        self.ready: collections.deque = collections.deque()  # (position, slot, extras, errors)
        self.slots = [0] * len(groups)  # each group's latest ring slot
        self._writers: dict[int, ActionWriter] = {}
        self._group_of = np.repeat(np.arange(len(groups)), self.group_size)
        self._offsets = np.arange(self.group_size)
        self.running = [False] * len(groups)  # per group: in flight, or done and not yet received
        self.issued = [0.0] * len(groups)  # per group: when its command was issued (kept with a step_timeout)
        self._local_objects: list | None = None  # the object parts of the own group's pending actions (or reset options)
        self._reset_options: list | None = None  # async_reset's options (a worker respawned in it needs them)
        self._reset_payloads: dict | None = None  # async_reset's per-worker pickled options (ditto)
        self._own_passed = 0  # times a worker's group was taken while the own group waited to be stepped
        self._own_run: StepRun | None = None  # the own group's step, stopped between envs (_step_own)
        self._own_issued = 0  # when the own group's command was given (perf_counter_ns)
        self._own_began = 0  # when its step's first part began
        self._own_busy = 0  # the time its step has taken so far, over its parts (ns)
        self._own_step_ns = 0  # the time its last whole step took (none yet: the first does not stop)
        self._watched: dict[tuple, np.ndarray] = {}  # the workers in flight while it steps (_watch), as arrays
        # groups collected while others were in flight, and when those were last checked on: a worker that died
        # or hung is found there too (else the own group, always steppable, or quicker workers hid it for ever)
        self._collected = 0
        self._workers_checked = 0.0
        self._draining = False  # close() waits for the groups in flight (drain)
        self._tags = np.zeros((pool._views.action_tags.shape[0],), np.uint32)
        # views of the shared block made once, not per call (issue 12: each numpy slice or fancy index costs
        # about as much as the rest of a call's bookkeeping): per group its action rows and its result rows
        # per ring slot; and the tags its envs were last sent
        views = pool._views
        self._all_remotes = list(range(len(pool._remotes)))
        self._whole = {tuple(g): [k] for k, g in enumerate(groups)}  # one group's ids, in order -> [its position]
        self._ids = [np.arange(g.start, g.stop) for g in groups]  # each group's env ids (copied out: np.arange costs 5x)
        self._action_rows = [[buffer[g.start : g.stop] for buffer in views.actions] for g in groups]
        self._result_rows = [
            [
                (
                    views.rewards[s, g.start : g.stop],
                    views.terminated[s, g.start : g.stop],
                    views.truncated[s, g.start : g.stop],
                    [ring[s, g.start : g.stop] for ring in views.obs],
                    ((s, g.start, g.stop),),  # the batch's parts (a tuple: batches share it)
                )
                for g in groups
            ]
            for s in range(pool.ring_slots)
        ]
        self._sent_tags: list[int | tuple | None] = [None] * len(groups)  # (one leaf: its tag; else a tuple)

    def release(self) -> None:
        """Drop the views of the shared block (the pool is closing: a view kept would keep it mapped), with
        the own group's step stopped between envs (its actions can be the block's rows)."""
        self._action_rows = self._result_rows = []  # type: ignore[assignment]
        self._own_run = self._local_objects = None

    def latest_into(self, pool: Pool, slot: int) -> None:
        """Copy each group's latest rows (observations, rewards, flags) into ring slot ``slot``, where that
        group's latest results are in another: a masked synchronous reset writes only its envs' rows into
        ``slot``, and then makes it every group's latest (the envs it leaves out read their latest
        observations there, and a restart's "last observation" is the row before the next step's)."""
        views = pool._views
        for position, envs in enumerate(self.groups):
            latest = self.slots[position]
            if latest == slot:
                continue
            rows = slice(envs.start, envs.stop)
            for ring in (*views.obs, views.rewards, views.terminated, views.truncated):
                ring[slot, rows] = ring[latest, rows]

    @property
    def busy(self) -> bool:
        return bool(self.inflight or self.ready)

    # -- giving work ----------------------------------------------------------------------------
    def async_reset(self, seeds: list | None = None, options: list | None = None) -> None:
        """Reset every env, with per-env ``seeds`` and ``options`` (each env's dict, passed when not empty,
        as SB3's reset passes them)."""
        pool = self._pool()
        pool._held("async_reset", self._async_reset, pool, seeds, options)

    def _async_reset(self, pool: Pool, seeds: list | None, options: list | None) -> None:
        self._check_quiet(pool, "async_reset")
        n = pool.num_envs
        if options is not None:
            options = list(options)
            if len(options) != n:
                raise ValueError(f"expected {n} option dicts (one per env), got {len(options)}")
            if not any(options):
                options = None
        seeds = pool._checked_seeds(seeds, None)
        payloads = pool._option_payloads(options) if options is not None else None
        own_options = None
        if options is not None and self.first_remote:  # the own group's, for recv() to reset it with (the copy
            own = self.groups[0]  # a worker's envs get)
            own_options = private_shares(options[own.start : own.stop], own, "reset options", own)
        pool._write_seeds(seeds, None)
        if own_options is not None:
            self._local_objects = own_options
        self._reset_options = options
        self._reset_payloads = payloads  # (each worker's pickled options: a worker respawned in this reset needs them)
        self._give(pool, list(range(len(self.groups))), Command.RESET, int(ResetFlag.HAS_OPTIONS) if options else 0, payloads)

    def send(self, actions: Any, env_ids: Any, per_env: bool = False) -> None:
        """Step the envs ``env_ids`` (whole groups, none still running) with ``actions`` (one row each; with
        ``per_env``, a sequence of one action per env, SB3's layout for structured spaces)."""
        entered = time.perf_counter_ns()  # (the time inside the pool: stats().learner_share)
        pool = self._pool()
        # held from the state check through the issue, as Pool.step_async
        tokens = pool._token
        token = tokens.pop() if tokens else pool._enter_slowly(None, "send")
        try:
            if pool._state is not self._IDLE or pool._terminated or pool._closer:  # (else usable: the usual send)
                pool._check_usable()
            if pool._pending is not None:
                raise AlreadyPendingCallError(f"send() called while {pool._pending.name!r} is pending", "step")
            if type(env_ids) is not np.ndarray or env_ids.dtype != _INTP or env_ids.ndim != 1:  # (recv()'s ids are)
                given = np.asarray(env_ids)
                if given.size and given.dtype.kind not in "iu" and not _integral(given):
                    # (a mask of booleans would be read as ids 0 and 1, and 1.5 as 1)
                    raise TypeError(f"env ids must be integers (those recv() returned), got {given.dtype}: {given.tolist()}")
                if given.size and (given.min() < 0 or given.max() >= pool.num_envs):  # (before the cast: 2**64 - 1 wrapped)
                    raise ValueError(f"env ids must be in 0..{pool.num_envs - 1}, got {given.reshape(-1).tolist()}")
                env_ids = given.astype(np.intp, copy=False).reshape(-1)
            try:
                ids = env_ids.tolist()
                whole = self._whole.get(tuple(ids))
                if whole is not None:  # one group's envs in order, as recv() returns them
                    position = whole[0]
                    if self.running[position]:
                        self._idle(whole)  # (raises)
                    leaf_writer = self._leaf_writer
                    pickled = None
                    if leaf_writer is not None:
                        # the usual send (one array leaf): its rows' view made once, the leaf's dtype tag stored only
                        # when it changed, and no scratch arrays
                        tag = leaf_writer.write(actions, self._action_rows[position][0], ids)
                        if not tag & TAG_PICKLED:
                            if self._sent_tags[position] != tag:
                                pool._views.action_tags[0, ids[0] : ids[0] + len(ids)] = tag
                                self._sent_tags[position] = tag
                            self._give(pool, whole, _STEP, 0, None)
                            pool._inside_ns += time.perf_counter_ns() - entered
                            return
                        pickled = [leaf_writer.take_pickled()]  # (values no 8 bytes hold: they travel pickled, below)
                    positions, run = whole, True
                else:
                    pickled = None
                    positions, run = self._groups(pool, env_ids, ids)
                count = len(env_ids)
                writer = self._writer(count)
                views = pool._views
                first = ids[0]
                tags = self._tags
                if run:
                    rows = slice(first, first + count)  # one run of envs (a batch as recv() returned it): write in place
                    if pickled is not None:  # (the leaf's writer took them above)
                        objects = pickled
                        tags[0] = TAG_PICKLED
                    elif len(positions) == 1:  # one group: its rows' views, made once
                        objects = writer.write(actions, self._action_rows[positions[0]], tags, per_env, ids)
                    else:
                        objects = writer.write(actions, [buffer[rows] for buffer in views.actions], tags, per_env, ids)
                else:
                    rows = env_ids
                    scratch = [np.empty((count, *b.shape[1:]), b.dtype) for b in views.actions]
                    objects = writer.write(actions, scratch, tags, per_env, ids)
                    for buffer, part in zip(views.actions, scratch):
                        buffer[rows] = part
                tags_list = tags.tolist()  # the dtype each leaf came in, stored for these envs where it changed
                sent = tags_list[0] if len(tags_list) == 1 else tuple(tags_list)  # (an int for one leaf, as above)
                sent_tags = self._sent_tags
                if (sent_tags[positions[0]] != sent) if len(positions) == 1 else any(sent_tags[p] != sent for p in positions):
                    views.action_tags[:, rows] = tags[:, None]
                    for position in positions:
                        sent_tags[position] = sent
                payloads = None
                if objects is not None:  # object parts of the actions: each worker's share, in its envs' order
                    order = {int(e): k for k, e in enumerate(env_ids)}
                    payloads = {}
                    for position in positions:
                        envs = self.groups[position]
                        share = [[column[order[i]] for i in envs] for column in objects]
                        if position < self.first_remote:  # (the copy a worker's envs get)
                            self._local_objects = private_payload(share, "actions", envs)
                        else:
                            payloads[pool._remotes[position - self.first_remote].index] = dumps_payload(share, "actions", envs)
                self._give(pool, positions, _STEP, _HAS_OBJECTS if objects is not None else 0, payloads)
                pool._inside_ns += time.perf_counter_ns() - entered
            except BaseException:
                # close() from another thread (or a signal handler) released the block under this send (the actions'
                # conversion can take a while: a lazy tensor): a bare TypeError from the released views otherwise
                if pool._terminated:
                    raise pool._closed_meanwhile("send") from None
                raise
        finally:  # (Pool._leave and _give_back, inline)
            if token is not None:
                pool._releases += 1
                tokens.append(token)
            if pool._release_deferred and not pool._reentered:
                pool._release()

    def _writer(self, count: int) -> ActionWriter:
        """The action writer of a send to ``count`` envs (made at the first)."""
        writer = self._writers.get(count)
        if writer is None:
            pool = self._pool()
            writer = self._writers[count] = ActionWriter(pool.action_space, count, kernels, pool.check)
        return writer

    @functools.cached_property
    def _leaf_writer(self) -> Any:
        """The one array leaf's writer of a send to one group, where the action space is one array (else None).
        (Made at the first send: the pool learns its action space after making this.)"""
        writer = self._writer(self.group_size)
        return writer.writers[0] if writer.single else None

    def _groups(self, pool: Pool, env_ids: np.ndarray, ids: list[int]) -> tuple[list[int], bool]:
        """The groups ``env_ids`` (``ids``: the same as a list) make up (whole groups, none in flight or
        waiting to be received), and whether the ids are one run of consecutive envs (their rows are one slice).
        (One group's ids in order, the usual send, are looked up in ``_whole`` by ``send`` itself.)"""
        n, size = pool.num_envs, self.group_size
        first = ids[0] if ids else -1
        run = ids == list(range(first, first + len(ids)))
        if run and 0 <= first and first % size == 0 and len(ids) % size == 0:
            if first + len(ids) > n:
                raise ValueError(f"env ids must be in 0..{n - 1}, got {ids}")
            # whole groups in order, as recv() returns them: the usual case, checked in plain Python
            # (numpy's reductions cost microseconds on a handful of ids)
            return self._idle(list(range(first // size, (first + len(ids)) // size))), True
        if env_ids.size == 0:
            raise ValueError("send() was given no env ids: give the ids recv() returned, with one action each")
        if env_ids.min() < 0 or env_ids.max() >= n:
            raise ValueError(f"env ids must be in 0..{n - 1}, got {ids}")
        if env_ids.size % size == 0:  # whole groups, each in order (as recv() returns them): no sets needed
            grid = env_ids.reshape(-1, size)
            whole = bool((grid == grid[:, :1] + self._offsets).all()) and not (grid[:, 0] % size).any()
            positions = sorted((grid[:, 0] // size).tolist()) if whole else None
        else:
            positions = None
        if positions is None or len(set(positions)) != len(positions):
            given = set(ids)
            if len(given) != len(ids):
                raise ValueError(f"env ids must not repeat, got {ids}")
            positions = sorted(set(self._group_of[env_ids].tolist()))
            for position in positions:
                envs = self.groups[position]
                if not set(envs) <= given:
                    raise ValueError(
                        f"env ids must be whole groups of {size} (the envs one worker steps; recv() returns "
                        f"them so): {ids} has part of envs {envs.start}..{envs.stop - 1}"
                    )
        return self._idle(positions), run

    def _idle(self, positions: list[int]) -> list[int]:
        """``positions``, checked to be neither running nor waiting to be received."""
        for position in positions:
            if self.running[position]:
                envs = self.groups[position]
                raise AlreadyPendingCallError(
                    f"envs {envs.start}..{envs.stop - 1} are still running (or waiting in recv()): send to the envs "
                    "recv() returned", "step"
                )
        return positions

    def _give(self, pool: Pool, positions: list[int], command: Command, arg: int, payloads: dict | None) -> None:
        """Issue ``command`` to the workers at ``positions``, each into its next ring slot (the own
        group's is only recorded: ``recv()`` steps it)."""
        if pool._terminated:  # close() from another thread gave up waiting for this send's issue (and broke the pool)
            raise pool._closed_meanwhile("send" if command is _STEP else "reset")
        code = _STEP_CODE if command is _STEP else int(command)
        first = self.first_remote
        if pool.step_timeout is not None:
            now = time.monotonic()
            for position in positions:
                self.issued[position] = now
        slots, ring_slots = self.slots, pool.ring_slots
        try:
            for position in positions:
                slot = slots[position] + 1
                if slot == ring_slots:
                    slot = 0
                if position >= first:
                    bases, seqs = pool._worker_words[position - first]
                    kernels.issue(pool._control, bases, code, slot, arg, seqs, pool._remaining_index)  # (counts seqs)
                    if payloads:
                        remote = pool._remotes[position - first]
                        if remote.index in payloads:
                            remote.send_bytes(payloads[remote.index])
                else:
                    self._own_passed = 0
                    self._own_issued = time.perf_counter_ns()
                self.inflight[position] = (command, slot)
                self.running[position] = True
        except BaseException as exc:
            pool._break(exc)
            raise

    def _check_quiet(self, pool: Pool, call: str) -> None:
        pool._check_idle(call)
        if self.busy:
            raise AlreadyPendingCallError(f"{call}() called while batches are still running: recv() them first", "step")

    # -- collecting -----------------------------------------------------------------------------
    def recv(self, timeout: float | None = None, copy: bool = True, batch_object: Any = None) -> AsyncBatch:
        """The first ``batch_size`` envs that finished (whole groups), group by group in the order
        they finished, each group's envs in env-id order (as EnvPool, no order across groups is
        promised: ``env_ids`` says which rows are which env): copies, or with ``copy=False`` and a
        batch of one group (the default layout where cores are no more than batches), views into
        the ring (valid until those envs are sent their next actions and step); ``copy=OBS_ONLY``:
        copies of the observations only."""
        entered = time.perf_counter_ns()  # (the time inside the pool, the own group's steps and the waits with it)
        pool = self._pool()
        if pool._state is not self._IDLE or pool._terminated or pool._closer:  # (else usable: the usual recv)
            pool._check_usable()
        ready, inflight = self.ready, self.inflight
        if not (inflight or ready):
            if pool._pending is not None:  # a synchronous reset or call (none runs beside batches)
                from fastvec.pool import _WAIT_NAMES

                p = pool._pending
                raise AlreadyPendingCallError(
                    f"recv() called while {p.name!r} is pending: {_WAIT_NAMES[p.command]}() completes it", "step"
                )
            raise NoAsyncCallError("recv() called with nothing sent: async_reset() or send() first", "step")
        began = time.monotonic() if timeout is not None else 0.0
        groups = self.groups_per_batch
        tokens = pool._token  # (close() from another thread waits for this recv, and a recv for it)
        token = tokens.pop() if tokens else pool._enter_slowly(None)
        if token is not None and not (inflight or ready):  # collected by another thread meanwhile
            pool._give_back(token)
            raise NoAsyncCallError("recv(): the batches were collected by another thread", "step")
        try:
            while len(ready) < groups and inflight:
                self._collect_one(pool, began, timeout)
        finally:
            if token is not None:  # (pool._leave and _give_back, inlined: this runs on every batch)
                pool._releases += 1
                tokens.append(token)
            if pool._release_deferred:
                pool._leave(None)
            pool._inside_ns += time.perf_counter_ns() - entered
        if pool._state is self._CLOSED or pool._terminated:  # (pool.closed)
            raise pool._closed_meanwhile("recv")
        try:
            return self._take(pool, groups, copy, batch_object)
        except Exception:
            # close() from another thread, once this one gave the pool back: it emptied ``ready`` and let go of the
            # ring under the batch being made (a bare IndexError, KeyError or TypeError)
            if pool._terminated:
                raise pool._closed_meanwhile("recv") from None
            raise

    def _take(self, pool: Pool, groups: int, copy: bool, batch_object: Any) -> AsyncBatch:
        """recv()'s batch of the first ``groups`` ready groups, made, then taken off ``ready``."""
        ready = self.ready
        # the batch is made before its groups leave ``ready``: an interrupt (Ctrl-C) while it is made
        # leaves them there, for the next recv(); one while they leave breaks the pool
        if groups == 1 and not ready[0][3]:  # the usual batch: one group, whose envs all stepped
            taken: list | tuple = (ready[0],)
            batch = self._group_batch(pool, ready[0], copy, batch_object)
        else:
            taken = list(itertools.islice(ready, groups))
            failed = [entry for entry in taken if entry[3]]
            if failed:  # only the groups with an env that raised leave: the others' results wait for the next recv()
                error = env_errors([payload for entry in failed for payload in entry[3]])
                error.env_ids = np.concatenate([self._ids[entry[0]] for entry in failed])  # (free to be sent again)
                try:
                    for entry in failed:
                        pool._keep_objects(entry[2])  # (the latest object parts of its envs' observations)
                        ready.remove(entry)
                        self.running[entry[0]] = False
                except BaseException as exc:
                    pool._break(exc)
                    raise
                try:
                    raise error
                finally:
                    error = None  # (this frame stays in the error's traceback: a reference cycle otherwise)
            batch = self._batch(pool, taken, copy, batch_object)
        try:
            for entry in taken:
                ready.popleft()
                self.running[entry[0]] = False
        except BaseException as exc:
            pool._break(exc)
            raise
        batch.taken = taken  # (for give_back)
        return batch

    def not_made(self, batch: AsyncBatch, exc: BaseException) -> None:
        """A front-end's recv() did not make its outputs of ``batch``, which this recv() took. Interrupted (Ctrl-C):
        the batch is given back, for the next recv(). Failing (an error: every recv() would raise it again):
        ``exc.env_ids`` says which envs are free to be sent again, as an env error's does."""
        if not isinstance(exc, Exception):
            self.give_back(batch)
            return
        try:
            if getattr(exc, "env_ids", None) is None:
                exc.env_ids = batch.env_ids  # type: ignore[attr-defined]
        except Exception:  # (an error that takes no attribute)
            pass

    def give_back(self, batch: AsyncBatch) -> None:
        """A front-end interrupted (Ctrl-C) while it makes its outputs of ``batch``, which recv() took: its groups go
        back to the front of ``ready``, for the next recv() (as when that comes while the pool makes the batch); else
        those envs were lost, neither running nor ready, and never returned again."""
        try:
            for entry in reversed(batch.taken):
                if not self.running[entry[0]]:  # (not sent again meanwhile)
                    self.ready.appendleft(entry)
                    self.running[entry[0]] = True
        except BaseException as exc:  # (a second interrupt, in the middle of it)
            pool = self._pool()
            if pool is not None:
                pool._break(exc)
            raise

    def _collect_one(self, pool: Pool, began: float, timeout: float | None) -> None:
        """Wait for one more worker to finish, or step the own group; its results join ``ready``."""
        first = self.first_remote
        inflight = self.inflight
        if len(inflight) > 1:  # (some group keeps being taken before the others)
            self._collected += 1
            if self._collected >= _CHECK_EVERY:
                ready = len(self.ready)
                self._check_workers_in_flight(pool)
                if len(self.ready) > ready:
                    return  # workers respawned by the check: their groups' results are ready (the caller looks again)
        if first and 0 in inflight:
            # the own group steps now (this process would otherwise wait), unless a worker's group is done
            # already: that one is taken first, once at most (workers always done by the next recv() would
            # otherwise starve the own group). (Waiting first for a worker that was sent before the own
            # group, so as not to leave it idle, measured slower: 68-81k against 83-89k steps/s at 8 envs.)
            if len(inflight) == 1 or self._own_passed or not self._any_done(pool):
                # With a batch of one group, the step stops between envs for a worker that finishes meanwhile
                # (_stops), whose group is then the batch: its worker steps on while this process goes on with
                # its own (with envs 4x slower in the own group, the worker would otherwise idle three quarters
                # of the time)
                if not self._step_own(pool, self.groups_per_batch == 1 and len(inflight) > 1):
                    self._wait_worker(pool, began, timeout)  # (done: no wait)
                    return
                if self.groups_per_batch == 1 and len(inflight) > 0 and self._any_done(pool):
                    # a worker finished while the own group stepped: its group goes first (it finished first),
                    # so its worker gets its next actions a batch sooner instead of idling; the own group's
                    # results wait in ``ready`` for the next recv(), which no process waits on (at 16
                    # CartPole envs the worker sat idle a third of the time, waiting for this process)
                    # (the own group's results stay in ``ready`` whatever the worker's collection raises, and go last:
                    # popped out and put back, an interrupt as the pop returned left them nowhere)
                    ready = self.ready
                    own_at = len(ready) - 1
                    self._wait_worker(pool, began, timeout)
                    if len(ready) > own_at + 1:
                        own = ready[own_at]
                        del ready[own_at]
                        ready.append(own)
                return
            self._own_passed += 1
        self._wait_worker(pool, began, timeout)

    def _check_workers_in_flight(self, pool: Pool) -> None:
        """While other groups keep being collected: every ``WORKERS_CHECK_S`` seconds at most, whether a worker
        in flight died (respawned, or WorkerDiedError) or is past ``step_timeout``, as a wait for it would."""
        self._collected = 0
        now = time.monotonic()
        if now - self._workers_checked < WORKERS_CHECK_S:
            return
        self._workers_checked = now
        first = self.first_remote
        # (a group that finished and only waits to be collected is neither dead nor late: step_timeout
        # bounds a command, not the learner's time between recv() calls)
        positions = [group - first for group in self.inflight if group >= first and not self._done(pool, group)]
        self._check_lives(pool, positions)
        limit = pool.step_timeout
        if limit is not None:
            self._check_deadlines(pool, [p for p in positions if p + first in self.inflight], limit)

    def _wait_worker(self, pool: Pool, began: float, timeout: float | None) -> None:
        """Wait for one more worker to finish; its results join ``ready`` (or it died: _check_lives)."""
        first = self.first_remote
        inflight = self.inflight
        if len(inflight) - (1 if first and 0 in inflight else 0) == len(self._all_remotes):
            positions, done, seqs = self._all_remotes, pool._done_index, pool._seqs  # every worker: the pool's arrays
        else:
            positions = [position - first for position in inflight if position >= first]
            done = pool._done_index[positions]
            seqs = pool._seqs[positions]
        slice_ns, spin_ns, expired = POLL_NS, pool.spin_ns, False
        if timeout is not None:
            left = timeout - (time.monotonic() - began)
            # (past the time: one look at the DONE words still, as a step_wait(timeout=0) takes a finished step)
            expired = left <= 0
            slice_ns, spin_ns = (1, 0) if expired else (max(1, min(POLL_NS, int(left * 1e9))), spin_ns)
        limit = pool.step_timeout
        if limit is not None:  # wake up by the first in-flight worker's deadline
            due = min(self.issued[position + first] for position in positions) + limit - time.monotonic()
            slice_ns = max(1, min(slice_ns, int(due * 1e9)))
        if pool._state is self._CLOSED or pool._terminated:  # by another thread, which gave up waiting for this one
            raise pool._closed_meanwhile("recv")
        k = kernels.wait_any(pool._control, pool._remaining_index, done, seqs, spin_ns, slice_ns)
        if k == -1:
            self._check_lives(pool, positions)
            if limit is not None:
                self._check_deadlines(pool, positions, limit)
            if expired:
                raise multiprocessing.TimeoutError(f"no batch within {float(timeout):g} s; the envs are still running")
            return
        position = positions[k] + first
        if len(positions) > 1:  # several done: the one sent first (the inflight dict keeps send order)
            position = self._oldest_done(pool, position)
        command, slot = inflight[position]
        try:
            reply = None
            if pool._control_words[pool._message_words[position - first]]:
                remote = pool._remotes[position - first]
                try:
                    reply = pool._recv(remote, "step" if command is _STEP else "reset")
                except ReplyNotLoaded as exc:  # (read whole: in step, the group's error names its envs)
                    reply = exc.reply()
                except (WorkerDiedError, StepTimeoutError) as exc:
                    pool._reply_lost(remote, exc, "recv")
                    self._check_lives(pool, [position - first])  # respawned: its replacement's results join ``ready``
                    return
            del inflight[position]
            extras, error = None, None
            if reply is not None:
                kind, payload = reply[0], reply[1]
                if kind == "error":
                    error = payload
                    extras = reply[2] if len(reply) > 2 else None  # (object parts: Shard.take_objects)
                elif payload:
                    extras = payload
            self.slots[position] = slot
            self.ready.append((position, slot, extras, error))
        except BaseException as exc:  # a message half read, or an interrupt between the two: out of step
            pool._break(exc)
            raise

    def _oldest_done(self, pool: Pool, found: int) -> int:
        """Of the workers' groups in flight that are done (``found`` is), the one sent first: recv()
        returns the groups that finished first, and a group done and waiting is never passed over
        for one sent after it (wait_any finds the lowest done index, not the oldest)."""
        for position in self.inflight:
            if position == found:
                return found
            if position >= self.first_remote and self._done(pool, position):
                return position
        return found

    def _any_done(self, pool: Pool) -> bool:
        """Whether a worker in flight has finished (its DONE word reached its command count)."""
        first = self.first_remote
        words, done, seqs = pool._control_words, pool._done_words, pool._seq_words
        for position in self.inflight:  # (a loop, not any() over a generator: this runs on every collection)
            if position >= first and words[done[position - first]] == seqs[position - first]:  # (_done, inlined)
                return True
        return False

    def _done(self, pool: Pool, position: int) -> bool:
        """Whether the worker of group ``position`` (a worker's: ``position >= first_remote``) finished its
        command: its DONE word reached its command count."""
        k = position - self.first_remote
        return pool._control_words[pool._done_words[k]] == pool._seq_words[k]

    def _watch(self, pool: Pool) -> tuple | None:
        """When the own group's step stops (Shard.step_envs' ``watch``, checked after each env in the
        kernels): once a worker in flight is done, while the step has been in flight for less than twice
        the time its last one took (the first never stops). Past that this process is the one behind (a
        slow policy between recv() calls: the workers wait for it whatever it does), and stopping after
        each env would only leave its own group further behind (a step of 8 envs over 8 recv() calls,
        against a worker's 8 steps). None: no worker in flight."""
        first = self.first_remote
        # (sorted: the sets of workers in flight, not their orders, are cached, so the cache stays small)
        key = tuple(sorted(position - first for position in self.inflight if position >= first))
        if not key:
            return None
        watched = self._watched.get(key)
        if watched is None:
            if len(self._watched) >= 64:  # (many workers, many sets: made anew rather than kept)
                self._watched.clear()
            watched = self._watched[key] = np.array(key, dtype=np.intp)
        return pool._control, pool._done_index, pool._seqs, watched, self._own_issued + 2 * self._own_step_ns

    def _step_own(self, pool: Pool, pausable: bool = False) -> bool:
        """Step (or reset) the calling process's own group, as a worker would its own; the results join
        ``ready`` (True). With ``pausable`` a step stops between envs once a worker's group is done
        (False): that worker gets its next batch sooner, and the step goes on at the next call, from the
        next env (at least one env steps per call). An interrupt while its envs run leaves their state
        unknown: the pool breaks."""
        command, slot = self.inflight[0]
        extras, error = None, None
        try:
            if command is _STEP:
                began = time.perf_counter_ns()
                run = self._own_run
                if run is None:
                    self._own_began = began
                    objects, self._local_objects = self._local_objects, None
                    run = self._own_run = pool._local.begin_step(slot, objects)
                stepped = pool._step_local_part(run, self._watch(pool) if pausable else None)
                self._own_busy += time.perf_counter_ns() - began
                if not stepped:
                    return False
                self._own_step_ns, self._own_busy = self._own_busy, 0
                self._own_run = None
                del self.inflight[0]
                extras = pool._end_local(run, self._own_step_ns, self._own_began)
            else:  # async_reset: every env, with the seeds in the shared block and its options
                objects, self._local_objects = self._local_objects, None
                del self.inflight[0]
                extras = pool._reset_local(slot, objects, False, False)
        except ShardError as err:  # (its envs' errors: the group is done, whichever part raised)
            self._own_run, self._own_busy = None, 0
            self.inflight.pop(0, None)
            error = err.payloads()
            extras = pool._local.take_objects()  # (as a worker's error reply carries them)
        except BaseException as exc:
            pool._break(exc)
            raise
        self.slots[0] = slot
        self.ready.append((0, slot, extras, error))
        return True

    def _check_deadlines(self, pool: Pool, positions: list[int], limit: float) -> None:
        """Workers in flight for longer than ``step_timeout`` (``positions``: in pool._remotes): ended and
        respawned (on_error="restart": _check_lives, at once) or StepTimeoutError, which breaks the pool."""
        now = time.monotonic()
        for position in positions:
            group = position + self.first_remote
            if group not in self.inflight or now - self.issued[group] <= limit:
                continue
            if self._done(pool, group):  # (finished, and waits to be collected: never late, README; it finished while
                continue  # another worker was replaced, after the list was made)
            remote = pool._remotes[position]
            if pool.on_error == "restart":
                remote.end()  # a hung env: its replacement does the group's command
                remote.hung = True
                self._check_lives(pool, [position])
                continue
            command, _ = self.inflight[group]
            raise pool._broken(StepTimeoutError(remote.index, remote.envs, "step" if command is _STEP else "reset", limit))

    def _check_lives(self, pool: Pool, positions: list[int]) -> None:
        """A worker that died while stepping (``positions``: in pool._remotes): respawned
        (on_error="restart") or the pool breaks."""
        from fastvec.pool import _Pending
        from fastvec.restart import restart_reason

        for position in positions:
            remote = pool._remotes[position]
            if remote.exitcode is None:
                continue
            if self._draining:  # (close(): nothing to collect from it; a replacement would make its envs first)
                self.inflight.pop(position + self.first_remote, None)
                continue
            command, slot = self.inflight[position + self.first_remote]
            if pool.closed:  # (stopped by close() in a signal handler just now)
                raise pool._closed_meanwhile("recv")
            resetting = command is Command.RESET
            if pool.on_error != "restart":
                raise pool._broken(WorkerDiedError(remote.index, remote.envs, remote.exitcode, "reset" if resetting else "step"))
            p = _Pending(
                command,
                "reset" if resetting else "step",
                slot,
                arg=int(ResetFlag.HAS_OPTIONS) if resetting and self._reset_options else 0,
                payloads=self._reset_payloads if resetting else None,
                reset_options=self._reset_options if resetting else None,
            )
            raised = None
            try:
                pool._respawn(position, p)  # its replacement does its share, and marks it done
            except BaseException as exc:
                if position not in p.respawned:
                    raise
                # replaced, and then interrupted, or its warning made an error (-W error): the group still joins
                # ``ready``, its restart reported (it stayed in flight, done, and came back as if nothing happened)
                raised = exc
            # (hung: ended past step_timeout, here or in an earlier call: _respawn reads the worker's mark)
            why = restart_reason(pool.step_timeout if position in p.hung else None)
            reports = [(i, Extra.RESTARTED, {"error": why, "command": p.name}) for i in remote.envs]
            group = position + self.first_remote
            try:  # (in flight, or ready: an interrupt between the two left the group nowhere, running for ever)
                replacement = pool._remotes[position]
                unmade, replacement.unmade = replacement.unmade, None  # envs it could not make: the group's errors
                entry = (group, slot, reports + (p.respawned.get(position) or []), unmade or None)
                self.slots[group] = slot
                del self.inflight[group]
                self.ready.append(entry)
            except BaseException as exc:
                pool._break(exc)
                raise
            if raised is not None:
                try:
                    raise raised
                finally:
                    raised = None  # (this frame stays in the error's traceback: a reference cycle otherwise)

    def _batch(self, pool: Pool, taken: list, copy: bool, batch_object: Any = None) -> AsyncBatch:
        """The batch of the groups ``taken`` (entries of ``ready``)."""
        if len(taken) == 1:
            return self._group_batch(pool, taken[0], copy, batch_object)
        views = pool._views
        env_ids = np.concatenate([self._ids[t[0]] for t in taken])
        extras = []
        for _, _, group_extras, _ in taken:
            extras += group_extras or []
        if extras:
            extras = pool._digest(extras, 0)
        parts = tuple((slot, self.groups[position].start, self.groups[position].stop) for position, slot, _, _ in taken)
        rewards = np.concatenate([views.rewards[s, a:b] for s, a, b in parts])
        terminated = np.concatenate([views.terminated[s, a:b] for s, a, b in parts])
        truncated = np.concatenate([views.truncated[s, a:b] for s, a, b in parts])
        columns = [np.concatenate([ring[s, a:b] for s, a, b in parts]) for ring in views.obs]
        return self._assemble(pool, env_ids, columns, rewards, terminated, truncated, extras, parts, batch_object, copy)

    def _group_batch(self, pool: Pool, entry: tuple, copy: bool, batch_object: Any = None) -> AsyncBatch:
        """The batch of one group (the usual batch; ``entry``: its entry in ``ready``): its rows' views,
        made once, and no lists to join."""
        position, slot, extras, _ = entry
        env_ids = self._ids[position].copy()
        if extras:
            extras = pool._digest(list(extras), 0)
        rewards, terminated, truncated, columns, parts = self._result_rows[slot][position]
        if copy:
            if copy is not OBS_ONLY:
                rewards, terminated, truncated = rewards.copy(), terminated.copy(), truncated.copy()
            if pool._single_leaf:
                return AsyncBatch(pool, env_ids, columns[0].copy(), rewards, terminated, truncated, extras, parts)
            columns = [rows.copy() for rows in columns]
        if pool._single_leaf:
            return AsyncBatch(pool, env_ids, columns[0], rewards, terminated, truncated, extras, parts)
        return self._assemble(pool, env_ids, columns, rewards, terminated, truncated, extras, parts, batch_object, copy)

    def _assemble(self, pool: Pool, env_ids: np.ndarray, columns: list, rewards: np.ndarray, terminated: np.ndarray,
                  truncated: np.ndarray, extras: list, parts: list, batch_object: Any, copy: bool) -> AsyncBatch:
        """The batch, its observations assembled from their array ``columns`` and object parts (with ``copy``,
        copies: the pool keeps its own, as Pool.observations)."""
        if pool._single_leaf:
            obs = columns[0]
        else:
            from fastvec.spaces import assemble

            arrays = iter(columns)
            objects = iter(pool.object_columns())
            leaf_parts = []
            for leaf in pool.obs_leaves:
                if leaf.array:
                    leaf_parts.append(next(arrays))
                else:
                    column = next(objects)
                    values = [private(column[i]) for i in env_ids] if copy else [column[i] for i in env_ids]
                    leaf_parts.append(batch_object(leaf, values) if batch_object is not None else tuple(values))
            obs = assemble(pool.observation_space, leaf_parts)
        return AsyncBatch(pool, env_ids, obs, rewards, terminated, truncated, extras, parts)

    def drain(self, pool: Pool, timeout: float) -> None:
        """Wait (briefly) for every group still running, dropping the results (close()). (The pool is passed by the
        pool itself: in a garbage cycle the collector clears the weak reference before the pool's __del__ closes
        it, so no helper reached from here may read it.)"""
        end = time.monotonic() + timeout
        if self.first_remote and self.inflight.pop(0, None) is not None:  # the own group: not stepped (or not all)
            self._local_objects = self._own_run = None
            self._own_busy = 0
        # (a worker found dead meanwhile is dropped, not replaced: a replacement made its envs again first, and
        # close(timeout=1) took as long as they did, 20 s for a slow simulator)
        self._draining = True
        try:
            while self.inflight and time.monotonic() < end:
                self._collect_one(pool, time.monotonic(), end - time.monotonic())
        finally:
            self._draining = False
        self.ready.clear()
        self.running = [False] * len(self.running)
