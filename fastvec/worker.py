"""The worker process: make its envs, map the shared block, then loop on commands.

Protocol (per worker; offsets in fastvec.protocol.Control): the parent writes the
command words and bumps CMD_SEQ; the worker runs the command on its shard, sets
HAS_MESSAGE, publishes DONE_SEQ = CMD_SEQ and counts down the pool's countdown word,
and only then sends its message, if it has one (so a large message cannot dead-lock
on a full pipe: the parent reads it once every worker is done). Step and reset move no
bytes through the pipe unless an env returned a non-empty info dict or raised; RESET
with options and CONTROL read their pickled request from the pipe.

This module imports only what stepping needs (numpy, gymnasium, fastvec's engine
modules): never a front-end, Stable-Baselines3 or torch. Forkserver workers are forked
from a server that preloaded it (see fastvec.remote).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import signal
import sys
import time
from multiprocessing import reduction
from typing import Any

import numpy as np

from fastvec import kernels
from fastvec import shard as shard_module
from fastvec.env_calls import private
from fastvec.errors import ShardError
from fastvec.factories import Distinct
from fastvec.layout import Views
from fastvec.protocol import (
    ADAPTIVE_FLOOR_NS,
    ADAPTIVE_POLL,
    POLL_NS,
    SEQ_MASK,
    Command,
    Control,
    Extra,
    ResetFlag,
    StepFlag,
    dumps_by_reference_where_possible,
)
from fastvec.restart import Unmade, restart_all
from fastvec.shard import Shard
from fastvec.shm import mapping_error, pid_alive

__all__ = ["worker_main"]


# a worker sent SIGTERM (by its parent, or at its parent's death) ends within this many seconds,
# its envs closed if they close in time; its parent, if alive, kills it after 1 s (remote.stop)
TERM_DEADLINE_S = 2


def _set_parent_death_signal(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when the process (thread) that started it dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signum, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class _Terminated(BaseException):
    """Raised by the SIGTERM handler: unwinds the worker to ``worker_main``, which closes its envs.
    A BaseException, as KeyboardInterrupt: the shard's ``except Exception`` must not report it as
    an env error."""


_DEADLINE_IN_C: list = []  # the compiled kernel arms the deadline's SIGALRM itself as SIGTERM arrives


def _on_sigterm(signum: int, frame: Any) -> None:
    # once: a later SIGTERM cuts no further close() short (the loop after a cut one, _die_of_sigterm's first line), nor,
    # through the compiled kernel's C wrapper, which SIG_IGN replaces, arms the deadline again; the pure-Python kernels'
    # deadline is armed here, at the first (_die_of_sigterm comes only after the loop, which a stuck close() can hold)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not _DEADLINE_IN_C:
        signal.alarm(TERM_DEADLINE_S)
    raise _Terminated


class _Holding:
    """The envs this worker holds now: those it made, then its shard's (envs move in and out)."""

    def __init__(self) -> None:
        self.made: list = []
        self.shard: Shard | None = None
        self.closed: set[int] = set()  # ids of the envs the CLOSE command closed (a SIGTERM then closes the others)
        # ids of the envs whose close() a SIGTERM cut short (at its first line, say, or stuck): closed again, last
        self.cut: set[int] = set()

    def envs(self) -> list:
        return self.shard.envs if self.shard is not None else self.made


