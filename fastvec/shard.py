"""A shard: the envs one worker owns, stepped in a loop, written into the shared block.

The same code runs in a worker process and, for the calling process's own share
of envs, in the parent. Nothing here talks to other processes: it reads actions
from and writes results into the shared views, and returns the rare extras
(non-empty info dicts) that the caller must ship by pickle.
"""

from __future__ import annotations

import operator
import traceback
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from fastvec import kernels
from fastvec.layout import Views
from fastvec.spaces import is_single_array, split

__all__ = ["SAME_STEP", "NEXT_STEP", "INFO", "RESET_INFO", "RESTARTED", "WARNING", "ShardError", "Shard", "describe_exception"]

# Autoreset modes: SAME_STEP resets in the step that ends an episode (SB3, gymnasium
# SAME_STEP); NEXT_STEP resets in the following step, ignoring its action (gymnasium default).
SAME_STEP = 0
NEXT_STEP = 1

# kinds of extras a step may return
INFO = 0  # the info dict env.step (or the autoreset's env.reset) returned
RESET_INFO = 1  # the info dict of the reset that followed an episode end (SAME_STEP)
RESTARTED = 2  # the env raised and was re-created (on_error="restart"); info describes the error
WARNING = 3  # a check found a problem in the env's output (check="warn"); info is the message


