"""A shard: the envs one worker owns, stepped in a loop, written into the shared block.

The same code runs in a worker process and, for the calling process's own share of
envs, in the parent. Nothing here talks to other processes: a shard reads actions
from and writes results into the shared views, and returns the rare extras
(non-empty info dicts, restarts, warnings, object-valued observation parts) that its
caller ships by pickle. Every exception inside it, whatever its type and wherever it
comes from (the env, writing its row, a check), leaves as a ShardError naming the env
and the command.

The autoreset modes are three step functions: SAME_STEP resets an env in the step that
ends its episode (SB3; the final observation goes to the terminal-obs buffer), NEXT_STEP
resets it in the following step and ignores that step's action (gymnasium's default),
DISABLED never resets by itself.
"""

from __future__ import annotations

import itertools
import math
import pickle
import time
from collections.abc import Callable
from typing import Any, NoReturn

import gymnasium as gym
import numpy as np

from fastvec import kernels, migrate, restart
from fastvec.checks import OutputChecks
from fastvec.env_calls import copied, private, run_call
from fastvec.errors import ShardError
from fastvec.layout import Views
from fastvec.options import shown_value
from fastvec.protocol import (
    HEADER_TIMING,
    MIGRATE_ALL,
    MIGRATE_DOWN,
    MIGRATE_UP,
    NEXT_STEP,
    SAME_STEP,
    TAG_BITS,
    TAG_DTYPE,
    TAG_PICKLED,
    TAG_SCALAR_ROWS,
    Extra,
    wide_dtype,
)
from fastvec.spaces import Leaf, assemble, is_single_array, same_form, split

__all__ = ["Shard", "StepRun", "WrappedShard"]

TIMING_EVERY = 8  # with the monitor on, each env's step is timed in one command out of this many
# what an env's call may raise and still be that env's error (the pool goes on): in the calling process any
# Exception and GeneratorExit (a KeyboardInterrupt there is the user's Ctrl-C: the pool breaks); a worker, which
# ignores SIGINT, sets it to take the env's own KeyboardInterrupt too (it killed the worker, and the caller learnt
# only "exit code 1", where AsyncVectorEnv names the env)
ENV_ERRORS: tuple[type[BaseException], ...] = (Exception, GeneratorExit)


class StepRun:
    """A step of a shard's envs in parts, which stops between envs and goes on later (Shard.begin_step;
    the calling process's own group under asynchronous batches stops to hand a finished worker its next
    batch): the actions read at its start, the results so far (one per env stepped, in order), the envs
    restarted and the errors met."""

    __slots__ = ("slot", "actions", "timing", "results", "restarted", "errors")

    def __init__(self, slot: int, actions: Any, timing: bool):
        self.slot = slot
        self.actions = actions
        self.timing = timing
        self.results: list = []
        self.restarted: set[int] | None = None
        self.errors: list[ShardError] | None = None


