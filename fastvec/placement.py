"""Which cores the pool's processes run on (the ``pin`` option), honouring the affinity the
caller was started with (taskset, cgroups, a scheduler's allocation).

- ``"auto"`` (default): each worker process gets a core of its own where there are enough,
  and the learner's core (the first allowed one) is kept free of workers; with more workers
  than the remaining cores, workers are spread round-robin over all of them. The calling
  process is not pinned (its own shard runs wherever it runs).
- ``"compact"``: the k-th worker process on the k-th allowed core, consecutive cores first (caches
  shared); the first is the calling process's too, which is not pinned.
- ``"spread"``: workers as far apart as the allowed cores allow (one core in every
  ``cores / workers``); the calling process, when it steps a shard, on the first core.
  ``pin_workers=True`` means this.
- ``"none"``: no pinning. A list of core ids: the k-th worker process on ``cores[k % len(cores)]`` (checked
  against the allowed cores when the pool is made, before any process starts).

An affinity is a thread's (on Linux): a pool pins the thread that makes it ("spread"), and gives that thread
the affinity it had back when its last pool closes, from whichever thread closes it. A thread started by a
pinned thread, or a child it forks, inherits the pin: it plans on the cores the pinned thread plans on. (So
does a thread started while the pin held that then restricts itself to exactly the pinned cores: the two
cannot be told apart. One that existed before the pin keeps its own choice.)

Where psutil cannot set affinities (macOS), pinning falls back to none, with one warning.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

__all__ = ["PIN_MODES", "allowed_cores", "plan", "can_pin", "apply", "pin_caller", "release_caller"]

PIN_MODES = ("auto", "compact", "spread", "none")
_warned = False
# the calling process's own affinity while pools pin it ("spread"), and how many do: restored when the
# last of them closes (a second pool saving the first one's pin would have kept it pinned for good)
_caller_lock = threading.Lock()
# the threads pools pinned (an affinity is a thread's, on Linux): native id -> _Pin
_pinned: dict[int, _Pin] = {}
# in a forked child: the affinity it inherited -> the one its parent planned on (a pin it inherited, or one its
# parent had inherited: grandchildren too)
_inherited: dict[tuple[int, ...], list[int]] = {}
_forking: tuple[tuple[int, ...], list[int]] | None = None


class _Pin:
    """A thread pinned by pools: the affinity it had (given back), the one to plan on, how many pools pin it, the
    cores they pinned it to, and the threads that existed when it was pinned (none of them inherited the pin)."""

    __slots__ = ("had", "plan", "count", "cores", "before")

    def __init__(self, had: list[int], plan: list[int]):
        self.had, self.plan, self.count, self.cores = had, plan, 0, None
        self.before = {thread.native_id for thread in threading.enumerate()}


def _before_fork() -> None:
    global _forking
    try:
        _forking = (tuple(sorted(os.sched_getaffinity(0))), allowed_cores())
    except Exception:  # pragma: no cover - not Linux
        _forking = None


def _after_fork_in_child() -> None:
    """A forked child's threads are not its parent's (its parent's pools restore those); a child forked while its
    thread ran on a pin (its own, or one it inherited) plans on what its parent planned on."""
    global _caller_lock
    _caller_lock = threading.Lock()
    _pinned.clear()
    _inherited.clear()
    if _forking is not None and list(_forking[0]) != _forking[1]:
        _inherited[_forking[0]] = list(_forking[1])


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def allowed_cores() -> list[int]:
    """The cores the calling thread may plan on, in order: its affinity as before a pool pinned it (pin="spread").
    A thread started by a pinned thread (or a child it forked) runs on that pin, and plans on what the pinned
    thread does; a thread that existed when the pin was taken, and restricted itself since, keeps its own."""
    thread = threading.get_native_id()
    entry = _pinned.get(thread)
    if entry is not None:
        return list(entry.plan)
    try:
        current = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))
    for pin in list(_pinned.values()):
        if pin.cores == current and thread not in pin.before:  # (started while the pin held: it inherited it)
            return list(pin.plan)
    return list(_inherited.get(tuple(current), current))


def pin_caller(cores: list[int]) -> int:
    """Pin the calling thread to ``cores`` for a pool; returns its native id, for ``release_caller``."""
    thread = threading.get_native_id()
    with _caller_lock:
        entry = _pinned.get(thread)
        if entry is None:
            entry = _pinned[thread] = _Pin(sorted(os.sched_getaffinity(0)), allowed_cores())
        entry.count += 1
        entry.cores = sorted(cores)
        os.sched_setaffinity(0, cores)
    return thread


def release_caller(thread: int) -> None:
    """A pool that pinned ``thread`` closed: the last of its pools gives it the affinity it had back, whichever
    thread closes it (a close() from another thread, a __del__ in the monitor's thread: ``0`` names the closing
    thread)."""
    with _caller_lock:
        entry = _pinned.get(thread)
        if entry is None:
            return
        entry.count -= 1
        if entry.count == 0:
            del _pinned[thread]
            try:
                os.sched_setaffinity(thread, entry.had)
            except OSError:  # (the thread has ended since)
                pass


def can_pin() -> bool:
    """Whether psutil can set a process's CPU affinity here (one warning where it cannot)."""
    global _warned
    try:
        import psutil

        ok = hasattr(psutil.Process, "cpu_affinity")
    except ImportError:  # pragma: no cover
        ok = False
    if not ok and not _warned:
        from fastvec.errors import user_stacklevel  # (here: placement imports nothing of fastvec's at its import)

        _warned = True
        warnings.warn(
            "fastvec: this platform cannot pin processes to cores; pin= is ignored", RuntimeWarning, stacklevel=user_stacklevel()
        )
    return ok


def plan(
    pin: Any, workers: list[int], in_parent: bool, cores: list[int] | None = None
) -> tuple[dict[int, list[int]], list[int] | None]:
    """(worker index -> its cores, the calling process's cores or None) for the ``pin`` setting;
    ``workers``: the indices of the shards that run in worker processes."""
    cores = allowed_cores() if cores is None else list(cores)
    n = len(cores)
    if not workers or pin in (None, "none", False):
        return {}, None
    if isinstance(pin, (list, tuple)):
        chosen = [int(c) for c in pin]
        outside = sorted(set(chosen) - set(cores))
        if outside:
            raise ValueError(
                f"pin={list(pin)}: core(s) {outside} are not among the cores this process may run on ({cores})"
            )
        return {w: [chosen[k % len(chosen)]] for k, w in enumerate(workers)}, None
    if pin == "auto":
        free = cores[1:] if n > 1 else cores  # the learner's core stays free of workers
        pool = free if len(workers) <= len(free) else cores
        return {w: [pool[k % len(pool)]] for k, w in enumerate(workers)}, None
    if pin == "compact":
        return {w: [cores[k % n]] for k, w in enumerate(workers)}, None
    if pin == "spread":  # as pin_workers=True did: shard w on core w mod cores, the parent's shard on the first
        stride = max(1, n // (len(workers) + (1 if in_parent else 0)))
        first = 1 if in_parent else 0
        mapping = {w: [cores[((k + first) * stride) % n]] for k, w in enumerate(workers)}
        return mapping, ([cores[0]] if in_parent else None)
    raise ValueError(f"pin must be one of {PIN_MODES} or a list of core ids, got {pin!r}")


def apply(pid: int, cores: list[int]) -> None:
    """Pin process ``pid`` to ``cores``."""
    import psutil

    psutil.Process(pid).cpu_affinity(cores)