def describe_exception(exc: BaseException) -> tuple[str, str, str]:
    """(qualified type name, message, formatted traceback) of an exception, all picklable."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return name, str(exc), "".join(traceback.format_exception(cls, exc, exc.__traceback__))


class ShardError(Exception):
    """An env of this shard raised; carries what the parent needs to raise an EnvError."""

    def __init__(self, env_index: int, command: str, exc: BaseException):
        self.env_index = env_index
        self.command = command
        self.exc_type, self.message, self.remote_traceback = describe_exception(exc)
        super().__init__(f"env {env_index}: {self.exc_type}: {self.message}")

    def payload(self) -> tuple[int, str, str, str, str]:
        return (self.env_index, self.command, self.exc_type, self.message, self.remote_traceback)


def is_wrapped(env: gym.Env, wrapper_class: type) -> bool:
    """True when ``wrapper_class`` appears in ``env``'s wrapper chain (as SB3's env_util.is_wrapped)."""
    current = env
    while isinstance(current, gym.Wrapper):
        if isinstance(current, wrapper_class):
            return True
        current = current.env
    return False


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
        check: str = "warn",
    ):
        self.envs = envs
        self.env_fns = env_fns
        self.restart_on_error = restart_on_error and env_fns is not None
        self.restarts = 0
        self.check = check
        self._checking = check != "off"
        self._warned: set[tuple[int, str]] = set()
        self._warnings: list = []
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

    # -- hot path -----------------------------------------------------------------
    def step(self, slot: int) -> list | None:
        """Step every env with its action from the shared buffer; write results into ``slot``.

        Returns the extras ``[(env_index, kind, info), ...]`` or None. Raises ShardError.
        """
        # a private copy: an env may keep a reference to its action
        actions = self.actions.copy()
        start = self.start
        extras: list | None = None
        if self.autoreset_mode == SAME_STEP:
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
                    result, report = self._restart_env(j, slot, exc, reset_now=True)
                    append(result)
                    restarted = restarted or set()
                    restarted.add(j)
                    extras = extras or []
                    extras.append(report)
                    pairs = zip(self.step_fns[j + 1 :], actions[j + 1 :])
            try:
                obs_list, rewards, terminated, truncated, infos = map(list, zip(*results))
            except (TypeError, ValueError) as exc:
                raise self._bad_step_result(results) from exc
            if any(terminated) or any(truncated):
                for j, ended in enumerate(map(operator.or_, terminated, truncated)):
                    if ended and (restarted is None or j not in restarted):
                        # copy the final observation out before reset overwrites it
                        self._write_terminal(j, obs_list[j])
                        try:
                            obs_list[j], reset_info = self.envs[j].reset()
                        except Exception as exc:
                            raise ShardError(start + j, "reset (autoreset after step)", exc) from exc
                        if reset_info:
                            extras = extras or []
                            extras.append((start + j, RESET_INFO, reset_info))
            if any(infos):
                extras = extras or []
                extras += [(start + j, INFO, info) for j, info in enumerate(infos) if info]
        else:
            obs_list, rewards, terminated, truncated = [], [], [], []
            needs_reset = self.needs_reset
            j = 0
            command = "step"
            try:
                for j, env in enumerate(self.envs):
                    if needs_reset[j]:
                        command = "reset (autoreset)"
                        obs, info = env.reset()
                        command = "step"
                        reward, term, trunc = 0.0, False, False
                        needs_reset[j] = False
                    else:
                        try:
                            obs, reward, term, trunc, info = env.step(actions[j])
                        except Exception as exc:
                            if not self.restart_on_error:
                                raise
                            (obs, reward, term, trunc, info), report = self._restart_env(j, slot, exc, reset_now=False)
                            extras = extras or []
                            extras.append(report)
                        if term or trunc:
                            needs_reset[j] = True
                    if info:
                        extras = extras or []
                        extras.append((start + j, INFO, info))
                    obs_list.append(obs)
                    rewards.append(reward)
                    terminated.append(term)
                    truncated.append(trunc)
            except Exception as exc:
                raise ShardError(start + j, command, exc) from exc
        self._write_obs(obs_list, slot, "step")
        try:
            kernels.store_floats(rewards, self.reward_slots[slot], start)
        except (TypeError, ValueError) as exc:
            bad = next(k for k, r in enumerate(rewards) if not _is_real(r))
            raise ShardError(start + bad, "step", TypeError(f"reward must be a number, got {rewards[bad]!r}")) from exc
        kernels.store_bools(terminated, self.terminated_slots[slot], start)
        kernels.store_bools(truncated, self.truncated_slots[slot], start)
        self.steps += len(self.envs)
        if self._checking:
            nan = kernels.first_nan(self.reward_slots[slot], start, self.stop)
            if nan >= 0:
                self._problem(nan - start, "step", "nan-reward", "returned a NaN reward")
        return self._with_warnings(extras)

    def reset(self, slot: int, options: list | None, masked: bool, pass_options_always: bool) -> list | None:
        """Reset the envs (all, or those in the shared reset mask) with the shared seeds.

        ``options[j]`` is passed to env j (omitted when falsy, as SB3 does, unless
        ``pass_options_always``, as gymnasium does).
        """
        views = self.views
        seeds = views.reset_seeds[self.start : self.stop].tolist()
        seed_mask = views.seed_mask[self.start : self.stop].tolist()
        reset_mask = views.reset_mask[self.start : self.stop].tolist() if masked else None
        extras: list | None = None
        obs_list = []
        rows = []
        j = 0
        try:
            for j, env in enumerate(self.envs):
                if reset_mask is not None and not reset_mask[j]:
                    continue
                kwargs: dict[str, Any] = {"seed": seeds[j] if seed_mask[j] else None}
                opt = options[j] if options is not None else None
                if opt or pass_options_always:
                    kwargs["options"] = opt
                try:
                    obs, info = env.reset(**kwargs)
                except Exception as exc:
                    if not self.restart_on_error:
                        raise
                    self._recreate(j, exc)  # a second failure in the fresh env is raised
                    extras = extras or []
                    extras.append((self.start + j, RESTARTED, _report(exc, "reset")))
                    obs, info = self.envs[j].reset(**kwargs)
                self.needs_reset[j] = False
                if info:
                    extras = extras or []
                    extras.append((self.start + j, RESET_INFO, info))
                obs_list.append(obs)
                rows.append(j)
        except Exception as exc:
            raise ShardError(self.start + j, "reset", exc) from exc
        if reset_mask is None:
            self._write_obs(obs_list, slot, "reset")
            self._start_episodes(slot, slice(self.start, self.stop), truncated=False)
        else:
            for obs, j in zip(obs_list, rows):
                self._write_row(obs, self.obs_slots, slot, j, "reset")
                self._start_episodes(slot, self.start + j, truncated=False)
        return self._with_warnings(extras)

    def _start_episodes(self, slot: int, rows: slice | int, truncated: bool) -> None:
        """Rows that hold a new episode's first observation: reward 0, not terminated,
        truncated only when the old episode was cut short by a restart."""
        self.reward_slots[slot][rows] = 0.0
        self.terminated_slots[slot][rows] = 0
        self.truncated_slots[slot][rows] = 1 if truncated else 0

    def _with_warnings(self, extras: list | None) -> list | None:
        """Append the check warnings gathered during this command to its extras."""
        if self._warnings:
            extras = (extras or []) + self._warnings
            self._warnings = []
        return extras

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

    # -- restarts (on_error="restart") ------------------------------------------------------
    def _recreate(self, j: int, exc: BaseException | None) -> None:
        """Replace env j by a fresh one from its factory (the old one is closed, quietly)."""
        try:
            self.envs[j].close()
        except Exception:
            pass
        try:
            self.envs[j] = self.env_fns[j]()  # type: ignore[index]
        except Exception as make_exc:
            raise ShardError(self.start + j, "make (restart after an error)", make_exc) from exc
        self.step_fns[j] = self.envs[j].step
        self.restarts += 1

    def _restart_env(self, j: int, slot: int, exc: BaseException, reset_now: bool) -> tuple[tuple, tuple]:
        """Env j raised in step: re-create it; its episode ends as truncated.

        The final observation of the ended episode is the last one the env produced
        (its row in the previous ring slot). Returns the step result to use for env j
        and the extras entry reporting the restart.
        """
        previous = (slot - 1) % self.views.layout.ring_slots
        last_obs = self._row(previous, j)
        self._write_terminal(j, last_obs)
        self._recreate(j, exc)
        if reset_now:  # SAME_STEP: the new episode starts in this step
            try:
                obs, _ = self.envs[j].reset()
            except Exception as reset_exc:
                raise ShardError(self.start + j, "reset (restart after an error)", reset_exc) from exc
        else:  # NEXT_STEP: report the last observation now, reset in the next step
            obs = last_obs
        return (obs, 0.0, False, True, {}), (self.start + j, RESTARTED, _report(exc, "step"))

    def _row(self, slot: int, j: int) -> Any:
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

    def restart_all(self, slot: int, truncate: bool) -> None:
        """A respawned worker's fresh envs: end the old episodes (truncated) and start new ones."""
        previous = (slot - 1) % self.views.layout.ring_slots
        for j in range(len(self.envs)):
            self._write_terminal(j, self._row(previous, j))
        if self.autoreset_mode == SAME_STEP:
            obs_list = []
            for j, env in enumerate(self.envs):
                try:
                    obs_list.append(env.reset()[0])
                except Exception as exc:
                    raise ShardError(self.start + j, "reset (worker restart)", exc) from exc
        else:
            obs_list = [self._row(previous, j) for j in range(len(self.envs))]
            self.needs_reset = [True] * len(self.envs)
        self._write_obs(obs_list, slot, "reset (worker restart)")
        self._start_episodes(slot, slice(self.start, self.stop), truncated=truncate)

    # -- writing observations ----------------------------------------------------------
    def _write_obs(self, obs_list: list, slot: int, command: str) -> None:
        start = self.start
        checking = self._checking
        if self.single_leaf:
            bad = kernels.gather_rows(obs_list, self.obs_slots[0][slot], start, checking)
            if bad != -1:
                self._bad_obs(bad, obs_list, self.leaves[0], command)
            return
        for li, leaf in enumerate(self.leaves):
            try:
                parts = [split(o, leaf) for o in obs_list]
            except (KeyError, IndexError, TypeError) as exc:
                bad = _first_failing(obs_list, leaf)
                raise ShardError(
                    start + bad, command, ValueError(f"observation has no part {leaf.name!r}: {exc!r}")
                ) from exc
            bad = kernels.gather_rows(parts, self.obs_slots[li][slot], start, checking)
            if bad != -1:
                self._bad_obs(bad, parts, leaf, command)

    def _write_row(self, obs: Any, buffers: list, slot: int | None, j: int, command: str) -> None:
        """Write env j's observation into its row of ``buffers`` (one per leaf; indexed by
        ``slot`` first unless it is None)."""
        for li, leaf in enumerate(self.leaves):
            part = split(obs, leaf)
            dst = buffers[li] if slot is None else buffers[li][slot]
            if kernels.gather_rows([part], dst, self.start + j) >= 0:
                self._bad_obs(0, [part], leaf, command, env_offset=j)

    def _write_terminal(self, j: int, obs: Any) -> None:
        self._write_row(obs, self.views.terminal_obs, None, j, "step")

    def _bad_obs(self, code: int, values: list, leaf: Any, command: str, env_offset: int | None = None) -> None:
        """gather_rows reported a problem: ``code >= 0`` a wrong shape (always an error),
        ``code <= -2`` an array of another dtype (cast; reported per the ``check`` setting)."""
        j = code if code >= 0 else -2 - code
        got = np.asarray(values[j])
        j = j if env_offset is None else env_offset
        where = "" if leaf.path == () else f" part {leaf.name!r}"
        if code >= 0:
            raise ShardError(
                self.start + j,
                command,
                ValueError(
                    f"observation{where} has shape {got.shape} (dtype {got.dtype}), "
                    f"expected shape {leaf.shape} (dtype {leaf.dtype}) from the observation space"
                ),
            )
        self._problem(
            j, command, f"dtype:{leaf.name}",
            f"returned an observation{where} of dtype {got.dtype}; the observation space says {leaf.dtype} (values were cast)",
        )

    def _problem(self, j: int, command: str, kind: str, message: str) -> None:
        """An env output the ``check`` setting looks at: raise, or warn once per env and kind."""
        if self.check == "raise":
            raise ShardError(self.start + j, command, ValueError(message))
        if (j, kind) not in self._warned:
            self._warned.add((j, kind))
            self._warnings.append((self.start + j, WARNING, message))

    # -- rare commands ---------------------------------------------------------------
    def control(self, request: str, indices: list[int], args: tuple) -> list:
        """Run a rare command on the envs at the given global ``indices`` (all in this shard)."""
        results = []
        i = self.start
        try:
            for k, i in enumerate(indices):
                env = self.envs[i - self.start]
                if request == "set_attr":
                    name, values, use_wrapper_setter = args
                    if use_wrapper_setter:
                        env.set_wrapper_attr(name, values[k])
                    else:
                        setattr(env, name, values[k])
                    results.append(None)
                else:
                    results.append(_CONTROL[request](env, *args))
        except Exception as exc:
            raise ShardError(i, request, exc) from exc
        return results

    def close(self) -> None:
        first: ShardError | None = None
        for j, env in enumerate(self.envs):
            try:
                env.close()
            except Exception as exc:  # close every env even if one fails
                first = first or ShardError(self.start + j, "close", exc)
        if first is not None:
            raise first


