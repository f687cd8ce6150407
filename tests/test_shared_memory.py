"""Envs of one process whose observations or infos are one memory (a buffer their class shares, a C extension's static
frame): each env's values read once every env of its process has stepped would all be the last one's. Replacement
workers, envs moved in, infos, final observations, and the walks over what envs return (hunt76)."""

from __future__ import annotations

import time
import warnings
from functools import partial

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env import SubprocVecEnv as SB3SubprocVecEnv

import fastvec
from fastvec import SubprocVecEnv
from tests import envs


def _rows(obs: np.ndarray) -> list:
    return obs.ravel().tolist()


def _finals(venv) -> list:
    """Each of 12 steps' final observations (None for an env whose episode did not end) of two envs; closes venv."""
    venv.reset()
    seen = []
    for _ in range(12):
        _, _, dones, infos = venv.step(np.zeros(2, np.int64))
        seen.append([float(info["terminal_observation"][0]) if d else None for info, d in zip(infos, dones)])
    venv.close()
    return seen


def test_a_replacement_worker_s_envs_keep_their_own_values_in_next_step_mode(tmp_path) -> None:
    """gymnasium's front-end (NEXT_STEP), on_error="restart": a worker of two envs over one buffer dies in a step; its
    replacement's fresh envs reset at the next step, one by one, and no reset of several envs looked for the memory:
    they gave [1, 1] at their resets and [11, 11] after (hunt76 bug 1)."""
    fns = [partial(envs.SharesItsClassBuffer, i, None, None, str(tmp_path / "died")) for i in range(2)]
    with fastvec.VectorEnv(fns, num_workers=1, context="fork", step_in_parent=False, on_error="restart") as venv:
        seen = [_rows(venv.reset()[0])] + [_rows(venv.step(np.zeros(2, np.int64))[0]) for _ in range(6)]
    # (step 2: the worker's death, its envs' last observations, truncated; then the fresh envs' resets, and steps)
    assert seen[:2] == [[0.0, 1.0], [1.0, 11.0]] and seen[3:] == [[0.0, 1.0]] + [[1.0, 11.0]] * 3


def test_a_worker_dying_in_a_masked_reset_is_replaced_by_one_whose_envs_keep_their_own_values(tmp_path) -> None:
    """DISABLED autoresets: a masked reset of env 0 kills its worker; the replacement resets the masked env and the
    other apart, each reset seeing one env: every later step gave [11, 11] (hunt76 bug 2)."""
    fns = [partial(envs.DiesAtSecondReset, i, str(tmp_path / "died")) for i in range(2)]
    with fastvec.VectorEnv(fns, num_workers=1, context="fork", step_in_parent=False, on_error="restart",
                           autoreset_mode=AutoresetMode.DISABLED) as venv:
        venv.reset()
        assert _rows(venv.step(np.zeros(2, np.int64))[0]) == [1.0, 11.0]
        assert _rows(venv.reset(options={"reset_mask": np.array([True, False])})[0]) == [0.0, 1.0]
        assert (tmp_path / "died").exists()
        for _ in range(3):
            assert _rows(venv.step(np.zeros(2, np.int64))[0]) == [1.0, 11.0]


@pytest.mark.parametrize("around", [False, True])
def test_envs_moved_into_a_process_of_several_envs_keep_their_own_values(around: bool) -> None:
    """Moves into the calling process: envs 5 and 4 around the ring's end (its new tail part, a shard that never
    copied: env 4 gave env 5's values, hunt76 bug 3), or env 2 next to envs 0 (arrays of its own) and 1, which share
    nothing (env 1 gave env 2's values, hunt76 bug 4). As DummyVecEnv, which copies each env's as it comes."""
    if around:
        fns = [partial(envs.SecondResetRaises, i, None) for i in range(6)]
    else:
        fns = [partial(envs.OwnArraysOfTheBuffer, 0, 2)] + [partial(envs.SecondResetRaises, i, 2) for i in range(1, 4)]
    n = len(fns)
    reference = DummyVecEnv(fns)
    with SubprocVecEnv(fns, num_workers=2, start_method="fork", step_in_parent=True) as venv:
        venv.reset(), reference.reset()
        moves = [venv.pool.request_move(1, 0, around=True) if around else venv.pool.request_move(1, 0)]
        for t in range(12):
            obs, _, dones, infos = venv.step(np.zeros(n, np.int64))
            ref_obs, _, ref_dones, ref_infos = reference.step(np.zeros(n, np.int64))
            assert _rows(obs) == _rows(ref_obs), t
            assert dones.tolist() == ref_dones.tolist()
            if around and t == 2:
                moves.append(venv.pool.request_move(1, 0, around=True))
        assert moves == ([5, 4] if around else [2])
    reference.close()


