"""Checks on what crosses the shared block: actions on the way in, env outputs on the way out.

Actions (``ActionWriter``, in the parent): values pass through unchanged, as SB3 and
gymnasium pass them (a Gaussian policy samples outside its Box; the env or its ClipAction
wrapper decides), and reach the env in the dtype they were sent in: an action leaf's buffer
is the widest of its kind (float64, int64) and a tag carries the caller's dtype. A value
the buffer's dtype cannot hold exactly (3.7 for an integer space, 2**63 for int64) is stored
bit for bit in the widest dtype of its own kind (``TAG_BITS``), so it too reaches the env as
sent, as SB3 and gymnasium hand it on; with ``check="raise"`` it is an error naming the env,
with ``"warn"`` a warning. Values no 8 bytes hold (float128 that float64 would round, complex,
strings, objects) travel pickled with the command (``TAG_PICKLED``), each env's row as sent;
with ``check="raise"`` they go into the buffer's dtype exactly or are refused, naming the env. The shape is checked; range
checks only when ``check`` asks.

Env outputs (``OutputChecks``, in each shard): an observation cast to the space's dtype
and a NaN reward are reported once per env and kind, or raised, per ``check``.
"""

from __future__ import annotations

import itertools
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium import spaces

from fastvec.env_calls import private_payload
from fastvec.errors import ShardError, user_stacklevel
from fastvec.layout import action_buffer_dtype
from fastvec.options import shown_value
from fastvec.protocol import TAG_BITS, TAG_PICKLED, TAG_SCALAR_ROWS, Extra, wide_dtype
from fastvec.spaces import Leaf, is_single_array, leaves, split

__all__ = ["ActionWriter", "OutputChecks", "emit_warnings"]

_CAST, _BITS, _PICKLE = "cast", "bits", "pickle"  # how an action leaf's values reach the env (_LeafWriter._carry)