def _get_attr(env: gym.Env, name: str) -> Any:
    return env.get_wrapper_attr(name)


def _has_attr(env: gym.Env, name: str) -> bool:
    try:
        env.get_wrapper_attr(name)
    except AttributeError:
        return False
    return True


def _env_method(env: gym.Env, name: str, args: tuple, kwargs: dict) -> Any:
    return env.get_wrapper_attr(name)(*args, **kwargs)


def _call(env: gym.Env, name: str, args: tuple, kwargs: dict) -> Any:
    function = env.get_wrapper_attr(name)
    return function(*args, **kwargs) if callable(function) else function


_CONTROL: dict[str, Callable[..., Any]] = {
    "get_attr": _get_attr,
    "has_attr": _has_attr,
    "env_method": _env_method,
    "call": _call,
    "is_wrapped": is_wrapped,
    "render": lambda env: env.render(),
}


def _report(exc: BaseException, command: str) -> dict:
    exc_type, message, tb = describe_exception(exc)
    return {"error": f"{exc_type}: {message}", "command": command, "traceback": tb}


def _is_real(x: Any) -> bool:
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True


def _first_failing(obs_list: list, leaf: Any) -> int:
    for k, o in enumerate(obs_list):
        try:
            split(o, leaf)
        except (KeyError, IndexError, TypeError):
            return k
    return 0
