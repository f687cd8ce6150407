"""A shard: the envs one worker owns, stepped in a loop, written into the shared block.

The same code runs in a worker process and, for the calling process's own share of
envs, in the parent. Nothing here talks to other processes: a shard reads actions
from and writes results into the shared views, and returns the rare extras
(non-empty info dicts, restarts, warnings) that its caller ships by pickle. Every
exception inside it, whatever its type and wherever it comes from (the env, writing
its row, a check), leaves as a ShardError naming the env and the command.

The two autoreset modes are two step functions: SAME_STEP resets an env in the step
that ends its episode (SB3; the final observation goes to the terminal-obs buffer),
NEXT_STEP resets it in the following step and ignores that step's action (gymnasium).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from fastvec import kernels, restart
from fastvec.checks import OutputChecks
from fastvec.env_calls import run_call
from fastvec.errors import ShardError
from fastvec.layout import Views
from fastvec.protocol import SAME_STEP, Extra
from fastvec.spaces import is_single_array, split

__all__ = ["Shard"]


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
        self.restart_on_error = restart_on_error and env_fns is not None
        self.restarts = 0
        self.restart_reports: list = []  # (env_index, Extra.RESTARTED, report) of the running command
        self.checks = OutputChecks(check, start)
        self.start = start
        self.stop = start + len(envs)
        self.views = views
        self.autoreset_mode = autoreset_mode
        self.leaves = views.layout.obs_leaves
        self.single_leaf = is_single_array(self.leaves)
        slots = views.layout.ring_slots
        self.obs_slots = [[ring[s] for s in range(slots)] for ring in views.obs]
        self.reward_slots = [views.rewards[s] for s in range(slots)]
        self.terminated_slots = [views.terminated[s].view(np.uint8) for s in range(slots)]
        self.truncated_slots = [views.truncated[s].view(np.uint8) for s in range(slots)]
        self.actions = views.actions[self.start : self.stop]
        self.needs_reset = [False] * len(envs)
        self.step_fns = [env.step for env in envs]
        self.steps = 0
        self.same_step = autoreset_mode == SAME_STEP

    # -- hot path -----------------------------------------------------------------------------
    def step(self, slot: int) -> list | None:
        """Step every env with its action from the shared buffer; write the results into ``slot``.
        Returns the extras ``[(env_index, kind, value), ...]`` or None."""
        return self._step_same_step(slot) if self.same_step else self._step_next_step(slot)

    def _step_same_step(self, slot: int) -> list | None:
        """SAME_STEP: step every env; reset those whose episode ended (their final observation
        goes to the terminal-obs buffer first)."""
        actions = self.actions.copy()  # a private copy: an env may keep a reference to its action
        start = self.start
        extras: list | None = None
        results: list = []
        append = results.append
        restarted: set[int] | None = None
        pairs = zip(self.step_fns, actions)
        while True:
            try:
                for step, action in pairs:
                    append(step(action))
                break
            except Exception as exc:
                j = len(results)
                if not self.restart_on_error:
                    raise ShardError(start + j, "step", exc) from exc
                append(restart.after_step_error(self, j, slot, exc, reset_now=True))
                restarted = restarted or set()
                restarted.add(j)
                pairs = zip(self.step_fns[j + 1 :], actions[j + 1 :])
        try:
            obs_list, rewards, terminated, truncated, infos = map(list, zip(*results))
        except (TypeError, ValueError) as exc:
            raise self._bad_step_result(results) from exc
        if any(terminated) or any(truncated):
            for j, ended in enumerate(map(operator.or_, terminated, truncated)):
                if ended and (restarted is None or j not in restarted):
                    # copy the final observation out before the reset overwrites it
                    self.write_terminal(j, obs_list[j], "step")
                    obs_list[j], reset_info = self._autoreset(j, "reset (autoreset after step)")
                    if reset_info:
                        extras = (extras or []) + [(start + j, Extra.RESET_INFO, reset_info)]
        if any(infos):
            extras = (extras or []) + [(start + j, Extra.INFO, info) for j, info in enumerate(infos) if info]
        self._write_results(obs_list, rewards, terminated, truncated, slot)
        return self.finish_extras(extras)

    def _step_next_step(self, slot: int) -> list | None:
        """Step every env, except those whose episode ended in the previous step: those are
        reset now (reward 0, flags False) and their action is ignored, as gymnasium's NEXT_STEP."""
        actions = self.actions.copy()
        start = self.start
        extras: list | None = None
        obs_list, rewards, terminated, truncated = [], [], [], []
        needs_reset = self.needs_reset
        for j in range(len(self.envs)):
            if needs_reset[j]:
                obs, info = self._autoreset(j, "reset (autoreset)")
                reward, term, trunc = 0.0, False, False
                needs_reset[j] = False
            else:
                try:
                    obs, reward, term, trunc, info = self.step_fns[j](actions[j])
                except Exception as exc:
                    if not self.restart_on_error:
                        raise ShardError(start + j, "step", exc) from exc
                    obs, reward, term, trunc, info = restart.after_step_error(self, j, slot, exc, reset_now=False)
                if term or trunc:
                    needs_reset[j] = True
            if info:
                extras = (extras or []) + [(start + j, Extra.INFO, info)]
            obs_list.append(obs)
            rewards.append(reward)
            terminated.append(term)
            truncated.append(trunc)
        self._write_results(obs_list, rewards, terminated, truncated, slot)
        return self.finish_extras(extras)

    def _autoreset(self, j: int, command: str) -> tuple[Any, dict]:
        """Reset env j after its episode ended; with on_error="restart" a failing env is re-created."""
        try:
            return self.envs[j].reset()
        except Exception as exc:
            if not self.restart_on_error:
                raise ShardError(self.start + j, command, exc) from exc
            return restart.reset_fresh(self, j, exc, command, {})

    def finish_extras(self, extras: list | None) -> list | None:
        """A command's extras, with the restarts and check warnings gathered while it ran."""
        if self.restart_reports:
            extras = (extras or []) + self.restart_reports
            self.restart_reports = []
        return self.checks.drain(extras)

    def _write_results(self, obs_list: list, rewards: list, terminated: list, truncated: list, slot: int) -> None:
        start = self.start
        self.write_obs(obs_list, slot, "step")
        try:
            kernels.store_floats(rewards, self.reward_slots[slot], start)
        except Exception as exc:
            bad = next((k for k, r in enumerate(rewards) if not _is_real(r)), 0)
            raise ShardError(start + bad, "step", TypeError(f"reward must be a number, got {rewards[bad]!r}")) from exc
        for flags, out, what in (
            (terminated, self.terminated_slots, "terminated"),
            (truncated, self.truncated_slots, "truncated"),
        ):
            try:
                kernels.store_bools(flags, out[slot], start)
            except Exception as exc:
                bad = next((k for k, f in enumerate(flags) if not _is_flag(f)), 0)
                raise ShardError(start + bad, "step", TypeError(f"{what} must be a bool, got {flags[bad]!r}")) from exc
        self.steps += len(self.envs)
        if self.checks.active:
            nan = kernels.first_nan(self.reward_slots[slot], start, self.stop)
            if nan >= 0:
                self.checks.problem(nan - start, "step", "nan-reward", "returned a NaN reward")

    # -- reset ---------------------------------------------------------------------------------
    def reset(self, slot: int, options: list | None, masked: bool, pass_options_always: bool) -> list | None:
        """Reset the envs (all, or those in the shared reset mask) with the shared seeds.

        ``options[j]`` is passed to env j (omitted when falsy, as SB3 does, unless
        ``pass_options_always``, as gymnasium does).
        """
        reset_mask = self.views.reset_mask[self.start : self.stop].tolist() if masked else None
        rows = [j for j in range(len(self.envs)) if reset_mask is None or reset_mask[j]]
        obs_list, extras = self.reset_rows(rows, options, pass_options_always)
        if reset_mask is None:
            self.write_obs(obs_list, slot, "reset")
            self.start_episodes(slot, slice(self.start, self.stop), truncated=False)
        else:
            for obs, j in zip(obs_list, rows):
                self.write_row(obs, self.obs_slots, slot, j, "reset")
                self.start_episodes(slot, self.start + j, truncated=False)
        return self.finish_extras(extras)

    def reset_rows(
        self, rows: list[int], options: list | None, pass_options_always: bool, seeded: bool = True
    ) -> tuple[list, list | None]:
        """Reset the envs at local positions ``rows`` (with their shared seeds unless not
        ``seeded``); returns (observations, extras)."""
        views = self.views
        seeds = views.reset_seeds[self.start : self.stop].tolist()
        seed_mask = views.seed_mask[self.start : self.stop].tolist() if seeded else [False] * len(self.envs)
        extras: list | None = None
        obs_list = []
        for j in rows:
            kwargs: dict[str, Any] = {"seed": seeds[j] if seed_mask[j] else None}
            opt = options[j] if options is not None else None
            if opt or pass_options_always:
                kwargs["options"] = opt
            try:
                obs, info = self.envs[j].reset(**kwargs)
            except Exception as exc:
                if not self.restart_on_error:
                    raise ShardError(self.start + j, "reset", exc) from exc
                obs, info = restart.reset_fresh(self, j, exc, "reset", kwargs)
            self.needs_reset[j] = False
            if info:
                extras = (extras or []) + [(self.start + j, Extra.RESET_INFO, info)]
            obs_list.append(obs)
        return obs_list, extras

    def start_episodes(self, slot: int, rows: slice | int, truncated: bool) -> None:
        """Rows that hold a new episode's first observation: reward 0, not terminated,
        truncated only when the old episode was cut short by a restart."""
        self.reward_slots[slot][rows] = 0.0
        self.terminated_slots[slot][rows] = 0
        self.truncated_slots[slot][rows] = 1 if truncated else 0

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

    # -- reading and writing rows --------------------------------------------------------------
    def row(self, slot: int, j: int) -> Any:
        """Env j's observation as stored in ring slot ``slot`` (a copy, in the space's structure)."""
        parts = [ring[slot][self.start + j].copy() for ring in self.obs_slots]
        if self.single_leaf:
            return parts[0]
        # nest by the leaves' paths (Dict keys / Tuple indices alike), as split() reads them
        root: dict = {}
        for leaf, part in zip(self.leaves, parts):
            node = root
            for key in leaf.path[:-1]:
                node = node.setdefault(key, {})
            node[leaf.path[-1]] = part
        return root

    def write_obs(self, obs_list: list, slot: int, command: str) -> None:
        start = self.start
        checking = self.checks.active
        if self.single_leaf:
            self._gather(obs_list, self.obs_slots[0][slot], self.leaves[0], command, checking)
            return
        for li, leaf in enumerate(self.leaves):
            try:
                parts = [split(o, leaf) for o in obs_list]
            except Exception as exc:
                bad = _first_failing(obs_list, leaf)
                raise ShardError(
                    start + bad, command, ValueError(f"observation has no part {leaf.name!r}: {exc!r}")
                ) from exc
            self._gather(parts, self.obs_slots[li][slot], leaf, command, checking)

    def write_row(self, obs: Any, buffers: list, slot: int | None, j: int, command: str) -> None:
        """Write env j's observation into its row of ``buffers`` (one per leaf; indexed by
        ``slot`` first unless it is None)."""
        for li, leaf in enumerate(self.leaves):
            try:
                part = split(obs, leaf)
            except Exception as exc:
                raise ShardError(
                    self.start + j, command, ValueError(f"observation has no part {leaf.name!r}: {exc!r}")
                ) from exc
            dst = buffers[li] if slot is None else buffers[li][slot]
            self._gather([part], dst, leaf, command, False, offset=j)

    def write_terminal(self, j: int, obs: Any, command: str) -> None:
        self.write_row(obs, self.views.terminal_obs, None, j, command)

    def _gather(self, items: list, dst: np.ndarray, leaf: Any, command: str, checking: bool, offset: int = 0) -> None:
        """Copy ``items`` into rows ``start + offset + k`` of ``dst``; any failure names its env."""
        first = self.start + offset
        try:
            code = kernels.gather_rows(items, dst, first, checking)
        except Exception:
            # a value the row's dtype cannot hold (300 into uint8) or cannot convert: find whose
            for k, item in enumerate(items):
                try:
                    np.asarray(item, dtype=dst.dtype)
                except Exception as exc:
                    raise ShardError(
                        first + k,
                        command,
                        ValueError(f"observation{_where(leaf)} cannot be stored as {dst.dtype} ({leaf.name}): {exc!r}"),
                    ) from exc
            raise
        if code == -1:
            return
        k = code if code >= 0 else -2 - code
        got = np.asarray(items[k])
        if code >= 0:
            raise ShardError(
                first + k,
                command,
                ValueError(
                    f"observation{_where(leaf)} has shape {got.shape} (dtype {got.dtype}), "
                    f"expected shape {leaf.shape} (dtype {leaf.dtype}) from the observation space"
                ),
            )
        self.checks.problem(
            offset + k,
            command,
            f"dtype:{leaf.name}",
            f"returned an observation{_where(leaf)} of dtype {got.dtype}; the observation space says "
            f"{leaf.dtype} (values were cast)",
        )

    # -- rare commands -------------------------------------------------------------------------
    def call(self, request: str, indices: list[int], args: tuple, values: list | None) -> list:
        """Run a rare call on the envs at the given global ``indices`` (all in this shard)."""
        results = []
        for k, i in enumerate(indices):
            try:
                results.append(
                    run_call(self.envs[i - self.start], request, args, None if values is None else values[k])
                )
            except Exception as exc:
                raise ShardError(i, request, exc) from exc
        return results

    def close(self) -> None:
        """Close every env, even if one raises; the first error is raised afterwards."""
        first: ShardError | None = None
        for j, env in enumerate(self.envs):
            try:
                env.close()
            except Exception as exc:
                first = first or ShardError(self.start + j, "close", exc)
        if first is not None:
            raise first


def _where(leaf: Any) -> str:
    return "" if leaf.path == () else f" part {leaf.name!r}"


def _is_real(x: Any) -> bool:
    try:
        float(x)
    except Exception:
        return False
    return True


def _is_flag(x: Any) -> bool:
    try:
        bool(x)
    except Exception:
        return False
    return True


def _first_failing(obs_list: list, leaf: Any) -> int:
    for k, o in enumerate(obs_list):
        try:
            split(o, leaf)
        except Exception:
            return k
    return 0
