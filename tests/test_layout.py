"""The shared block's layout: aligned, disjoint, deterministic, and the right views."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from fastvec.layout import CACHE_LINE, CONTROL_WORDS, Views, plan_layout
from fastvec.spaces import leaves


def _plan(obs_space, n=8, w=2, s=3):
    return plan_layout(leaves(obs_space), leaves(spaces.Discrete(2)), n, w, s)


SPACES = [
    spaces.Box(-1, 1, (4,), np.float32),
    spaces.Box(0, 255, (84, 84, 4), np.uint8),
    spaces.Discrete(3),
    spaces.Dict({"a": spaces.Box(-1, 1, (2, 3), np.float64), "b": spaces.MultiBinary(5)}),
    spaces.Tuple((spaces.Discrete(2), spaces.MultiDiscrete([3, 4]))),
]


@pytest.mark.parametrize("space", SPACES, ids=lambda s: type(s).__name__)
def test_fields_are_aligned_and_disjoint(space) -> None:
    layout = _plan(space)
    fields = sorted(layout.fields.values(), key=lambda f: f.offset)
    for f in fields:
        assert f.offset % CACHE_LINE == 0, f.name
    for a, b in zip(fields, fields[1:]):
        assert a.offset + a.nbytes <= b.offset, (a.name, b.name)
    assert fields[-1].offset + fields[-1].nbytes <= layout.size
    assert layout == _plan(space), "plan_layout is a pure function"


def test_ring_shapes_and_control_lines() -> None:
    layout = _plan(spaces.Box(0, 255, (84, 84, 4), np.uint8), n=5, w=3, s=4)
    assert layout.fields["obs0"].shape == (4, 5, 84, 84, 4)
    assert layout.fields["rewards"].shape == (4, 5)
    assert layout.fields["terminal_obs0"].shape == (5, 84, 84, 4)
    # each worker's control block spans two whole cache lines
    assert CONTROL_WORDS * 4 == 2 * CACHE_LINE
    assert layout.fields["control"].shape == ((3 + 1) * CONTROL_WORDS,)


def test_views_cover_the_block_and_check_the_header() -> None:
    layout = _plan(SPACES[3])
    buf = bytearray(layout.size)
    views = Views(layout, memoryview(buf))
    views.write_header()
    views.check_header()
    assert views.obs[0].shape == (3, 8, 2, 3) and views.obs[1].shape == (3, 8, 5)
    views.obs[1][2, 7] = 1
    assert views.obs[1].ctypes.data - views.obs[0].ctypes.data == layout.fields["obs1"].offset - layout.fields["obs0"].offset
    other = _plan(SPACES[3], s=2)
    with pytest.raises(RuntimeError, match="header"):
        Views(other, memoryview(buf)).check_header()
    views.release()


@pytest.mark.parametrize("kwargs, message", [({"n": 0}, "num_envs"), ({"w": 9}, "num_workers"), ({"s": 0}, "ring_slots")])
def test_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        _plan(SPACES[0], **kwargs)


def test_object_leaves_take_no_room_and_structured_actions_get_a_buffer_per_array_leaf() -> None:
    obs = spaces.Dict({"text": spaces.Text(8), "pos": spaces.Box(-1, 1, (3,), np.float32)})
    act = spaces.Tuple((spaces.Discrete(3), spaces.Box(-1, 1, (2,), np.float32), spaces.Text(4)))
    layout = plan_layout(leaves(obs), leaves(act), 4, 2, 2)
    assert [name for name in layout.fields if name.startswith(("obs", "terminal_obs", "actions"))] == [
        "actions0", "actions1", "obs0", "terminal_obs0"
    ]
    assert layout.fields["obs0"].shape == (2, 4, 3) and layout.fields["actions1"].shape == (4, 2)
    views = Views(layout, memoryview(bytearray(layout.size)))
    assert len(views.obs) == 1 and len(views.actions) == 2
    views.release()


def test_without_final_observations_their_buffers_take_no_room() -> None:
    """NEXT_STEP (gymnasium's default) and DISABLED never read them: 32 envs of 1 MiB observations took
    96 MiB of /dev/shm (a 64 MiB ring and 32 MiB never written), where gymnasium takes 32 MiB."""
    obs = leaves(spaces.Box(0, 255, (1024, 1024), np.uint8))
    act = leaves(spaces.Discrete(2))
    kept, dropped = (plan_layout(obs, act, 32, 2, 2, final_obs=final) for final in (True, False))
    assert kept.size - dropped.size > 31.9 * 2**20 and dropped.size < 2 * 32 * 2**20 + 2**20


def test_a_next_step_pool_says_it_keeps_no_final_observations() -> None:
    import gymnasium as gym

    from fastvec import VectorEnv

    with VectorEnv([lambda: gym.make("CartPole-v1")] * 2, context="fork", num_workers=2) as venv:
        venv.reset(seed=0)
        batch_terminal = venv.pool.ring.terminal_obs[0]
        assert batch_terminal.shape == (0, 4)
        with pytest.raises(ValueError, match="only with autoreset SAME_STEP"):
            venv.pool.terminal_observation(0)