def _die_of_sigterm(holding: _Holding) -> None:
    """Close the envs (an env that runs a helper process ends it in close(); killed before, the
    worker would leave the helper behind), then die of the signal: the parent reads a death by
    SIGTERM from the exit code, as it did before the handler. The parent kills a worker still
    running 1 s after its SIGTERM (``fastvec.remote.stop``); an orphan ends of the alarm."""
    # (_on_sigterm has set a second SIGTERM ignored, so that it cuts no close short, and armed the deadline, or the
    # compiled kernel did in C as the signal arrived)
    # (each closed once, but for those whose close() the SIGTERM cut short: again, after the others, as one that was stuck
    # may stick again; it then ends of the deadline)
    envs = [env for env in holding.envs() if id(env) not in holding.closed]
    _close_quietly([env for env in envs if id(env) not in holding.cut] + [env for env in envs if id(env) in holding.cut])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def worker_main(
    conn: Any,
    worker_index: int,
    parent_pid: int,
    env_fns: Any,
    start: int,
    autoreset_mode: int,
    spin_ns: int | None,
    close_fds: list[int],
    death_signal: bool,
    restart_on_error: bool = False,
    check: str | None = None,
    replacing: tuple | None = None,
    kernel_implementation: str | None = None,
) -> None:
    """Entry point of a worker process (also importable for custom launchers). ``replacing``: the pool's
    (observation space, action space) where this worker replaces a dead one (on_error="restart").
    ``kernel_implementation``: the pool's kernels (fastvec.KERNELS), which this worker then uses too."""
    if kernel_implementation is not None:
        kernels.select(kernel_implementation)
    # Ctrl-C goes to the whole process group: the parent handles it and closes us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # so a KeyboardInterrupt here is an env's own: its error, naming it (shard.ENV_ERRORS)
    shard_module.ENV_ERRORS = (Exception, KeyboardInterrupt, GeneratorExit)
    # SIGTERM (Pool.terminate, closing a broken pool, the parent's death, a job scheduler): close the
    # envs, then die of it; within TERM_DEADLINE_S of the signal in any case, of SIGALRM
    holding, deadline_armed = _Holding(), False
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # (a forked worker inherits its parent's handler)
        signal.signal(signal.SIGTERM, _on_sigterm)
        deadline_armed = kernels.term_deadline(TERM_DEADLINE_S)
        if deadline_armed:
            _DEADLINE_IN_C.append(True)
        if death_signal:
            # with the pure-Python kernels a worker stuck in native code would never run its handler:
            # the parent's death then kills it at once, as SIGKILL, envs unclosed
            _set_parent_death_signal(signal.SIGTERM if deadline_armed else signal.SIGKILL)
        # the death signal follows the process that forked this one: under forkserver that is the
        # server, which outlives the pool's process while any of its children runs, so the parent's
        # death is also watched for, from a thread that acts even while an env is stuck
        kernels.watch_parent(parent_pid)
        if not pid_alive(parent_pid):
            return
        for fd in close_fds:  # pipe ends of siblings inherited through fork
            try:
                os.close(fd)
            except OSError:
                pass

        import cloudpickle

        envs = holding.made
        unmade: list[tuple] = []  # a replacement's envs whose factory failed: this command's errors, tried again later
        try:
            # (spawn, forkserver: remote.Factories, loaded here, so that one that cannot be is said as this worker's
            # error; a custom launcher's may be cloudpickled bytes)
            if isinstance(env_fns, (bytes, bytearray)) or hasattr(env_fns, "load"):
                try:
                    env_fns = env_fns.load() if hasattr(env_fns, "load") else cloudpickle.loads(env_fns)
                except Exception as exc:
                    raise ShardError(start, "make (loading the env factories)", exc) from exc
            if isinstance(replacing, bytes):  # (the pool's spaces, pickled for a spawned worker: Remote.spawn)
                try:
                    replacing = cloudpickle.loads(replacing)
                except Exception as exc:
                    raise ShardError(start, "make (loading the pool's spaces)", exc) from exc
            distinct = Distinct(all(getattr(fn, "fork", True) for fn in env_fns))
            for j, fn in enumerate(env_fns):
                try:
                    envs.append(distinct.own(fn(), start + j))
                except shard_module.ENV_ERRORS as exc:
                    if replacing is None or not restart_on_error:
                        raise ShardError(start + j, "make (env constructor)", exc) from exc
                    # on_error="restart" (README): the env's error is raised, the others step, and its factory
                    # is tried again at its next step (breaking the pool gave up on every env for one)
                    envs.append(Unmade(start + j, exc, replacing))
                    unmade += ShardError(start + j, "make (worker restart)", exc).payloads()
            conn.send(("ready", _dumps_spaces(envs, start)))
        except ShardError as err:
            conn.send(("error", err.payload()))
            _close_quietly(envs)
            return
        except Exception as exc:  # spaces that cannot be pickled, a broken pipe...
            conn.send(("error", ShardError(start, "make (reporting spaces)", exc).payload()))
            _close_quietly(envs)
            return

        payload = conn.recv_bytes()
        try:
            message = pickle.loads(payload)
        except Exception as exc:  # (a class of env 0's spaces this process cannot load): said, not a bare exit
            try:
                os.close(reduction.recv_handle(conn))  # (the block's descriptor follows the layout)
            except OSError:
                pass
            conn.send(("error", ShardError(start, "attach (loading the layout of env 0's spaces)", exc).payload()))
            _close_quietly(envs)
            return
        if message[0] != "attach":
            _close_quietly(envs)
            return
        _, layout, expected, restart = message
        # the block's name is already unlinked: the parent hands over its file descriptor
        fd = reduction.recv_handle(conn)
        try:
            mapping = mmap.mmap(fd, layout.size)
        except OSError as exc:  # (an address-space limit the parent's own mapping fit in): said, not a bare exit
            error = mapping_error(exc, layout.size, f"worker {worker_index} (envs {start}..{start + len(envs) - 1})")
            conn.send(("error", ShardError(start, "attach", error).payload()))
            _close_quietly(envs)
            return
        finally:
            os.close(fd)
        views = Views(layout, mapping)
        views.check_header()
        shard = Shard(
            envs, start, views, autoreset_mode, env_fns=list(env_fns), restart_on_error=restart_on_error, check=check
        )
        shard.to_bytes = True  # envs leaving this shard travel on the pipe
        shard.stats_row = views.worker_stats[worker_index]
        holding.shard = shard
        if restart is not None:  # a respawned worker: finish the command its predecessor died in
            failed: list[tuple] = []
            try:
                extras = _fill_in(shard, restart)
            except ShardError as err:
                if not restart_on_error:
                    conn.send(("error", err.payload()))
                    _close_quietly(shard.envs)
                    return
                # on_error="restart": the envs' errors are this command's (an env that cannot be made again is
                # an Unmade, tried again later), and the worker serves on, as after any command's env errors
                extras, failed = None, err.payloads()
            # an env made meanwhile (a reset tries an Unmade's factory at once) has no error left of its making; one
            # that failed again has its newer error among the command's
            again = {payload[0] for payload in failed}
            unmade = [
                payload for payload in unmade
                if payload[0] not in again and isinstance(shard.envs[payload[0] - start], Unmade)
            ] + failed
            # (with envs it could not make: their errors, which the command raises as theirs)
            extras = _unshared(extras) if extras else extras
            try:
                payload = reduction.ForkingPickler.dumps(("attached", extras) if not unmade else ("attached-unmade", (extras, unmade)))
            except Exception as exc:  # (a value that cannot be pickled, a reset info: its env's error, the worker serves on)
                _, errors, objects = _picklable_error(("extras", extras), exc, start, "attach (worker restart)", None)
                payload = reduction.ForkingPickler.dumps(("attached-unmade", (objects, unmade + errors)))
            conn.send_bytes(payload)
        else:
            conn.send(("attached", None))
        try:
            try:
                closed = _serve(conn, shard, views, worker_index, parent_pid, expected, spin_ns, holding)
            except (EOFError, BrokenPipeError, ConnectionResetError):
                closed = False  # the parent went away
            if not closed:  # nobody is left to ask (those a CLOSE command closed, its reply then lost, are not closed again)
                # (the parent's death, seen here, is also its watcher's SIGTERM: one cutting an env's close() short here
                # has it closed again by _die_of_sigterm, as in a CLOSE command)
                try:
                    shard.close(holding.closed, holding.cut)
                except ShardError:
                    pass
            holding.made, holding.shard = [], None  # closed: nothing left for a late SIGTERM to close
            # (and nothing for its handler to do: a late SIGTERM, an interrupted close()'s, ended the worker in a
            # traceback of _Terminated inside multiprocessing's exit)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        finally:
            del shard
            views.release()
            try:
                mapping.close()
            except BufferError:
                pass
    except _Terminated:
        _die_of_sigterm(holding)


