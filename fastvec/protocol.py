"""The words a pool and its workers agree on: command codes, control-word offsets,
statistics columns and the kinds of extras a command can return.

One place for every constant both sides of the shared block use. The compiled
kernels mirror the control offsets in ``_kernels.pxd`` (``tests/test_protocol.py``
checks that they agree).
"""

from __future__ import annotations

import io
import pickle
import sys
from enum import Enum, IntEnum
from multiprocessing import reduction
from typing import Any

import numpy as np

__all__ = [
    "dumps_by_reference_where_possible",
    "imports_by_name",
    "named_envs",
    "unloadable",
    "Command",
    "ResetFlag",
    "StepFlag",
    "DISABLED",
    "Control",
    "Stats",
    "Extra",
    "SAME_STEP",
    "NEXT_STEP",
    "SEQ_MASK",
    "TAG_DTYPE",
    "TAG_SCALAR_ROWS",
    "TAG_BITS",
    "TAG_PICKLED",
    "wide_dtype",
    "POLL_NS",
    "ADAPTIVE_POLL",
    "ADAPTIVE_FLOOR_NS",
    "YIELD_POLL_NS",
    "MIGRATE_DOWN",
    "MIGRATE_UP",
    "MIGRATE_ALL",
    "dumps_payload",
]


class Command(IntEnum):
    """What the parent asks a worker to do (written in Control.CMD)."""

    STEP = 1
    RESET = 2
    CONTROL = 3  # a rare call (env_method, get_attr, render, ...) with its request on the pipe
    CLOSE = 4


class StepFlag(IntEnum):
    """Bits of Control.ARG for a STEP."""

    HAS_OBJECTS = 1  # the action space's object leaves (Text, ...) follow on the pipe


class ResetFlag(IntEnum):
    """Bits of Control.ARG for a RESET."""

    HAS_OPTIONS = 1  # per-env options follow on the pipe
    MASKED = 2  # only envs whose reset_mask row is set
    OPTIONS_ALWAYS = 4  # pass options=None explicitly (gymnasium) instead of omitting falsy ones (SB3)


class Control:
    """Word offsets inside one worker's control block (two cache lines of uint32)."""

    CMD_SEQ = 0  # bumped by the parent to issue a command
    CMD_WAITING = 1  # 1 while the worker sleeps on CMD_SEQ
    CMD = 2  # Command code
    SLOT = 3  # ring slot the command writes to
    ARG = 4  # command-specific flags (ResetFlag)
    DONE_SEQ = 16  # set to CMD_SEQ by the worker when the command is finished
    DONE_WAITING = 17  # 1 while the parent sleeps on DONE_SEQ
    HAS_MESSAGE = 18  # 1 when a message (extras, an error) follows on the pipe
    # in the pool's own block (index num_workers), written by every worker:
    REMAINING = 0  # workers that have not finished the current command: a wake-up hint only
    REMAINING_WAITING = 1  # 1 while the parent sleeps on REMAINING


class Stats:
    """Columns of a worker's row in the shared ``worker_stats`` table.

    Counters only grow: a worker adds to them, and a respawned worker goes on from
    where the dead one stopped.
    """

    COMMANDS = 0  # step commands run (resets and rare calls are in BUSY_NS and the histogram, not here)
    ENV_STEPS = 1  # env steps taken
    BUSY_NS = 2  # nanoseconds spent running commands
    ENV_RESTARTS = 3  # envs re-created after raising (on_error="restart")
    WAIT_NS = 4  # nanoseconds spent waiting for the next command
    HISTOGRAM = 5  # first of HISTOGRAM_BINS counts of commands by duration: bin b holds [2^b, 2^(b+1)) us
    HISTOGRAM_BINS = 24
    COLUMNS = HISTOGRAM + HISTOGRAM_BINS


