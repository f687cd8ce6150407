"""Pure-Python twin of fastvec/_kernels.pyx (selected with FASTVEC_PURE_PYTHON=1).

Same functions, same results, no compiler needed. Sleeping uses the same futex
protocol through ctypes on Linux; elsewhere it falls back to short sleeps. The two
do not mix in one pool: ``finish`` here does not count the pool's countdown down
(no atomic decrement in Python), which the compiled ``wait_remaining`` sleeps on,
so a worker uses its pool's kernels (``fastvec.kernels.select``). Plain numpy loads and
stores are not sequentially consistent, so a publisher here always issues the
futex wake (a system call, hence a full barrier) instead of trusting the
waiting word; waits also time out in short slices so that a lost wake-up can
only delay, never hang.
"""

from __future__ import annotations

import ctypes
import operator
import os
import platform
import select
import signal
import threading
import time

try:
    import resource
except ImportError:  # pragma: no cover - not Unix
    resource = None  # type: ignore[assignment]

from typing import Any

import numpy as np

from fastvec.protocol import Control

IMPLEMENTATION = "python"

DONE = 1
TIMEOUT = 0
INTERRUPTED = -1

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98, "i686": 240, "ppc64le": 221, "s390x": 238}.get(
    platform.machine()
)
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_SLICE_NS = 2_000_000  # longest single sleep: bounds the cost of a lost wake-up

try:
    _libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" and _SYS_FUTEX else None
except OSError:  # pragma: no cover
    _libc = None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _data_of(a: Any, dtype: Any, what: str) -> int:
    """The compiled kernels' data_of checks, in their order and words (what a typed memoryview would refuse): ``a``
    a writable, C-contiguous, non-empty numpy array of ``dtype`` in native byte order. Returns its size."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:  # (a swapped byte order is another dtype)
        raise ValueError(f"{what} has dtype {a.dtype}, expected {np.dtype(dtype)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous")
    if not a.flags.writeable:
        raise ValueError(f"{what} is read-only")
    if not a.size:
        raise ValueError(f"{what} is empty")
    return a.size


def _check_words(index: int, span: int, words: np.ndarray, what: str) -> None:
    """``words[index .. index + span)`` inside the words (see _kernels.pyx check_words)."""
    if index < 0 or index > len(words) - span:
        raise IndexError(f"{what} {index} outside {len(words)} words")


def _check_workers(
    words: np.ndarray, indices: np.ndarray, name: str, seqs: np.ndarray, remaining_index: int, span: int, word: str
) -> list:
    """The checks of the kernels that take a word index per worker (data_of, seqs_of, check_words in _kernels.pyx):
    ``indices`` (``name``), each ``span`` words inside ``words`` (``word``); returns them as a list."""
    _data_of(words, np.uint32, "words")
    _data_of(indices, np.intp, name)
    _data_of(seqs, np.uint32, "seqs")
    listed = indices.tolist()
    if len(seqs) < len(listed):
        raise ValueError(f"seqs has {len(seqs)} words for {len(listed)} workers")
    _check_words(remaining_index, Control.REMAINING_WAITING + 1, words, "remaining word")
    for index in listed:
        _check_words(index, span, words, word)
    return listed


def _check_done_words(words: np.ndarray, remaining_index: int, done_index: np.ndarray, seqs: np.ndarray) -> list:
    """wait_remaining's and wait_any's checks; the done words."""
    return _check_workers(words, done_index, "done_index", seqs, remaining_index, 2, "done word")


def _address(words: np.ndarray, index: int) -> int:
    return words.ctypes.data + operator.index(index) * 4


def _futex_wait(words: np.ndarray, index: int, expected: int, timeout_ns: int) -> None:
    timeout_ns = min(timeout_ns, _SLICE_NS)
    if _libc is None:
        time.sleep(timeout_ns / 1e9)
        return
    ts = _Timespec(timeout_ns // 1_000_000_000, timeout_ns % 1_000_000_000)
    _libc.syscall(
        ctypes.c_long(_SYS_FUTEX),
        ctypes.c_void_p(_address(words, index)),
        ctypes.c_int(_FUTEX_WAIT),
        ctypes.c_uint32(expected),
        ctypes.byref(ts),
        None,
        ctypes.c_int(0),
    )


def _futex_wake(words: np.ndarray, index: int) -> None:
    if _libc is not None:
        _libc.syscall(
            ctypes.c_long(_SYS_FUTEX),
            ctypes.c_void_p(_address(words, index)),
            ctypes.c_int(_FUTEX_WAKE),
            ctypes.c_int(2**31 - 1),
            None,
            None,
            ctypes.c_int(0),
        )


_CONTENDED_YIELD_NS = 50_000  # a yield that took longer and ran another task gave the core away: sleep instead;
_CONTENDED_WINDOW_NS = 20_000_000  # two within this window: do not yield at all for the next
_CONTENDED_BACKOFF_NS = 50_000_000  # (see _kernels.pyx), doubling up to
_CONTENDED_BACKOFF_MAX_NS = 1_000_000_000  # while contention comes back as soon as the pause ends
_contended_until = 0
_contended_backoff = _CONTENDED_BACKOFF_NS
_last_slow_yield = 0
_contended_count = 0


def term_deadline(seconds: int) -> bool:
    """The compiled kernel arms ``alarm(seconds)`` in C the moment SIGTERM arrives; Python cannot act
    inside a signal, only when its handler runs. Returns False: the caller's handler arms it then."""
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
        raise ValueError("term_deadline needs a Python handler for SIGTERM (signal.signal) installed first")
    return False