def _bounds(space: spaces.Space, per_env: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat per-element [low, high] of an array space (int64 for discrete spaces and integer Boxes, uint64 for
    uint64 Boxes, float64 for float Boxes)."""
    if isinstance(space, spaces.Discrete):
        return np.array([space.start], np.int64), np.array([space.start + space.n - 1], np.int64)
    if isinstance(space, spaces.MultiDiscrete):
        start = np.asarray(space.start, dtype=np.int64).reshape(-1)
        return start, start + np.asarray(space.nvec, dtype=np.int64).reshape(-1) - 1
    if isinstance(space, spaces.MultiBinary):
        return np.zeros(per_env, np.int64), np.ones(per_env, np.int64)
    # an integer Box's bounds as integers (uint64's as uint64): float64 rounds them past 2**53, and 2**60 + 2 then
    # passed a bound of 2**60 + 1
    kind = np.float64 if space.dtype.kind == "f" else np.uint64 if space.dtype == np.uint64 else np.int64
    low = np.broadcast_to(np.asarray(space.low).astype(kind), space.shape).reshape(-1).copy()
    high = np.broadcast_to(np.asarray(space.high).astype(kind), space.shape).reshape(-1).copy()
    return low, high


def _outside(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Whether each value (rows of ``len(low)``) is outside ``[low, high]`` (NaN is): integers against integer
    bounds exactly (int64 against uint64 as Python ints: numpy would compare them in float64), else in float64."""
    if values.dtype.kind in "iub" and low.dtype.kind in "iu":
        values = values.astype(np.int64) if values.dtype.kind == "b" else values
        if np.result_type(values.dtype, low.dtype).kind == "f":
            values, low, high = values.astype(object), low.astype(object), high.astype(object)
    else:
        values = values.astype(np.float64)
    return ~((values >= low) & (values <= high))


class ActionWriter:
    """Checks a batch of actions and writes it into the shared action buffers (one per array leaf).

    Accepts a batch as gymnasium and array policies give it (an array ``[num_envs, *shape]``, or
    for Dict/Tuple spaces a dict/tuple of such arrays), or, with ``per_env=True``, as SB3 gives it
    for structured spaces (a sequence of one action per env). ``check``: None or "off" pass values
    through; "warn" warns once per env about a value outside the space's bounds (or NaN), "raise"
    raises ValueError naming the env. Shape, kind (numbers) and what a buffer can hold exactly are
    always checked. ``write`` returns the object leaves' values (one list of num_envs per leaf),
    which travel pickled, or None when the space has none.
    """

    def __init__(self, space: spaces.Space, num_envs: int, kernels: Any, check: str | None = None):
        self.space = space
        self.num_envs = num_envs
        self.leaves = leaves(space)
        self.single = is_single_array(self.leaves)
        self.writers = [
            _LeafWriter(leaf, num_envs, kernels, check, single=self.single) for leaf in self.leaves if leaf.array
        ]
        self.has_objects = any(not leaf.array for leaf in self.leaves)
        # (id of the tags array, tag) last stored by a single-leaf write; the id, not the array: the array is a
        # view of the pool's shared block, which a reference kept here would keep open after close()
        self._written: tuple[int, int] | None = None

    def write(
        self, actions: Any, buffers: list[np.ndarray], tags: np.ndarray, per_env: bool = False,
        env_ids: list[int] | None = None,
    ) -> list[list] | None:
        """Check ``actions`` and copy them into ``buffers`` (one per array leaf), recording in ``tags``
        the dtype each came in; returns the object leaves' values. ``env_ids``: the env of each row,
        for the messages (asynchronous batches; default: row k is env k)."""
        if self.single:
            tag = self.writers[0].write(actions, buffers[0], env_ids)
            if tags.ndim == 1:  # (asynchronous batches' scratch, which a writer per batch count shares: always stored)
                tags[0] = tag
            else:
                written = self._written
                if written is None or written[1] != tag or written[0] != id(tags):  # (a row store costs 0.5 us)
                    tags[0] = tag
                    self._written = (id(tags), tag)
            return [self.writers[0].take_pickled()] if tag & TAG_PICKLED else None
        if per_env and isinstance(actions, Mapping):
            # (a dict is never one action per env, which SB3 iterates: its keys were taken for the envs' actions.
            # For a Dict space it is gymnasium's batch layout, one batch per key, taken as such)
            per_env = False
        if per_env:
            if not hasattr(actions, "__len__") or len(actions) != self.num_envs:
                raise ValueError(f"expected one action per env ({self.num_envs}) for {self.space}, got {actions!r:.200}")
            ids = env_ids if env_ids is not None else range(len(actions))
            parts = [[_part(a, leaf, i) for i, a in zip(ids, actions)] for leaf in self.leaves]
        else:
            parts = [_part(actions, leaf, None) for leaf in self.leaves]
        writers = iter(self.writers)
        buffer_index = 0
        objects: list[list] | None = [] if self.has_objects else None
        for leaf, part in zip(self.leaves, parts):
            if leaf.array:
                writer = next(writers)
                tag = tags[buffer_index] = writer.write(part, buffers[buffer_index], env_ids)
                buffer_index += 1
                if tag & TAG_PICKLED:  # (its rows travel with the object leaves', in the leaves' order)
                    if objects is None:
                        objects = []
                    objects.append(writer.take_pickled())
            else:
                values = list(part)
                if len(values) != self.num_envs:
                    part_name = f" for part {leaf.name!r}" if leaf.path else ""  # (the root leaf's name is "obs")
                    raise ValueError(f"expected {self.num_envs} actions{part_name} ({leaf.space}), got {len(values)}")
                objects.append(_own_copies(values, env_ids))  # type: ignore[union-attr]
        return objects


class _PartKeyError(ValueError, KeyError):
    """A Dict action without one of the space's keys: a ValueError, and the KeyError gymnasium raises."""

    def __str__(self) -> str:  # (a KeyError's str() is its repr)
        return str(self.args[0]) if self.args else ""


class _PartIndexError(ValueError, IndexError):
    """A Tuple action without one of the space's parts: a ValueError, and the IndexError gymnasium raises."""


class _PartTypeError(ValueError, TypeError):
    """An action that is no Dict / Tuple where the space is one: a ValueError, and the TypeError gymnasium raises."""


_PART_ERRORS = {KeyError: _PartKeyError, IndexError: _PartIndexError, TypeError: _PartTypeError}


def _part(actions: Any, leaf: Leaf, env: int | None) -> Any:
    try:
        return split(actions, leaf)
    except (KeyError, IndexError, TypeError) as exc:
        who = "actions" if env is None else f"action for env {env}"
        error = _PART_ERRORS.get(type(exc), ValueError)
        raise error(f"{who} has no part {leaf.name!r} ({leaf.space}): {exc!r}") from exc


class _LeafWriter:
    """One array leaf of the action space: shape, exact cast and (when asked) range checks."""

    def __init__(self, leaf: Leaf, num_envs: int, kernels: Any, check: str | None, single: bool):
        space = leaf.space
        self.space = space
        self.num_envs = num_envs
        self.where = "" if single else f" (part {leaf.name!r})"
        self.dtype = action_buffer_dtype(leaf.dtype)  # the buffer's: float64 / int64, holding what callers send
        self.shape = (num_envs, *leaf.shape)
        self.element_shape = leaf.shape
        self.per_env = int(np.prod(leaf.shape, dtype=np.int64))
        self.discrete = not isinstance(space, spaces.Box)
        self.exact = self.dtype.kind in "iub"  # an integer buffer holds only whole numbers in its range
        self.check_range = check in ("warn", "raise")
        self.raise_out_of_range = check == "raise"
        self._warned: set[int] = set()
        self._ids: list[int] | None = None  # the env of each row of the batch being written (None: row k is env k)
        self._pickled: list | None = None  # the rows of the batch just written, where they travel pickled
        self._copy_same = kernels.copy_same
        self.low, self.high = _bounds(space, self.per_env)
        if self.dtype == np.int64 and self.low.dtype == np.int64:
            self._first_outside = kernels.first_outside_int
        elif self.dtype in (np.float32, np.float64):
            self._first_outside = kernels.first_outside_float
        else:
            self._first_outside = _first_outside_generic

    def write(self, actions: Any, out: np.ndarray, env_ids: list[int] | None = None) -> int:
        """Check ``actions`` (shape ``[num_envs, *shape]``) and copy them into ``out``; returns the tag
        of their dtype (0: the buffer's own), with which the shard hands them to the envs. ``env_ids``:
        the env of each row, which the messages name (default: row k is env k)."""
        self._ids = env_ids
        if self._copy_same(out, actions):  # the usual batch: the buffer's own shape and dtype, in one memmove
            if self.check_range:
                self._check_range(out.reshape(-1), actions)
            return 0
        try:
            a = actions if type(actions) is np.ndarray else np.asarray(actions)
        except ValueError as exc:  # rows of different shapes (numpy's "inhomogeneous shape")
            a = self._stacked_rows(actions, exc)
        if a.ndim == 0:
            raise TypeError(
                f"expected a batch of {self.num_envs} actions{self.where} (shape {self.shape}), got a scalar {a!r}"
            )
        tag = 0
        if a.shape != self.shape:
            if a.shape[0] == self.num_envs and a.size == self.num_envs * self.per_env:
                if a.ndim == 1 and self.element_shape:  # (n,) for a (1,)-shaped leaf: each env gets a scalar
                    tag |= TAG_SCALAR_ROWS
                a = a.reshape(self.shape)  # one row per env, e.g. (n, 1) from a policy head for Discrete
            else:
                raise ValueError(
                    f"expected actions{self.where} of shape {self.shape} ({self.num_envs} envs x {self.space}), "
                    f"got shape {a.shape}"
                )
        if self.raise_out_of_range and a.dtype.kind not in "fiub":  # (asked: real numbers only, or the env named)
            a = self._real_numbers(a, actions)
        elif self.check_range and a.dtype.kind not in "fiub":  # ("warn": the same said, and the actions sent as given)
            self._real_numbers(a, actions, warn=True)
        if a.dtype != self.dtype:
            carry = self._carry(a)
            if carry is _PICKLE:  # each env's row as sent (SB3 and gymnasium iterate the batch), pickled
                if self.check_range and a.dtype.kind in "fiub":
                    self._check_range(a.reshape(-1), a, _first_outside_generic)
                # (each its own copy, as each env's pipe gives it: one object sent to every env, [a] * 4, would
                # be one object in a worker's message, and an env that changes its action would change the others')
                self._pickled = _own_copies(actions, self._ids)
                return TAG_PICKLED
            if carry is _BITS:  # held bit for bit instead, in the widest dtype of its own kind
                out.view(wide_dtype(a.dtype))[...] = a
                if self.check_range:
                    self._check_range(a.reshape(-1), a, _first_outside_generic)
                return tag | TAG_BITS | ord(a.dtype.newbyteorder("=").char)
            tag |= ord(a.dtype.newbyteorder("=").char)
        out[...] = a  # (casting as numpy assigns: what _cast_loses let through is held exactly)
        if self.check_range:
            self._check_range(out.reshape(-1), a)
        return tag

    def _stacked_rows(self, actions: Any, exc: ValueError) -> np.ndarray:
        """Rows that differ in shape but each hold the space's number of values (a float beside a 1-value array),
        stacked in its element shape: SB3's SubprocVecEnv and gymnasium hand each env its row, and take them.
        Else a ValueError naming the first env whose action does not hold them."""
        try:
            rows = [np.asarray(row) for row in actions]
        except (TypeError, ValueError):  # (a row ragged itself)
            rows = []
        wrong = next((k for k, row in enumerate(rows) if row.size != self.per_env), None)
        if rows and wrong is None and len(rows) == self.num_envs:
            return np.stack([row.reshape(self.element_shape) for row in rows])
        if wrong is None or wrong >= self.num_envs:
            raise ValueError(f"expected actions{self.where} of shape {self.shape}, got rows of different shapes") from exc
        raise ValueError(
            f"action for env {self._env(wrong)}{self.where} has shape {rows[wrong].shape}; {self.space} takes "
            f"{self.element_shape} (the actions' rows differ in shape)"
        ) from exc

    def _real_numbers(self, a: np.ndarray, actions: Any, warn: bool = False) -> np.ndarray:
        """``a`` (complex, strings, objects), with check="raise": its values in the buffer's dtype where every one
        is a real number the buffer holds exactly (complex ones with no imaginary part, objects that are numbers),
        else a ValueError naming the first env whose action is not. With ``warn`` (check="warn"), a warning instead,
        once per env, and the numbers outside the action space warned of as the buffer's own are (object and complex
        arrays went to the envs without a word)."""
        if a.dtype.kind in "USV" and not isinstance(actions, np.ndarray):
            # (a list whose one string made numpy turn every row into strings: the rows as given, to name the env)
            try:
                a = np.array(actions, dtype=object).reshape(a.shape)
            except ValueError:
                pass
        rows = a.reshape(self.num_envs, -1).tolist()
        held = np.empty((self.num_envs, self.per_env), self.dtype)
        for row, values in enumerate(rows):
            for pos, value in enumerate(values):
                if isinstance(value, np.generic):
                    value = value.item()
                # (numbers.Complex: np.clongdouble's item() stays an np.clongdouble, no Python complex)
                real = isinstance(value, numbers.Real) or (isinstance(value, numbers.Complex) and value.imag == 0)
                where = f"action for env {self._env(row)}{self.where}{self._element(pos)}"
                if not real or isinstance(value, (str, bytes)):
                    problem = f"{where} is {shown_value(value, 80)}, not a real number: {self.space} takes numbers"
                    if not warn:
                        raise ValueError(f"{problem} (check='raise')")
                else:
                    value = value if isinstance(value, numbers.Real) else value.real
                    try:
                        held[row, pos] = value
                        kept = held[row, pos].item()
                        exact = kept == value or (kept != kept and value != value)  # (NaN: held as NaN)
                    except (OverflowError, ValueError, TypeError):
                        exact = False
                    if exact:
                        continue
                    problem = f"{where} is {shown_value(value, 80)}, which the action buffer's dtype {self.dtype} ({self.space}) cannot hold exactly"
                    if not warn:
                        raise ValueError(problem)
                held[row, pos] = self.low[pos]  # (warned of: out of the range check below)
                env = self._env(row)
                if env not in self._warned:
                    self._warned.add(env)
                    warnings.warn(f"fastvec: {problem}; handed to the env as sent", RuntimeWarning, stacklevel=user_stacklevel())
        if warn:
            self._check_range(held.reshape(-1), held, _first_outside_generic)
        return held.reshape(a.shape)

    def take_pickled(self) -> list:
        """The rows of the batch just written (its tag said TAG_PICKLED), one per env, as sent."""
        rows, self._pickled = self._pickled, None
        return rows  # type: ignore[return-value]

    def _carry(self, a: np.ndarray) -> object:
        """How ``a`` (not of the buffer's dtype) reaches the env: cast into the buffer (_CAST) where that keeps
        every value; else bit for bit in the widest dtype of its own kind (_BITS), or, with check="raise",
        refused naming the env (with "warn", a warning once per env); values no 8 bytes hold (float128 that
        float64 would round, complex, strings, objects) pickled (_PICKLE), as SB3 and gymnasium hand them on."""
        if a.dtype.kind not in "fiub":  # (with check="raise", write() has put them in the buffer's dtype, or refused them)
            return _PICKLE
        if a.dtype.kind == "f" and self.dtype.kind == "f":
            if a.dtype.itemsize <= 8:
                return _CAST  # floats into float64
            # float128: the values float64 holds reach the env as they were sent (their dtype's tag); others
            # would be rounded: pickled
            held = a.astype(self.dtype)
            lost = (held != a) & ~(np.isnan(a) & np.isnan(held))
            if not lost.any():
                return _CAST
            # (refused with check="raise", warned of with "warn", as values an integer buffer cannot hold are below:
            # they went through pickled without a word, where the same value in an object array was refused)
            if self.raise_out_of_range:
                self._check_range(a.reshape(-1), a, _first_outside_generic)  # (a value outside the space said first)
            self._say_not_held(a, lost, "send values it holds")
            return _PICKLE
        if np.can_cast(a.dtype, self.dtype, "safe") and not (a.dtype.itemsize == 8 and self.dtype.kind == "f"):
            return _CAST  # a cast that always keeps the value (numpy calls int64 into float64 safe: it is not, past 2**53)
        negative_zero = False
        with np.errstate(invalid="ignore", over="ignore"):
            held = a.astype(self.dtype, casting="unsafe")
            lost = held != a  # (NaN and inf into an integer buffer too)
            if a.dtype.kind in "iu" and not self.exact:  # (a huge int rounded by float64: compare as ints)
                lost = held.astype(a.dtype, casting="unsafe") != a
            elif a.dtype.kind == "f":  # -0.0 is a whole number, but an integer buffer gives back +0.0
                negative_zero = bool(np.any((a == 0) & np.signbit(a)))
        if not lost.any():
            return _BITS if negative_zero else _CAST  # (as bits, and nothing to say of it)
        self._say_not_held(a, lost, "send whole numbers in its range")
        return _BITS if a.dtype.itemsize <= 8 and self.dtype.itemsize == 8 else _PICKLE

    def _say_not_held(self, a: np.ndarray, lost: np.ndarray, advice: str) -> None:
        """Values of ``a`` the buffer's dtype cannot hold (``lost``): with check="raise" the first refused, naming its
        env (and ``advice``); with "warn" a warning once per env; else nothing."""
        rows = lost.reshape(self.num_envs, -1)
        if self.raise_out_of_range:
            row, pos = divmod(int(np.flatnonzero(rows)[0]), self.per_env)
            raise ValueError(f"{self._not_held(a, row, pos)}; {advice}")
        if self.check_range:
            self._warn_each_env(rows, lambda row, pos: f"{self._not_held(a, row, pos)}; handed to the env as sent")

    def _not_held(self, a: np.ndarray, row: int, pos: int) -> str:
        value = a.reshape(self.num_envs, -1)[row, pos]
        return (
            f"action for env {self._env(row)}{self.where}{self._element(pos)} is {shown_value(value.item(), 80)}, which the action "
            f"buffer's dtype {self.dtype} ({self.space}) cannot hold exactly"
        )

    def _check_range(self, flat: np.ndarray, a: np.ndarray, first_outside: Any = None) -> None:
        bad = (first_outside or self._first_outside)(flat, self.low, self.high)
        if bad < 0:
            return
        if self.raise_out_of_range:
            raise ValueError(self._out_of_range(a, *divmod(int(bad), self.per_env)))
        outside = _outside(flat.reshape(self.num_envs, -1), self.low, self.high)
        self._warn_each_env(outside, lambda row, pos: self._out_of_range(a, row, pos))

    def _warn_each_env(self, rows: np.ndarray, said: Any) -> None:
        """A warning for each env (a row of ``rows``, one per env) with a True in its row, once per env: what
        ``said(row, pos)`` says of its first."""
        for row in np.flatnonzero(rows.any(axis=1)).tolist():
            env = self._env(row)
            if env not in self._warned:
                self._warned.add(env)
                pos = int(np.flatnonzero(rows[row])[0])
                warnings.warn(f"fastvec: {said(row, pos)}", RuntimeWarning, stacklevel=user_stacklevel())

    def _env(self, row: int) -> int:
        """The env whose action is at ``row`` of the batch."""
        return row if self._ids is None else self._ids[row]

    def _out_of_range(self, a: np.ndarray, row: int, pos: int) -> str:
        value = np.asarray(a).reshape(self.num_envs, -1)[row, pos]
        what = "NaN" if isinstance(value, (float, np.floating)) and np.isnan(value) else repr(value.item())
        return (
            f"action for env {self._env(row)}{self.where}{self._element(pos)} is {what}, outside {self.space} "
            f"(allowed {self.low[pos].item()!r}..{self.high[pos].item()!r})"
        )

    def _element(self, pos: int) -> str:
        if self.per_env == 1:
            return ""
        return f" (element {tuple(int(x) for x in np.unravel_index(pos, self.element_shape))})"


def _own_copies(rows: Any, env_ids: list[int] | None) -> list:
    """Each env's own copy of its row (``env_ids``: the env of each row; None: row k is env k), what a pipe gives
    it; a row that cannot be pickled, or unpickled, is refused naming its env."""
    return [
        private_payload(row, "actions", range(i, i + 1))
        for row, i in zip(rows, env_ids if env_ids is not None else itertools.count())
    ]


def _first_outside_generic(flat: np.ndarray, low: np.ndarray, high: np.ndarray) -> int:
    if not low.shape[0]:  # (a Box of shape (0,): no values, no bounds)
        return -1
    idx = np.flatnonzero(_outside(flat.reshape(-1, low.shape[0]), low, high))
    return int(idx[0]) if idx.size else -1


class OutputChecks:
    """What a shard does about suspicious env outputs, per the pool's ``check`` setting.

    "raise": ShardError naming the env. None / "warn": one warning per env and kind, sent
    to the parent as a WARNING extra. "off": ``active`` is False and nothing is looked at.
    """

    def __init__(self, check: str | None, start: int):
        self.active = check != "off"
        self.raising = check == "raise"
        self.start = start
        self._warned: set[tuple[int, str]] = set()
        self.pending: list = []  # WARNING extras gathered since the last drain

    def problem(self, j: int, command: str, kind: str, message: str) -> None:
        """Env ``start + j`` produced something the checks look at."""
        if self.raising:
            raise ShardError(self.start + j, command, ValueError(message))
        self.warn(j, kind, message)

    def warn(self, j: int, kind: str, message: str) -> None:
        """A warning about env ``start + j`` (once per env and kind), under check="raise" too."""
        env = self.start + j  # (keyed by env, not by position: positions shift when envs move)
        if (env, kind) not in self._warned:
            self._warned.add((env, kind))
            self.pending.append((env, Extra.WARNING, message))

    def warned(self, j: int, kind: str) -> bool:
        """Whether env ``start + j`` was warned about ``kind`` already (a later one would not be said)."""
        return (self.start + j, kind) in self._warned

    def drain(self, extras: list | None) -> list | None:
        """``extras`` with the warnings gathered since the last call appended."""
        if self.pending:
            extras = (extras or []) + self.pending
            self.pending = []
        return extras


def emit_warnings(extras: list) -> list | None:
    """Parent side: turn WARNING extras into Python warnings naming the env; return the rest."""
    rest = []
    for entry in extras:
        if entry[1] == Extra.WARNING:
            warnings.warn(f"fastvec: env {entry[0]} {entry[2]}", RuntimeWarning, stacklevel=user_stacklevel())
        else:
            rest.append(entry)
    return rest or None