class Extra(IntEnum):
    """Kinds of the (env_index, kind, value) entries a command returns beside the shared block."""

    INFO = 0  # the info dict env.step (or a NEXT_STEP autoreset's env.reset) returned
    RESET_INFO = 1  # the info dict of a reset (SAME_STEP: the one after an episode end)
    RESTARTED = 2  # the env raised and was re-created (on_error="restart"); value describes the error
    WARNING = 3  # a check found a problem in the env's output (check="warn"); value is the message
    OBJECTS = 4  # the env's new observation's object leaves (Text, Graph, ...): a list, one value per object leaf
    FINAL_OBS = 5  # SAME_STEP, spaces with object or scalar leaves: the env's own final observation object
    RELEASED = 6  # the env left its shard at its episode end, to move to a neighbour: its package (fastvec.migrate)
    NOT_MOVED = 7  # the env was due to move at this episode end but no longer pickles: it stayed, reset in place


# Autoreset modes: SAME_STEP resets in the step that ends an episode (SB3, gymnasium
# SAME_STEP); NEXT_STEP resets in the following step, ignoring its action (gymnasium default);
# DISABLED never resets by itself (gymnasium DISABLED: the caller resets, e.g. with a mask).
SAME_STEP = 0
NEXT_STEP = 1
DISABLED = 2

# An action leaf's tag (Views.action_tags): the dtype char (ord) the caller's actions had, 0 for
# the buffer's own dtype, plus this bit when each env's row was sent as a scalar (a (n,) batch for
# a (1,)-shaped leaf): the env gets what it was sent, as in gymnasium.
# TAG_BITS: the values did not fit the buffer's dtype (3.7 for an integer space, 2**63 for int64, 2**60 + 1
# for float64): its 8 bytes hold them bit for bit in the widest dtype of their own kind (float64, int64,
# uint64; ``wide_dtype``), read back through a view.
# TAG_PICKLED: no 8 bytes hold them (float128 that float64 would round, complex, strings, objects): the rows
# travel pickled with the command, beside the object leaves, and the env gets each as sent (SB3 and gymnasium
# hand anything on).
TAG_DTYPE = 0xFF
TAG_SCALAR_ROWS = 0x100
TAG_BITS = 0x200
TAG_PICKLED = 0x400


def wide_dtype(dtype: np.dtype) -> np.dtype:
    """The 8-byte dtype of ``dtype``'s kind (float, signed or unsigned int) that holds its values exactly."""
    return np.dtype({"f": np.float64, "i": np.int64, "u": np.uint64}[dtype.kind])

SEQ_MASK = 0xFFFFFFFF  # sequence words are uint32 and wrap
POLL_NS = 100_000_000  # longest single sleep of a waiter before it checks that its peer lives
ADAPTIVE_POLL = None  # spin_ns sent to workers: poll about as long as the parent usually takes, up to 2 ms
# (None, not a number: any int is a spin_ns a user may give; 1 was, and then meant this)
# ... and never less than this: a worker that went to sleep costs the parent a futex wake and
# itself a wake-up (on a VM, its idle vCPU's too). The gap between commands varies, so 1.5x
# its average let workers sleep in 4-12% of 2-shard CartPole commands (their voluntary
# context switches); with this floor, in none. Throughput moved within the noise (interleaved
# against a 20 us floor: 1.00x at 8 CartPole envs, 1.04x at 64; benchmarks/README.md).
ADAPTIVE_FLOOR_NS = 200_000
YIELD_POLL_NS = -200_000  # default poll of the parent (yielding the core) before sleeping on the futex
# the block's per-env migrate flags (bits): move at the next episode end to the lower or the upper
# neighbouring shard, once the env is that side's edge; ALL: even as the shard's last env (the pool
# is emptying a worker to park it; otherwise a shard keeps one env)
MIGRATE_DOWN, MIGRATE_UP, MIGRATE_ALL = 1, 2, 4
HEADER_TIMING = 8  # header word: 1 while per-env step times are being collected (the monitor is on)