def watch_parent(pid: int) -> bool:
    """Send SIGTERM to the main thread when process ``pid`` ends: a thread sleeps on a pidfd of it.
    Unlike the compiled kernel's native thread it needs the GIL, so it cannot act while the main
    thread holds the GIL in stuck native code. At once if ``pid`` is gone already. Returns whether
    it watches."""
    main = threading.main_thread().ident
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGTERM)
        return True
    except (AttributeError, OSError):  # no pidfds (Linux before 5.3, other systems)
        return False

    def watch() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # signals go to the main thread
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
        signal.pthread_kill(main, signal.SIGTERM)

    threading.Thread(target=watch, name="fastvec-watch-parent", daemon=True).start()
    return True


def contended_yields() -> int:
    """How many times, in this process, yield-polling was turned off for a while (contention)."""
    return _contended_count


def _involuntary_switches() -> int:
    """This thread's involuntary context switches (a yield that ran another task counts one), -1 if unknown."""
    try:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw  # type: ignore[union-attr]
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return -1


def _wait_word(words: np.ndarray, index: int, target: int, spin_deadline: int, deadline: int, yield_spin: bool) -> int:
    global _contended_until, _last_slow_yield, _contended_count, _contended_backoff
    switches = None  # this thread's involuntary switches before its first yield
    while True:
        if int(words[index]) == target:
            return DONE
        before = time.monotonic_ns()
        if before >= spin_deadline or (yield_spin and before < _contended_until):
            break
        if yield_spin:
            if switches is None:
                switches = _involuntary_switches()
            os.sched_yield()
            after = time.monotonic_ns()
            if after - before > _CONTENDED_YIELD_NS:
                switched = _involuntary_switches()
                if switches >= 0 and switched == switches:
                    continue  # no other task ran: the hypervisor took the vCPU (see _kernels.pyx)
                switches = switched
                if after - _last_slow_yield < _CONTENDED_WINDOW_NS:
                    if after < _contended_until + _contended_backoff:
                        _contended_backoff = min(2 * _contended_backoff, _CONTENDED_BACKOFF_MAX_NS)
                    else:
                        _contended_backoff = _CONTENDED_BACKOFF_NS
                    _contended_until = after + _contended_backoff
                    _contended_count += 1
                _last_slow_yield = after
                break
    while True:
        words[index + 1] = 1
        value = int(words[index])
        if value == target:
            words[index + 1] = 0
            return DONE
        now = time.monotonic_ns()
        if now >= deadline:
            words[index + 1] = 0
            return TIMEOUT
        _futex_wait(words, index, value, deadline - now)


def _spin_end(start: int, spin_ns: int, timeout_ns: int) -> int:
    """When a wait that began at ``start`` stops polling; see _kernels.pyx's spin_end."""
    return start + min(abs(spin_ns), timeout_ns)