def test_the_final_observation_of_an_env_moved_or_made_again_in_a_copying_process_is_its_step_s() -> None:
    """A process copying its envs (over one buffer): the SAME_STEP final observation of an env that moves at its
    episode's end, or whose reset raised and on_error="restart" made it again, is the step's (README), not the buffer
    as the next envs left it (env 0's reset value, env 1's step value: hunt76 bug 8)."""
    fns = [partial(envs.SecondResetRaises, i) for i in range(4)]
    with SubprocVecEnv(fns, num_workers=2, start_method="fork", step_in_parent=True) as venv:
        venv.reset()
        assert venv.pool.request_move(0, 1) == 1
        venv.step(np.zeros(4, np.int64))
        infos = venv.step(np.zeros(4, np.int64))[3]
        assert tuple(venv.pool.stats().shards[1].envs) == (1, 2, 3)
    # (env 1's the step's; the others' read after their resets, as SB3 reads the env's own array: the reset's)
    assert [info["terminal_observation"].tolist() for info in infos] == [[0.0], [11.0], [2.0], [3.0]]
    fns = [partial(envs.SecondResetRaises, 0, 2, True), partial(envs.SecondResetRaises, 1)]
    with SubprocVecEnv(fns, num_workers=1, start_method="fork", step_in_parent=False, on_error="restart") as venv:
        venv.reset()
        venv.step(np.zeros(2, np.int64))
        infos = venv.step(np.zeros(2, np.int64))[3]
    assert "fastvec.restarted" in infos[0]
    assert [info["terminal_observation"].tolist() for info in infos] == [[1.0], [1.0]]  # (env 1's: its reset's)


def test_dict_observations_sharing_only_a_constant_part_are_copied_while_watched_only() -> None:
    """Dict observations holding one constant array beside positions of their own: the copies' parts over the
    constant agree, so they stop after the watch (whole observations were compared: copied for good, hunt76 bug 5)."""
    with SubprocVecEnv([partial(envs.ConstantMaskEnv, i) for i in range(2)], num_workers=1, start_method="fork",
                       step_in_parent=False) as venv:
        assert venv.reset()["pos"].ravel().tolist() == [0.0, 1.0]
        for t in range(1, 21):
            obs = venv.step(np.zeros(2, np.int64))[0]
            assert obs["pos"].ravel().tolist() == [10.0 * t, 10.0 * t + 1] and obs["mask"].tolist() == [[1, 1, 1]] * 2
    with SubprocVecEnv([partial(envs.ConstantMaskEnv, i) for i in range(2)], num_workers=1, start_method="fork",
                       step_in_parent=True) as venv:
        venv.reset()
        shard = venv.pool._local
        assert len(shard.envs) == 2 and shard.copies_obs
        for _ in range(17):
            venv.step(np.zeros(2, np.int64))
        assert not shard.copies_obs