def named_envs(envs: range | str) -> str:
    """``envs`` in a message: "env 3", "envs 2..5", or the words given."""
    if not isinstance(envs, range):
        return envs
    return f"env {envs.start}" if len(envs) == 1 else f"envs {envs.start}..{envs.stop - 1}"


def unloadable(what: str, envs: range | str, exc: BaseException) -> TypeError:
    """The error for a payload that pickles but cannot be unpickled, naming the envs it was for."""
    return TypeError(f"{what} for {named_envs(envs)} cannot be unpickled (every env gets them through a pickle): {exc!r}")


def dumps_by_reference_where_possible(obj: Any, main_by_value: bool = False) -> bytes:
    """``obj`` pickled as multiprocessing pickles, else with cloudpickle (classes and functions made in a function
    or a notebook), where a class that imports by its name still goes by reference, as the standard pickle sends
    it: cloudpickle sends the classes of ``__main__`` by value, which the other process loads as new classes (under
    fork its ``__main__`` is this one's), and a space whose ``__eq__`` checks its class then differs from env 0's,
    though printed the same. The pickler's error where neither can.

    ``main_by_value``: for a spawned or forkserver child, whose ``__main__`` is not this one's (a notebook's or a
    ``python -c`` program's classes are not in it, nor a script's classes made under ``if __name__ ==
    "__main__":``), the classes of ``__main__`` go by value, always: the child's factories, pickled by cloudpickle,
    hold the same by-value copies (cloudpickle gives a class that it sent by value the same copy each time). Where a
    class of ``__main__`` cannot go by value (its methods' globals hold a lock, say), it goes by reference: a script's
    top-level classes are in such a child's ``__main__`` (multiprocessing runs the script there), as gymnasium's and
    SB3's workers find them."""
    if main_by_value:
        try:
            return _cloudpickled(obj, main_by_value=True)
        except Exception:
            pass
    try:
        return bytes(reduction.ForkingPickler.dumps(obj))
    except Exception:
        pass
    return _cloudpickled(obj, main_by_value=False)


def _cloudpickled(obj: Any, main_by_value: bool) -> bytes:
    """``obj`` pickled with cloudpickle, classes that import by their name by reference (those of ``__main__`` by
    value where ``main_by_value``)."""
    import cloudpickle

    class ByReference(cloudpickle.CloudPickler):
        def reducer_override(self, value: Any) -> Any:
            if isinstance(value, type) and imports_by_name(value):
                if not (main_by_value and value.__module__ == "__main__"):
                    return NotImplemented  # (the standard pickling of a class: its module and name)
            return super().reducer_override(value)

    buffer = io.BytesIO()
    ByReference(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def imports_by_name(cls: type) -> bool:
    """Whether ``cls`` is what its module and qualified name find (not a class made in a function)."""
    found: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is cls


def dumps_payload(obj: Any, what: str, envs: range | str) -> bytes:
    """Pickle a payload for a worker (before anything is issued); the error names the envs (a range, or words)."""
    try:
        return bytes(reduction.ForkingPickler.dumps(obj))
    except Exception as exc:
        try:  # (once more: an exception a signal handler raised into the pickling, a TimeoutError, is no fault of obj's)
            reduction.ForkingPickler.dumps(obj)
        except Exception:
            raise TypeError(
                f"{what} for {named_envs(envs)} cannot be pickled (every env gets them pickled, as through SB3's pipes, "
                f"whichever process steps it): {exc!r}"
            ) from exc
        raise  # (it pickles: the first try's exception came from outside, and goes on as it is)


class PoolState(Enum):
    """Where a pool stands (as gymnasium's AsyncState, plus the two ends)."""

    IDLE = "idle"
    PENDING = "pending"  # a command was issued; its wait has not completed
    BROKEN = "broken"  # a command could not complete: workers and parent may be out of step
    CLOSED = "closed"