def wait_all(words: np.ndarray, seq_index: np.ndarray, target: int, spin_ns: int, timeout_ns: int) -> int:
    """Wait until ``words[i] == target`` for every i in ``seq_index``; see _kernels.pyx."""
    start = time.monotonic_ns()
    spin_deadline, deadline = _spin_end(start, spin_ns, timeout_ns), start + timeout_ns
    _data_of(words, np.uint32, "words")
    _data_of(seq_index, np.intp, "seq_index")
    target = int(target) & 0xFFFFFFFF
    indices = seq_index.tolist()
    for index in indices:
        _check_words(index, 2, words, "sequence word")
    for k, index in enumerate(indices):
        if _wait_word(words, index, target, spin_deadline, deadline, spin_ns < 0) != DONE:
            return k
    return -1


def publish(words: np.ndarray, index: int, value: int) -> None:
    """Store ``value`` in ``words[index]`` and wake any sleeper on it."""
    _data_of(words, np.uint32, "words")
    _check_words(index, 2, words, "word")
    words[index] = value & 0xFFFFFFFF
    _futex_wake(words, index)


def issue(
    words: np.ndarray, bases: np.ndarray, command: int, slot: int, arg: int, seqs: np.ndarray, remaining_index: int
) -> None:
    """Write each worker's command words, count the command in ``seqs[k]`` and publish CMD_SEQ =
    seqs[k] (see _kernels.pyx)."""
    blocks = _check_workers(words, bases, "bases", seqs, remaining_index, Control.DONE_WAITING + 1, "control block")
    words[remaining_index] = len(blocks)
    for k, b in enumerate(blocks):
        words[b + Control.CMD] = command
        words[b + Control.SLOT] = slot
        words[b + Control.ARG] = arg
        seq = (int(seqs[k]) + 1) & 0xFFFFFFFF
        seqs[k] = seq
        publish(words, b + Control.CMD_SEQ, seq)


def finish(words: np.ndarray, done_index: int, seq: int, remaining_index: int) -> None:
    """Publish DONE_SEQ. Without an atomic decrement in pure Python, the countdown is not used:
    wait_remaining below waits on every worker's DONE_SEQ instead."""
    _data_of(words, np.uint32, "words")
    _check_words(done_index, 2, words, "done word")
    _check_words(remaining_index, Control.REMAINING_WAITING + 1, words, "remaining word")
    publish(words, done_index, seq)


def wait_remaining(
    words: np.ndarray, remaining_index: int, done_index: np.ndarray, seqs: np.ndarray, spin_ns: int, timeout_ns: int
) -> int:
    """Wait until every DONE_SEQ word equals its ``seqs[k]`` (completion is every DONE word, as in _kernels.pyx)."""
    indices = _check_done_words(words, remaining_index, done_index, seqs)
    start = time.monotonic_ns()
    spin_deadline, deadline = _spin_end(start, spin_ns, timeout_ns), start + timeout_ns
    for k, (index, seq) in enumerate(zip(indices, seqs.tolist())):
        if _wait_word(words, index, int(seq) & 0xFFFFFFFF, spin_deadline, deadline, spin_ns < 0) != DONE:
            return k
    return -1


def wait_any(
    words: np.ndarray, remaining_index: int, done_index: np.ndarray, seqs: np.ndarray, spin_ns: int, timeout_ns: int
) -> int:
    """The first k whose DONE_SEQ word equals ``seqs[k]``, or -1 after ``timeout_ns`` (see _kernels.pyx).
    Without an atomic countdown here it polls, yielding, then napping in 100 us slices."""
    indices = _check_done_words(words, remaining_index, done_index, seqs)
    start = time.monotonic_ns()
    spin_deadline, deadline = _spin_end(start, spin_ns, timeout_ns), start + timeout_ns
    pairs = list(zip(indices, seqs.tolist()))
    while True:
        for k, (index, seq) in enumerate(pairs):
            if int(words[index]) == seq:
                return k
        now = time.monotonic_ns()
        if now >= deadline:
            return -1
        if now < spin_deadline:
            os.sched_yield()
        else:
            time.sleep(min(100e-6, (deadline - now) / 1e9))


def _check_rows(dst: np.ndarray, kernel: str) -> None:
    """The row kernels' destination checks, as _kernels.pyx's rows_of makes them, naming ``kernel``."""
    if not dst.flags.c_contiguous:
        raise ValueError(f"{kernel} needs a C-contiguous destination")
    if dst.ndim == 0:
        raise ValueError(f"{kernel} needs a destination with rows, got a 0-d array")
    if not dst.flags.writeable:
        raise ValueError(f"{kernel}: assignment destination is read-only")


