"""Batch decodes a command's extras into typed fields (fastvec.batch)."""

from __future__ import annotations

import numpy as np

from fastvec.batch import Batch
from fastvec.protocol import Extra


class _FakePool:
    """What Batch reads of a pool: its ring, object parts and terminal observations."""

    obs_has_objects = False
    _results_made = 0  # (the steps and resets the pool completed: a Batch records its own)

    def _check_final_obs(self) -> None:  # (a SAME_STEP pool: final observations are kept)
        pass

    def __init__(self) -> None:
        from fastvec.batch import RingViews

        self.ring = RingViews(
            obs=(np.arange(12.0).reshape(2, 3, 2),),
            rewards=np.ones((2, 3)),
            terminated=np.zeros((2, 3), bool),
            truncated=np.zeros((2, 3), bool),
            terminal_obs=(np.full((3, 2), -1.0),),
            address=0,
            nbytes=0,
        )
        self.slot_views = [(self.ring.rewards[s], self.ring.terminated[s], self.ring.truncated[s]) for s in range(2)]

    def terminal_observation(self, i: int):
        return self.ring.terminal_obs[0][i].copy()


def test_extras_become_typed_fields() -> None:
    extras = [
        (0, Extra.INFO, {"a": 1}),
        (2, Extra.RESET_INFO, {"seed": 3}),
        (1, Extra.RESTARTED, {"error": "ValueError: boom", "command": "step"}),
        (2, Extra.FINAL_OBS, "the env's own object"),
    ]
    batch = Batch(_FakePool(), 1, extras)
    assert batch.infos == {0: {"a": 1}} and batch.reset_infos == {2: {"seed": 3}}
    assert batch.restarted == {1: "ValueError: boom"} and batch.has_extras
    assert batch.terminal_observation(2) == "the env's own object"
    np.testing.assert_array_equal(batch.terminal_observation(0), [-1, -1])
    assert batch.rewards.base is not None  # a view of the ring slot, not a copy
    quiet = Batch(_FakePool(), 0, None)
    assert not quiet.has_extras and quiet.infos == {}
