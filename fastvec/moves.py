"""Moving envs between neighbouring shards, and parking a worker: the part of the pool the monitor drives.

``ShardMoves`` is one of ``Pool``'s bases and works on the pool's own state, made in ``Pool.__init__``:
``_moves`` (env index -> (source shard, target shard, around the ring's end)), ``_move_requests`` (what the
monitor's thread queued), ``_parked`` and ``_draining``, ``shard_envs`` and ``wrap_envs``. An env moves at
its episode end (fastvec.migrate packs it in its old shard, and it is adopted in the new one), so the
shards' ranges change only between commands, in ``_settle_moves``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastvec.env_calls import own_copies
from fastvec.errors import EnvError, ShardError, WorkerDiedError, env_errors, exit_status, user_stacklevel
from fastvec.migrate import ADOPT as _ADOPT
from fastvec.protocol import MIGRATE_ALL, MIGRATE_DOWN, MIGRATE_UP, NEXT_STEP, SAME_STEP, Command, Extra, PoolState
from fastvec.remote import Remote
from fastvec.restart import describe, restart_reason
from fastvec.shard import Shard, WrappedShard

_IDLE = PoolState.IDLE


class ShardMoves:
    # -- moving envs between neighbouring shards (fastvec.migrate) --------------------------------
    def request_move(self, source: int, target: int, around: bool = False) -> int | None:
        """Ask the env on the boundary between shard ``source`` and its neighbour ``target`` to move
        there at its next episode end. Returns its index, or None when no move is possible now
        (``source`` has one env left, or that env is already moving, or an env is moving across the
        same boundary the other way, or either shard is parked or being emptied, or a pending move brings an
        env into an empty shard between them, or ``target`` is an empty shard a pending move passes over, or the
        env cannot be pickled, or whether it can is not known yet
        and a command is pending: ask between steps). Neighbours are next to each other, or have only empty shards between them.

        ``around``: across the ring's end, between the last worker's shard with envs and this
        process's own (shard 0), which then steps envs at both ends of the index range (its envs
        past the last worker's are ``wrap_envs``): the last worker's top env moves to shard 0, or
        shard 0's lowest env of ``wrap_envs`` to the last worker. With two shards, they border each
        other on both sides, so an uneven split that contiguous ranges cannot fix can be evened out.

        Call from the thread that steps the pool (the monitor's thread queues its requests with
        ``queue_move``)."""
        self._check_mapped("its envs")  # (after close(): ClosedError, not a write into the released block)
        w = self.num_workers
        if source == target or not (0 <= source < w and 0 <= target < w):
            raise ValueError(f"envs move between neighbouring shards, not from {source} to {target}")
        if around:
            if not self._wraps_between(source, target):
                raise ValueError(
                    f"envs move around the ring's end between this process's shard (0) and the last worker's "
                    f"shard with envs, not from {source} to {target}"
                )
        elif not self._adjacent(source, target):
            raise ValueError(f"envs move between neighbouring shards, not from {source} to {target}")
        if not self.can_move or (around and not self.wraps):
            return None  # DISABLED: no episode end to move at; batches: a group is a batch
        if {source, target} & (self._draining | set(self._parked)):
            return None
        if not (self._wraps_between if around else self._adjacent)(source, target, filling=True):
            # a pending move fills a shard between them: the env would arrive beside no env of its new shard
            return None
        if any(_crosses(move, target) for move in self._moves.values()):
            # the target is an empty shard a pending move passes over: an env arriving there would part the envs
            # the pending move brings from those they join (the adopting shard refused them; the pool broke)
            return None
        if (target, source, around) in self._moves.values():
            # the boundary is moving the other way: the two envs would cross (the one arriving would no
            # longer border its new shard's other side, and the one leaving would wait for ever)
            return None
        envs = self.envs_of(source)
        if around:  # the last worker's top env up, or shard 0's lowest wrapped env down
            order, up = (iter(self.wrap_envs), False) if source == 0 else (reversed(self.shard_envs[source]), True)
        else:  # the edge env first; with moves already pending on this boundary, the next one inward
            up = target > source
            order = reversed(self.shard_envs[source]) if up else iter(self.shard_envs[source])
        index = next((i for i in order if i not in self._moves), None)
        pending = sum(1 for i in envs if self._moves.get(i, (None,))[0] == source)
        if index is None or len(envs) - pending <= 1:  # a shard keeps at least one env
            return None
        if not self._can_carry([index]):
            return None
        self._moves[index] = (source, target, around)
        # shard 0's two parts may each run empty, as long as shard 0 keeps an env (counted above)
        self._views.migrate[index] = (MIGRATE_UP if up else MIGRATE_DOWN) | (MIGRATE_ALL if source == 0 else 0)
        return index

    def _can_carry(self, indices: list[int]) -> bool:
        """Whether these envs can all move keeping their state (``migrate.movable``); asked of their
        shards once per env. One that cannot is never moved: re-created where it arrives, it would
        keep only its generator (a wrapper's running statistics would start again)."""
        unknown = [i for i in indices if i not in self._movable]
        if unknown:
            if self._pending is not None or self._state is not _IDLE:
                return False  # (asked in the middle of a command: not now)
            try:
                answers = self.call("movable", unknown)
            except WorkerDiedError as err:  # (asked inside a step: with on_error="restart" that step replaces it)
                if err.replaced_later:
                    return False
                raise
            for i, ok in zip(unknown, answers):
                self._record_movable(i, bool(ok))
        return all(self._movable[i] for i in indices)

    def _record_movable(self, index: int, ok: bool) -> None:
        self._movable[index] = ok
        if not ok:
            self.unmovable = self.unmovable | {index}  # (a new set: the monitor's thread reads it)

    @property
    def worker_cores(self) -> list[int]:
        """The cores the monitor may move workers to: those ``pin`` names, where it is a list (the user keeps
        the others for something else), else every core this process may run on."""
        if isinstance(self.pin, (list, tuple)):
            return [c for c in self.pin if c in self._allowed_cores] or list(self._allowed_cores)
        return list(self._allowed_cores)

    @property
    def queued_requests(self) -> int:
        """Moves, parkings and unparkings queued from another thread (the monitor's), not yet taken by a step."""
        return len(self._move_requests)

    @property
    def pending_moves(self) -> int:
        """How many envs asked to move (``request_move``) still wait for their episode end."""
        return len(self._moves)

    @property
    def can_move(self) -> bool:
        """Whether envs can move between shards (``request_move``): episodes end in steps (autoreset
        is not DISABLED) and the steps are synchronous (with ``batch_size``, a group is a batch)."""
        return self.autoreset_mode in (SAME_STEP, NEXT_STEP) and self._async is None

    @property
    def wraps(self) -> bool:
        """Whether envs may move around the ring's end (``request_move(..., around=True)``): this
        process steps a shard, there is a worker, the steps are synchronous and autoreset moves envs."""
        return self._local is not None and bool(self._remotes or self._parked) and self.can_move

    def _wraps_between(self, a: int, b: int, filling: bool = False) -> bool:
        """Whether shards ``a`` and ``b`` border each other around the ring's end: one is shard 0,
        stepped by this process, and only empty shards are above the other."""
        other = b if a == 0 else a if b == 0 else None
        if other is None or other == 0 or self._local is None:
            return False
        return all(self._empty(s, filling) for s in range(other + 1, self.num_workers))

    def envs_of(self, shard: int) -> Sequence[int]:
        """The env indices shard ``shard`` steps, in order around the ring: a range, or for shard 0
        once envs moved to it around the ring's end, those (``wrap_envs``) and then its own from 0."""
        if shard == 0 and self.wrap_envs:
            return tuple(self.wrap_envs) + tuple(self.shard_envs[0])
        return self.shard_envs[shard]

    def _adjacent(self, a: int, b: int, filling: bool = False) -> bool:
        """Whether shards ``a`` and ``b`` are neighbours: every shard between them is empty (``filling``:
        and stays so, no pending move bringing it an env)."""
        low, high = min(a, b), max(a, b)
        return all(self._empty(s, filling) for s in range(low + 1, high))

    def _empty(self, shard: int, filling: bool) -> bool:
        """Shard ``shard`` has no envs (``filling``: and no pending move brings it one)."""
        if self.shard_envs[shard]:
            return False
        return not filling or not any(move[1] == shard for move in self._moves.values())

    def _active_neighbour(self, shard: int, step: int) -> int | None:
        """The nearest shard on one side (``step`` -1 or +1) that is neither parked nor being emptied."""
        other = shard + step
        while 0 <= other < self.num_workers:
            if other not in self._parked and other not in self._draining:
                return other if self._adjacent(shard, other) else None
            other += step
        return None

    def queue_move(self, source: int, target: int, around: bool = False) -> None:
        """``request_move`` from another thread: done by the stepping thread at its next step. (Asynchronous batches
        take none: a group is a batch. Only a synchronous step takes queued requests: one left queued stopped the
        monitor, which waits for what it asked.)"""
        if self._async is None:
            self._move_requests.append(("move", source, target, around))

    # -- parking a worker (the monitor, beside a CPU hog) ---------------------------------------
    @property
    def parked(self) -> list[int]:
        """The shards whose worker is parked: no envs, and left out of every command."""
        return sorted(self._parked)

    @property
    def draining(self) -> list[int]:
        """The shards whose envs are leaving, each at its episode end, to park their worker."""
        return sorted(self._draining)

    def can_park(self, shard: int) -> bool:
        """Whether worker ``shard`` can be parked now (see ``request_park``)."""
        return (
            self._async is None
            and self._usable()
            and self.autoreset_mode in (SAME_STEP, NEXT_STEP)
            and any(r.index == shard for r in self._remotes)
            and shard not in self._draining
            and bool(self.shard_envs[shard])
            and not self.unmovable.intersection(self.shard_envs[shard])
            and not any(shard in move[:2] for move in self._moves.values())
            and (self._active_neighbour(shard, -1) is not None or self._active_neighbour(shard, +1) is not None)
        )

    def request_park(self, shard: int) -> bool:
        """Empty worker ``shard`` into its neighbouring shards, each env at its next episode end
        (as ``request_move``, the lower half to the lower neighbour), then leave the worker out of
        every command, asleep, until ``request_unpark``: beside a CPU hog, a worker costs its
        neighbours more in wake-ups and time-sharing than its envs cost them (benchmarks/README.md).
        False when it cannot now: an asynchronous pool, autoreset DISABLED, the calling process's
        shard, a shard already parked or emptying, moves pending on it, no neighbour to take
        its envs, or a command pending (between ``step_async`` and ``step_wait``: ask again after it;
        ``queue_park`` takes it at the next step). A ``shard`` that names no worker is a ValueError."""
        self._check_worker(shard, "request_park")
        parked = self._held_request(self._request_park, shard)
        if parked:  # (by hand: the monitor leaves it parked; its own parks come through queue_park)
            self.monitor_parked.discard(shard)
        return parked

    def _request_park(self, shard: int) -> bool:
        if self._pending is not None or self._state is not _IDLE:
            return False  # (a step in flight, from another thread: its workers would read the moves it marks mid-step)
        if not self.can_park(shard) or not self._can_carry(list(self.shard_envs[shard])):
            return False
        envs = self.shard_envs[shard]
        lower, upper = self._active_neighbour(shard, -1), self._active_neighbour(shard, +1)
        half = 0 if lower is None else len(envs) if upper is None else len(envs) // 2
        for k, index in enumerate(envs):
            down = k < half
            self._moves[index] = (shard, lower if down else upper, False)  # type: ignore[assignment]
            self._views.migrate[index] = MIGRATE_ALL | (MIGRATE_DOWN if down else MIGRATE_UP)
        self._draining.add(shard)
        return True

    def request_unpark(self, shard: int) -> bool:
        """Give worker ``shard`` commands again (with no envs: ``request_move`` gives it some).
        False when it is not parked, or its process ended while it was parked (it stays parked), or a
        command is pending (between ``step_async`` and ``step_wait``: ask again after it; ``queue_unpark``
        takes it at the next step). A ``shard`` that names no worker is a ValueError."""
        self._check_worker(shard, "request_unpark")
        back = self._held_request(self._request_unpark, shard)
        if back:
            self.monitor_parked.discard(shard)
        return back

    def _request_unpark(self, shard: int) -> bool:
        if not self.can_unpark(shard):
            entry = self._parked.get(shard)
            if entry is not None and entry[0].exitcode is not None and shard not in self._told_dead_parked:
                # (it had no envs, so no step failed: said here, once, where bringing it back cannot be done)
                self._told_dead_parked.add(shard)
                self.monitor_parked.discard(shard)  # (the monitor, told by its refused unpark, asks no more)
                warnings.warn(
                    f"fastvec: worker {shard} died while parked, with {exit_status(entry[0].exitcode)}; it stays parked "
                    "and the pool goes on with one process fewer (on_error='restart' would replace it)",
                    RuntimeWarning,
                    stacklevel=user_stacklevel(),
                )
            return False
        if self._state is PoolState.CLOSED or self._terminated:  # by close() in another thread, just now
            raise self._closed_meanwhile("request_unpark")
        if self._pending is not None or self._state is not _IDLE:
            # (the worker would count as part of the command in flight, which it never got: its wait never ended)
            return False
        if self._parked[shard][0].exitcode is not None:
            self._replace_parked(shard)
        self._unpark_now(shard)
        return True

    def _held_request(self, request: Callable[[int], bool], shard: int) -> bool:
        """``request(shard)`` (a park or an unpark) holding the pool as a command does: close() or another
        thread's request waits for it, or it for them (close() and a request changed the parked workers at once:
        a bare KeyError). Inside a step (the monitor's queued requests) this thread holds the pool already, and
        the call a park makes (can its envs move?) goes on under this hold: this method's code is one of
        ``_COMMAND_CODES``, which ``_inside_here`` looks for above the frame that enters."""
        tokens = self._token
        token = tokens.pop() if tokens else self._enter_slowly(None)
        try:
            self._check_usable()
            return request(shard)
        finally:
            self._leave(token)

    def parked_exit_status(self, shard: int) -> str | None:
        """How parked worker ``shard``'s process ended ("exit code -9 (killed by SIGKILL)"), or None while it runs
        (or it is not parked)."""
        entry = self._parked.get(shard)
        return None if entry is None or entry[0].exitcode is None else exit_status(entry[0].exitcode)

    def can_unpark(self, shard: int) -> bool:
        """Whether worker ``shard`` is parked and can come back: alive, or replaced (on_error="restart")."""
        entry = self._parked.get(shard)
        return entry is not None and (self.on_error == "restart" or entry[0].exitcode is None) and self._usable()

    def _usable(self) -> bool:
        """Neither closed nor broken (a park or unpark of such a pool raises, so none can be done)."""
        return self._state is not PoolState.CLOSED and self._state is not PoolState.BROKEN and not self._terminated

    def _check_worker(self, shard: Any, call: str) -> None:
        """``shard`` names one of the pool's workers (shards), as ``request_move``'s shards must: a number of no worker
        answered False, as a park not possible now, and 1.0 gave a bare TypeError."""
        if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)):
            raise TypeError(f"{call}(): a worker is named by its shard number (an int), got {shard!r}")
        if not 0 <= shard < self.num_workers:
            raise ValueError(f"{call}(): there is no worker {shard} (shards 0..{self.num_workers - 1})")

    def _replace_parked(self, shard: int) -> None:
        """on_error="restart": a worker that died while parked (it had no envs) is replaced by a new one,
        with no envs either, at the command count it had; the pool is idle."""
        dead, seq = self._parked[shard]
        exitcode = dead.exitcode
        try:
            self._replace_worker(dead, lambda remote: self._parked.__setitem__(shard, (remote, seq)), seq + 1, None)
        except BaseException as exc:
            self._break(exc)
            raise
        self.worker_restarts += 1
        warnings.warn(
            f"fastvec: worker {shard} died while parked, with {exit_status(exitcode)}; replaced it (on_error='restart')",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )

    def queue_park(self, shard: int) -> None:
        """``request_park`` from another thread: done by the stepping thread at its next step (refused at once with
        asynchronous batches, as ``queue_move``). The monitor's way to park: a worker parked so is among
        ``monitor_parked``, which the monitor brings back when the cores are free (``request_park``'s it leaves)."""
        self._check_worker(shard, "queue_park")
        self._queue_worker_request("park", shard)

    def queue_unpark(self, shard: int) -> None:
        """``request_unpark`` from another thread: done by the stepping thread at its next step (refused at once with
        asynchronous batches, as ``queue_move``)."""
        self._check_worker(shard, "queue_unpark")
        self._queue_worker_request("unpark", shard)

    def _queue_worker_request(self, kind: str, shard: int) -> None:
        if self._async is not None:  # (the reason said: the monitor's event named another, an env that does not pickle)
            self.refused_requests.append((kind, shard, None, "the pool hands out asynchronous batches, whose groups stay"))
        else:
            self._move_requests.append((kind, shard))

    def _park_now(self, shard: int) -> None:
        """Leave the emptied worker ``shard`` out of commands (the pool is idle)."""
        self._draining.discard(shard)
        position = next((k for k, r in enumerate(self._remotes) if r.index == shard), None)
        if position is None or self.shard_envs[shard]:
            return
        seqs = self._seqs.tolist()
        self._parked[shard] = (self._remotes.pop(position), seqs.pop(position))
        self._index_remotes(seqs)

    def _unpark_now(self, shard: int) -> None:
        entry = self._parked.pop(shard, None)
        if entry is None:  # close() in another thread tore the pool down meanwhile (it gave up waiting for this one)
            raise self._closed_meanwhile("request_unpark")
        remote, seq = entry
        seqs = dict(zip((r.index for r in self._remotes), self._seqs.tolist()))
        seqs[shard] = seq
        self._remotes.append(remote)
        self._remotes.sort(key=lambda r: r.index)
        self._index_remotes([seqs[r.index] for r in self._remotes])

    def _all_remotes(self) -> list[Remote]:
        """Every worker, parked ones too, by shard."""
        if not self._parked:
            return self._remotes
        return sorted(self._remotes + [remote for remote, _ in self._parked.values()], key=lambda r: r.index)

    def _take_move_requests(self) -> None:
        """Moves, parkings and unparkings asked since the previous step (the pool is idle)."""
        while self._move_requests:
            kind, *args = self._move_requests.popleft()
            if kind == "move":
                try:
                    moved = self.request_move(*args)
                except ValueError:  # the shards stopped being neighbours since it was asked (a parking)
                    moved = None
                if moved is None:  # (the monitor said it would move: it says that it did not)
                    self.refused_requests.append((kind, args[0], args[1]))
            elif kind == "park":
                if self.request_park(*args):
                    self.monitor_parked.add(args[0])  # (a queued park is the monitor's: it may bring it back)
                else:
                    self.refused_requests.append((kind, args[0], None))
            elif kind == "unpark":
                if not self.request_unpark(*args):
                    self.refused_requests.append((kind, args[0], None))
            else:  # "parked": a shard being emptied lost its last env in the previous command
                self._park_now(*args)

    def _not_moved(self, indices: list[int]) -> None:
        """Envs due to move that no longer pickle stayed in their shards (Shard._packs): they are unmovable
        from now on, and the moves still pending across the same boundary are called off (an env further in
        cannot pass the one that stayed at the edge). A shard being emptied for parking keeps what it still
        has: every move still pending from it is called off."""
        for index in indices:
            move = self._moves.get(index)
            self._record_movable(index, False)
            if move is None:
                continue
            source = move[0]
            draining = source in self._draining
            for other, pending in list(self._moves.items()):
                if pending[0] == source and (draining or pending == move):
                    del self._moves[other]
                    self._views.migrate[other] = 0
            self._draining.discard(source)

    def _settle_moves(self, released: list, slot: int) -> list:
        """Envs that left their shard at their episode end join the neighbour that asked for them."""
        extras: list = []
        failed: list[EnvError] = []
        died = False  # (a flag, not the error: its traceback holds this frame, and the frame this pool)
        for index, _, package in released:
            source, target, around = self._moves.pop(index)
            self._views.migrate[index] = 0
            wrapped = around and source == 0
            old = self.wrap_envs if wrapped else self.shard_envs[source]
            old = range(old.start + 1, old.stop) if index == old.start else range(old.start, old.stop - 1)
            if wrapped:
                self.wrap_envs = old
            else:
                self.shard_envs[source] = old
            if around and target == 0:  # shard 0's wrapped envs grow downwards from the last env
                self.wrap_envs = range(index, self.num_envs)
            else:
                new = self.shard_envs[target]
                self.shard_envs[target] = range(index, new.stop) if index < new.start else range(new.start, index + 1)
            self._place_empty()
            for remote in self._all_remotes():
                remote.envs = self.shard_envs[remote.index]
            self._views.env_worker[index] = target
            # (an env whose reset after moving raises has moved all the same: its error is raised once
            # every move is settled, as an autoreset's would be, and the pool stays usable; one that did not
            # arrive, neither unpickled nor re-made from its factory, breaks the pool, naming it)
            if target == 0 and self._local is not None:
                part = self._wrap_part() if around else self._head
                try:
                    info = part.adopt(index, package, slot)
                except ShardError as err:
                    failed.append(env_errors(err.payloads()))
                    info = None
                except Exception as exc:
                    raise self._not_arrived(index, exc) from exc
                # (its reset info first, as below; copied as the extras of this process's envs are: own_copies)
                arrived = [(index, Extra.RESET_INFO, info)] if info else []
                try:
                    result = {"info": None, "extras": own_copies(arrived + (part.finish_extras(None) or []), "reset (after moving)")}
                except ShardError as err:
                    failed.append(env_errors(err.payloads()))
                    result = {"info": None, "extras": None}
            else:
                try:
                    if not isinstance(package, (bytes, bytearray)):
                        import cloudpickle

                        package = cloudpickle.dumps(package)  # from this process's own shard to a worker
                except Exception as exc:  # (it pickled when the move was asked for: not any more)
                    raise self._not_arrived(index, exc) from exc
                try:
                    (result,) = self.call("adopt", [index], (package, slot))
                except EnvError as err:
                    if err.command == _ADOPT:
                        self._break(err)
                        raise
                    failed.append(err)
                    result = {"info": None, "extras": None}
                except WorkerDiedError as err:
                    if not err.replaced_later:
                        raise
                    died, result = True, {"info": None, "extras": None}
            if result["info"]:
                extras.append((index, Extra.RESET_INFO, result["info"]))
            extras += result["extras"] or []
            self.moves_done += 1
            self.moves_by_route[(source, target, around)] += 1
            if wrapped and not self.wrap_envs:  # the usual step goes back to one Shard's path
                self._local = self._head
            if source in self._draining and not self.shard_envs[source]:
                self._move_requests.append(("parked", source))  # left out from the next step on
        if died:
            more, unmade = self._restart_after_step(slot)
            extras += more
            if unmade:  # envs the replacement could not make: errors of this step, as an env's that raised
                failed.append(env_errors(unmade))
        if failed:
            failed.sort(key=lambda err: err.env_index)
            failed[0].others = failed[1:] + failed[0].others
            try:
                raise failed[0]
            finally:
                failed = None  # (this frame stays in the error's traceback: a reference cycle otherwise)
        return extras

    def _restart_after_step(self, slot: int) -> tuple[list, list]:
        """on_error="restart": a worker died after the step ran, as an env moved into it (its unpickling
        crashing the process). It is replaced now and the step returns: the results the dead worker wrote
        stand, and its envs start new episodes in this step's results (those still running end, truncated;
        restart.restart_all's ``completed``). Raising WorkerDiedError lost the whole step's results, the other
        shards' episode ends too. The restarts' extras, and the errors of envs the replacements could not make."""
        extras: list = []
        unmade: list = []
        for position, dead in enumerate(self._remotes):
            exitcode = dead.exitcode
            if exitcode is None:
                continue
            hung_after = self.step_timeout if dead.hung else None  # (ended by the pool, hung past step_timeout)
            try:
                remote, more = self._replace_worker(
                    dead,
                    lambda remote, position=position: self._remotes.__setitem__(position, remote),
                    int(self._seqs[position]) + 1,
                    (int(Command.STEP), slot, True, self._objects_of(dead.envs), True),  # (the step was done)
                )
            except BaseException as exc:
                self._break(exc)
                raise
            self.worker_restarts += 1
            how = (
                f"died while an env moved into it, with {exit_status(exitcode)}"
                if hung_after is None
                else f"was ended while an env moved into it, still running after step_timeout={hung_after:g} s"
            )
            warnings.warn(
                f"fastvec: worker {dead.index} (envs {remote.envs.start}..{remote.envs.stop - 1}) {how}; restarted it "
                "with fresh envs (on_error='restart')",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            extras += [(i, Extra.RESTARTED, describe(restart_reason(hung_after), _ADOPT)) for i in remote.envs]
            extras += more or []
            if remote.unmade:
                unmade += remote.unmade
                remote.unmade = None
        return extras, unmade

    def _not_arrived(self, index: int, exc: BaseException) -> EnvError:
        """Env ``index`` left its shard and cannot arrive in the other: the pool breaks, with an error naming it."""
        error = env_errors(ShardError(index, _ADOPT, exc).payloads())
        self._break(error)
        return error

    def _wrap_part(self) -> Shard:
        """Shard 0's part for the envs past the last worker's (made when the first one moves there)."""
        if self._tail is None:
            self._tail = self._own_shard([], self.num_envs, [])
        if not isinstance(self._local, WrappedShard):
            self._local = WrappedShard(self._head, self._tail)  # type: ignore[arg-type]
        return self._tail

    def _place_empty(self) -> None:
        """Keep every empty shard's range at the boundary of its neighbours (shards stay in env order)."""
        at = 0
        for shard, envs in enumerate(self.shard_envs):
            if envs:
                at = envs.stop
            elif envs.start != at:
                self.shard_envs[shard] = range(at, at)


def _crosses(move: tuple, shard: int) -> bool:
    """Whether a pending move ``(source, target, around)`` passes over ``shard``: a shard strictly between its ends,
    or, around the ring's end (between shard 0 and the last worker's shard with envs), one past that last shard."""
    source, target, around = move
    if around:
        return shard > max(source, target)
    return min(source, target) < shard < max(source, target)