class Shard:
    """Envs ``[start, start + len(envs))`` of a pool."""

    def __init__(
        self,
        envs: list[gym.Env],
        start: int,
        views: Views,
        autoreset_mode: int,
        env_fns: list[Callable[[], gym.Env]] | None = None,
        restart_on_error: bool = False,
        check: str | None = None,
    ):
        self.envs = envs
        self.env_fns = env_fns
        # stepped by the pool's calling process (not a worker): what its envs return, and what the caller
        # gives them, is copied where a worker's would have been pickled (Pool._own_shard sets it)
        self.in_caller = False
        self.next_seeds: dict[int, int] = {}  # local position -> a seed too big for the block, for its next reset
        self.restart_on_error = restart_on_error and env_fns is not None
        self.restarts = 0
        self.stats_row: np.ndarray | None = None  # its row of the block's counters: a restart counts there when it happens
        self.side_extras: list = []  # extras produced along the way (restarts, object parts, final observations)
        self.checks = OutputChecks(check, start)
        self.start = start
        self.stop = start + len(envs)
        self.views = views
        self.autoreset_mode = autoreset_mode
        layout = views.layout
        # (a worker that replaces one emptied for parking starts with no envs: spaces come with its first)
        self.observation_space = envs[0].observation_space if envs else None
        self.action_space = envs[0].action_space if envs else None
        self.leaves: tuple[Leaf, ...] = layout.obs_leaves
        self.single_leaf = is_single_array(self.leaves)
        self.has_objects = not all(leaf.array for leaf in self.leaves)
        # the env's own final observation object travels too where the buffer would change its type
        self.raw_final = self.has_objects or any(leaf.shape == () for leaf in self.leaves)
        self.last_objects: list[list | None] = [None] * len(envs)  # each env's latest object parts
        slots = layout.ring_slots
        self.obs_slots = [[ring[s] for s in range(slots)] for ring in views.obs]
        self.reward_slots = [views.rewards[s] for s in range(slots)]
        self.terminated_slots = [views.terminated[s].view(np.uint8) for s in range(slots)]
        self.truncated_slots = [views.truncated[s].view(np.uint8) for s in range(slots)]
        self.action_leaves: tuple[Leaf, ...] = layout.action_leaves
        self.single_action = is_single_array(self.action_leaves)
        self.action_buffers = [buffer[self.start : self.stop] for buffer in views.actions]
        # one scalar per env (Discrete): ndim read once here, not per command (an ndarray attribute read is a
        # generic attribute lookup)
        self._scalar_rows = self.single_action and views.actions[0].ndim == 1
        self.action_tags = views.action_tags
        # the shared words read one at a time, as memoryviews (Views.control_words): the first action leaf's
        # tag per env, the header (its timing flag), and per env 1 where the pool asked it to move at its
        # next episode end
        self._first_tag_words, self._header_words = views.first_tag_words, views.header_words
        self._migrate_words = views.migrate_words
        self.env_step_ns = views.env_step_ns
        self._timing_tick = 0  # per-env timing samples one command in TIMING_EVERY (see _timed)
        self.to_bytes = False  # whether a released env is pickled (a worker's are: they travel on its pipe)
        self.needs_reset = [False] * len(envs)
        # envs whose observations were found to be the same memory (a buffer their class shares): their
        # observations are copied as each env returns them (see _check_shared_memory)
        self.copies_obs = False
        self._watching: int | None = None  # steps left while copies might be dropped (_watch_copies)
        self._watched = 0  # steps watched since the watch began
        self._saw_shared = False  # whether the watch saw parts of several envs over one memory
        # the memory where a step's observations were first found shared (_shared_at_step: their envs are told once
        # their values differ), and whether the watch saw it again; whether a watch found envs sharing a constant (not
        # copied again for one)
        self._found_where: dict = {}  # (where -> the indices of the envs found over it, the last one's values theirs)
        self._found_seen = False
        self._for_good = False  # whether the watch saw envs' values differ over one memory (it goes on only to tell)
        self._constant_seen = False
        self.step_fns = [env.step for env in envs]
        self.steps = 0

    def step_fn(self, env: gym.Env) -> Callable:
        """What the kernels call to step ``env``: its step, or one that copies its observation (copies_obs)."""
        return _CopyingStep(env.step) if self.copies_obs else env.step

    # -- hot path -----------------------------------------------------------------------------
    def step(self, slot: int, action_objects: list[list] | None = None) -> list | None:
        """Step every env with its action from the shared buffers (and ``action_objects``, the
        action space's object leaves for this shard's envs); write the results into ``slot``.
        Returns the extras ``[(env_index, kind, value), ...]`` or None."""
        if self.start == self.stop:  # every env moved away (a parked worker, between its last move and parking)
            return self.finish_extras(None)
        actions = self._actions(action_objects)
        if self.autoreset_mode == SAME_STEP:
            return self._step_same_step(slot, actions)
        return self._step_next_step(slot, actions)

    # a step in parts (the usual step above stays one call: a run object and the calls between its parts
    # counted 11-17% more instructions a step with 4 null envs)
    def begin_step(self, slot: int, action_objects: list[list] | None = None) -> StepRun:
        """A step of this shard's envs that ``step_envs`` takes some envs at a time and ``end_step``
        writes. The actions are read now."""
        return StepRun(slot, self._actions(action_objects), bool(self._header_words[HEADER_TIMING]) and self._timed())

    def step_envs(self, run: StepRun, stop: int, watch: tuple | None = None) -> None:
        """Step ``run``'s envs from the first not yet stepped up to ``stop`` (a local position). With ``watch``
        (kernels.step_watching's words, done_index, seqs, watch and deadline), it stops sooner, between two
        envs (at least one steps), once a watched worker is done before the deadline; ``len(run.results)``
        says how far it went. (A step that times its envs for the monitor does not stop.)"""
        if self.autoreset_mode == SAME_STEP:
            self._step_same_step(run.slot, run.actions, run, stop, watch)
        else:
            self._step_next_step(run.slot, run.actions, run, stop, watch)

    def end_step(self, run: StepRun) -> list | None:
        """Write ``run``'s results (every env stepped) into its slot, as the usual step's end does;
        returns the extras, or raises the ShardError of every env that raised."""
        errors = run.errors
        if self.autoreset_mode == SAME_STEP:
            if errors:
                raise ShardError.combine(self._reset_ended(run.results, run.restarted, errors, run.slot))
            return self._write_step(run.results, run.slot, run.restarted)
        if errors:
            self._raise_step_errors(run.results, errors, run.slot)
        return self._write_step(run.results, run.slot, None)

    def _actions(self, action_objects: list[list] | None) -> Any:
        """This shard's actions, one per env, in the dtype the caller sent them, each the env's own (an
        env may keep a reference to its action): copies, or for scalar actions the shared rows, whose
        iteration makes a fresh numpy scalar per env."""
        if self.single_action:
            tag = self._first_tag_words[self.start]  # the dtype tag it was sent with, as sent to this shard's envs
            rows = self.action_buffers[0]
            if tag == 0 and self._scalar_rows:  # scalar actions (Discrete): iterating makes each env its own scalar
                return rows
            if tag & TAG_PICKLED:  # (values no 8 bytes hold: each env's row as sent, with the command)
                return action_objects[0]  # type: ignore[index]
            return rows.copy() if tag == 0 else _as_sent(rows, tag)
        tags = self.action_tags[:, self.start].tolist()  # the leaves' tags, as sent to this shard's envs
        arrays = iter([b.copy() if t == 0 else _as_sent(b, t) for b, t in zip(self.action_buffers, tags) if not t & TAG_PICKLED])
        pickled = iter(t & TAG_PICKLED for t in tags)
        objects = iter(action_objects or [])  # (the object leaves' columns and the pickled array leaves', in order)
        columns = [next(objects) if not leaf.array or next(pickled) else next(arrays) for leaf in self.action_leaves]
        return [assemble(self.action_space, [column[j] for column in columns]) for j in range(len(self.envs))]

    def _timed(self) -> bool:
        """Whether this command times each env's step, called while the monitor wants per-env times
        (the header's timing word is set): one command in TIMING_EVERY (each sample counts
        TIMING_EVERY times, so the sums estimate the total), which keeps the two clock reads per env
        off most steps. (A countdown: the cheapest test, on every command while the monitor runs.)"""
        self._timing_tick -= 1
        if self._timing_tick > 0:
            return False
        self._timing_tick = TIMING_EVERY
        return True

    def _step_same_step(
        self, slot: int, actions: Any, run: StepRun | None = None, stop: int = 0, watch: tuple | None = None
    ) -> list | None:
        """SAME_STEP: step every env; reset those whose episode ended (their final observation
        goes to the terminal-obs buffer first). With ``run``: its envs up to ``stop`` (or, with
        ``watch``, fewer: step_envs), the rest of the step left to end_step."""
        start = self.start
        step_fns = self.step_fns
        if run is None:
            results: list = []
            restarted: set[int] | None = None
            errors: list[ShardError] | None = None
            timing = self._header_words[HEADER_TIMING] and self._timed()
        else:
            results, restarted, errors, timing = run.results, run.restarted, run.errors, run.timing
            if stop < len(step_fns):
                step_fns = step_fns[:stop]
        append = results.append
        while True:  # (from the env after the one that raised, until every env stepped)
            try:
                if timing:  # (the kernel reads the clock around each env's step)
                    kernels.step_into(results, step_fns, actions, len(results), self.env_step_ns, start, TIMING_EVERY)
                elif watch is not None:
                    kernels.step_watching(results, step_fns, actions, stop, *watch)
                else:
                    kernels.step_into(results, step_fns, actions, len(results))
                break
            except ENV_ERRORS as exc:
                j = len(results)
                if self.restart_on_error:
                    try:
                        append(restart.after_step_error(self, j, slot, exc, reset_now=True))
                    except ShardError as err:  # its re-creation failed too: reported, the others still step
                        errors = (errors or []) + [err]
                        append(None)
                    else:
                        restarted = restarted or set()
                        restarted.add(j)
                else:  # the other envs still step, as each would in its own process; every error is reported
                    errors = (errors or []) + [ShardError(start + j, "step", exc)]
                    append(None)
                # (after an env that raised, the step in parts may stop: the kernel checks only after the others;
                # checked here, not at the loop's top, so the usual step runs no check at all)
                if watch is not None and not timing and len(results) < stop and kernels.watch_stops(*watch):
                    break
        if run is not None:
            run.restarted, run.errors = restarted, errors
            return None
        if errors:
            raise ShardError.combine(self._reset_ended(results, restarted, errors, slot))
        return self._write_step(results, slot, restarted)

    def _reset_ended(self, results: list, restarted: set[int] | None, errors: list[ShardError], slot: int) -> list[ShardError]:
        """SAME_STEP, a step in which an env raised (its results are never returned): the other envs whose
        episode ended in it are reset now, as each would be in its own process (they went on stepping their
        finished episodes). ``errors`` with any such reset's."""
        latest: dict[int, Any] = {}
        for j, result in enumerate(results):
            if result is None or (restarted is not None and j in restarted) or not _ended(result):
                continue
            try:
                latest[j] = self._autoreset(j, "reset (autoreset after step)")[0]
            except ShardError as err:
                errors.append(err)
        self._raised(results, latest, slot)
        return errors

    def _raised(self, results: list, latest: dict, slot: int | None) -> None:
        """A step (or reset) into ring ``slot`` raises: it returns no results, so what its envs' restarts, resets
        and episode ends queued goes with them (it must not come back with a later command's results); and it
        writes no rows, where the slot before the next step's must still hold each env's latest observation (a
        restart in the next step takes its final observation from there, and a masked reset copies the rows of
        the envs it leaves out from there, whether or not envs restart): ``latest``'s (local position -> a
        reset's observation), else the step's ``results``, else the slot before. Its episode-end flags too (a
        worker's replacement reads there which envs were due to reset, NEXT_STEP): a new episode's none, else the
        step's, else the slot before's."""
        self._drop_queued()
        if slot is None:
            return
        previous = (slot - 1) % self.views.layout.ring_slots
        terminated, truncated = self.terminated_slots, self.truncated_slots
        obs_list = []
        flags = []
        for j in range(len(self.envs)):
            result = results[j] if j < len(results) else None
            i = self.start + j
            if j in latest:
                obs_list.append(latest[j])
                flags.append((0, 0))
            elif isinstance(result, tuple) and len(result) == 5:
                obs_list.append(result[0])
                flags.append((result[2], result[3]))
            else:  # (its step raised, or returned no step result)
                obs_list.append(self.row(previous, j))
                flags.append((terminated[previous][i], truncated[previous][i]))
        try:
            self.write_obs(obs_list, slot, "step")
        except Exception:  # (an observation the rows cannot hold: its env's error is raised with the step's own)
            pass
        for j, (ended, cut) in enumerate(flags):
            try:
                terminated[slot][self.start + j], truncated[slot][self.start + j] = bool(ended), bool(cut)
            except Exception:  # (a flag that is no bool: the env's error says so)
                pass

    def _drop_queued(self) -> None:
        """What a command's restarts, resets and episode ends queued for its results, dropped: it raised."""
        dropped = (Extra.RESTARTED, Extra.RESET_INFO, Extra.FINAL_OBS)
        self.side_extras = [e for e in self.side_extras if e[1] not in dropped]

    def _step_next_step(
        self, slot: int, actions: Any, run: StepRun | None = None, stop: int = 0, watch: tuple | None = None
    ) -> list | None:
        """NEXT_STEP: step every env, except those whose episode ended in the previous step: they
        are reset now (reward 0, flags False) and their action is ignored. DISABLED: step every env.
        With ``run``: its envs up to ``stop`` (or, with ``watch``, fewer: step_envs), the rest of the
        step left to end_step."""
        start = self.start
        needs_reset = self.needs_reset
        autoreset = self.autoreset_mode == NEXT_STEP
        step_fns = self.step_fns
        if run is None:
            results: list = []
            timing = self._header_words[HEADER_TIMING] and self._timed()
            errors: list[ShardError] | None = None
            first = 0
            n = len(self.envs)
            due = True in needs_reset
        else:
            results, timing, errors = run.results, run.timing, run.errors
            first, n = len(results), stop
            if stop < len(step_fns):
                step_fns = step_fns[:stop]
            due = True in needs_reset[first:stop]
        append = results.append
        # the usual step: every env steps, in one kernel call (with an env due for a reset, the loop
        # below: stepping the runs between such envs in kernel calls counted more instructions, not fewer)
        entered = first
        if not due:
            try:
                if timing:
                    kernels.step_into(results, step_fns, actions, first, self.env_step_ns, start, TIMING_EVERY)
                elif watch is not None:  # (stopped early: the loop below stops again before its first env)
                    kernels.step_watching(results, step_fns, actions, n, *watch)
                else:
                    kernels.step_into(results, step_fns, actions, first)
                first = n if watch is None else len(results)  # (episode ends are marked by _write_step, from the flags)
            except ENV_ERRORS as exc:  # the env at len(results) raised: handled as the loop handles it
                first = len(results)
                errors = self._step_failed(first, slot, exc, append, errors)
                first += 1
        for j in range(first, n):
            if watch is not None and not timing and j > entered and kernels.watch_stops(*watch):
                break
            if needs_reset[j]:
                try:
                    obs, info = self._autoreset(j, "reset (autoreset)")
                except ShardError as err:  # (still due for its reset) the other envs still step
                    errors = (errors or []) + [err]
                    append(None)
                    continue
                append((obs, 0.0, False, False, info))
                needs_reset[j] = False
                continue
            try:
                if timing:
                    began = time.perf_counter_ns()
                    result = self.step_fns[j](actions[j])
                    self.env_step_ns[start + j] += (time.perf_counter_ns() - began) * TIMING_EVERY
                else:
                    result = self.step_fns[j](actions[j])
            except ENV_ERRORS as exc:
                errors = self._step_failed(j, slot, exc, append, errors)
                continue
            append(result)
            if autoreset and _ended(result):
                needs_reset[j] = True
        if run is not None:
            run.errors = errors
            return None
        if errors:
            self._raise_step_errors(results, errors, slot)
        return self._write_step(results, slot, None)

    def _raise_step_errors(self, results: list, errors: list[ShardError], slot: int) -> NoReturn:
        """NEXT_STEP / DISABLED, a step in which an env raised: no rows are written, so NEXT_STEP marks the envs
        whose episode ended in it for their reset in the next step here, as _write_step would from the flags
        (those stepped in a kernel call are not marked as they step); then every env's error is raised."""
        if self.autoreset_mode == NEXT_STEP:
            needs_reset = self.needs_reset
            for j, result in enumerate(results):
                if _ended(result):
                    needs_reset[j] = True
        self._raised(results, {}, slot)
        raise ShardError.combine(errors)

    def _step_failed(
        self, j: int, slot: int, exc: Exception, append: Any, errors: list[ShardError] | None
    ) -> list[ShardError] | None:
        """NEXT_STEP / DISABLED: env j raised ``exc`` while stepping. Without restarts, the error joins
        ``errors`` (the other envs still step; every error is reported) and None stands for its result
        (the results stay one per env stepped: a step in parts goes on from their count); with
        on_error="restart" the env is re-created, its result appended, and its episode starts in the
        next step."""
        if not self.restart_on_error:
            append(None)
            return (errors or []) + [ShardError(self.start + j, "step", exc)]
        try:
            append(restart.after_step_error(self, j, slot, exc, reset_now=False))
        except ShardError as err:  # its re-creation failed too (the next step tries again, and ends the episode)
            append(None)
            # (one list for the whole step, grown in place: err's traceback holds this frame, and a list of the
            # earlier envs' errors kept here would outlive ShardError.combine's clear(), a reference cycle
            # err -> this frame -> that list -> the first error -> its ``others`` -> err)
            if errors is None:
                errors = []
            errors.append(err)
            return errors
        self.needs_reset[j] = True
        return errors

    def _autoreset(self, j: int, command: str) -> tuple[Any, dict]:
        """Reset env j after its episode ended; with on_error="restart" a failing env is re-created."""
        try:
            obs, info = self.envs[j].reset()
        except ENV_ERRORS as exc:
            if not self.restart_on_error:
                raise ShardError(self.start + j, command, exc) from exc
            obs, info = restart.reset_fresh(self, j, exc, command, {})
        return (copied(obs), copied(info)) if self.copies_obs else (obs, info)

    def take_objects(self) -> list | None:
        """A command raised: the OBJECTS extras of the observations it wrote into the rows (_raised), taken
        out of those waiting for the next command's results to go with its error. The parent keeps each
        env's latest object parts: were they to come only with the next results, a worker that dies before
        sending them would leave its replacement's final observations of the envs with older object parts
        beside the rows' newer array parts."""
        if not self.has_objects or not self.side_extras:
            return None
        objects = [e for e in self.side_extras if e[1] == Extra.OBJECTS]
        if objects:
            self.side_extras = [e for e in self.side_extras if e[1] != Extra.OBJECTS]
        return objects or None

    def finish_extras(self, extras: list | None) -> list | None:
        """A command's extras, with what was gathered while it ran (restarts, object parts,
        final observations, check warnings)."""
        if self.side_extras:
            extras = (extras or []) + self.side_extras
            self.side_extras = []
        return self.checks.drain(extras)

    def _write_step(self, results: list, slot: int, restarted: set[int] | None) -> list | None:
        """Write the envs' step results into ``slot``; in SAME_STEP, reset the envs whose episode
        ended (not those just ``restarted``), their final observations kept apart. Returns the extras."""
        start = self.start
        code = None
        if self.single_leaf:  # the usual case: one kernel call writes every row
            try:
                code, ended, has_info, nan, shared = kernels.write_results(
                    results,
                    self.obs_slots[0][slot],
                    self.reward_slots[slot],
                    self.terminated_slots[slot],
                    self.truncated_slots[slot],
                    start,
                    self.checks.active,
                )
            except Exception:
                code = None
        if code is None or code >= 0:  # structured observations, or a problem to find and name
            ended, has_info, nan = self._write_step_slowly(results, slot)
            shared = _first_shared([r[0] for r in results]) if len(results) > 1 and not self.copies_obs else -1
        elif code <= -2:  # a cast: named (the envs from the first one cast: each is warned once)
            cast = -2 - code
            self._gather([r[0] for r in results[cast:]], self.obs_slots[0][slot], self.leaves[0], "step", True, cast)
        self.steps += len(results)
        if nan >= 0 and self.checks.active:
            self.checks.problem(nan, "step", "nan-reward", "returned a NaN reward")
            rewards = self.reward_slots[slot]
            for j in range(nan + 1, len(results)):  # (the kernel names the first; each env is warned once)
                reward = rewards[start + j]  # (as stored: a None reward is NaN there)
                if reward != reward and not self.checks.warned(j, "nan-reward"):
                    self.checks.problem(j, "step", "nan-reward", "returned a NaN reward")
        extras: list | None = None
        leaving: list[int] | None = None
        failed: list[ShardError] | None = None
        if ended and self.autoreset_mode == SAME_STEP:
            migrate = self._migrate_words
            # one plain array (the usual case): each row copied by _gather directly, without write_obs's
            # structure walk (an episode ends in a few percent of env steps: this is per env, not per command)
            plain = self.single_leaf and not self.raw_final
            if plain:
                leaf, checking = self.leaves[0], self.checks.active
                slot_obs = self.obs_slots[0][slot]
            # (a copying process: what each ended env's objects hold before any of them resets, see _after_reset)
            holding = {j: self._held(j) for j in ended} if self.copies_obs else {}
            for j in ended:
                if restarted is not None and j in restarted:
                    continue
                final = results[j][0] if not self.copies_obs else getattr(self.step_fns[j], "original", results[j][0])
                if migrate[start + j] and self._may_leave(j) and self._packs(j):  # its new shard resets it
                    # (as it is now: the env is closed as it is packed, and its own object pickled after that)
                    self._write_final(j, self._step_values(j, results, final), plain)
                    leaving = (leaving or []) + [j]
                    continue
                env = self.envs[j]
                before = self._step_values(j, results, final) if self.restart_on_error else None
                held = holding.get(j)
                try:
                    obs, reset_info = self._autoreset(j, "reset (autoreset after step)")
                except ShardError as err:  # the other ended envs still reset; every error is reported
                    failed = (failed or []) + [err]
                    continue
                if held is not None and self.envs[j] is env:  # (as in a process of its own: Shard._held)
                    final, info = self._after_reset(j, results, held)
                    results[j] = (*results[j][:4], info)
                if not has_info and _said(results[j][4]):  # (an info its reset filled: sent as the references send it then)
                    has_info = True
                # the final observation read after the reset, as SB3 and gymnasium read the env's own object (an
                # env that changes its array in place shows the reset's values there too, whatever its dtype);
                # as the step left it where the reset raised and the env was made again (on_error="restart")
                self._write_final(j, final if self.envs[j] is env else before, plain)
                if plain:
                    self._gather([obs], slot_obs, leaf, "reset (autoreset after step)", checking, j)
                else:
                    self.write_obs([obs], slot, "reset (autoreset after step)", [j])
                if _said(reset_info):
                    extras = (extras or []) + [(start + j, Extra.RESET_INFO, reset_info)]
        elif ended and self.autoreset_mode == NEXT_STEP:
            for j in ended:  # (the usual step's envs are marked here, not one by one as they step)
                self.needs_reset[j] = True
            migrate = self._migrate_words
            leaving = [j for j in ended if migrate[start + j] and self._may_leave(j) and self._packs(j)]
        if self._watching is not None:  # (after the final observations: those read the envs' own objects still)
            self._watch_copies(results)
        if shared >= 0 and not self.copies_obs and not self._constant_seen:
            self._shared_at_step([r[0] for r in results])  # (after the final observations: as above)
        if has_info:
            extras = (extras or []) + [(start + j, Extra.INFO, r[4]) for j, r in enumerate(results) if _said(r[4])]
        if leaving:
            self._release(leaving)
        if failed:  # (the step returns no results: what its resets and restarts queued goes with them, as _raised)
            self._drop_queued()
            raise ShardError.combine(failed)
        if self.side_extras or self.checks.pending:
            return self.finish_extras(extras)
        return extras

    def _held(self, j: int) -> tuple | None:
        """SAME_STEP, a copying process, env j's episode ended: what its own objects (observation, info) hold before
        the ended envs reset (copies), where it copied this step's results; else None. See _after_reset."""
        fn = self.step_fns[j]
        if not isinstance(fn, _CopyingStep) or not fn.fresh:
            return None
        return fn, copied(fn.original), copied(fn.original_info)

    def _after_reset(self, j: int, results: list, held: tuple) -> tuple[Any, Any]:
        """Env j's final observation and info (copies), as a process of its own would send them: read after its reset
        (SB3 and gymnasium send them then) where the reset changed what its objects held, else as the env returned them
        at its step (the next envs of this process may have written a memory it shares with them since: a frame its
        class shares, which its reset leaves as it is). Nothing is written into the env's objects."""
        fn, obs_before, info_before = held
        obs = fn.original if not _same_values(obs_before, fn.original) else results[j][0]
        info = copied(fn.original_info) if not _same_values(info_before, fn.original_info) else results[j][4]
        return (copied(obs) if obs is fn.original else obs), info

    def _step_values(self, j: int, results: list, final: Any) -> Any:
        """Env j's observation as its step left it, where the env leaves or its reset raises (it is closed): in a
        copying process the copy taken as the env returned it (its own object, ``final``, may be a memory the next envs
        wrote), else a copy of it now."""
        if self.copies_obs and isinstance(self.step_fns[j], _CopyingStep):
            return results[j][0]
        return copied(final)

    def _write_final(self, j: int, final: Any, plain: bool) -> None:
        """SAME_STEP: env j's final observation into the terminal-obs buffers (``plain``: one array, its row
        copied directly, without write_terminal's structure walk: an episode ends in a few percent of env steps)."""
        if not plain:
            self.write_terminal(j, final, "step")
        # the env's own object where the buffer's row would not be it (cast, or not an array)
        elif self._gather([final], self.views.terminal_obs[0], self.leaves[0], "step", False, j, cast=True) or type(final) is not np.ndarray:
            self.side_extras.append((self.start + j, Extra.FINAL_OBS, final))

    # -- moving envs between shards (fastvec.migrate) -------------------------------------------
    def _may_leave(self, j: int) -> bool:
        """Only an edge env moves, from the side it moves to (shards stay contiguous), and a shard
        keeps at least one env unless the pool is emptying it (MIGRATE_ALL: a worker being parked)."""
        flag = self._migrate_words[self.start + j]
        last = len(self.envs) - 1
        edge = (j == 0 and flag & MIGRATE_DOWN) or (j == last and flag & MIGRATE_UP)
        return bool(edge) and (last > 0 or bool(flag & MIGRATE_ALL))

    def _packs(self, j: int) -> bool:
        """Whether env j, due to leave, still pickles with its factory. The pool asked once whether it could
        move; since then it may have taken something that does not pickle (a render surface made at its first
        render(), an open file): it stays then, reset here as usual, and the pool is told (NOT_MOVED). Moved
        anyway, it would arrive re-created from its factory, its state lost."""
        if migrate.movable(self.envs[j], self.env_fns[j] if self.env_fns else None):
            return True
        self.side_extras.append((self.start + j, Extra.NOT_MOVED, None))
        return False

    def _release(self, positions: list[int]) -> None:
        """The envs at local ``positions`` (edges) leave: packed into RELEASED extras."""
        for j in sorted(set(positions), reverse=True):  # the last first, so the first keeps its position
            if not self._may_leave(j):
                continue
            index = self.start + j
            package = migrate.pack(self.envs[j], self.env_fns[j] if self.env_fns else None, self.last_objects[j], self.to_bytes)
            for column in (self.envs, self.step_fns, self.needs_reset, self.last_objects):
                del column[j]
            if self.env_fns is not None:
                del self.env_fns[j]
            if j == 0:
                self.start += 1
            else:
                self.stop -= 1
            self._rerange()
            self.side_extras.append((index, Extra.RELEASED, package))

    def adopt(self, index: int, package: Any, slot: int) -> dict | None:
        """Take env ``index`` (the neighbour of an edge) from its old shard's package; in SAME_STEP
        reset it now into ``slot``, else at the next step. Returns the reset's info."""
        env, env_fn, objects = migrate.unpack(package)
        if not self.envs:  # an empty shard (a worker back from parking) sits wherever its first env is
            self.start = self.stop = index
            if self.action_space is None:
                self.observation_space, self.action_space = env.observation_space, env.action_space
        if index == self.start - 1:
            j, self.start = 0, self.start - 1
            for column, value in ((self.envs, env), (self.step_fns, self.step_fn(env)), (self.needs_reset, True), (self.last_objects, objects)):
                column.insert(0, value)
            if self.env_fns is not None:
                self.env_fns.insert(0, env_fn)
        elif index == self.stop:
            j, self.stop = len(self.envs), self.stop + 1
            for column, value in ((self.envs, env), (self.step_fns, self.step_fn(env)), (self.needs_reset, True), (self.last_objects, objects)):
                column.append(value)
            if self.env_fns is not None:
                self.env_fns.append(env_fn)
        else:
            raise ValueError(f"env {index} is not next to this shard's envs {self.start}..{self.stop - 1}")
        self._rerange()
        self.start_watch()  # (its memory may be the other envs': a buffer their class shares)
        if self.autoreset_mode != SAME_STEP:
            return None  # NEXT_STEP: its reset comes with the next step, as it would have
        self.needs_reset[j] = False
        obs, info = self._autoreset(j, "reset (after moving)")
        self.write_obs([obs], slot, "reset (after moving)", [j])
        return info or None

    def adopt_call(self, index: int, package: Any, slot: int) -> dict:
        """``adopt`` as a worker answers the pool's call: the reset's info and the extras it made."""
        return {"info": self.adopt(index, package, slot), "extras": self.finish_extras(None)}

    def _rerange(self) -> None:
        self.action_buffers = [buffer[self.start : self.stop] for buffer in self.views.actions]
        self.checks.start = self.start

    def _write_step_slowly(self, results: list, slot: int) -> tuple[list[int], bool, int]:
        """The general path of ``_write_step``: any observation structure, and every problem named.
        Returns (the positions whose episode ended, some info not empty, the first NaN reward's position or -1)."""
        start = self.start
        try:
            obs_list, rewards, terminated, truncated, infos = map(list, zip(*results))
        except (TypeError, ValueError) as exc:
            raise self._bad_step_result(results) from exc
        if any(not isinstance(r, tuple) or len(r) != 5 for r in results):
            raise self._bad_step_result(results)
        self.write_obs(obs_list, slot, "step")
        try:
            kernels.store_floats(rewards, self.reward_slots[slot], start)
        except Exception:  # (what else the references take: None, a one-element array, a numeric string)
            self.reward_slots[slot][start : start + len(rewards)] = [
                _as_reward(r, start + k) for k, r in enumerate(rewards)
            ]
        for flags, out, what in (
            (terminated, self.terminated_slots, "terminated"),
            (truncated, self.truncated_slots, "truncated"),
        ):
            try:
                kernels.store_bools(flags, out[slot], start)
            except Exception as exc:
                bad = next((k for k, f in enumerate(flags) if not _is_flag(f)), 0)
                raise ShardError(start + bad, "step", TypeError(f"{what} must be a bool, got {flags[bad]!r}")) from exc
        nan = kernels.first_nan(self.reward_slots[slot], start, self.stop) if self.checks.active else -1
        ended = [j for j, (term, trunc) in enumerate(zip(terminated, truncated)) if term or trunc]
        return ended, any(map(_said, infos)), (nan - start if nan >= 0 else -1)

    # -- reset ---------------------------------------------------------------------------------
    def reset(self, slot: int, options: list | None, masked: bool, pass_options_always: bool) -> list | None:
        """Reset the envs (all, or those in the shared reset mask) with the shared seeds.

        ``options[j]`` is passed to env j (omitted when falsy, as SB3 does, unless
        ``pass_options_always``, as gymnasium does).
        """
        if self.start == self.stop:
            return self.finish_extras(None)
        reset_mask = self.views.reset_mask[self.start : self.stop].tolist() if masked else None
        rows = None if reset_mask is None else [j for j, m in enumerate(reset_mask) if m]
        obs_list, extras = self.reset_rows(
            rows if rows is not None else range(len(self.envs)), options, pass_options_always, slot=slot, masked=rows is not None
        )
        self.write_obs(obs_list, slot, "reset", rows)
        self.start_episodes(slot, rows)
        return self.finish_extras(extras)

    def _check_shared_memory(self, originals: list, copies: list, anew: bool = False) -> None:
        """Envs of this process whose reset observations or infos (``originals``, (observation, info) as the envs
        returned them; ``copies``, taken as each returned them) are over the same memory (a buffer their class shares,
        a C extension's static frame): each env's observation and info is read once every env of the process has
        stepped, so such envs would all give the last one's values (SB3's DummyVecEnv copies each as it comes; SB3's
        SubprocVecEnv and AsyncVectorEnv run a process per env). From then on each is copied as it comes (the resets'
        already are): for good where the parts over one memory hold values of each env's own; where they are the same
        (a constant they share, or a buffer each wrote alike), watched (_watch_copies). Envs found sharing a constant
        before (a watch ended) are not copied again for one. A watch running goes on; ``anew`` (every env reset: new
        episodes, whose values may first differ later in them) counts its steps from the start again, within
        WATCH_LIMIT steps of its start, where a reset of some envs (masked) does not."""
        groups = _shared(originals, copies)
        if not groups:
            return
        if any(_differ(group) for group in groups.values()):
            self._copy_from_now(watch=False)
        elif self.copies_obs or not self._constant_seen:
            self._copy_from_now(watch=True, anew=anew)

    def _copy_from_now(self, watch: bool, anew: bool = False) -> None:
        """Every env's observation and info copied as it returns them from now on (a _CopyingStep each): for good, or
        ``watch``ed for WATCHED_STEPS steps (a watch running goes on, counted again from the start with ``anew``).
        Copies for good stay so."""
        if not self.copies_obs:
            self.copies_obs = True
            self.step_fns[:] = [self.step_fn(env) for env in self.envs]
            self._watching = WATCHED_STEPS if watch else None
            self._watched, self._saw_shared, self._found_seen, self._for_good = 0, False, False, False
        elif self._watching is not None:
            # (anew only within WATCH_LIMIT steps of the watch's start: resets every few steps would keep it for ever)
            anew = anew and self._watched < WATCH_LIMIT
            self._watching = None if not watch else WATCHED_STEPS if anew else self._watching

    def start_watch(self) -> None:
        """Envs new to this shard or made again (a replacement worker's, an env moved in), where it has several: copied
        and watched, whether or not their resets are found over one memory (a deferred or masked reset sees only some
        of them, an env moved in is reset alone)."""
        if len(self.envs) > 1:
            self._copy_from_now(watch=True, anew=True)

    def _shared_at_step(self, originals: list) -> None:
        """A step's observations (``originals``, as the envs returned them) of which some are over the same memory,
        though their resets' were not (a buffer their class shares only in step(): write_results finds them). Each was
        read once every env of this process had stepped, so this step gave them all the last one's values: from now
        on each is copied as it comes, watched as a reset's are; once their values differ the envs are told (this
        step's were lost); if the values stay the same (a constant they share) the copies stop."""
        groups = _shared(originals, originals)
        if groups:  # (an array and a view of another part of it start at one byte only where empty)
            # (env indices, not positions: an env may move in or out before they are told)
            self._found_where = {where: [self.start + k for k, _ in group] for where, group in groups.items()}
            self._copy_from_now(watch=True)

    def _told_shared(self, found: list[int]) -> None:
        """The envs ``found`` (env indices) were found in a step over one memory (_shared_at_step), which gave them the
        last one's values, and the watch saw values differ there since: each but the last is told, once (from the
        shard that has it)."""
        if not self.checks.active:  # (check="off": nothing said)
            return
        last = found[-1]
        for env in found[:-1]:
            if not self.start <= env < self.stop:  # (moved away meanwhile)
                continue
            self.checks.warn(  # (a warning under check="raise" too: this step's values are right)
                env - self.start, "shared-memory",
                f"returned its observations in memory that env {last}'s step writes too (a buffer their class shares, "
                f"as a C extension's frame): one step gave env {last}'s values as this env's, before this process "
                "found it (the envs of a process are read once each has stepped); each env's observation is copied "
                "as it returns it from then on",
            )

    def _watch_copies(self, results: list) -> None:
        """A step's results while copies might be dropped (_copy_from_now): where the parts of the envs' observations
        and infos over one memory hold different values in their copies, the copies stay for good (the envs found
        sharing in a step told); after WATCHED_STEPS steps, they stop where every such part held the same values
        (envs sharing a constant) or none was seen (envs new to the process), and stay for good where memory found
        shared in a step was not seen again (shared in some steps only). (Never an error of the step: where it cannot
        tell, the copies stay.)"""
        left = self._watching
        try:
            originals, copies, positions = [], [], []
            for k, fn in enumerate(self.step_fns[: len(results)]):
                result = results[k]
                if isinstance(fn, _CopyingStep) and fn.fresh and type(result) is tuple and len(result) == 5:
                    originals.append((fn.original, fn.original_info))
                    copies.append((result[0], result[4]))
                    positions.append(k)
                    fn.fresh, fn.original_info = False, None  # (an env that autoresets instead of stepping: not compared)
            groups = _shared(originals, copies)
            differing = [(where, group) for where, group in groups.items() if _differ(group)]
        except Exception:
            self._watching = None
            return
        found = self._found_where
        if differing:  # (copied for good; the envs found over that memory in a step are told: their values were lost)
            self._for_good = True
            for where, _ in differing:
                if where in found:
                    self._told_shared(found.pop(where))
        if self._for_good and not found:  # (nothing left to tell)
            self._watching = None
            return
        if groups:
            self._saw_shared = True
            self._found_seen = self._found_seen or any(where in found for where in groups)
        self._watched += 1
        if left > 1:  # type: ignore[operator]
            self._watching = left - 1  # type: ignore[operator]
        elif self._for_good or (found and not self._found_seen):  # (or shared in some steps only: copied for good)
            self._watching, self._found_where = None, {}
        else:
            # (envs sharing a constant: not looked for in steps again, where write_results would find it at every step)
            self._constant_seen = self._constant_seen or self._saw_shared
            self._watching, self.copies_obs, self._found_where = None, False, {}
            self.step_fns[:] = [env.step for env in self.envs]

    def reset_rows(
        self,
        rows: Any,
        options: list | None,
        pass_options_always: bool,
        seeded: bool = True,
        slot: int | None = None,
        masked: bool = False,
    ) -> tuple[list, list | None]:
        """Reset the envs at local positions ``rows`` (with their shared seeds unless not
        ``seeded``); returns (observations, extras). A reset into ring slot ``slot`` that raises writes each
        env's latest observation there first, as a step that raises does (_raised); a ``masked`` one only the
        new observations of the envs that reset (the slot holds the others' latest rows already: in asynchronous
        batches it is their own slot, and the slot before holds older ones)."""
        views = self.views
        seeds = views.reset_seeds[self.start : self.stop].tolist()
        seed_mask = views.seed_mask[self.start : self.stop].tolist() if seeded else [False] * len(self.envs)
        extras: list | None = None
        errors: list[ShardError] = []
        reset: dict[int, Any] = {}  # local position -> its new observation (in the order of ``rows``)
        next_seeds = self.next_seeds
        several, originals, copies = len(self.envs) > 1, [], []
        for j in rows:
            kwargs: dict[str, Any] = {"seed": seeds[j] if seed_mask[j] else None}
            if next_seeds:
                kwargs["seed"] = next_seeds.pop(j, kwargs["seed"])
            opt = options[j] if options is not None else None
            if opt or pass_options_always:
                # each env its own copy, as over a pipe of its own (AsyncVectorEnv, SB3): an env that
                # pops a key must not take it from the next env, nor from the caller's dict
                kwargs["options"] = private(opt) if opt is not None else None
            try:
                obs, info = self.envs[j].reset(**kwargs)
            except ENV_ERRORS as exc:
                if not self.restart_on_error:  # the other envs still reset; every error is reported
                    errors.append(ShardError(self.start + j, "reset", exc))
                    continue
                try:
                    if kwargs.get("options") is not None:  # the failed env may have changed its copy
                        kwargs["options"] = private(opt)
                    obs, info = restart.reset_fresh(self, j, exc, "reset", kwargs)
                except ShardError as err:  # its re-creation failed too
                    errors.append(err)
                    continue
            self.needs_reset[j] = False
            if several:  # (the next env's reset may write over them: see _check_shared_memory)
                originals.append((obs, info))
                obs, info = copied(obs), copied(info)
                copies.append((obs, info))
            if _said(info):
                extras = (extras or []) + [(self.start + j, Extra.RESET_INFO, info)]
            reset[j] = obs
        if len(originals) > 1 and (not self.copies_obs or self._watching is not None):  # (not copied for good yet)
            self._check_shared_memory(originals, copies, anew=len(originals) == len(self.envs))
        if errors:
            if masked:
                self._drop_queued()
                if slot is not None and reset:
                    try:
                        self.write_obs(list(reset.values()), slot, "reset", list(reset))
                    except Exception:  # (as _raised: the env's error is raised with the reset's own)
                        pass
            else:
                self._raised([], reset, slot)
            raise ShardError.combine(errors)
        return list(reset.values()), extras

    def start_episodes(self, slot: int, rows: list[int] | None, truncated: bool = False) -> None:
        """Rows that hold a new episode's first observation (all when ``rows`` is None): reward 0,
        not terminated, truncated only when the old episode was cut short by a restart."""
        index: Any = slice(self.start, self.stop) if rows is None else [self.start + j for j in rows]
        self.reward_slots[slot][index] = 0.0
        self.terminated_slots[slot][index] = 0
        self.truncated_slots[slot][index] = 1 if truncated else 0

    def _bad_step_result(self, results: list) -> ShardError:
        for j, result in enumerate(results):
            if not isinstance(result, tuple) or len(result) != 5:
                got = f"a {len(result)}-tuple" if isinstance(result, tuple) else type(result).__name__
                return ShardError(
                    self.start + j,
                    "step",
                    TypeError(
                        f"env.step() must return (obs, reward, terminated, truncated, info) as gymnasium does, "
                        f"got {got}; wrap old gym envs with shimmy or gymnasium's compatibility wrappers"
                    ),
                )
        return ShardError(self.start, "step", TypeError("env.step() returned a malformed result"))

    # -- reading and writing observations -------------------------------------------------------
    def row(self, slot: int, j: int) -> Any:
        """Env j's latest observation as stored in ring slot ``slot`` (a copy, in the space's structure;
        object parts are the latest the env produced, None where it never produced one here)."""
        arrays = iter([ring[slot][self.start + j].copy() for ring in self.obs_slots])
        if self.single_leaf:
            return next(arrays)
        objects = iter(self.last_objects[j] or [None] * len(self.leaves))
        return assemble(self.observation_space, [next(arrays) if leaf.array else next(objects) for leaf in self.leaves])

    def write_obs(self, obs_list: list, slot: int, command: str, rows: list[int] | None = None) -> None:
        """Write the observations of the envs at local positions ``rows`` (all, in order, when None)
        into ring slot ``slot``; object parts become OBJECTS extras."""
        checking = self.checks.active
        if self.single_leaf and rows is None:
            self._gather(obs_list, self.obs_slots[0][slot], self.leaves[0], command, checking)
            return
        positions = range(len(obs_list)) if rows is None else rows
        buffer = 0
        objects: list[list] = []
        for leaf in self.leaves:
            parts = self._parts(obs_list, leaf, command, positions)
            if not leaf.array:
                objects.append(parts)
                continue
            dst = self.obs_slots[buffer][slot]
            buffer += 1
            if rows is None:
                self._gather(parts, dst, leaf, command, checking)
            else:
                for part, j in zip(parts, rows):
                    self._gather([part], dst, leaf, command, checking, offset=j)
        if objects:
            for k, j in enumerate(positions):
                values = [column[k] for column in objects]
                self.last_objects[j] = values
                self.side_extras.append((self.start + j, Extra.OBJECTS, values))

    def write_terminal(self, j: int, obs: Any, command: str) -> None:
        """Env j's final observation: its array parts into the terminal-obs buffers and, where the
        buffers would not give back the env's own object (object or scalar parts), the object itself."""
        if self.autoreset_mode != SAME_STEP:  # (an episode's last observation is the step's own: nothing to keep)
            return
        buffer = 0
        cast = False
        for leaf in self.leaves:
            if leaf.array:
                part = self._parts([obs], leaf, command, [j])[0]
                cast = self._gather([part], self.views.terminal_obs[buffer], leaf, command, False, j, cast=True) or cast
                buffer += 1
        # the env's own object, as the references give, where the buffers would rebuild another (a part cast to
        # the space's dtype, lists for arrays, another key order or container)
        if self.raw_final or cast or not same_form(self.observation_space, obs):
            self.side_extras.append((self.start + j, Extra.FINAL_OBS, obs))

    def _parts(self, obs_list: list, leaf: Leaf, command: str, positions: Any) -> list:
        if leaf.path == ():
            return obs_list
        parts = []
        for obs, j in zip(obs_list, positions):
            try:
                parts.append(split(obs, leaf))
            except Exception as exc:
                # the lookup's own type (KeyError for a missing key), as the references raise it
                kind = type(exc) if type(exc) in (KeyError, IndexError, TypeError) else ValueError
                raise ShardError(self.start + j, command, kind(f"observation has no part {leaf.name!r}: {exc!r}")) from exc
        return parts

    def _gather(
        self,
        items: list,
        dst: np.ndarray,
        leaf: Leaf,
        command: str,
        checking: bool,
        offset: int = 0,
        cast: bool = False,
        reshaped: bool = False,
    ) -> bool:
        """Copy ``items`` into rows ``start + offset + k`` of ``dst``; any failure names its env. With
        ``cast``, returns whether some item was an array of another dtype (cast on the way in)."""
        first = self.start + offset
        try:
            code = kernels.gather_rows(items, dst, first, checking or cast)
        except Exception:
            # a value the row's dtype cannot hold (300 into uint8) or cannot convert: find whose
            for k, item in enumerate(items):
                try:
                    np.asarray(item, dtype=dst.dtype)
                except Exception as exc:
                    # numpy's own type (OverflowError for 300 into uint8, TypeError for a dict), as the references
                    # raise it
                    kind = type(exc) if type(exc) in (OverflowError, TypeError) else ValueError
                    raise ShardError(
                        first + k,
                        command,
                        kind(f"observation{_where(leaf)} cannot be stored as {dst.dtype} ({leaf.name}): {exc!r}"),
                    ) from exc
            raise
        if code == -1:
            return False
        if code <= -2 and not checking:
            return True
        k = code if code >= 0 else -2 - code
        got = np.asarray(items[k])
        if code >= 0:
            size = math.prod(leaf.shape)
            if reshaped or got.size != size or got.dtype == object:
                raise ShardError(
                    first + k,
                    command,
                    ValueError(
                        f"observation{_where(leaf)} has shape {got.shape} (dtype {got.dtype}), "
                        f"expected shape {leaf.shape} (dtype {leaf.dtype}) from the observation space"
                    ),
                )
            # as many values in another shape ((3,) for a (3, 1) Box, [] for (0, 3)): stored in the space's
            # shape, as gymnasium's shared memory stores them (its writes are flat) and SB3 passes them on.
            # Every such item from here on is reshaped in one pass, then copied in one more call
            items = list(items[k:])
            for j, item in enumerate(items):
                try:
                    if np.shape(item) == leaf.shape:
                        continue
                    # (a plain array: a subclass such as np.matrix keeps two dimensions whatever the reshape)
                    arr = np.asarray(item) if isinstance(item, np.ndarray) else np.asarray(item, dtype=dst.dtype)
                except Exception:
                    continue  # (the copy below names it)
                if arr.size != size or arr.dtype == object:
                    continue
                if self.checks.active:
                    self.checks.problem(
                        offset + k + j,
                        command,
                        f"shape:{leaf.name}",
                        f"returned an observation{_where(leaf)} of shape {arr.shape}; the observation space says "
                        f"{leaf.shape} ({'which check=' + repr('raise') + ' refuses' if self.checks.raising else 'stored in that shape'})",
                    )
                items[j] = arr.reshape(leaf.shape)
            self._gather(items, dst, leaf, command, checking, offset + k, cast, reshaped=True)
            return True  # (not the env's own form: a final observation travels as the env's object)
        kind = f"dtype:{leaf.name}"
        for j in range(k, len(items)):  # (the kernel names the first cast; each env is warned once)
            item = items[j]
            if j == k or (
                isinstance(item, (np.ndarray, np.generic)) and item.dtype != dst.dtype and not self.checks.warned(offset + j, kind)
            ):
                self.checks.problem(
                    offset + j,
                    command,
                    kind,
                    f"returned an observation{_where(leaf)} of dtype {np.asarray(item).dtype}; the observation space "
                    f"says {leaf.dtype} ({'which check=' + repr('raise') + ' refuses' if self.checks.raising else 'values were cast'})",
                )
        return True

    # -- rare commands -------------------------------------------------------------------------
    # the pool's own requests (besides env_calls.CALLS, the users'), answered by ``call`` below
    POOL_CALLS = frozenset({"seed_next_reset", "movable", "adopt"})

    def part(self, values: list) -> list:
        """This shard's entries of a per-env list (one entry per env of the pool)."""
        return values[self.start : self.stop]

    def call(self, request: str, indices: list[int], args: tuple, values: list | None) -> list:
        """Run a rare call on the envs at the given global ``indices`` (all in this shard)."""
        if request == "seed_next_reset":  # seeds too big for the shared block (Pool._send_big_seeds)
            for k, i in enumerate(indices):
                self.next_seeds[i - self.start] = values[k]  # type: ignore[index]
            return [None] * len(indices)
        if request == "movable":  # whether an env could move keeping its state (fastvec.migrate)
            return [
                migrate.movable(self.envs[i - self.start], self.env_fns[i - self.start] if self.env_fns else None)
                for i in indices
            ]
        if request == "adopt":  # an env moving in from a neighbour (fastvec.migrate)
            try:
                return [self.adopt_call(indices[0], *args)]
            except ShardError:  # its reset after moving raised: that error, naming the env
                raise
            except Exception as exc:
                raise ShardError(indices[0], migrate.ADOPT, exc) from exc
        # every env gets arguments of its own, and the caller copies of what the envs return, as through
        # a pipe: a shard's last env keeps what it was given (a worker's unpickled arguments; the calling
        # process's shard gets a private copy from Pool.call_async), and the others get copies, all made
        # before any env could change them (a list given to set_attr or call is not shared between envs).
        # An env that raises does not stop the others (each env runs the call as in a process of its own):
        # every error is reported, the lowest env's raised with the rest in ``others``
        in_caller = self.in_caller
        results = []
        errors: list[ShardError] = []
        last = len(indices) - 1
        for k, i in enumerate(indices):
            own = k < last
            value = None if values is None else values[k]
            try:
                result = run_call(
                    self.envs[i - self.start],
                    request,
                    private(args) if own and args else args,
                    private(value) if own and value is not None else value,
                )
            except ENV_ERRORS as exc:
                errors.append(ShardError(i, request, exc))
                results.append(None)
                continue
            if in_caller or last > 0:
                # a worker's results go back in one message, where an object two envs return (a class attribute
                # such as metadata), or parts of them, would come back as one, and a buffer the envs share (a
                # render frame) would hold the last env's values: each env's own copy as it comes, as SB3's
                # pipes give (a rare call: the copy costs about what pickling it does); one that cannot be
                # pickled is the env's error, as a worker's reply that cannot be sent is
                try:
                    result = private(result)
                except Exception as exc:
                    errors.append(ShardError(i, f"{request} (sending the result)", exc))
            results.append(result)
        if errors:
            if not in_caller and errors[0].env_index != indices[0]:
                # (a worker's first result, not copied, pickles with the reply, which is not sent now: checked here,
                # so that an error names it too, in env order)
                try:
                    private(results[0])
                except Exception as exc:
                    errors.insert(0, ShardError(indices[0], f"{request} (sending the result)", exc))
            raise ShardError.combine(errors)
        return results

    def close(self, tried: set[int] | None = None, cut: set[int] | None = None) -> None:
        """Close every env, even if one raises; the first error is raised afterwards. ``tried``, ``cut``: see close_each."""
        close_each(self.envs, self.start, tried, cut)