def _fill_in(shard: Shard, restart: tuple) -> list | None:
    """A respawned worker runs its share of the command the dead one did not finish."""
    command, slot, *rest = restart
    shard.start_watch()  # (fresh envs, some reset later or apart: copied while watched, as envs over one memory)
    if command == Command.STEP:
        truncate, objects, completed = rest
        if objects is not None:  # the dead envs' latest object parts, which their final observations hold
            shard.last_objects = list(objects)
        restart_all(shard, slot, truncate, completed)
        return shard.finish_extras(None)  # (the new observations' object parts, final observations, reset infos)
    options, arg, big = rest  # RESET: the same seeds (in the block, and those beyond it) and options
    for i, seed in big.items():
        shard.next_seeds[i - shard.start] = seed
    always = bool(arg & ResetFlag.OPTIONS_ALWAYS)
    if not arg & ResetFlag.MASKED:
        return shard.reset(slot, options, False, always)
    # a masked reset: the masked envs as asked; the others lost their episodes with the dead
    # worker and start fresh ones, unseeded (their seeds were not meant for them)
    mask = shard.views.reset_mask[shard.start : shard.stop].tolist()
    masked = [j for j, m in enumerate(mask) if m]
    unmasked = [j for j, m in enumerate(mask) if not m]
    obs_masked, extras = shard.reset_rows(masked, options, always)
    obs_unmasked, more = shard.reset_rows(unmasked, None, False, seeded=False)
    shard.write_obs(obs_masked + obs_unmasked, slot, "reset (worker restart)", masked + unmasked)
    shard.start_episodes(slot, None)
    return shard.finish_extras((extras or []) + (more or []) or None)


