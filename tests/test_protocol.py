"""The constants both sides of the shared block use (fastvec.protocol), and their mirror in the kernels."""

from __future__ import annotations

import pytest

from fastvec.layout import CONTROL_WORDS
from fastvec.protocol import Command, Control, Extra, ResetFlag, Stats, StepFlag

try:
    from fastvec import _kernels as compiled
except ImportError:  # pragma: no cover - unbuilt checkout
    compiled = None


@pytest.mark.compiled_only
@pytest.mark.skipif(compiled is None, reason="extension not built")
def test_compiled_kernels_use_the_same_control_offsets() -> None:
    names = [name for name in vars(Control) if name.isupper()]
    assert compiled.CONTROL_OFFSETS == {name: getattr(Control, name) for name in names}


def test_parent_and_worker_words_sit_on_their_own_cache_lines() -> None:
    parent_words = [Control.CMD_SEQ, Control.CMD_WAITING, Control.CMD, Control.SLOT, Control.ARG]
    worker_words = [Control.DONE_SEQ, Control.DONE_WAITING, Control.HAS_MESSAGE]
    half = CONTROL_WORDS // 2  # one cache line of words
    assert all(0 <= w < half for w in parent_words) and all(half <= w < CONTROL_WORDS for w in worker_words)
    assert len(set(parent_words + worker_words)) == len(parent_words + worker_words)
    # a waiting word is the word after the one it guards: the kernels rely on it
    assert Control.CMD_WAITING == Control.CMD_SEQ + 1 and Control.DONE_WAITING == Control.DONE_SEQ + 1
    assert Control.REMAINING_WAITING == Control.REMAINING + 1
    assert (Control.SLOT, Control.ARG) == (Control.CMD + 1, Control.CMD + 2)  # a worker reads them as one slice


def test_codes_are_distinct() -> None:
    assert len({int(c) for c in Command}) == len(Command)
    assert len({int(k) for k in Extra}) == len(Extra)
    flags = [int(f) for f in ResetFlag] + [int(f) for f in StepFlag]
    assert all(f & (f - 1) == 0 for f in flags)  # single bits
    assert len({int(f) for f in ResetFlag}) == len(ResetFlag)
    columns = [v for k, v in vars(Stats).items() if k.isupper() and k not in ("COLUMNS", "HISTOGRAM_BINS")]
    assert sorted(columns) == list(range(len(columns)))  # one column each, no gaps
    assert Stats.COLUMNS == Stats.HISTOGRAM + Stats.HISTOGRAM_BINS and Stats.HISTOGRAM == max(columns)