def spaces_of(envs: list, start: int = 0) -> list[tuple]:
    """Each env's (observation space, action space) (env ``start + j`` at ``j``). An env whose spaces cannot be read (a
    space built lazily that raises; a factory that returned no env, None) is a ShardError naming it: it was named as
    its process's first env, or, in the calling process, not at all."""
    pairs = []
    for j, env in enumerate(envs):
        try:
            pairs.append((env.observation_space, env.action_space))
        except ENV_ERRORS as err:
            exc = err
            if not (hasattr(env, "step") and hasattr(env, "reset")):
                exc = TypeError(f"its factory returned {shown_value(env, 80)} ({type(env).__name__}), not a gymnasium env")
            raise ShardError(start + j, "make (reporting spaces)", exc) from None
    return pairs


def close_each(envs: list, start: int = 0, tried: set[int] | None = None, cut: set[int] | None = None) -> None:
    """Close every env of ``envs`` (env ``start + j`` at ``j``), even if one raises or is interrupted: a Ctrl-C in
    one env's close() left the others open for good (the pool counts them closed). Afterwards the first
    interrupt is raised, else the first error, as a ShardError. ``tried`` gets the id of each env whose close() was
    called (raising or not): an interrupt before the loop, or between two envs, leaves the others out of it, for a
    later close to close (one marking them all closed beforehand left them open for good); an env already in it is
    not closed again (a close() interrupted after its CLOSE command closed them, run again). With ``cut``, an env whose
    close() an interrupt cut short (a worker's SIGTERM) goes there instead, to be closed again (cut at its first line
    it was never closed; counted tried, it was left so for good)."""
    first: ShardError | None = None
    interrupt: BaseException | None = None
    for j, env in enumerate(envs):
        if tried is not None and id(env) in tried:
            continue
        try:
            env.close()
        except ENV_ERRORS as exc:
            first = first or ShardError(start + j, "close", exc)
        except BaseException as exc:  # (KeyboardInterrupt, SystemExit: raised once the others are closed)
            interrupt = interrupt or exc
            if cut is not None:
                cut.add(id(env))
                continue
        if tried is not None:
            tried.add(id(env))
    try:
        if interrupt is not None:
            raise interrupt
        if first is not None:
            raise first
    finally:  # (this frame stays in the error's traceback: holding the errors would make a reference cycle)
        first = interrupt = None