def gather_rows(items: list, dst: np.ndarray, start: int, report_cast: bool = False) -> int:
    """Copy ``items[j]`` into ``dst[start + j]``; -1 on success, else the first bad j
    (with ``report_cast``, ``-2 - j`` for the first array item, or numpy scalar, of another dtype)."""
    _check_rows(dst, "gather_rows")
    if start < 0 or start + len(items) > dst.shape[0]:
        raise IndexError(f"rows {start}..{start + len(items)} outside destination with {dst.shape[0]} rows")
    row_shape = dst.shape[1:]
    cast = -1
    for j, item in enumerate(items):
        if report_cast and cast < 0 and isinstance(item, (np.ndarray, np.generic)) and item.dtype != dst.dtype:
            cast = j
        arr = np.asarray(item, dtype=dst.dtype)
        if arr.shape != row_shape:
            return j
        dst[start + j] = arr
    return -1 if cast < 0 else -2 - cast


def write_results(
    results: list,
    obs_dst: np.ndarray,
    rewards: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    start: int,
    report_cast: bool = False,
) -> tuple[int, list[int], bool, int, int]:
    """A shard's step results into one ring slot; see _kernels.pyx."""
    n = len(results)
    sizes = [_data_of(rewards, np.float64, "rewards"), _data_of(terminated, np.uint8, "terminated"),
             _data_of(truncated, np.uint8, "truncated")]  # fmt: skip
    _check_rows(obs_dst, "write_results")
    if start < 0 or start + n > min(obs_dst.shape[0], *sizes):
        raise IndexError("write_results: rows outside the slot")
    for result in results:
        if type(result) is not tuple or len(result) != 5:
            raise TypeError("env.step() must return a 5-tuple")
    items = [r[0] for r in results]
    code = gather_rows(items, obs_dst, start, report_cast)
    shared = _first_shared(items if code < 0 else items[: code + 1])
    if code >= 0:  # (the compiled kernel also writes the rows before it; nothing relies on them)
        return code, [j for j, r in enumerate(results[:code]) if r[2] or r[3]], False, -1, shared
    values = [_as_double(r[1]) for r in results]
    rewards[start : start + n] = values
    terms = [1 if r[2] else 0 for r in results]
    truncs = [1 if r[3] else 0 for r in results]
    terminated[start : start + n] = terms
    truncated[start : start + n] = truncs
    nan = next((j for j, v in enumerate(values) if v != v), -1)
    ended = [j for j, (t, u) in enumerate(zip(terms, truncs)) if t or u]
    has_info = any(r[4] is not None and not (type(r[4]) is dict and not r[4]) for r in results)  # (see shard._said)
    return code, ended, has_info, nan, shared


def _first_shared(items: list) -> int:
    """The first j whose item is over the same memory as the one before it or the first one (the same list, or
    non-empty arrays starting at the same byte), or -1; see write_results."""
    prev = first = None  # (the item's array's first byte, or its list's identity)
    for j, item in enumerate(items):
        if type(item) is list:
            where: object = ("list", id(item))
        elif isinstance(item, np.ndarray) and item.nbytes:
            where = item.__array_interface__["data"][0]
        else:
            where = None
        if where is not None and (where == prev or where == first):
            return j
        prev = where
        if j == 0:
            first = where
    return -1


def add_stats(
    row: np.ndarray, commands: float, env_steps: float, busy_ns: float, restarts: float, wait_ns: float = 0.0
) -> None:
    """A shard's counters grow by one command's amounts; see _kernels.pyx."""
    if _data_of(row, np.float64, "row") < 6:
        raise ValueError(f"a stats row has at least 6 columns, got {row.size}")
    row[:5] += (commands, env_steps, busy_ns, restarts, wait_ns)
    us, b = busy_ns / 1000.0, 0
    while us >= 2.0 and b < row.shape[0] - 6:
        us *= 0.5
        b += 1
    row[5 + b] += 1


def first_nan(values: np.ndarray, start: int, stop: int) -> int:
    _view(values, (np.float64,), "values")
    if start < 0 or stop > values.shape[0] or stop < start:
        raise IndexError(f"first_nan: [{start}, {stop}) outside {values.shape[0]} values")
    bad = np.flatnonzero(np.isnan(values[start:stop]))
    return int(bad[0]) + start if bad.size else -1


