"""on_error="restart": re-create envs that raised, and fill in for envs whose worker died.

A failing env is closed and made again from its factory; its episode ends as
truncated, with the last observation it produced as the final observation, and the
command reports it with an ``Extra.RESTARTED`` entry. A second failure of the fresh
env is an error. A respawned worker (``restart_all`` / the RESET case in
``fastvec.worker``) has only fresh envs: the episodes of the dead ones end the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastvec.env_calls import copied
from fastvec.errors import ShardError, describe_exception, safe_str
from fastvec.protocol import SAME_STEP, Extra, Stats

if TYPE_CHECKING:
    from fastvec.shard import Shard

__all__ = ["Unmade", "describe", "recreate", "after_step_error", "reset_fresh", "restart_all"]


def _env_errors() -> tuple:
    """shard.ENV_ERRORS as it is now (a worker widens it to the envs' KeyboardInterrupt and GeneratorExit)."""
    from fastvec import shard

    return shard.ENV_ERRORS


def describe(exc: BaseException | str, command: str) -> dict:
    """The value of a RESTARTED extra: what went wrong, during which command."""
    if isinstance(exc, str):
        return {"error": exc, "command": command}
    exc_type, message, tb = describe_exception(exc)
    return {"error": f"{exc_type}: {message}", "command": command, "traceback": tb}


class Unmade:
    """In place of an env whose factory failed when it was to be re-created: its every use raises,
    naming why, so the closed env it replaces is never stepped again. A step or reset of it fails,
    which makes the shard try the factory again (on_error="restart"); until that works, every
    command reports the env's error, and the other envs go on."""

    def __init__(self, index: int, cause: BaseException, spaces: tuple | None = None, made: bool = False):
        text = safe_str(cause)  # (an error whose __str__ raises: said so, not raised here)
        self._why = (
            f"env {index} could not be made again after an error ({type(cause).__name__}: {text}); "
            "its factory is tried again at its next step or reset"
            if not made
            else f"env {index} was made again after an error, and its reset raised ({type(cause).__name__}: {text}); "
            "it is made again at its next step or reset"
        )
        if spaces is not None:  # (in a replacement worker: the pool's, so that its shard can be made around it)
            self.observation_space, self.action_space = spaces

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(self._why)

    step = reset = render = _fail

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._fail()


def recreate(shard: Shard, j: int, exc: BaseException, command: str) -> None:
    """Replace env j by a fresh one from its factory (the old one is closed, quietly) and report it.
    If the factory fails, an ``Unmade`` takes the env's place and ShardError names the env."""
    try:
        shard.envs[j].close()
    except _env_errors():  # (an env's KeyboardInterrupt in a worker, its GeneratorExit anywhere: quietly too)
        pass
    # closed: an Unmade in its place while the factory runs (a Ctrl-C or a SIGTERM there left the closed env in the
    # shard, and the pool's close() closed it a second time)
    shard.envs[j] = Unmade(shard.start + j, exc)  # type: ignore[assignment]
    shard.step_fns[j] = shard.step_fn(shard.envs[j])
    try:
        shard.envs[j] = shard.env_fns[j]()  # type: ignore[index]
    except _env_errors() as make_exc:
        shard.envs[j] = Unmade(shard.start + j, make_exc)  # type: ignore[assignment]
        shard.step_fns[j] = shard.step_fn(shard.envs[j])
        raise ShardError(shard.start + j, "make (restart after an error)", make_exc) from exc
    shard.step_fns[j] = shard.step_fn(shard.envs[j])
    shard.restarts += 1
    if shard.stats_row is not None:  # (counted here, not by each command's caller: off the usual step's path)
        shard.stats_row[Stats.ENV_RESTARTS] += 1
    shard.side_extras.append((shard.start + j, Extra.RESTARTED, describe(exc, command)))


def after_step_error(shard: Shard, j: int, slot: int, exc: BaseException, reset_now: bool) -> tuple:
    """Env j raised in step: re-create it; its episode ends as truncated.

    The final observation is the last one the env produced (its row in the previous ring
    slot). Returns the step result to record for env j: with ``reset_now`` (SAME_STEP) the
    fresh env's first observation, else (NEXT_STEP) the last observation, the reset
    following in the next step.
    """
    previous = (slot - 1) % shard.views.layout.ring_slots
    # (the row before this step's is the env's latest observation: a step or reset that raised kept it there,
    # Shard._raised)
    last_obs = shard.row(previous, j)
    shard.write_terminal(j, last_obs, "step")
    recreate(shard, j, exc, "step")
    if reset_now:
        try:
            obs, info = shard.envs[j].reset()
        except _env_errors() as reset_exc:
            _not_reset(shard, j, reset_exc)
            raise ShardError(shard.start + j, "reset (restart after an error)", reset_exc) from exc
        if shard.copies_obs:  # (the next envs' steps may write over them: Shard._check_shared_memory)
            obs, info = copied(obs), copied(info)
        if info:  # the next episode's reset info, as an autoreset's
            shard.side_extras.append((shard.start + j, Extra.RESET_INFO, info))
    else:
        obs = last_obs
    return obs, 0.0, False, True, {}


def reset_fresh(shard: Shard, j: int, exc: BaseException, command: str, kwargs: dict[str, Any]) -> tuple[Any, dict]:
    """Env j raised in reset (or an autoreset): re-create it and reset the fresh one with the same arguments."""
    recreate(shard, j, exc, command)
    try:
        return shard.envs[j].reset(**kwargs)
    except _env_errors() as again:
        _not_reset(shard, j, again)
        raise ShardError(shard.start + j, f"{command} (restart after an error)", again) from exc


def _not_reset(shard: Shard, j: int, exc: BaseException) -> None:
    """Env j's fresh copy raised in its first reset: it is closed and an Unmade takes its place, so that its next
    step or reset makes it again and ends its episode, reported (stepped as it was, never reset, it went on as the
    old episode in SAME_STEP, with the restart reported a step late or not at all)."""
    try:
        shard.envs[j].close()
    except _env_errors():
        pass
    shard.envs[j] = Unmade(shard.start + j, exc, made=True)  # type: ignore[assignment]
    shard.step_fns[j] = shard.step_fn(shard.envs[j])


def restart_all(shard: Shard, slot: int, truncate: bool, completed: bool = False) -> None:
    """A respawned worker's fresh envs, in place of a worker that died in a step: the old
    episodes end (truncated, their last observations final) and new ones start in ``slot``.
    ``completed``: it died after finishing the step (as an env moved into it): see ``_after_the_step``."""
    if not shard.envs:  # a worker back from parking, before any env moved to it: nothing to restart
        return
    errors: list[ShardError] = []  # fresh envs whose reset raised: the command's errors, once every row is written
    if completed:
        _after_the_step(shard, slot, errors)
    else:
        _in_the_step(shard, slot, truncate, errors)
    if errors:
        raise ShardError.combine(errors)


def _in_the_step(shard: Shard, slot: int, truncate: bool, errors: list) -> None:
    """restart_all, the worker having died before it finished the step."""
    previous = (slot - 1) % shard.views.layout.ring_slots
    envs = range(len(shard.envs))
    last = [shard.row(previous, j) for j in envs]
    for j in envs:
        shard.write_terminal(j, last[j], "step (worker restart)")
    if shard.autoreset_mode == SAME_STEP:
        obs_list = _reset_fresh_envs(shard, last, errors)
        shard.write_obs(obs_list, slot, "reset (worker restart)")
        shard.start_episodes(slot, None, truncated=truncate)
        return
    # NEXT_STEP: the last observations now, the resets in the next step; but an env whose episode ended in the
    # previous step was to reset in this one: its fresh env resets now, its new episode's first observation with
    # flags False (it ended its episode once already: ending it again gave a phantom episode of no steps)
    due = _due(shard, previous)
    shard.needs_reset = [True] * len(shard.envs)
    obs_list = _reset_fresh_envs(shard, last, errors, due)
    shard.write_obs(obs_list, slot, "reset (worker restart)")
    shard.start_episodes(slot, None, truncated=truncate)
    if due:
        shard.start_episodes(slot, due)


def _after_the_step(shard: Shard, slot: int, errors: list) -> None:
    """The dead worker finished the step in ``slot``: its results stay (the rewards and flags it wrote, the
    final observations of the envs whose episode ended in it). The episodes still running end, truncated,
    with the step's observation as their final one; every env starts a new episode (SAME_STEP: its reset
    observation now, in place of the dead env's; NEXT_STEP: at the next step)."""
    start = shard.start
    terminated = shard.terminated_slots[slot][start : shard.stop].tolist()
    truncated = shard.truncated_slots[slot][start : shard.stop].tolist()
    # (NEXT_STEP: an env whose episode ended in the previous step reset in this one: a new episode, not ended again)
    due = _due(shard, (slot - 1) % shard.views.layout.ring_slots) if shard.autoreset_mode != SAME_STEP else []
    for j in range(len(shard.envs)):
        if not (terminated[j] or truncated[j]) and j not in due:
            shard.write_terminal(j, shard.row(slot, j), "step (worker restart)")  # (SAME_STEP only)
            shard.truncated_slots[slot][start + j] = 1
    if shard.autoreset_mode != SAME_STEP:
        shard.needs_reset = [True] * len(shard.envs)
        if due:  # (their fresh envs start the episode the dead ones had just begun)
            kept = [shard.row(slot, j) for j in range(len(shard.envs))]
            obs_list = _reset_fresh_envs(shard, kept, errors, due)
            shard.write_obs([obs_list[j] for j in due], slot, "reset (worker restart)", due)
        return
    kept = [shard.row(slot, j) for j in range(len(shard.envs))]
    shard.write_obs(_reset_fresh_envs(shard, kept, errors), slot, "reset (worker restart)")


def _due(shard: Shard, previous: int) -> list[int]:
    """NEXT_STEP: the shard's envs whose episode ended in ring slot ``previous`` (the step before): due to reset."""
    ended = shard.terminated_slots[previous][shard.start : shard.stop] | shard.truncated_slots[previous][shard.start : shard.stop]
    return [j for j, flag in enumerate(ended.tolist()) if flag]


def _reset_fresh_envs(shard: Shard, kept: list, errors: list, only: list[int] | None = None) -> list:
    """A replacement worker's fresh envs reset (SAME_STEP; NEXT_STEP: those in ``only``, due to reset): their
    first observations, their reset infos queued as an autoreset's (``only``: all of ``kept``'s, those of its
    envs new; they reset no more at the next step). An env that could not be made (``Unmade``, reported as the
    command's error) keeps its observation from ``kept``; so does one whose reset raises, an Unmade from then on
    (made again at its next step), its error added to ``errors`` (the others still reset)."""
    obs_list, originals, copies = [], [], []
    for j, env in enumerate(shard.envs):
        if isinstance(env, Unmade) or (only is not None and j not in only):
            obs_list.append(kept[j])
            continue
        try:
            obs, info = env.reset()
        except _env_errors() as exc:
            _not_reset(shard, j, exc)
            errors.append(ShardError(shard.start + j, "reset (worker restart)", exc))
            obs_list.append(kept[j])
            continue
        # (copied as it comes: the next env's reset may write over it; Shard._check_shared_memory)
        originals.append((obs, info))
        copies.append((copied(obs), copied(info)))
        obs_list.append(copies[-1][0])
        if only is not None:
            shard.needs_reset[j] = False
        if info:
            shard.side_extras.append((shard.start + j, Extra.RESET_INFO, copies[-1][1]))
    if len(originals) > 1 and (not shard.copies_obs or shard._watching is not None):
        shard._check_shared_memory(originals, copies)
    return obs_list


def restart_reason(hung_after: float | None) -> str:
    """The infos' word for a replaced worker's envs (``fastvec.restarted``): it died, or (``hung_after``, the
    step_timeout) the pool ended it, still running after the limit."""
    if hung_after is None:
        return "worker process died"
    return f"worker hung: still running after step_timeout={hung_after:g} s, ended and replaced"
