"""Layout of a pool's single shared-memory block.

``plan_layout`` is a pure function of (spaces, num_envs, num_workers, ring_slots):
the same inputs give the same offsets in every process, so the parent and its
workers agree on where everything is without sending anything but the block's
name. Every field starts on a 64-byte boundary and is contiguous over envs, so a
batch is one slice; per-worker control words sit on their own cache lines so a
worker's writes never share a line with another worker's.

Block:
    header | control lines [num_workers + 1] | env->worker map | actions per array leaf [N, *shape]
    | obs ring per array leaf [S, N, *shape] | reward ring [S, N] f64
    | terminated ring [S, N] u8 | truncated ring [S, N] u8
    | terminal obs per array leaf [N, *shape] | reset seeds [N] i64 | seed mask [N] u8
    | reset mask [N] u8 | migrate flags [N] u8 | per-env step time [N] f64 | per-worker stats [W, Stats.COLUMNS] f64
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fastvec.protocol import Stats
from fastvec.spaces import Leaf, array_leaves

__all__ = [
    "action_buffer_dtype",
    "CACHE_LINE",
    "CONTROL_WORDS",
    "Field",
    "Layout",
    "plan_layout",
    "Views",
]

CACHE_LINE = 64
MAGIC = 0x46415354  # "FAST"
VERSION = 1

# A control block is two cache lines of uint32 words: the first is written by the
# parent (command), the second by the worker (completion); offsets in fastvec.protocol.Control.
CONTROL_WORDS = 2 * CACHE_LINE // 4


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # (exact: numpy's int64 product wraps, or raises)


@dataclass(frozen=True)
class Layout:
    num_envs: int
    num_workers: int
    ring_slots: int
    obs_leaves: tuple[Leaf, ...]  # every leaf of the observation space; the array ones have buffers
    action_leaves: tuple[Leaf, ...]  # every leaf of the action space; the array ones have buffers
    fields: dict[str, Field] = field(hash=False)
    size: int = 0


def action_buffer_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype of an action leaf's buffer: the widest of its kind (float64, int64), so the values a
    caller sends pass through unchanged in value; the dtype they came in travels as a tag (``Views.action_tags``)."""
    if dtype.kind == "f":
        return np.dtype(np.float64)
    if dtype.kind in "ib" or (dtype.kind == "u" and dtype.itemsize < 8):  # (bool too: 0.5 sent travels as bits)
        return np.dtype(np.int64)
    return dtype


def _align(n: int, to: int = CACHE_LINE) -> int:
    return (n + to - 1) // to * to