def _serve(
    conn: Any, shard: Shard, views: Views, worker_index: int, parent_pid: int, expected: int, spin_ns: int | None,
    holding: _Holding,
) -> bool:
    """The command loop, until a CLOSE command (True: the envs are closed; ``holding.closed`` gets the id of each whose
    close() ran, ``holding.cut`` of each a SIGTERM cut short) or the parent's death (False)."""
    control = views.control
    base = views.control_base(worker_index)
    seq_index = np.array([base + Control.CMD_SEQ], dtype=np.intp)
    stats = views.worker_stats[worker_index]
    wait_all, finish, add_stats = kernels.wait_all, kernels.finish, kernels.add_stats
    done_index = base + Control.DONE_SEQ
    cmd_index, slot_index, arg_index = base + Control.CMD, base + Control.SLOT, base + Control.ARG
    words = views.control_words  # (indexing it gives a Python int, cheaper than control.item)
    message_index = base + Control.HAS_MESSAGE
    step_code = int(Command.STEP)
    close_code = Command.CLOSE  # (read once: an Enum member read through its class costs a metaclass lookup)
    has_objects = int(StepFlag.HAS_OBJECTS)  # (a plain int: `int & IntEnum` calls the enum's Python __rand__)
    remaining_index = views.control_base(views.layout.num_workers) + Control.REMAINING
    adaptive = spin_ns is ADAPTIVE_POLL
    gap_ns = 50_000.0  # moving average of the time between finishing a command and the next one
    finished = time.perf_counter_ns()
    message = -1  # what this worker last stored in its HAS_MESSAGE word (-1: nothing yet; a predecessor's may be there)
    while True:
        if adaptive:  # poll a little longer than the parent usually takes, yielding the core
            spin_ns = -min(max(int(1.5 * gap_ns), ADAPTIVE_FLOOR_NS), 2_000_000)
        if wait_all(control, seq_index, expected, spin_ns, POLL_NS) != -1:
            if not pid_alive(parent_pid):
                return False
            continue
        began = time.perf_counter_ns()
        # (three memoryview reads: a slice and tolist() ran about 2,000 instructions more, counted with
        # valgrind, on the critical path whenever this worker is the last to finish)
        command, slot, arg = words[cmd_index], words[slot_index], words[arg_index]
        steps_before = shard.steps
        reply: tuple | None = None
        request, indices = None, None  # (a call's request and envs, read from the pipe)
        try:
            if command == step_code:
                extras = shard.step(slot, conn.recv() if arg & has_objects else None)
                reply = ("extras", _unshared(extras)) if extras else None
            elif command == Command.RESET:
                options = conn.recv() if arg & ResetFlag.HAS_OPTIONS else None
                extras = shard.reset(slot, options, bool(arg & ResetFlag.MASKED), bool(arg & ResetFlag.OPTIONS_ALWAYS))
                reply = ("extras", _unshared(extras)) if extras else None
            elif command == Command.CONTROL:
                request, indices, args, values = conn.recv()
                reply = ("ok", shard.call(request, indices, args, values) if indices else [])
            elif command == Command.CLOSE:
                shard.close(holding.closed, holding.cut)
                reply = ("ok", None)
        except ShardError as err:  # (with the object parts of the observations its rows now hold: Shard.take_objects)
            objects = shard.take_objects()
            reply = ("error", err.payloads(), _unshared(objects) if objects else None)
        except Exception as exc:  # nothing may escape the loop: the parent would only see a dead process
            reply = (
                "error",
                [ShardError(shard.start, request or _COMMAND_NAMES.get(command, str(command)), exc).payload()],
            )
        flag = 1 if reply is not None else 0
        if flag != message:  # (only this worker writes its word: a store only when it changes)
            control[message_index] = message = flag
        wait_ns = began - finished
        finished = time.perf_counter_ns()
        # (COMMANDS counts steps only, as the calling process's shard does: per-env step times are per step
        # command, and a rare call or a reset between steps must not make this worker's envs look cheaper)
        add_stats(
            stats, 1.0 if command == step_code else 0.0, shard.steps - steps_before, finished - began, 0.0, wait_ns,
        )
        finish(control, done_index, expected, remaining_index)
        # (the parent goes on from here: what follows is off its critical path)
        if adaptive:
            gap_ns += 0.1 * (min(wait_ns, 10_000_000) - gap_ns)
        if reply is not None:
            name = request or _COMMAND_NAMES.get(command, str(command))
            _send_result(conn, reply, indices[0] if indices else shard.start, name, indices)
        if command == close_code:
            return True
        expected = (expected + 1) & SEQ_MASK