@pytest.mark.parametrize("step_in_parent", [False, True])
def test_infos_over_one_buffer_beside_observations_of_their_own_keep_their_values(step_in_parent: bool) -> None:
    """Infos holding one array their class shares, written with each env's values, beside observations of their own:
    reset infos were copied, but nothing looked at their memory, and every step's info held the last env's value
    (hunt76 bug 7). As SB3's SubprocVecEnv (a process per env)."""
    fns = [partial(envs.OwnObservationsSharedInfos, i) for i in range(2)]

    def states(venv) -> list:
        venv.reset()
        seen = [[float(info["state"][0]) for info in venv.reset_infos]]
        seen += [[float(info["state"][0]) for info in venv.step(np.zeros(2, np.int64))[3]] for _ in range(3)]
        venv.close()
        return seen

    expected = states(SB3SubprocVecEnv(fns, start_method="fork"))
    assert expected == [[1000.0, 1001.0], [10.0, 11.0], [20.0, 21.0], [30.0, 31.0]]
    assert states(SubprocVecEnv(fns, num_workers=1, start_method="fork", step_in_parent=step_in_parent)) == expected


@pytest.mark.parametrize("step_in_parent", [False, True])
@pytest.mark.parametrize("kind", ["cycle", "dag"])
def test_observations_that_hold_themselves_or_one_part_many_times_reset_and_step(kind: str, step_in_parent: bool) -> None:
    """A custom space's part that is its own parent, or a list of two of one list 40 levels deep: the walk over a
    reset's observations for memory several envs share recursed without end (a RecursionError blamed on env 0) or for
    2^40 parts (a hang) (hunt76 bug 9). As SB3's SubprocVecEnv, whose pipes pickle them with a memo."""
    with SubprocVecEnv([partial(envs.TreeEnv, i, kind) for i in range(2)], num_workers=1, start_method="fork",
                       step_in_parent=step_in_parent) as venv:
        obs = venv.reset()
        names = [tree["name"] for tree in obs["tree"]]
        assert names == ["root of env 0", "root of env 1"]
        if kind == "cycle":
            assert all(tree["parent"] is tree for tree in obs["tree"])
        venv.step(np.zeros(2, np.int64))


@pytest.mark.parametrize("kind", ["cycle", "dag"])
def test_the_watch_walks_infos_that_hold_one_part_many_times_once(kind: str) -> None:
    """Envs sharing a constant observation (watched) whose step infos hold a list of two of one list 40 levels deep:
    each watched step walked 2^40 parts (hunt76 bug 9); now each part once."""
    with SubprocVecEnv([partial(envs.TreeEnv, i, kind, True) for i in range(2)], num_workers=1, start_method="fork",
                       step_in_parent=True) as venv:
        venv.reset()
        assert venv.pool._local.copies_obs  # (watched)
        began = time.perf_counter()
        for _ in range(20):
            infos = venv.step(np.zeros(2, np.int64))[3]
        assert time.perf_counter() - began < 30  # (2^40 parts a step: days)
        assert [info["tree"]["name"] for info in infos] == ["root of env 0", "root of env 1"]
        assert not venv.pool._local.copies_obs


def test_masked_resets_during_the_watch_of_a_shared_constant_do_not_keep_it_for_ever() -> None:
    """DISABLED autoresets, envs sharing a constant, each ended env reset alone (a masked reset) every 5 steps: each
    reset began the watch again and added its envs to those compared, so the copies never stopped and each step
    compared more (hunt76 bug 10). Now a reset of some envs leaves the count as it was, one of every env begins it again
    only within the watch's first 64 steps (these episodes end together): the watch ends, and no later reset of the
    constant starts one again."""
    fns = [partial(envs.ConstantEpisodes, i, 5) for i in range(4)]
    with fastvec.VectorEnv(fns, num_workers=1, context="fork", step_in_parent=True,
                           autoreset_mode=AutoresetMode.DISABLED) as venv:
        venv.reset()
        shard = venv.pool._local
        copying = []
        for _ in range(120):
            _, _, terminated, truncated, _ = venv.step(np.zeros(4, np.int64))
            ended = terminated | truncated
            if ended.any():
                venv.reset(options={"reset_mask": ended})
            copying.append(shard.copies_obs)
            assert shard._watching is None or 0 < shard._watching <= 16
    assert len(shard.envs) == 4 and any(copying) and not any(copying[100:])