class _TagDtypes(dict):
    """action tag (ord of a dtype char) -> dtype, filled on first use."""

    def __missing__(self, tag: int) -> np.dtype:
        dtype = self[tag] = np.dtype(chr(int(tag)))
        return dtype


_TAG_DTYPES = _TagDtypes()


def _as_sent(rows: np.ndarray, tag: int) -> np.ndarray:
    """A private copy of an action leaf's rows as the caller sent them (their dtype; scalar rows; values the
    buffer's dtype could not hold are its bytes' bits in the widest dtype of their kind, TAG_BITS)."""
    if tag & TAG_BITS:
        sent = _TAG_DTYPES[tag & TAG_DTYPE]
        rows = rows.view(wide_dtype(sent)).astype(sent)
    else:
        rows = rows.astype(_TAG_DTYPES[tag & TAG_DTYPE]) if tag & TAG_DTYPE else rows.copy()
    return rows.reshape(len(rows)) if tag & TAG_SCALAR_ROWS else rows


class _CopyingStep:
    """An env's step whose observation's and info's arrays are copied as it returns them (Shard.copies_obs); the
    observation as the env returned it is kept (``original``): a SAME_STEP final observation is read from it after
    the env's reset, as the references read the env's own object."""

    __slots__ = ("step", "original", "original_info", "fresh")

    def __init__(self, step: Callable):
        self.step = step
        self.original: Any = None
        self.original_info: Any = None
        self.fresh = False  # (stepped since the watch last compared it: Shard._watch_copies)

    def __call__(self, action: Any) -> Any:
        result = self.step(action)
        if type(result) is tuple and len(result) == 5:  # (a malformed result is said where it is written)
            obs, reward, terminated, truncated, info = result
            self.original, self.original_info, self.fresh = obs, info, True
            return copied(obs), reward, terminated, truncated, copied(info)  # (an info may hold the buffer too)
        return result


