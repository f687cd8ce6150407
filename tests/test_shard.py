"""A shard stepped directly over a block in this process (fastvec.shard): the three autoreset
modes, structured actions and object-valued observation parts."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from gymnasium import spaces

from fastvec.errors import ShardError
from fastvec.layout import Views, plan_layout
from fastvec.protocol import DISABLED, NEXT_STEP, SAME_STEP, Extra
from fastvec.shard import Shard
from fastvec.spaces import leaves
from tests import envs


def _shard(make, n: int, mode: int, slots: int = 2) -> tuple[Shard, Views]:
    env_list = [make(i) for i in range(n)]
    layout = plan_layout(leaves(env_list[0].observation_space), leaves(env_list[0].action_space), n, 1, slots)
    views = Views(layout, memoryview(bytearray(layout.size)))
    return Shard(env_list, 0, views, mode), views


@pytest.mark.parametrize("mode", [SAME_STEP, NEXT_STEP, DISABLED])
def test_autoreset_modes(mode: int) -> None:
    shard, views = _shard(envs.Counter, 2, mode)
    views.seed_mask[:] = True
    views.reset_seeds[:] = [1, 2]
    shard.reset(0, None, False, False)
    np.testing.assert_array_equal(views.obs[0][0, :, 0], [1000, 2000])
    views.actions[0][:] = [39, 0]  # env 0 reaches t = 40 (truncated) at once
    assert shard.step(1) is None
    assert views.truncated[1].tolist() == [True, False]
    after_end = views.obs[0][1, 0, 0]
    views.actions[0][:] = [0, 0]
    shard.step(0)
    if mode == SAME_STEP:  # reset in the step that ended it (unseeded: base 0); the final observation kept apart
        assert after_end == 0 and views.terminal_obs[0][0, 0] == 1040
        assert views.obs[0][0, 0, 0] == 1 and not views.truncated[0, 0]
    elif mode == NEXT_STEP:  # the final observation now, the reset in the next step (reward 0)
        assert after_end == 1040 and views.obs[0][0, 0, 0] == 0 and views.rewards[0, 0] == 0.0
    else:  # DISABLED: never by itself
        assert after_end == 1040 and views.obs[0][0, 0, 0] == 1041
    assert views.obs[0][0, 1, 0] == 2002  # env 1 went on


@pytest.mark.parametrize("mode", [SAME_STEP, NEXT_STEP])
def test_every_env_steps_and_every_error_is_reported(mode: int) -> None:
    def make(i: int):
        return envs.FailingEnv("step" if i in (0, 2) else None)

    shard, views = _shard(make, 3, mode)
    shard.reset(0, None, False, False)
    with pytest.raises(ShardError) as info:
        shard.step(1)
    assert [p[0] for p in info.value.payloads()] == [0, 2]
    assert shard.envs[1].steps == 1  # the env after the failing one still stepped


class _RaisesOnFour(envs.Counter):
    def step(self, action):
        if int(action) == 4:
            raise ValueError("four")
        return super().step(action)


def test_next_step_an_episode_that_ends_beside_an_error_still_resets_in_the_next_step() -> None:
    """NEXT_STEP steps the usual batch in one kernel call; when an env raises there, the envs
    before it whose episode ended must still be reset in the next step, as in the env-by-env loop."""
    shard, views = _shard(_RaisesOnFour, 3, NEXT_STEP)
    shard.reset(0, None, False, False)
    views.actions[0][:] = [39, 4, 0]  # env 0 reaches t = 40 (truncated) as env 1 raises
    with pytest.raises(ShardError) as info:
        shard.step(1)
    assert [p[0] for p in info.value.payloads()] == [1] and shard.envs[2].t == 1
    views.actions[0][:] = [0, 0, 0]
    shard.step(0)
    assert views.obs[0][0, 0, 0] == 0 and views.rewards[0, 0] == 0.0  # env 0 was reset, not stepped
    assert views.obs[0][0, 2, 0] == 2  # env 2 stepped


@pytest.mark.parametrize("raises", [False, True])
def test_next_step_steps_the_runs_between_the_envs_it_resets(raises: bool) -> None:
    """NEXT_STEP steps the envs between those it resets in kernel calls, one per run; every env
    still gets the right treatment, and an env raising in a run is handled as in the env-by-env loop."""
    shard, views = _shard(_RaisesOnFour, 5, NEXT_STEP)
    shard.reset(0, None, False, False)
    views.actions[0][:] = [39, 0, 39, 0, 39]  # envs 0, 2 and 4 end (t = 40, truncated)
    shard.step(1)
    assert views.truncated[1].tolist() == [True, False, True, False, True]
    views.actions[0][:] = [3, 4 if raises else 1, 3, 1, 3]  # (the reset envs' actions are ignored)
    if raises:
        with pytest.raises(ShardError) as info:
            shard.step(0)
        assert [p[0] for p in info.value.payloads()] == [1]
    else:
        shard.step(0)
        assert views.obs[0][0, :, 0].tolist() == [0, 3, 0, 3, 0] and views.rewards[0].tolist() == [0, 1, 0, 1, 0]
    t1 = 1 if raises else 3  # (a failing env does not advance)
    assert [env.t for env in shard.envs] == [0, t1, 0, 3, 0]  # resets, not steps; env 3, after env 1, stepped
    assert shard.needs_reset == [False] * 5
    views.actions[0][:] = [1, 1, 1, 1, 1]
    shard.step(1)
    assert views.obs[0][1, :, 0].tolist() == [2, t1 + 2, 2, 5, 2] and not views.truncated[1].any()


def test_structured_actions_and_object_observations() -> None:
    obs_space = spaces.Dict({"word": spaces.Text(4, charset="ab"), "pos": spaces.Box(-1, 1, (2,), np.float32)})
    act_space = spaces.Tuple((spaces.Discrete(3), spaces.Text(3, charset="xy")))
    shard, views = _shard(partial(lambda space, act, i: envs.EchoEnv(space, act), obs_space, act_space), 2, SAME_STEP)
    views.seed_mask[:] = True
    views.reset_seeds[:] = [5, 6]
    extras = shard.reset(0, None, False, False)
    objects = {i: value for i, kind, value in extras if kind == Extra.OBJECTS}
    assert set(objects) == {0, 1} and all(isinstance(v[0], str) for v in objects.values())
    views.actions[0][:] = [2, 1]
    extras = shard.step(1, [["xy", "y"]])  # the Text part of each env's action, as the pipe brings it
    actions = {i: value["action"] for i, kind, value in extras if kind == Extra.INFO}
    assert actions == {0: (2, "xy"), 1: (1, "y")}
    assert shard.row(1, 0)["word"] == shard.last_objects[0][0]


@pytest.mark.parametrize("restarts", [False, True], ids=["raise", "restart"])
@pytest.mark.parametrize("mode", [SAME_STEP, NEXT_STEP, DISABLED], ids=["same-step", "next-step", "disabled"])
def test_a_step_in_parts_is_the_usual_step(mode: int, restarts: bool) -> None:
    """A step taken some envs at a time (begin_step, step_envs, end_step: the calling process's own group
    stopping between envs under asynchronous batches) writes the same rows, extras and errors as the
    usual step, for random actions that end episodes and make envs raise, in random parts: among them an
    episode ending in one part (stepped in one kernel call) and an env raising in a later one."""
    import random

    n = 5
    rng = random.Random(mode * 2 + restarts)
    fns = [partial(_RaisesOnFour, i) for i in range(n)]
    whole, whole_views = _shard(lambda i: fns[i](), n, mode)
    parts, parts_views = _shard(lambda i: fns[i](), n, mode)
    for shard in (whole, parts):
        shard.env_fns, shard.restart_on_error = fns, restarts
        shard.reset(0, None, False, False)
    raised = 0
    for t in range(300):
        slot = (t + 1) % 2
        actions = [rng.choice([0, 1, 3, 4, 20] if rng.random() < 0.3 else [0, 1]) for _ in range(n)]
        outcomes = []
        for shard, views, in_parts in ((whole, whole_views, False), (parts, parts_views, True)):
            views.actions[0][:] = actions
            try:
                if in_parts:
                    run = shard.begin_step(slot)
                    for _ in range(n):  # (each part steps at least one env: a result each, failing or not)
                        if len(run.results) < n:
                            shard.step_envs(run, rng.randint(len(run.results) + 1, n))
                    assert len(run.results) == n
                    extras = shard.end_step(run)
                else:
                    extras = shard.step(slot)
                outcome = ("ok", sorted((i, int(kind)) for i, kind, _ in extras or []))
            except ShardError as err:
                outcome = ("error", [p[0] for p in err.payloads()])
            rows = (views.obs[0][slot].tolist(), views.rewards[slot].tolist(), views.terminated[slot].tolist(),
                    views.truncated[slot].tolist(), views.terminal_obs[0].tolist())
            outcomes.append((outcome, rows if outcome[0] == "ok" else None, [env.t for env in shard.envs]))
        assert outcomes[0] == outcomes[1], f"step {t}"
        raised += outcomes[0][0][0] == "error" or any(kind == int(Extra.RESTARTED) for _, kind in outcomes[0][0][1])
    assert raised > 10