def test_the_warning_of_envs_found_sharing_in_a_step_is_said_once_whatever_the_check() -> None:
    """Envs sharing memory only in their steps, with check="raise": their first step's values were lost and are told
    as a warning (the step that finds it is right), not an error; with check="off" nothing is said."""
    for check, told in (("raise", 1), ("off", 0)):
        fns = [partial(envs.SharesOnlyInSteps, i) for i in range(2)]
        with warnings.catch_warnings(record=True) as caught, SubprocVecEnv(
            fns, start_method="fork", num_workers=1, step_in_parent=True, check=check
        ) as venv:
            warnings.simplefilter("always")
            venv.reset()
            for _ in range(4):
                obs = venv.step(np.zeros(2, np.int64))[0]
            assert _rows(obs) == [1.0, 11.0]
        assert len([w for w in caught if "memory that env" in str(w.message)]) == told, check


def test_envs_sharing_memory_in_some_steps_only_keep_their_values_after_the_first() -> None:
    """Fresh observations but at episodes' ends, where the envs return their class's one array: found at the first
    end (lost, as documented); the watch after it saw no memory shared (no episode ended in it) and ended as for a
    constant, and no later step was looked at: every later episode end gave the last env's values, unsaid (hunt78
    bug 1). Now memory found in a step and not seen again in the watch is copied for good."""
    fns = [partial(envs.SharesAtEpisodeEnds, i, 20) for i in range(2)]
    with fastvec.VectorEnv(fns, num_workers=1, context="fork", step_in_parent=False) as venv:
        venv.reset(seed=0)
        ends = []
        for _ in range(4 * 21):
            obs, _, terminated, _, _ = venv.step(np.zeros(2, np.int64))
            if terminated.all():
                ends.append(_rows(obs))
    assert ends[0] == [101.0, 101.0]  # (lost)
    assert ends[1:] == [[2.0, 102.0], [3.0, 103.0], [4.0, 104.0]]


@pytest.mark.parametrize("move", [False, True])
def test_the_infos_of_envs_ending_in_a_copying_process_are_read_after_their_resets(move: bool) -> None:
    """SB3 sends an ended env's step info after its reset (an array it changes in place shows the reset's values): a
    process copying what its envs return while it watches them (an env moved in, here) gave the step's values (hunt78
    bug 4). As DummyVecEnv, with and without the move."""
    fns = [partial(envs.InPlaceStateInfo, i) for i in range(4)]
    reference = DummyVecEnv(fns)
    reference.reset()
    with SubprocVecEnv(fns, num_workers=2, start_method="fork", step_in_parent=True) as venv:
        venv.reset()
        moved = venv.pool.request_move(1, 0) if move else None
        for t in range(24):
            _, _, dones, infos = venv.step(np.zeros(4, np.int64))
            _, _, ref_dones, ref_infos = reference.step(np.zeros(4, np.int64))
            assert dones.tolist() == ref_dones.tolist()
            for i in range(4):
                if i != moved or t != 2:  # (the moved env's info as it leaves: its new process resets it)
                    assert infos[i]["state"].tolist() == ref_infos[i]["state"].tolist(), (t, i)
        assert moved is None or venv.pool._local.copies_obs is False  # (the watch ended: nothing shared)
    reference.close()