WATCHED_STEPS = 16  # steps of the same values after which envs over the same memory are no longer copied
WATCH_LIMIT = 4 * WATCHED_STEPS  # steps of a watch after which a reset of every env no longer counts its steps anew


def _same_values(a: Any, b: Any) -> bool:
    """Whether two observations hold the same values (their arrays' bytes, or their pickles)."""
    if type(a) is np.ndarray and type(b) is np.ndarray:
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    try:
        return pickle.dumps(a) == pickle.dumps(b)
    except Exception:
        return False


def _memory_parts(original: Any, copy: Any, seen: set | None = None) -> Any:
    """(where, the copy's part) for each array, list and dict of ``original`` (an env's own object: where is its
    array's first byte, or its list's or dict's identity) and the part at the same place in ``copy`` (env_calls.copied's
    copy of it, or ``original`` itself); each container walked once (an object may hold itself, or one part many
    times: pickle's memo keeps both in the references' pipes)."""
    if isinstance(original, np.ndarray):
        if original.nbytes:  # (read-only views too: another view may write the memory)
            yield original.__array_interface__["data"][0], copy
        return
    if not isinstance(original, (dict, list, tuple)):
        return
    if seen is None:
        seen = set()
    elif id(original) in seen:
        return
    seen.add(id(original))
    if isinstance(original, dict):
        if original:
            yield ("object", id(original)), copy
        if isinstance(copy, dict):
            for key, value in original.items():
                if key in copy:
                    yield from _memory_parts(value, copy[key], seen)
    elif isinstance(copy, (list, tuple)):
        if isinstance(original, list) and original:
            yield ("object", id(original)), copy
        for value, part in zip(original, copy):
            yield from _memory_parts(value, part, seen)