def _unshared(extras: list) -> list:
    """``extras`` (env, kind, value) with each env's own values: they go back in one message, where pickle's memo
    makes one object of a value several envs returned (a constant info dict, or a dict inside each env's), and
    SB3's front-end then wrote one env's ``TimeLimit.truncated`` and ``terminal_observation`` into another's
    info. SB3's pipes, one per env, give each its own: the values of every env after the first are copies (as
    the calling process's envs' are, and a call's results; ``private`` copies the usual values in about 1 us)."""
    if len(extras) < 2:
        return extras
    first = extras[0][0]
    unshared = []
    for i, kind, value in extras:
        if i != first:  # (every later env's values: an object met inside two envs' values is one too)
            try:
                value = private(value)
            except Exception:  # (it cannot be pickled: sending it fails, naming its env)
                pass
        unshared.append((i, kind, value))
    return unshared


_COMMAND_NAMES = {Command.STEP: "step", Command.RESET: "reset", Command.CONTROL: "call", Command.CLOSE: "close"}


def _send_result(conn: Any, message: tuple, env: int, request: str, indices: list | None) -> None:
    """Send a reply; one that cannot be pickled becomes an error naming the env whose value it is."""
    dumps = reduction.ForkingPickler.dumps
    try:
        payload = dumps(message)
    except Exception as exc:
        conn.send_bytes(dumps(_picklable_error(message, exc, env, request, indices)))
        return
    conn.send_bytes(payload)


def _picklable_error(message: tuple, exc: Exception, env: int, request: str, indices: list | None) -> tuple:
    """A reply that cannot be pickled: an error reply naming the env whose value it is (an error reply keeps its own
    errors), with the object parts of observations that pickle (the rows hold them: the parent keeps them)."""
    dumps = reduction.ForkingPickler.dumps
    objects = None
    entries = message[1] if message[0] == "extras" else (message[2] if message[0] == "error" and len(message) > 2 else None)
    if entries:
        objects = []
        for entry in entries:
            if entry[1] == Extra.OBJECTS:
                try:
                    dumps(entry)
                except Exception:
                    continue
                objects.append(entry)
    if message[0] == "error":  # (its errors are strings: what did not pickle is an object part)
        return ("error", message[1], objects or None)
    # find the env whose value cannot be pickled
    if indices and message[0] == "ok":  # a call's results, in the order of its envs
        named: Any = zip(indices, message[1])
    elif message[0] == "extras":  # a step's or reset's (env, kind, value) entries: infos, objects, ...
        named = ((entry[0], entry) for entry in message[1])
    else:
        named = iter(())
    for i, value in named:
        try:
            dumps(value)
        except Exception:
            env = i
            break
    return ("error", [ShardError(env, f"{request} (sending the result)", exc).payload()], objects or None)


def _dumps_spaces(envs: list, start: int) -> bytes | list[bytes | None]:
    """Each env's (observation space, action space), pickled for the parent: by reference where their classes
    import (a class of the parent's ``__main__`` under fork is then the parent's own, so a custom space's ``__eq__``
    with an isinstance check holds); else by value with cloudpickle (classes defined in a function or a notebook;
    cloudpickle maps a class the parent sent by value back to the parent's). All at once where they pickle by
    reference (spaces the envs share travel once); else each env's on its own, and an env's that cannot be pickled
    at all (holding a lock) is None: the parent does not compare them with env 0's (SB3 reads env 0's alone, and
    gymnasium's workers compare each with env 0's), unless it is env 0 itself, whose spaces the pool's are: its
    error, naming it."""
    spaces = shard_module.spaces_of(envs, start)
    try:  # (all at once, the usual case: spaces the envs share travel once, not once per env)
        return pickle.dumps(spaces, pickle.HIGHEST_PROTOCOL)
    except Exception:  # (each env's on its own: only those that need it by value, with cloudpickle)
        pass
    pickled: list[bytes | None] = []
    for j, pair in enumerate(spaces):
        try:
            pickled.append(dumps_by_reference_where_possible(pair))
        except Exception as exc:
            if start + j == 0 or isinstance(exc, MemoryError):
                raise ShardError(start + j, "make (reporting spaces)", exc) from exc
            pickled.append(None)
    return pickled


def _close_quietly(envs: list) -> None:
    for env in envs:
        try:
            env.close()
        except shard_module.ENV_ERRORS:  # (an env's KeyboardInterrupt too: the envs after it are closed as well)
            pass