def plan_layout(
    obs_leaves: list[Leaf] | tuple[Leaf, ...],
    action_leaves: list[Leaf] | tuple[Leaf, ...],
    num_envs: int,
    num_workers: int,
    ring_slots: int,
    final_obs: bool = True,
) -> Layout:
    """Compute every field's offset, shape and dtype. Pure: no allocation.

    Array leaves get buffers (``obs{i}``, ``terminal_obs{i}``, ``actions{i}``, i counting
    array leaves only); object leaves travel pickled and take no room here. Without
    ``final_obs`` (autoreset NEXT_STEP or DISABLED: an episode's last observation is its row in
    the ring) the terminal-obs buffers have no rows.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    if not 1 <= num_workers <= num_envs:
        raise ValueError(f"num_workers must be in 1..num_envs={num_envs}, got {num_workers}")
    if ring_slots < 1:
        raise ValueError(f"ring_slots must be at least 1, got {ring_slots}")
    n, s = num_envs, ring_slots
    specs: list[tuple[str, tuple[int, ...], np.dtype]] = [
        ("header", (CACHE_LINE // 4,), np.dtype(np.uint32)),
        # one control block per worker, plus one spare for the pool itself
        ("control", ((num_workers + 1) * CONTROL_WORDS,), np.dtype(np.uint32)),
        ("env_worker", (n,), np.dtype(np.int32)),
    ]
    action_arrays = array_leaves(action_leaves)
    for i, leaf in enumerate(action_arrays):
        specs.append((f"actions{i}", (n, *leaf.shape), action_buffer_dtype(leaf.dtype)))
    # per action leaf and env: 0, or the dtype char (ord) the caller's actions had, to hand them to the envs
    # as sent (per env: asynchronous batches send to some envs while others still read theirs)
    specs.append(("action_tags", (max(1, len(action_arrays)), n), np.dtype(np.uint32)))
    for i, leaf in enumerate(array_leaves(obs_leaves)):
        specs.append((f"obs{i}", (s, n, *leaf.shape), leaf.dtype))
    specs += [
        ("rewards", (s, n), np.dtype(np.float64)),
        ("terminated", (s, n), np.dtype(np.bool_)),
        ("truncated", (s, n), np.dtype(np.bool_)),
    ]
    for i, leaf in enumerate(array_leaves(obs_leaves)):
        specs.append((f"terminal_obs{i}", (n if final_obs else 0, *leaf.shape), leaf.dtype))
    specs += [
        ("reset_seeds", (n,), np.dtype(np.int64)),
        ("seed_mask", (n,), np.dtype(np.bool_)),
        ("reset_mask", (n,), np.dtype(np.bool_)),
        ("migrate", (n,), np.dtype(np.uint8)),
        ("env_step_ns", (n,), np.dtype(np.float64)),
        ("worker_stats", (num_workers, Stats.COLUMNS), np.dtype(np.float64)),
    ]
    fields: dict[str, Field] = {}
    offset = 0
    for name, shape, dtype in specs:
        f = Field(name, offset, tuple(int(d) for d in shape), dtype)
        fields[name] = f
        offset = _align(offset + max(f.nbytes, 1))
    return Layout(n, num_workers, s, tuple(obs_leaves), tuple(action_leaves), fields, offset)


class Views:
    """Named numpy views of every field of a block laid out by ``plan_layout``."""

    def __init__(self, layout: Layout, buf: memoryview):
        if len(buf) < layout.size:
            raise ValueError(f"shared block has {len(buf)} bytes, layout needs {layout.size}")
        self.layout = layout
        arrays = {
            f.name: np.ndarray(f.shape, dtype=f.dtype, buffer=buf, offset=f.offset) for f in layout.fields.values()
        }
        self.header: np.ndarray = arrays["header"]
        self.control: np.ndarray = arrays["control"]
        self.env_worker: np.ndarray = arrays["env_worker"]
        self.actions: list[np.ndarray] = [arrays[f"actions{i}"] for i in range(len(array_leaves(layout.action_leaves)))]
        self.action_tags: np.ndarray = arrays["action_tags"]
        self.obs: list[np.ndarray] = [arrays[f"obs{i}"] for i in range(len(array_leaves(layout.obs_leaves)))]
        self.rewards: np.ndarray = arrays["rewards"]
        self.terminated: np.ndarray = arrays["terminated"]
        self.truncated: np.ndarray = arrays["truncated"]
        self.terminal_obs: list[np.ndarray] = [
            arrays[f"terminal_obs{i}"] for i in range(len(array_leaves(layout.obs_leaves)))
        ]
        self.reset_seeds: np.ndarray = arrays["reset_seeds"]
        self.seed_mask: np.ndarray = arrays["seed_mask"]
        self.reset_mask: np.ndarray = arrays["reset_mask"]
        self.migrate: np.ndarray = arrays["migrate"]
        self.env_step_ns: np.ndarray = arrays["env_step_ns"]  # per env: time in env.step, while timing is on
        self.worker_stats: np.ndarray = arrays["worker_stats"]
        # memoryviews of the words read one at a time on every command (issue 14): indexing one costs
        # about 100 instructions, numpy's .item() about 650 (counted with valgrind); a Python int either way
        self.control_words = memoryview(self.control)
        self.header_words = memoryview(self.header)
        self.first_tag_words = memoryview(self.action_tags[0])  # the first action leaf's tag per env
        self.migrate_words = memoryview(self.migrate)

    def control_base(self, worker: int) -> int:
        """Index in ``control`` of worker ``worker``'s block."""
        return worker * CONTROL_WORDS

    def write_header(self) -> None:
        lay = self.layout
        self.header[:5] = (MAGIC, VERSION, lay.num_envs, lay.num_workers, lay.ring_slots)

    def check_header(self) -> None:
        lay = self.layout
        got = tuple(int(x) for x in self.header[:5])
        want = (MAGIC, VERSION, lay.num_envs, lay.num_workers, lay.ring_slots)
        if got != want:
            raise RuntimeError(f"shared block header {got} does not match the expected layout {want}")

    def release(self) -> None:
        """Drop every view so the block's buffer can be closed."""
        for name in list(vars(self)):
            if name != "layout":
                setattr(self, name, None)