@pytest.mark.parametrize("step_in_parent", [False, True])
def test_the_final_observations_of_envs_sharing_memory_only_in_steps_are_each_env_s(step_in_parent: bool) -> None:
    """Envs whose steps return their class's one frame and whose resets leave it as it is: each final observation was
    read from the frame after every env had stepped, the last env's values (hunt78 bug 5). Now each env's own objects
    get its step's values back before its reset, as in a process of its own (SB3's SubprocVecEnv)."""
    fns = [partial(envs.StepFrame, i) for i in range(2)]

    def history(venv) -> list:
        venv.reset()
        seen = []
        for _ in range(12):
            obs, _, dones, infos = venv.step(np.zeros(2, np.int64))
            seen.append((_rows(obs), [float(info["terminal_observation"][0]) if d else None for info, d in zip(infos, dones)]))
        venv.close()
        return seen

    expected = history(SB3SubprocVecEnv(fns, start_method="fork"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the first step's values are lost, and told)
        got = history(SubprocVecEnv(fns, num_workers=1, start_method="fork", step_in_parent=step_in_parent))
    assert got[1:] == expected[1:] and expected[3][1] == [4.0, 14.0]


def test_every_env_found_sharing_in_a_step_is_told_and_only_for_observations() -> None:
    """Two classes each sharing a frame of their own in steps: both groups lost the first step's values, and only the
    first group's envs were told (hunt78 bug 6). Envs sharing only their infos' frame (and, at episodes' ends, a
    read-only constant observation every env returns, which is found) were told their observations were lost (hunt78
    bug 7): their observations were all right."""
    fns = [partial(envs.StepFrame, 0), partial(envs.StepFrame, 1), partial(envs.OtherStepFrame, 2),
           partial(envs.OtherStepFrame, 3)]
    with warnings.catch_warnings(record=True) as caught, SubprocVecEnv(
        fns, num_workers=1, start_method="fork", step_in_parent=False
    ) as venv:
        warnings.simplefilter("always")
        venv.reset()
        first = _rows(venv.step(np.zeros(4, np.int64))[0])
        for t in (2, 3):
            assert _rows(venv.step(np.zeros(4, np.int64))[0]) == [10.0 * i + t for i in range(4)]
    assert first == [11.0, 11.0, 31.0, 31.0]
    told = sorted(str(w.message)[:16] for w in caught if "memory that env" in str(w.message))
    assert told == ["fastvec: env 0 r", "fastvec: env 2 r"]
    fns = [partial(envs.InfoFrame, i) for i in range(2)]
    with warnings.catch_warnings(record=True) as caught, fastvec.VectorEnv(
        fns, num_workers=1, context="fork", step_in_parent=False
    ) as venv:
        warnings.simplefilter("always")
        venv.reset()
        t = [0, 0]
        for _ in range(14):
            obs = _rows(venv.step(np.zeros(2, np.int64))[0])
            t = [0 if k == 5 else k + 1 for k in t]  # (NEXT_STEP: the step after an episode's end is its reset)
            assert obs == [float(i) if k == 0 else -1.0 if k == 5 else 10.0 * i + k for i, k in enumerate(t)]
    assert not [w for w in caught if "memory that env" in str(w.message)]


@pytest.mark.parametrize("cls", [envs.ReadOnlyStepFrame, envs.Float64StepFrame])
def test_final_observations_over_a_read_only_or_cast_shared_frame_are_each_env_s(cls) -> None:
    """Steps returning a read-only view of one frame (hunt81 bug 1), or a float64 frame kept as the env's own object
    for a float32 Box (read when the command's extras were sent, after the next envs' resets: hunt81 bug 3): each
    final observation was the last env's. As SB3's SubprocVecEnv."""
    fns = [partial(cls, i) for i in range(2)]
    expected = _finals(SB3SubprocVecEnv(fns, start_method="fork"))
    assert expected[3] == [4.0, 14.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the first step's values are lost, and told; a cast is warned)
        assert _finals(SubprocVecEnv(fns, num_workers=1, start_method="fork", step_in_parent=False))[1:] == expected[1:]


def test_what_envs_of_a_process_share_is_never_set_back() -> None:
    """A count every env of the process adds to (its class's array, in their infos): the ended envs' objects were set
    back to their step's copies before their resets, undoing the steps of the envs after them (52 of 60 steps counted:
    hunt81 bug 2). Nothing is written into the envs' objects."""
    fns = [partial(envs.CountsEverySteps, 3), partial(envs.CountsEverySteps, 4)]
    with SubprocVecEnv(fns, num_workers=1, start_method="fork", step_in_parent=False) as venv:
        venv.reset()
        for _ in range(30):
            venv.step(np.zeros(2, np.int64))
        assert venv.env_method("count") == [60, 60]


def test_the_envs_told_are_those_whose_values_the_finding_step_lost() -> None:
    """Episodes of 6, 3 and 3 steps ending in their class's one array: step 3 gave env 1 env 2's values (env 0's was
    its own); the watch told the first group it saw differ, envs 0 and 1 at step 6 (hunt81 bug 5). Now the envs found
    together in the step are told: env 1."""
    fns = [partial(envs.SharesAtEpisodeEnds, 0, 6), partial(envs.SharesAtEpisodeEnds, 1, 3),
           partial(envs.SharesAtEpisodeEnds, 2, 3)]
    with warnings.catch_warnings(record=True) as caught, SubprocVecEnv(
        fns, num_workers=1, start_method="fork", step_in_parent=False
    ) as venv:
        warnings.simplefilter("always")
        venv.reset()
        for _ in range(8):
            venv.step(np.zeros(3, np.int64))
    told = [str(w.message) for w in caught if "memory that env" in str(w.message)]
    assert len(told) == 1 and told[0].startswith("fastvec: env 1 returned its observations in memory that env 2's")


@pytest.mark.parametrize("num_workers", [1, 2])
def test_an_info_its_reset_fills_is_sent_as_the_references_send_it(num_workers: int) -> None:
    """An env whose step returns its one info dict, empty, which its reset fills: SB3 sends it after the reset
    (infos[i]["resets"]); fastvec decided before the resets that no env had an info and sent none (hunt81 bug 6)."""
    reference = DummyVecEnv([envs.InfoFilledByReset] * 2)
    reference.reset()
    with SubprocVecEnv([envs.InfoFilledByReset] * 2, num_workers=num_workers, start_method="fork") as venv:
        venv.reset()
        for _ in range(4):
            _, _, dones, infos = venv.step(np.zeros(2, np.int64))
            _, _, ref_dones, ref_infos = reference.step(np.zeros(2, np.int64))
            assert dones.tolist() == ref_dones.tolist()
            assert [info.get("resets") for info in infos] == [info.get("resets") for info in ref_infos]
        assert [info.get("resets") for info in infos] == [3, 3]
    reference.close()


def test_envs_ending_together_whose_resets_write_one_start_value_each_get_it() -> None:
    """Envs over one frame whose resets all write -1 there, episodes ending in the same step: the envs after the first
    compared their objects with what they held after the first env's reset, saw no change, and gave their step's values
    (hunt82 bug 1). What they hold is taken before any of them resets. As SB3's SubprocVecEnv: [-1, -1]."""
    fns = [partial(envs.ResetsItsClassFrame, i) for i in range(2)]
    expected = _finals(SB3SubprocVecEnv(fns, start_method="fork"))
    assert expected[3] == [-1.0, -1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _finals(SubprocVecEnv(fns, num_workers=1, start_method="fork", step_in_parent=False))[1:] == expected[1:]


def test_the_envs_told_are_named_by_index_after_envs_moved() -> None:
    """Envs 4 and 5 found sharing at their episodes' end (step 6), env 2 then moved into their process: the warning,
    given once their values differ (step 12), named the envs by their positions at the finding, now another env's
    (hunt82 bug 2)."""
    fns = [partial(envs.FreshEpisodes, 50), partial(envs.FreshEpisodes, 50), partial(envs.FreshEpisodes, 2),
           partial(envs.FreshEpisodes, 50), partial(envs.SharesAtEpisodeEnds, 4, 6), partial(envs.SharesAtEpisodeEnds, 5, 6)]
    with warnings.catch_warnings(record=True) as caught, SubprocVecEnv(
        fns, num_workers=2, start_method="fork", step_in_parent=False
    ) as venv:
        warnings.simplefilter("always")
        venv.reset()
        for step in range(1, 15):
            venv.step(np.zeros(6, np.int64))
            if step == 6:
                assert venv.pool.request_move(0, 1) == 2
    told = [str(w.message) for w in caught if "memory that env" in str(w.message)]
    assert len(told) == 1 and told[0].startswith("fastvec: env 4 returned its observations in memory that env 5's")