def _view(a: Any, dtypes: tuple, what: str, writable: bool = False, fused: bool = False) -> None:
    """What the compiled kernels' typed memoryview argument ``what`` refuses, refused alike (its error types)."""
    if a is None:
        raise TypeError(f"Argument '{what}' must not be None")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what}: a numpy array is needed, got {type(a).__name__}")
    if fused and (a.ndim != 1 or a.dtype.newbyteorder("=") not in dtypes):  # (no signature of the kernel takes it)
        raise TypeError(f"No matching signature found for {what} of {a.dtype}, {a.ndim} dimensions")
    if a.ndim != 1:
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {a.ndim})")
    if a.dtype not in dtypes:
        raise ValueError(f"Buffer dtype mismatch, expected {np.dtype(dtypes[0])} but got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError("ndarray is not C-contiguous")
    if writable and not a.flags.writeable:
        raise ValueError("buffer source array is read-only")


def _items(items: Any) -> None:
    if type(items) is not list:
        raise TypeError(f"Argument 'items' has incorrect type (expected list, got {type(items).__name__})")


def store_floats(items: list, dst: np.ndarray, start: int) -> None:
    _items(items)
    _view(dst, (np.float64,), "dst", writable=True)
    if start < 0 or start + len(items) > dst.shape[0]:
        raise IndexError("store_floats destination too small")
    dst[start : start + len(items)] = [_as_double(x) for x in items]


def _as_double(x: Any) -> float:
    """``float(x)`` as the compiled kernels convert (C's PyFloat_AsDouble): a number, or an object with
    ``__float__`` or ``__index__``; a string is refused (``float()`` would parse it)."""
    if isinstance(x, (str, bytes, bytearray)):
        raise TypeError(f"must be real number, not {type(x).__name__}")
    return float(x)


def store_bools(items: list, dst: np.ndarray, start: int) -> None:
    _items(items)
    _view(dst, (np.uint8, np.bool_), "dst", writable=True)  # (a one-byte bool is a uint8_t buffer to Cython)
    if start < 0 or start + len(items) > dst.shape[0]:
        raise IndexError("store_bools destination too small")
    dst[start : start + len(items)] = [1 if x else 0 for x in items]


def _check_bounds_shape(n: int, k: int, k_high: int) -> None:
    if k_high != k or (n % k if k else n):  # (no bounds fit no values: a Box of shape (0,))
        raise ValueError(f"bounds of {k} low and {k_high} high values for {n} values")


def first_outside_int(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> int:
    for a, what in ((values, "values"), (low, "low"), (high, "high")):
        _view(a, (np.int64,), what)
    k = low.shape[0]
    _check_bounds_shape(values.shape[0], k, high.shape[0])
    if not k:
        return -1
    v = values.reshape(-1, k)
    bad = np.flatnonzero((v < low) | (v > high))
    return int(bad[0]) if bad.size else -1


def first_outside_float(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> int:
    _view(values, (np.float32, np.float64), "values", fused=True)
    _view(low, (np.float64,), "low")
    _view(high, (np.float64,), "high")
    k = low.shape[0]
    _check_bounds_shape(values.shape[0], k, high.shape[0])
    if not k:
        return -1
    v = values.reshape(-1, k).astype(np.float64)
    bad = np.flatnonzero(~((v >= low) & (v <= high)))
    return int(bad[0]) if bad.size else -1


def done_flags(terminated: np.ndarray, truncated: np.ndarray, rewards: np.ndarray) -> tuple:
    """One step's results for SB3's API: ``(terminated | truncated, a copy of rewards, ended env indices)``."""
    for a, dtype, what in (
        (terminated, np.bool_, "terminated"),
        (truncated, np.bool_, "truncated"),
        (rewards, np.float64, "rewards"),
    ):
        _data_of(a, dtype, what)
    if not terminated.size == truncated.size == rewards.size:
        raise ValueError(
            f"done_flags: {terminated.size} terminated, {truncated.size} truncated and {rewards.size} rewards"
        )
    dones = terminated.reshape(-1) | truncated.reshape(-1)  # (taken flat, as the compiled kernel does)
    return dones, rewards.reshape(-1).copy(), np.flatnonzero(dones).tolist()


def copy_same(out: np.ndarray, actions: Any) -> bool:
    """``out[...] = actions`` when ``actions`` is a plain numpy array of ``out``'s shape and dtype (both
    C-contiguous, native byte order): True; else nothing copied, False. See _kernels.pyx."""
    if type(actions) is not np.ndarray or actions.shape != out.shape or actions.dtype != out.dtype:
        return False
    if out.dtype.kind == "O" or not out.dtype.isnative or not actions.dtype.isnative:
        return False
    if not (actions.flags.c_contiguous and out.flags.c_contiguous and out.flags.writeable):
        return False
    out[...] = actions
    return True


def row_copies(src: np.ndarray, indices: list[int]) -> list[np.ndarray]:
    """``[src[i].copy() for i in indices]``; see _kernels.pyx."""
    if not isinstance(src, np.ndarray):
        raise TypeError(f"row_copies: a numpy array is needed, got {type(src).__name__}")
    if src.ndim == 0:
        raise ValueError("row_copies needs an array with rows")
    for i in indices:
        if not 0 <= i < src.shape[0]:
            raise IndexError(f"row {i} outside an array of {src.shape[0]} rows")
    return [src[i].copy() for i in indices]


def info_dicts(n: int, key: Any, value: Any) -> list[dict]:
    """``n`` new dicts ``{key: value}``."""
    return [{key: value} for _ in range(n)]


def _watched_done(words: np.ndarray, done_index: np.ndarray, seqs: np.ndarray, watch: np.ndarray) -> bool:
    return any(int(words[done_index[k]]) == int(seqs[k]) for k in watch.tolist())


def _check_watch(words: np.ndarray, done_index: np.ndarray, seqs: np.ndarray, watch: np.ndarray) -> None:
    """The checks of the compiled kernels' checked_watch (data_of, seqs_of), in their order and words."""
    for a, dtype, what in ((words, np.uint32, "words"), (done_index, np.intp, "done_index"), (seqs, np.uint32, "seqs"),
                           (watch, np.intp, "watch")):  # fmt: skip
        _data_of(a, dtype, what)
        if what == "seqs" and len(seqs) < len(done_index):
            raise ValueError(f"seqs has {len(seqs)} words for {len(done_index)} workers")
    for k in watch.tolist():
        if k < 0 or k >= len(done_index):
            raise IndexError(f"watched worker {k} outside {len(done_index)} workers")
        if done_index[k] < 0 or done_index[k] >= len(words):
            raise IndexError(f"done word {done_index[k]} outside {len(words)} words")


def watch_stops(words: np.ndarray, done_index: np.ndarray, seqs: np.ndarray, watch: np.ndarray, deadline: int) -> bool:
    """Whether a step in parts stops now; see _kernels.pyx."""
    _check_watch(words, done_index, seqs, watch)
    return _watched_done(words, done_index, seqs, watch) and time.perf_counter_ns() < deadline


def step_watching(
    results: list, step_fns: list, actions: Any, stop: int, words: np.ndarray, done_index: np.ndarray,
    seqs: np.ndarray, watch: np.ndarray, deadline: int,
) -> None:
    """step_into from env ``len(results)`` up to ``stop``, stopping between envs once a watched worker is
    done before ``deadline``; see _kernels.pyx."""
    _check_watch(words, done_index, seqs, watch)
    append = results.append
    watching = len(watch) > 0
    stop = min(stop, len(step_fns))
    for j in range(len(results), stop):
        append(step_fns[j](actions[j]))
        if watching and j + 1 < stop and _watched_done(words, done_index, seqs, watch):
            if time.perf_counter_ns() < deadline:
                return
            watching = False


def step_into(
    results: list, step_fns: list, actions: Any, first: int = 0, env_ns: Any = None, offset: int = 0, scale: float = 1.0
) -> None:
    """``results.append(step_fns[j](actions[j]))`` for every j from ``first`` on; with ``env_ns``, each
    env's step time (ns, times ``scale``) added to ``env_ns[offset + j]``; see _kernels.pyx."""
    append = results.append
    if first < 0:
        raise IndexError(f"step_into: first env {first} < 0")
    if env_ns is None:
        for j in range(first, len(step_fns)):
            append(step_fns[j](actions[j]))
        return
    if offset < 0 or offset + len(step_fns) > len(env_ns):
        raise IndexError(f"envs {offset}..{offset + len(step_fns) - 1} outside a timing array of {len(env_ns)}")
    clock = time.perf_counter_ns
    for j in range(first, len(step_fns)):
        began = clock()
        append(step_fns[j](actions[j]))
        env_ns[offset + j] += (clock() - began) * scale