def _shared(originals: list, copies: list) -> dict:
    """The parts over one memory of several of ``originals`` (the envs' own objects): per memory (where), (k, the part
    of ``copies[k]`` there) for each env k whose object has a part there."""
    envs: dict = {}
    for k, (original, copy) in enumerate(zip(originals, copies)):
        for where, part in _memory_parts(original, copy):
            envs.setdefault(where, {}).setdefault(k, part)
    return {where: list(parts.items()) for where, parts in envs.items() if len(parts) > 1}


def _differ(group: list) -> bool:
    """Whether the parts of a group (_shared's) hold different values."""
    first = group[0][1]
    return any(not _same_values(first, part) for _, part in group[1:])


def _first_shared(obs_list: list) -> int:
    """The first position whose observation's first two parts (see _memory_parts) include one of the observation's
    before it or the first one's, or -1: write_results' test, for observations of any structure."""
    prev = first = None
    for j, obs in enumerate(obs_list):
        where = {where for where, _ in itertools.islice(_memory_parts(obs, obs), 2)}
        if (prev and not where.isdisjoint(prev)) or (first and not where.isdisjoint(first)):
            return j
        prev = where
        if j == 0:
            first = where
    return -1


def _said(info: Any) -> bool:
    """Whether an env's info says anything: all but None and an empty plain dict (the usual "nothing"), as the
    references pass every info on. A mapping that tests false but holds keys, or an empty defaultdict or UserDict
    (its class is what the caller reads), is the env's and reaches the caller, as in SB3; so does one whose truth
    cannot be told (an array), which the front-ends name as no dict. (The step kernels decide so too.)"""
    return info is not None and not (type(info) is dict and not info)


