"""The worker process: make its envs, map the shared block, then loop on commands.

Protocol (per worker, see fastvec.layout.Control): the parent writes the command
words and bumps CMD_SEQ; the worker runs the command on its shard, sets STATUS and
HAS_MESSAGE, and sets DONE_SEQ = CMD_SEQ. Step and reset move no bytes through the
pipe unless an env returned a non-empty info dict or raised; rare commands
(env_method, get_attr, render, ...) carry a pickled request and reply on the pipe.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import sys
import time
from multiprocessing import reduction
from typing import Any

import numpy as np

__all__ = ["STEP", "RESET", "CONTROL", "CLOSE", "HAS_OPTIONS", "MASKED", "OPTIONS_ALWAYS", "worker_main"]

# command codes
STEP = 1
RESET = 2
CONTROL = 3
CLOSE = 4
# reset flags in Control.ARG
HAS_OPTIONS = 1
MASKED = 2
OPTIONS_ALWAYS = 4

POLL_NS = 100_000_000  # how often an idle worker checks that its parent lives
ADAPTIVE = 1  # spin_ns meaning "adapt the poll to the gap between commands" (see fastvec.pool)


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGKILL this process when the process (thread) that started it dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def worker_main(
    conn: Any,
    worker_index: int,
    parent_pid: int,
    env_fns: Any,
    start: int,
    autoreset_mode: int,
    spin_ns: int,
    close_fds: list[int],
    death_signal: bool,
    restart_on_error: bool = False,
    check: str = "warn",
) -> None:
    """Entry point of a worker process (also importable for custom launchers)."""
    # Ctrl-C goes to the whole process group: the parent handles it and closes us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if death_signal:
        _set_parent_death_signal()
    from fastvec.shm import pid_alive

    if not pid_alive(parent_pid):
        return
    for fd in close_fds:  # pipe ends of siblings inherited through fork
        try:
            os.close(fd)
        except OSError:
            pass

    from fastvec import kernels
    from fastvec.layout import Control, Stats, Views
    from fastvec.shard import Shard, ShardError

    if isinstance(env_fns, bytes):
        import cloudpickle

        env_fns = cloudpickle.loads(env_fns)
    envs = []
    try:
        for j, fn in enumerate(env_fns):
            try:
                envs.append(fn())
            except Exception as exc:
                raise ShardError(start + j, "make (env constructor)", exc) from exc
        conn.send(("ready", [(env.observation_space, env.action_space) for env in envs]))
    except ShardError as err:
        conn.send(("error", err.payload()))
        _close_quietly(envs)
        return
    except Exception as exc:  # spaces that cannot be pickled, a broken pipe...
        conn.send(("error", ShardError(start, "make (reporting spaces)", exc).payload()))
        _close_quietly(envs)
        return

    message = conn.recv()
    if message[0] != "attach":
        _close_quietly(envs)
        return
    _, layout, expected, restart = message
    # the block's name is already unlinked: the parent hands over its file descriptor
    fd = reduction.recv_handle(conn)
    try:
        mapping = mmap.mmap(fd, layout.size)
    finally:
        os.close(fd)
    views = Views(layout, mapping)
    views.check_header()
    shard = Shard(
        envs, start, views, autoreset_mode, env_fns=list(env_fns), restart_on_error=restart_on_error, check=check
    )
    if restart is not None:  # a respawned worker: fresh episodes, the old ones end as truncated
        try:
            shard.restart_all(*restart)
        except ShardError as err:
            conn.send(("error", err.payload()))
            return
    conn.send(("attached",))

    control = views.control
    base = views.control_base(worker_index)
    seq_index = np.array([base + Control.CMD_SEQ], dtype=np.intp)
    stats = views.worker_stats[worker_index]
    wait_all, finish = kernels.wait_all, kernels.finish
    done_index = base + Control.DONE_SEQ
    remaining_index = views.control_base(layout.num_workers) + Control.REMAINING
    adaptive = spin_ns == ADAPTIVE
    gap_ns = 50_000.0  # moving average of the time between finishing a command and the next one
    finished = time.perf_counter_ns()
    try:
        while True:
            if adaptive:  # poll a little longer than the parent usually takes, yielding the core
                spin_ns = -min(max(int(1.5 * gap_ns), 20_000), 2_000_000)
            if wait_all(control, seq_index, expected, spin_ns, POLL_NS) != -1:
                if not pid_alive(parent_pid):
                    break
                continue
            began = time.perf_counter_ns()
            if adaptive:
                gap_ns += 0.1 * (min(began - finished, 10_000_000) - gap_ns)
            command = int(control[base + Control.CMD])
            slot = int(control[base + Control.SLOT])
            arg = int(control[base + Control.ARG])
            reply: tuple | None = None
            status = 0
            try:
                if command == STEP:
                    extras = shard.step(slot)
                    if extras:
                        reply = ("extras", extras)
                elif command == RESET:
                    options = conn.recv() if arg & HAS_OPTIONS else None
                    extras = shard.reset(slot, options, bool(arg & MASKED), bool(arg & OPTIONS_ALWAYS))
                    if extras:
                        reply = ("extras", extras)
                elif command == CONTROL:
                    request, indices, args = conn.recv()
                    result = shard.control(request, indices, args) if indices else []
                    _send_result(conn, ("ok", result), indices, request, start)
                elif command == CLOSE:
                    try:
                        shard.close()
                        conn.send(("ok", None))
                    except ShardError as err:
                        conn.send(("error", err.payload()))
                    control[base + Control.STATUS] = 0
                    control[base + Control.HAS_MESSAGE] = 0
                    finish(control, done_index, expected, remaining_index)
                    break
            except ShardError as err:
                status = 1
                reply = ("error", err.payload())
                if command == CONTROL:
                    conn.send(reply)
                    reply = None
            control[base + Control.STATUS] = status
            control[base + Control.HAS_MESSAGE] = 1 if reply is not None else 0
            stats[Stats.COMMANDS] += 1
            stats[Stats.ENV_STEPS] = shard.steps
            finished = time.perf_counter_ns()
            stats[Stats.BUSY_NS] += finished - began
            stats[Stats.ENV_RESTARTS] = shard.restarts
            finish(control, done_index, expected, remaining_index)
            # after DONE: the parent reads it once it sees HAS_MESSAGE, so large
            # messages cannot dead-lock on a full pipe
            if reply is not None:
                _send_result(conn, reply, [], "step", start)
            expected = (expected + 1) & 0xFFFFFFFF
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent went away
    finally:
        del shard, control, stats
        views.release()
        try:
            mapping.close()
        except BufferError:
            pass


def _send_result(conn: Any, message: tuple, indices: list, request: str, start: int) -> None:
    """Send a reply; a result that cannot be pickled becomes an error naming the env."""
    try:
        conn.send(message)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        raise
    except Exception as exc:
        from fastvec.shard import ShardError

        env = indices[0] if indices else start
        conn.send(("error", ShardError(env, f"{request} (sending the result)", exc).payload()))


def _close_quietly(envs: list) -> None:
    for env in envs:
        try:
            env.close()
        except Exception:
            pass
