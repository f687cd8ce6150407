"""Every knob of a pool in one frozen dataclass: its default, its meaning and its validation.

Both front-ends (``fastvec.SubprocVecEnv``, ``fastvec.VectorEnv``), the ``ppo`` trainer
and ``python -m fastvec.tune`` build a pool from a ``PoolOptions``, so a knob is
declared once. ``PoolOptions.build(config, **knobs)`` merges a tuning file written by
the tuner with explicit keyword arguments (explicit ones win).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import numbers
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PoolOptions", "TUNABLE", "default_num_workers", "wait_seconds"]

# the knobs a tuning file from `python -m fastvec.tune` may set
TUNABLE = ("num_workers", "step_in_parent", "spin_ns", "ring_slots", "start_method", "pin_workers", "pin")
CHECK_LEVELS = (None, "off", "warn", "raise")


def shown_value(value: Any, limit: int | None = None) -> str:
    """``repr(value)`` for an error message; an int too long to print (Python refuses past 4,300 digits) by its
    size, which would otherwise replace the message with its own error. ``limit``: at most that many characters (an
    int of 400 digits printed whole buries the message)."""
    try:
        text = repr(value)
    except ValueError:
        return f"an int of {value.bit_length():,} bits" if isinstance(value, int) else f"a {type(value).__name__}"
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def default_num_workers() -> int:
    """One per core this process may run on, as it was started: not a pool's pin of the calling thread
    (``pin="spread"``), which made every pool made meanwhile plan for one core."""
    from fastvec import placement

    return len(placement.allowed_cores())


def wait_seconds(timeout: Any) -> float | None:
    """A wait's ``timeout`` (step_wait, reset_wait, call_wait, recv, close; and step_timeout) as seconds: any
    number (a Fraction, a Decimal, numpy's), None for no limit, as are infinity and anything beyond 1e9 s (the
    waits count nanoseconds); NaN is refused."""
    if timeout is None:
        return None
    try:
        seconds = float(timeout)
    except OverflowError:  # (10**400)
        return None
    except (TypeError, ValueError):
        raise TypeError(f"timeout must be a number of seconds or None, got {shown_value(timeout)}") from None
    if seconds != seconds:
        raise ValueError(f"timeout must be a number of seconds or None, got {shown_value(timeout)}")
    return None if seconds > 1e9 else seconds


@dataclass(frozen=True)
class PoolOptions:
    """How a pool runs its envs. Every field has a default that suits most uses.

    Attributes:
        num_workers: shards stepping the envs (default: one per available core, at most
            num_envs). With ``step_in_parent`` one of them is the calling process.
        start_method: "fork", "forkserver" or "spawn" (default: the front-end's: forkserver
            for SubprocVecEnv as SB3, multiprocessing's default for VectorEnv as gymnasium).
        ring_slots: S, the ring depth; step t's results land in slot t mod S, so a view
            handed out stays valid for S - 1 further steps.
        step_in_parent: step shard 0 in the calling process instead of a worker process
            (default: True when num_workers >= 2; with ``batch_size``, where the workers and the
            caller would be more processes than cores and a batch is one group): on a machine with
            few cores this keeps the learner's core busy instead of idle.
        spin_ns: how long a waiter polls before sleeping on the futex. Positive: busy-poll;
            negative: poll for ``-spin_ns`` while yielding the core (sched_yield); 0: sleep at
            once. Default: the parent yield-polls 200 us; a worker yield-polls about 1.5x the
            usual gap between commands (200 us to 2 ms), or 200 us when processes outnumber cores.
        step_timeout: seconds a command may take before StepTimeoutError (default: none);
            making a worker's envs, at start or in a restart, counts as a command.
        daemon: start workers as daemonic processes (they then cannot start children).
        pin: which cores the workers run on (see fastvec.placement): "auto" (default: a core
            of its own for each worker where there are enough, the learner's core kept free of
            workers, the affinity the process was started with honoured), "compact", "spread",
            "none", or a list of core ids.
        pin_workers: True is ``pin="spread"`` (shard w on core w mod cores, the parent's own
            shard on the first core), as before ``pin`` existed.
        batch_size: asynchronous partial batches (fastvec.async_batches): with B below the
            number of envs, the envs split into groups (num_workers of them; default: one per core,
            of a size that divides B, and at least one per batch), and
            ``send(actions, env_ids)`` / ``recv()`` hand out the first B envs that
            finished. Each group is a worker's, or with ``step_in_parent`` the first group is the
            calling process's, stepped inside ``recv()`` (default: where processes would outnumber
            cores and a batch is one group; see pool._async_layout).
        monitor: run fastvec's monitor in a background thread (see fastvec.monitor): it samples
            the shards' counters every ``monitor_interval`` seconds and, when one shard lags the
            others, re-pins it off a core it shares with other load, or moves envs from it to a
            neighbouring shard at episode boundaries. Its decisions are in ``monitor_events``.
        on_error: "raise": an env's exception is raised as EnvError naming the env, a dead
            worker as WorkerDiedError. "restart": the failing env (or a dead worker's envs)
            is re-created from its factory, its episode ends as truncated, the others go on.
        check: None (default): warn once per env when an env returns an observation of
            another dtype than its space (it is cast) or a NaN reward; actions pass through
            unchanged in value, as SB3 and gymnasium pass them. "warn" / "raise": the same
            checks, and actions outside the action space's bounds or that its dtype cannot hold
            exactly (3.7 for Discrete; by default they reach the env as sent), warned about once
            per env or raised naming the env. "off": no checks. A wrong shape is always an error.
    """

    num_workers: int | None = None
    start_method: str | None = None
    ring_slots: int = 2
    step_in_parent: bool | None = None
    spin_ns: int | None = None
    step_timeout: float | None = None
    daemon: bool = False
    pin_workers: bool = False
    pin: str | list[int] = "auto"
    monitor: bool = False
    monitor_interval: float = 1.0
    batch_size: int | None = None
    on_error: str = "raise"
    check: str | None = None

    def __post_init__(self) -> None:
        n = self.num_workers
        if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1):
            raise ValueError(f"num_workers must be a positive int, got {shown_value(n)}")
        if (
            not isinstance(self.ring_slots, (int, np.integer))
            or isinstance(self.ring_slots, bool)
            or not 1 <= self.ring_slots < 2**32  # (the block's header holds it in 32 bits)
        ):
            raise ValueError(f"ring_slots must be an int >= 1 (below 2**32), got {shown_value(self.ring_slots)}")
        methods = mp.get_all_start_methods()
        if self.start_method is not None and self.start_method not in methods:
            # multiprocessing's own words first (SB3's tests match them), then what is available
            raise ValueError(f"cannot find context for {shown_value(self.start_method)}; start_method must be one of {methods}")
        # (fastvec's own switches: a string such as "false", from a hand-written config, would be taken as True)
        for name in ("step_in_parent", "pin_workers", "monitor", "daemon"):
            value = getattr(self, name)
            if not (isinstance(value, (bool, np.bool_)) or (value is None and name == "step_in_parent")):
                raise ValueError(f"{name} must be True or False{' (or None)' if name == 'step_in_parent' else ''}, got {shown_value(value)}")
        if self.spin_ns is not None and (
            not isinstance(self.spin_ns, (int, np.integer)) or isinstance(self.spin_ns, bool)
            or not -(2**63) < self.spin_ns < 2**63
        ):  # fmt: skip
            raise ValueError(f"spin_ns must be an int of nanoseconds (64 bits), got {shown_value(self.spin_ns)}")
        timeout = self.step_timeout
        if timeout is not None:
            if not isinstance(timeout, numbers.Real) or isinstance(timeout, (bool, np.bool_)) or not timeout > 0:
                raise ValueError(f"step_timeout must be a positive number of seconds (or None), got {shown_value(timeout)}")
            # (seconds as a float, as every wait's: a Fraction could not be formatted; beyond 1e9 s, no limit)
            object.__setattr__(self, "step_timeout", wait_seconds(timeout))
        if self.on_error not in ("raise", "restart"):
            raise ValueError(f"on_error must be 'raise' or 'restart', got {shown_value(self.on_error)}")
        if self.on_error == "restart" and self.ring_slots < 2:
            raise ValueError(
                "on_error='restart' needs ring_slots >= 2, got 1: the envs of a worker that dies end their episodes at "
                "the last observations the caller saw, kept in the slot before the step's (with one slot, the step "
                "may have written over them)"
            )
        if isinstance(self.pin, np.ndarray):  # (core ids as an array: a list of them)
            object.__setattr__(self, "pin", self.pin.tolist())
        if isinstance(self.pin, (list, tuple)):
            if not self.pin or not all(
                isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)) and c >= 0 for c in self.pin
            ):
                raise ValueError(f"pin must name cores by their ids, got {shown_value(self.pin)}")
        elif self.pin not in ("auto", "compact", "spread", "none"):
            raise ValueError(f"pin must be 'auto', 'compact', 'spread', 'none' or a list of core ids, got {shown_value(self.pin)}")
        if self.batch_size is not None and (
            not isinstance(self.batch_size, (int, np.integer)) or isinstance(self.batch_size, bool) or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive int, got {shown_value(self.batch_size)}")
        interval = self.monitor_interval
        if isinstance(interval, numbers.Real) and not isinstance(interval, (bool, np.bool_)):  # (numpy's, a Fraction)
            try:
                interval = float(interval)
            except OverflowError:  # (10**400: refused below, by name)
                interval = float("inf")
            else:
                object.__setattr__(self, "monitor_interval", interval)
        if not (isinstance(interval, float) and 0 < interval <= 3600):
            raise ValueError(
                f"monitor_interval must be a positive number of seconds, at most 3600, got {shown_value(self.monitor_interval)}"
            )
        if self.check not in CHECK_LEVELS:
            raise ValueError(f"check must be None, 'off', 'warn' or 'raise', got {shown_value(self.check)}")

    @classmethod
    def build(
        cls, config: PoolOptions | dict | str | os.PathLike | None = None, *, num_envs: int | None = None, **knobs: Any
    ) -> PoolOptions:
        """Options from a tuning ``config`` (a PoolOptions, a dict, or the path of a JSON file
        written by ``python -m fastvec.tune``) overlaid with the ``knobs`` that are not None.
        ``num_envs``, where known, tells a ``batch_size`` of every env (the synchronous step) from
        asynchronous batches."""
        return cls.merged(config, num_envs, knobs)

    @classmethod
    def merged(cls, config: PoolOptions | dict | str | os.PathLike | None, num_envs: int | None, knobs: dict) -> PoolOptions:
        """``build`` with the knobs as a dict: what the front-ends pass a user's keyword options through, so that
        none of them (num_envs, EnvPool's keyword; cls; config) is taken for one of build's own arguments."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(knobs) - names)
        if unknown:
            hint = " (the number of envs is that of env_fns)" if "num_envs" in unknown else ""
            raise TypeError(f"unknown pool option(s) {unknown}{hint}; the options are {sorted(names)}")
        base = cls.load(config)
        batch = knobs.get("batch_size")
        if batch is not None and config is not None and not isinstance(config, PoolOptions) and (
            num_envs is None or not isinstance(batch, (int, np.integer)) or batch < num_envs
        ):
            # a tuning file's layout (num_workers, step_in_parent) was measured for the synchronous step (its
            # asynchronous search measures batches in their own default layout, and writes none): asynchronous
            # batches keep their own default (pool._async_layout) unless it is given here; batch_size=num_envs is
            # the synchronous step, which keeps the file's layout. (A num_workers of the
            # synchronous step need not tile a batch: ppo.train --fastvec-config --async-envs was refused.)
            base = dataclasses.replace(base, step_in_parent=None, num_workers=None)
        given = {k: v for k, v in knobs.items() if v is not None}
        if "pin" in given and "pin_workers" not in given:
            # an explicit pin wins over a file's pin_workers=True (which means "spread" only where pin is "auto":
            # pin="auto" given here could not be told from the default otherwise)
            given["pin_workers"] = False
        elif given.get("pin_workers") and "pin" not in given:  # and pin_workers=True over a file's pin: "spread"
            given["pin"] = "auto"
        return dataclasses.replace(base, **given)

    @classmethod
    def load(cls, config: PoolOptions | dict | str | os.PathLike | None) -> PoolOptions:
        """A tuning configuration as options (see ``build``)."""
        if config is None:
            return cls()
        if isinstance(config, PoolOptions):
            return config
        if not isinstance(config, (dict, str, os.PathLike)):
            raise TypeError(f"config must be PoolOptions, a dict or a JSON file's path, got {type(config).__name__}")
        if not isinstance(config, dict):
            path = os.fspath(config)
            with open(path) as f:
                try:
                    config = json.load(f)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise ValueError(f"config {path!r} is not JSON (python -m fastvec.tune writes it): {exc}") from None
            if not isinstance(config, dict):
                raise ValueError(f"a config file holds a JSON object (as python -m fastvec.tune writes), got {config!r:.100}")
        if isinstance(config.get("config"), dict):  # the tuner's whole record (its file, or search()'s dict)
            config = config["config"]
        unknown = sorted(set(config) - set(TUNABLE))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; expected some of {list(TUNABLE)}")
        return cls(**config)

    def replace(self, **changes: Any) -> PoolOptions:
        return dataclasses.replace(self, **changes)

    @property
    def placement(self) -> str | list[int]:
        """The pin setting in effect (``pin_workers=True`` is ``"spread"``)."""
        return "spread" if self.pin_workers and self.pin == "auto" else self.pin