def _ended(result: Any) -> bool:
    """Whether an env.step() result is a 5-tuple whose episode ended (terminated or truncated)."""
    return type(result) is tuple and len(result) == 5 and bool(result[2] or result[3])


def _where(leaf: Leaf) -> str:
    return "" if leaf.path == () else f" part {leaf.name!r}"


def _as_reward(x: Any, index: int) -> float:
    """Env ``index``'s reward as gymnasium's AsyncVectorEnv takes it (``np.array(rewards, dtype=np.float64)``)
    where the kernels' plain conversion refused it: None (NaN), a one-element array, a numeric string. (SB3's
    SubprocVecEnv passes these on too.) A reward of more than one number is refused, naming the env."""
    try:
        value = np.asarray(x, dtype=np.float64)
    except OverflowError as exc:  # (an int past float64, 10**400: numpy's error, as the references give, said whole)
        raise ShardError(index, "step", OverflowError(f"reward {shown_value(x, 80)} does not fit a float64 ({exc})")) from None
    except Exception:
        value = None
    if value is None or value.size != 1:
        raise ShardError(index, "step", TypeError(f"reward must be a number, got {shown_value(x, 80)}"))
    return float(value.reshape(-1)[0])


def _is_flag(x: Any) -> bool:
    try:
        bool(x)
    except Exception:
        return False
    return True


class WrappedRun:
    """A WrappedShard's step in parts: its head's run, then its tail's (None for a part with no env)."""

    __slots__ = ("runs",)

    def __init__(self, runs: list):
        self.runs = runs

    @property
    def results(self) -> list:
        return [result for run in self.runs if run is not None for result in run.results]


class WrappedShard:
    """The calling process's shard once envs moved to it around the ring's end (fastvec.migrate):
    its own envs from 0 (``head``) and the envs past the last worker's (``tail``, up to the last
    env), two Shards stepped one after the other. It answers the parent's commands as one Shard:
    every env steps even when an env of the other part raised, and errors and extras are merged.
    The pool uses it only while the tail has envs (the usual step keeps one Shard's path)."""

    def __init__(self, head: Shard, tail: Shard):
        self.head = head
        self.tail = tail
        self.parts = (head, tail)

    @property
    def steps(self) -> int:
        return self.head.steps + self.tail.steps

    @property
    def restarts(self) -> int:
        return self.head.restarts + self.tail.restarts

    def part(self, values: list) -> list:
        """Every env's entries: each part takes its own."""
        return values

    def _each(self, run: Callable[[Shard], list | None], through_interrupts: bool = False) -> list | None:
        """``run`` on both parts, the second even when the first raised (``through_interrupts``: even when it was
        interrupted, raised afterwards); extras and errors merged."""
        extras: list = []
        errors: list[ShardError] = []
        interrupt: BaseException | None = None
        for shard in self.parts:
            try:
                extras += run(shard) or []
            except ShardError as err:
                errors += [err, *err.others]
            except BaseException as exc:
                if not through_interrupts:
                    raise
                interrupt = interrupt or exc
        try:
            if interrupt is not None:
                raise interrupt
            if errors:
                # (the part that stepped wrote its rows: its object parts wait to go with the error, take_objects)
                self.head.side_extras += [e for e in extras if e[1] == Extra.OBJECTS]
                errors.sort(key=lambda e: e.env_index)
                raise ShardError.combine(errors)
        finally:  # (this frame stays in the error's traceback: holding the errors would make a reference cycle)
            interrupt = errors = None
        return extras or None

    def step(self, slot: int, action_objects: list[list] | None = None) -> list | None:
        return self._each(lambda shard: shard.step(slot, None if action_objects is None else [shard.part(c) for c in action_objects]))

    # a step in parts, as Shard's (a wait given a timeout stops between envs: Pool._step_local_within): the head's
    # envs, then the tail's
    @property
    def envs(self) -> list:
        return [*self.head.envs, *self.tail.envs]

    def begin_step(self, slot: int, action_objects: list[list] | None = None) -> WrappedRun:
        return WrappedRun([
            shard.begin_step(slot, None if action_objects is None else [shard.part(c) for c in action_objects])
            if shard.start != shard.stop else None  # (a part with no env: nothing to step, as Shard.step has it)
            for shard in self.parts
        ])  # fmt: skip

    def step_envs(self, run: WrappedRun, stop: int, watch: tuple | None = None) -> None:
        head, tail = run.runs
        n = len(self.head.envs)
        if head is not None and len(head.results) < n:
            self.head.step_envs(head, min(stop, n), watch)
        if tail is not None and stop > n and (head is None or len(head.results) == n):
            self.tail.step_envs(tail, stop - n, watch)

    def end_step(self, run: WrappedRun) -> list | None:
        runs = dict(zip(map(id, self.parts), run.runs))
        return self._each(lambda shard: shard.finish_extras(None) if runs[id(shard)] is None else shard.end_step(runs[id(shard)]))

    def reset(self, slot: int, options: list | None, masked: bool, pass_options_always: bool) -> list | None:
        return self._each(lambda shard: shard.reset(slot, None if options is None else shard.part(options), masked, pass_options_always))

    def take_objects(self) -> list | None:
        objects = [e for shard in self.parts for e in shard.take_objects() or []]
        return objects or None

    def call(self, request: str, indices: list[int], args: tuple, values: list | None) -> list:
        results: list = [None] * len(indices)

        def run(shard: Shard) -> None:  # (the other part runs the call too when this one's env raises)
            mine = [k for k, i in enumerate(indices) if shard.start <= i < shard.stop]
            if mine:
                # (each part's last env keeps the arguments and value it is given: the head's are copies of its own)
                own = shard is self.head and len(mine) < len(indices)
                given = private(args) if own and args else args
                part = None if values is None else [values[k] for k in mine]
                got = shard.call(request, [indices[k] for k in mine], given, private(part) if own and part else part)
                for k, value in zip(mine, got):
                    results[k] = value

        self._each(run)
        return results

    def close(self, tried: set[int] | None = None, cut: set[int] | None = None) -> None:
        self._each(lambda shard: shard.close(tried, cut), through_interrupts=True)
