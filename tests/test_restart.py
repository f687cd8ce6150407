"""on_error="restart": a failing env or a dead worker is replaced, the others keep going."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from fastvec import EnvError, SubprocVecEnv, VectorEnv
from fastvec.protocol import DISABLED, NEXT_STEP, SAME_STEP
from tests import envs


class FlakyEnv(envs.FailingEnv):
    """Raises in step number ``after + 1`` of its first life only (a restarted copy is healthy)."""

    lives: dict = {}

    def __init__(self, key: str, after: int):
        super().__init__(None)
        self.key, self.after_steps = key, after
        FlakyEnv.lives[key] = FlakyEnv.lives.get(key, 0) + 1
        self.first_life = FlakyEnv.lives[key] == 1

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        if self.first_life and self.steps > self.after_steps:
            raise ZeroDivisionError("flaky step")
        return np.full(2, self.steps / 100, np.float32), reward, term, trunc, info


@pytest.mark.parametrize("bad_index", [0, 3])  # parent's shard, worker's shard
def test_failing_env_is_recreated_and_its_episode_truncated(bad_index: int) -> None:
    key = f"sb3-{bad_index}-{os.getpid()}"
    fns = [partial(FlakyEnv, f"{key}-{i}", 2 if i == bad_index else 10**9) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        for _ in range(2):
            _, _, dones, _ = venv.step(np.zeros(4, dtype=np.int64))
            assert not dones.any()
        obs, rewards, dones, infos = venv.step(np.zeros(4, dtype=np.int64))
        assert dones.tolist() == [i == bad_index for i in range(4)]
        info = infos[bad_index]
        assert info["TimeLimit.truncated"] is True and "ZeroDivisionError: flaky step" in info["fastvec.restarted"]
        np.testing.assert_allclose(info["terminal_observation"], [0.02, 0.02])  # the last observation it produced
        np.testing.assert_array_equal(obs[bad_index], [0, 0])  # a fresh episode
        others = [i for i in range(4) if i != bad_index]
        np.testing.assert_allclose(obs[others], 0.03)  # the others kept going
        for _ in range(3):
            _, _, dones, infos = venv.step(np.zeros(4, dtype=np.int64))
            assert not dones.any() and not any("fastvec.restarted" in i for i in infos)
        assert venv.pool.shard_restarts() == 1


@pytest.mark.parametrize("when", ["idle", "during step"])
def test_dead_worker_is_respawned(when: str) -> None:
    fns = [partial(envs.FailingEnv, "hang" if (i == 3 and when == "during step") else None, 1) for i in range(4)]
    venv = SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart")
    try:
        venv.reset()
        venv.step(np.zeros(4, dtype=np.int64))
        (pid,) = venv.pool.worker_pids
        if when == "during step":
            venv.step_async(np.zeros(4, dtype=np.int64))  # env 3 hangs in this step
            os.kill(pid, signal.SIGKILL)
            with pytest.warns(RuntimeWarning, match="worker 1 .* died .*restarted"):
                obs, _, dones, infos = venv.step_wait()
        else:
            os.kill(pid, signal.SIGKILL)
            with pytest.warns(RuntimeWarning, match="worker 1 .* died") as warned:
                obs, _, dones, infos = venv.step(np.zeros(4, dtype=np.int64))
            assert warned[0].filename == __file__  # (the program's line: it pointed into fastvec's front-end)
        assert dones.tolist() == [False, False, True, True]
        assert infos[2]["fastvec.restarted"] == "worker process died" and infos[2]["TimeLimit.truncated"]
        assert venv.pool.worker_pids != [pid] and venv.pool.worker_restarts == 1
        if when == "idle":  # the respawned worker steps on
            for _ in range(3):
                _, _, dones, _ = venv.step(np.zeros(4, dtype=np.int64))
                assert not dones.any()
    finally:
        venv.close()


class TextCounter(FlakyEnv):
    """A FlakyEnv with a Text part beside its Box one, both naming its step count; its reset's info names it."""

    def __init__(self, key: str, after: int, index: int):
        super().__init__(key, after)
        self.index = index
        self.observation_space = gym.spaces.Dict({"word": gym.spaces.Text(12), "pos": gym.spaces.Box(0, 1e9, (1,))})

    def _obs(self) -> dict:
        return {"word": f"t{self.steps}", "pos": np.array([self.steps], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return self._obs(), {"reset_of": self.index}

    def step(self, action):
        _, reward, term, trunc, info = super().step(action)
        return self._obs(), reward, term, trunc, info


@pytest.mark.parametrize("fault", ["env raises", "worker killed"])
def test_a_restart_keeps_object_parts_and_the_fresh_reset_info(fault: str) -> None:
    """A restarted env's new observation is its fresh env's whole (the Text part was the dead env's), its
    final observation has the object part it last returned (it had None), and reset_infos holds the fresh
    env's reset info (it was {})."""
    key = f"text-{fault}-{os.getpid()}"
    bad = 3 if fault == "env raises" else 10**9
    fns = [partial(TextCounter, f"{key}-{i}", 2 if i == bad else 10**9, i) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        for _ in range(2):
            venv.step(np.zeros(4, dtype=np.int64))
        if fault == "worker killed":
            (pid,) = venv.pool.worker_pids
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            obs, _, dones, infos = venv.step(np.zeros(4, dtype=np.int64))
        restarted = [3] if fault == "env raises" else [2, 3]
        assert [i for i in range(4) if dones[i]] == restarted
        for i in restarted:
            assert "fastvec.restarted" in infos[i]
            assert obs["word"][i] == "t0" and obs["pos"][i].tolist() == [0.0]
            final = infos[i]["terminal_observation"]
            assert final["word"] == "t2" and final["pos"].tolist() == [2.0]
            assert venv.reset_infos[i] == {"reset_of": i}
        assert obs["word"][0] == "t3" and obs["pos"][0].tolist() == [3.0]


class RemadeOnceLater(TextCounter):
    """A TextCounter whose constructor fails once while the ``fail_make`` file exists (removing it)."""

    def __init__(self, key: str, after: int, index: int, fail_make: str):
        if os.path.exists(fail_make):
            os.remove(fail_make)
            raise RuntimeError("no env today")
        super().__init__(key, after, index)
        self.fail_make = fail_make

    def step(self, action):
        if self.first_life and self.steps + 1 > self.after_steps:
            Path(self.fail_make).touch()  # (its re-creation after this step's error fails)
        return super().step(action)


def test_a_worker_that_dies_after_an_error_gives_final_observations_whole(tmp_path) -> None:
    """Env 2 raises in step 3 and its re-creation fails, so the step raises; env 1 stepped in it, and the rows hold
    its step-3 observation. The worker then dies: env 1's final observation must be its step-3 one, the Text part
    too (it was step 2's: the error reply did not carry the step's object parts)."""
    key = f"whole-{os.getpid()}"
    fail_make = str(tmp_path / "fail-make")
    fns = [partial(RemadeOnceLater, f"{key}-{i}", 2 if i == 2 else 10**9, i, fail_make) for i in range(3)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True, on_error="restart") as venv:
        assert [list(r) for r in venv.pool.shard_envs] == [[0], [1, 2]]
        venv.reset()
        for _ in range(2):
            venv.step(np.zeros(3, dtype=np.int64))
        with pytest.raises(EnvError, match="no env today"):
            venv.step(np.zeros(3, dtype=np.int64))
        (pid,) = venv.pool.worker_pids
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            obs, _, dones, infos = venv.step(np.zeros(3, dtype=np.int64))
        assert dones.tolist() == [False, True, True]
        final = infos[1]["terminal_observation"]
        assert (final["word"], final["pos"].tolist()) == ("t3", [3.0])
        assert obs["word"][0] == "t4"


def test_a_worker_that_dies_after_an_error_gives_final_observations_whole_in_batches(tmp_path) -> None:
    """As above, with asynchronous batches: env 3's group (envs 2 and 3, a worker's) raises in its step 3, then
    the worker dies; env 2's final observation must be its step-3 one, the Text part too."""
    key = f"whole-batches-{os.getpid()}"
    fail_make = str(tmp_path / "fail-make")
    fns = [partial(RemadeOnceLater, f"{key}-{i}", 2 if i == 3 else 10**9, i, fail_make) for i in range(4)]
    options = {"num_workers": 2, "step_in_parent": False, "on_error": "restart", "batch_size": 2}
    with SubprocVecEnv(fns, start_method="fork", **options) as venv:
        venv.async_reset()
        ids = sorted(i for _ in range(2) for i in venv.recv()[4].tolist())
        assert ids == [0, 1, 2, 3]
        for step in range(3):
            venv.send(np.zeros(4, dtype=np.int64), ids)
            if step < 2:
                assert sorted(i for _ in range(2) for i in venv.recv()[4].tolist()) == ids
        got, raised = [], []
        for _ in range(2):  # (envs 0 and 1's group, and the error of envs 2 and 3's, in the order they finished)
            try:
                got.append(venv.recv()[4].tolist())
            except EnvError as exc:
                assert "no env today" in str(exc)
                raised.append(exc.env_ids.tolist())
        assert raised == [[2, 3]]
        os.kill(venv.pool.worker_pids[1], signal.SIGKILL)
        time.sleep(0.2)
        venv.send(np.zeros(2, dtype=np.int64), [2, 3])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            obs, _, dones, infos, env_ids = venv.recv()
        assert env_ids.tolist() == [2, 3] and dones.tolist() == [True, True] and got == [[0, 1]]
        final = infos[0]["terminal_observation"]
        assert (final["word"], final["pos"].tolist()) == ("t3", [3.0])


class SeedLogged(envs.Counter):
    """Its reset's info holds the seed it got; its first reset in a process whose ``die_in`` file exists
    removes the file and kills the process (a crash in reset)."""

    def __init__(self, index: int, die_in: str):
        super().__init__(index)
        self.die_in = die_in

    def reset(self, *, seed=None, options=None):
        if os.path.exists(self.die_in):
            os.remove(self.die_in)
            os._exit(7)
        super().reset(seed=None)
        return self._obs(), {"seed": seed}


@pytest.mark.parametrize("api", ["sync", "batches"])
def test_a_worker_replaced_in_a_reset_gives_its_envs_seeds_beyond_64_bits(tmp_path, api: str) -> None:
    """Seeds beyond the block's int64 words reach their envs by a call before the reset; a worker that died in
    the reset took them along, and its replacement reset its envs unseeded."""
    from fastvec.pool import Pool

    die_in = tmp_path / "die"
    fns = [partial(SeedLogged, i, str(die_in) if i == 3 else "") for i in range(4)]
    seeds = [2**64 + i for i in range(4)]
    options = {"num_workers": 2, "step_in_parent": False, "start_method": "fork", "on_error": "restart"}
    with Pool(fns, **options, **({"batch_size": 2} if api == "batches" else {})) as pool:
        die_in.touch()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if api == "sync":
                batches = [pool.reset(seeds)]
            else:
                pool.async_reset(seeds)
                batches = [pool.recv(), pool.recv()]
        got = {i: batch.reset_infos[i]["seed"] for batch in batches for i in batch.reset_infos}
        restarted = {i for batch in batches for i in batch.restarted}
        assert restarted == {2, 3} and not die_in.exists()
        assert got == dict(enumerate(seeds))


def test_vector_env_restart_next_step_mode() -> None:
    key = f"gym-{os.getpid()}"
    fns = [partial(FlakyEnv, f"{key}-{i}", 1 if i == 1 else 10**9) for i in range(2)]
    with VectorEnv(fns, num_workers=2, start_method="fork", on_error="restart", autoreset_mode=AutoresetMode.NEXT_STEP) as venv:
        venv.reset(seed=0)
        venv.step(np.zeros(2, dtype=np.int64))
        obs, _, terminated, truncated, infos = venv.step(np.zeros(2, dtype=np.int64))
        assert truncated.tolist() == [False, True] and not terminated.any()
        assert infos["_fastvec_restarted"].tolist() == [False, True]
        np.testing.assert_allclose(obs[1], 0.01)  # NEXT_STEP: the last observation now...
        obs, rewards, _, truncated, _ = venv.step(np.zeros(2, dtype=np.int64))
        np.testing.assert_array_equal(obs[1], [0, 0])  # ...and the fresh episode in the next step
        assert rewards[1] == 0.0 and not truncated.any()


def test_restart_requires_a_valid_mode() -> None:
    with pytest.raises(ValueError, match="on_error"):
        SubprocVecEnv([envs.make_cartpole], on_error="ignore")


class FlakyResetEnv(envs.FailingEnv):
    """Raises in reset in its first life only."""

    lives: dict = {}

    def __init__(self, key: str):
        super().__init__(None)
        FlakyResetEnv.lives[key] = FlakyResetEnv.lives.get(key, 0) + 1
        self.first_life = FlakyResetEnv.lives[key] == 1

    def reset(self, *, seed=None, options=None):
        if self.first_life:
            raise ValueError("flaky reset")
        return super().reset(seed=seed, options=options)


@pytest.mark.parametrize("bad_index", [0, 2])
def test_reset_error_recreates_the_env(bad_index: int) -> None:
    key = f"reset-{bad_index}-{os.getpid()}"
    fns = [partial(FlakyResetEnv, f"{key}-{i}") if i == bad_index else envs.FailingEnv for i in range(3)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv:
        obs = venv.reset()
        assert obs.shape == (3, 2)
        assert venv.pool.shard_restarts() == 1
        venv.step(np.zeros(3, dtype=np.int64))


class RefusedRemakeEnv(envs.FailingEnv):
    """Counts its steps; a ``flaky`` one raises in its step 2, leaving the file ``failed``."""

    def __init__(self, flaky: bool, failed: str):
        super().__init__(None)
        self.flaky, self.failed = flaky, failed
        self.closed = False

    def step(self, action):
        if self.closed:
            raise AssertionError("a closed env was stepped")
        obs, reward, term, trunc, info = super().step(action)
        if self.flaky and self.steps == 2:
            open(self.failed, "w").close()
            raise ZeroDivisionError("flaky step")
        return np.full(2, self.steps / 100, np.float32), reward, term, trunc, info

    def close(self):
        self.closed = True


class RemakeFactory:
    """Env ``bad`` fails once; making it again then fails while the file ``block`` exists (a
    simulator's licence or port still held)."""

    def __init__(self, i: int, bad: int, block: str):
        self.i, self.bad, self.block = i, bad, block

    def __call__(self):
        failed = self.block + ".failed"
        if self.i == self.bad and os.path.exists(failed) and os.path.exists(self.block):
            raise RuntimeError("cannot make it again yet")
        return RefusedRemakeEnv(self.i == self.bad and not os.path.exists(failed), failed)


@pytest.mark.parametrize("front", ["sb3", "gymnasium-next-step"])
@pytest.mark.parametrize("bad_index", [0, 2])  # the parent's shard; the first env of the worker's (env 3 after it)
def test_env_whose_remake_fails_is_never_stepped_again(tmp_path, front: str, bad_index: int) -> None:
    """Its re-creation fails: every command reports that env's error (the others step), its closed
    copy is never stepped again, and once its factory works again the env is back, restarted."""
    block = tmp_path / "block"
    block.touch()
    fns = [RemakeFactory(i, bad_index, str(block)) for i in range(4)]
    others = [i for i in range(4) if i != bad_index]
    actions = np.zeros(4, dtype=np.int64)
    if front == "sb3":
        venv = SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart")
    else:
        venv = VectorEnv(fns, num_workers=2, start_method="fork", on_error="restart", autoreset_mode=AutoresetMode.NEXT_STEP)
    with venv:
        venv.reset()
        venv.step(actions)
        for _ in range(3):
            with pytest.raises(EnvError) as caught:
                venv.step(actions)
            assert caught.value.env_index == bad_index and caught.value.others == []
            assert "make (restart after an error)" in str(caught.value) and "cannot make it again yet" in str(caught.value)
        assert venv.pool.call("get_attr", others, ("steps",)) == [4, 4, 4]  # the others stepped every time
        block.unlink()
        result = venv.step(actions)
        infos = result[-1]
        # its episode ends as truncated, at the last observation the caller saw (the steps that raised wrote no
        # rows: it was a stale row of the ring, and in NEXT_STEP mode a fresh episode began with no end at all)
        if front == "sb3":
            assert result[2][bad_index] and "fastvec.restarted" in infos[bad_index]
            np.testing.assert_allclose(infos[bad_index]["terminal_observation"], [0.01, 0.01])
        else:
            assert infos["_fastvec_restarted"].tolist() == [i == bad_index for i in range(4)]
            assert result[3].tolist() == [i == bad_index for i in range(4)]  # truncated
            np.testing.assert_allclose(result[0][bad_index], [0.01, 0.01])
        for _ in range(2):
            venv.step(actions)
        assert venv.pool.call("get_attr", [bad_index], ("flaky",)) == [False]  # made again


class SlowToSend:
    """An info value whose pickling leaves the file ``marker`` and then takes 5 s: a worker that
    finished its step is killed while it sends its results."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            time.sleep(5)
        return (SlowToSend, (self.marker,))


class SlowInfoEnv(envs.FailingEnv):
    def __init__(self, marker: str | None):
        super().__init__(None)
        self.marker = marker

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        return obs, reward, term, trunc, ({"slow": SlowToSend(self.marker)} if self.marker else {})


def _kill_when(marker: str, pid: int) -> threading.Thread:
    def kill():
        deadline = time.monotonic() + 30
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


@pytest.mark.parametrize("batches", [False, True], ids=["step", "recv"])
def test_a_worker_killed_while_it_sends_its_results_is_replaced(tmp_path, batches: bool) -> None:
    """It finished its step, and died before the parent read its message (infos): with
    on_error="restart" it is replaced as a worker that died in the step (the pool used to break)."""
    marker = str(tmp_path / "sending")
    fns = [partial(SlowInfoEnv, marker if i >= 2 else None) for i in range(4)]
    options = {"batch_size": 2, "num_workers": 2} if batches else {"num_workers": 2}
    with SubprocVecEnv(fns, start_method="fork", step_in_parent=False, on_error="restart", **options) as venv:
        if batches:
            venv.async_reset()
            for _ in range(2):
                venv.recv()
            killer = _kill_when(marker, venv.pool.worker_pids[1])
            venv.send(np.zeros(2, np.int64), [2, 3])
            killer.join()
            with pytest.warns(RuntimeWarning, match="died during 'step'"):
                _, _, dones, infos, ids = venv.recv()
            assert ids.tolist() == [2, 3] and dones.all()
            assert all("fastvec.restarted" in info and info["TimeLimit.truncated"] for info in infos)
            venv.send(np.zeros(2, np.int64), [0, 1])
            assert venv.recv()[4].tolist() == [0, 1]
            return
        venv.reset()
        killer = _kill_when(marker, venv.pool.worker_pids[1])
        with pytest.warns(RuntimeWarning, match="died during 'step'"):
            _, _, dones, infos = venv.step(np.zeros(4, np.int64))
        killer.join()
        assert dones.tolist() == [False, False, True, True]
        assert all("fastvec.restarted" in infos[i] for i in (2, 3))
        venv.step(np.zeros(4, np.int64))


def test_a_call_on_live_workers_envs_is_answered_after_another_worker_died() -> None:
    """A worker died between steps (killed): a call whose envs are all on live workers is answered, as SB3's
    SubprocVecEnv sends a call to those envs' remotes only; before, every call failed naming the dead worker until
    the next step (hunt77 bug 1). A call on its envs fails naming it, and the next step replaces it."""
    from fastvec.errors import WorkerDiedError

    fns = [partial(gym.make, "CartPole-v1")] * 4
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=False, on_error="restart") as venv:
        venv.reset()
        dead = venv.pool.worker_pids[1]
        os.kill(dead, signal.SIGKILL)
        import psutil

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # (dead, not yet reaped: the pool reads its exit status)
            try:
                if psutil.Process(dead).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)
        for _ in range(2):
            assert [spec.id for spec in venv.get_attr("spec", indices=[0, 1])] == ["CartPole-v1"] * 2
            assert venv.env_method("get_wrapper_attr", "spec", indices=[1])[0].id == "CartPole-v1"
        with pytest.raises(WorkerDiedError, match=r"worker 1 \(envs 2..3\)"):
            venv.get_attr("spec", indices=[2])
        with pytest.warns(RuntimeWarning, match="worker 1"):
            infos = venv.step(np.zeros(4, np.int64))[3]
        assert ["fastvec.restarted" in info for info in infos] == [False, False, True, True]
        assert [spec.id for spec in venv.get_attr("spec")] == ["CartPole-v1"] * 4


def test_next_step_a_worker_dying_in_an_autoreset_keeps_the_fresh_env_s_reset_info(tmp_path) -> None:
    """gymnasium's NEXT_STEP: the autoreset step's infos are the reset's; where the env's worker died in that reset,
    its replacement's fresh env's reset info was dropped from VectorEnv.step's infos (recv() kept it; hunt77 bug 2)."""
    fns = [envs.OneStepKilledAtSecondReset, partial(envs.OneStepKilledAtSecondReset, str(tmp_path / "killed"))]
    with VectorEnv(fns, num_workers=2, context="fork", step_in_parent=False, on_error="restart",
                   autoreset_mode=AutoresetMode.NEXT_STEP) as venv:
        _, infos = venv.reset()
        assert infos["made"].tolist() == [1, 1]
        assert venv.step(np.zeros(2, np.int64))[2].tolist() == [True, True]
        with pytest.warns(RuntimeWarning, match="worker 1"):
            infos = venv.step(np.zeros(2, np.int64))[4]
    assert (tmp_path / "killed").exists()
    assert infos["made"].tolist() == [1, 1] and infos["_made"].tolist() == [True, True]
    assert infos["_fastvec_restarted"].tolist() == [False, True]


def _dict_failing(fail_in: str | None) -> gym.Env:
    """FailingEnv's observation with a scalar part ({"a": box, "d": 1}): its final observation travels as an object."""
    env = envs.FailingEnv(fail_in, 1)
    space = gym.spaces.Dict({"a": env.observation_space, "d": gym.spaces.Discrete(5)})
    return gym.wrappers.TransformObservation(env, lambda obs: {"a": obs, "d": 1}, space)


@pytest.mark.parametrize("mode", [NEXT_STEP, DISABLED])
def test_outside_same_step_a_restarted_env_has_no_final_observation_either(mode) -> None:
    """Its last observation was still sent (an object part), and terminal_observation(i) answered for it alone."""
    from fastvec.pool import Pool

    fns = [partial(_dict_failing, None), partial(_dict_failing, "step")]
    with Pool(fns, start_method="fork", autoreset_mode=mode, on_error="restart", num_workers=1) as pool:
        pool.reset()
        pool.step(np.array([1, 1]))
        batch = pool.step(np.array([1, 1]))
        assert 1 in batch.restarted and not batch.final_obs
        for call in (lambda: batch.terminal_observation(1), lambda: batch.terminal_observations([])):
            with pytest.raises(ValueError, match="only with autoreset SAME_STEP"):
                call()


@pytest.mark.parametrize(
    ("given", "mode"), [(AutoresetMode.SAME_STEP, SAME_STEP), ("NextStep", NEXT_STEP), (DISABLED, DISABLED), (7, None), (True, None)]
)
def test_the_pool_takes_gymnasiums_autoreset_modes_and_refuses_others(given, mode) -> None:
    """gymnasium's AutoresetMode.SAME_STEP, "SameStep" or 7 all gave a pool without autoreset, silently."""
    from fastvec.pool import Pool

    if mode is None:
        with pytest.raises(ValueError, match="autoreset_mode must be"):
            Pool([envs.make_cartpole], autoreset_mode=given)
        return
    with Pool([envs.make_cartpole], autoreset_mode=given) as pool:
        assert pool.autoreset_mode == mode


class _LevelFailsOnce(gym.Env):
    """Reads its level from its reset options (``pops``: takes it out, as level-loading envs do). Its
    first reset with level 1 (a file ``marker`` marks it, whatever the process) fails: it raises, or
    with ``die`` its worker process ends (a segfault, the OOM killer; never the test's own process)."""

    observation_space = gym.spaces.Box(-10, 10, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, marker: str, pops: bool = False, die: bool = False):
        self.marker, self.pops, self.die = marker, pops, die

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options if options is not None else {}
        level = options.pop("level", -1) if self.pops else options.get("level", -1)
        in_worker = os.getpid() != int(os.environ.get("FASTVEC_TEST_PARENT", "0"))
        if level == 1 and (in_worker or not self.die):
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                if self.die:
                    os._exit(3)
                raise RuntimeError("transient failure loading level 1")
        return np.array([level], np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_restarted_env_resets_with_the_options_given(tmp_path, num_workers: int) -> None:
    """on_error="restart": the env re-created after its reset raised is reset with the options the caller
    gave, not with the copy the failed env had already emptied (it reset with its defaults, silently)."""
    fns = [partial(_LevelFailsOnce, str(tmp_path / f"failed-{i}"), pops=True) for i in range(2)]
    with VectorEnv(fns, on_error="restart", context="fork", num_workers=num_workers) as venv:
        obs, _ = venv.reset(options={"level": 1})
        assert obs.ravel().tolist() == [1.0, 1.0]
        assert all((tmp_path / f"failed-{i}").exists() for i in range(2))  # both did fail once


def test_a_worker_replaced_during_reset_async_resets_with_the_options_of_the_call(tmp_path, monkeypatch) -> None:
    """A worker that dies during reset_async/reset_wait is replaced, and its envs reset with the options
    as they were at reset_async (as every other env, and as AsyncVectorEnv pickles them then), not with
    the caller's dict as edited before reset_wait."""
    monkeypatch.setenv("FASTVEC_TEST_PARENT", str(os.getpid()))
    fns = [partial(_LevelFailsOnce, str(tmp_path / "died"), die=True) for _ in range(4)]
    with VectorEnv(fns, on_error="restart", context="fork", num_workers=2) as venv:
        options = {"level": 1}
        venv.reset_async(options=options)
        options["level"] = 2  # the caller reuses its dict after the call
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            obs, _ = venv.reset_wait()
    assert (tmp_path / "died").exists()  # the worker did die
    assert obs.ravel().tolist() == [1.0] * 4


class _HangsOnCall(gym.Wrapper):
    """CartPole whose ``hang()`` never returns in a worker (a stuck env method)."""

    def hang(self) -> None:
        if os.getpid() != _TEST_PID:
            time.sleep(60)


_TEST_PID = os.getpid()


def _hangs_on_call() -> gym.Env:
    return _HangsOnCall(gym.make("CartPole-v1"))


def test_a_worker_hung_in_a_call_is_ended_and_replaced_at_the_next_step() -> None:
    """on_error="restart" with step_timeout: a worker still in an env_method after step_timeout is
    ended, as a dead one: the call fails naming it and saying so, and the next step replaces it (it
    used to break the pool with StepTimeoutError, while a worker that died in the call was replaced)."""
    from fastvec.errors import WorkerDiedError

    with SubprocVecEnv([_hangs_on_call] * 4, start_method="fork", num_workers=2, step_in_parent=True,
                       on_error="restart", step_timeout=0.5) as venv:
        venv.reset()
        began = time.monotonic()
        with pytest.raises(WorkerDiedError, match=r"worker 1 \(envs 2..3\) died during 'env_method' .*ended, still "
                           r"running after step_timeout=0.5 s; with on_error='restart' it is replaced"):
            venv.env_method("hang", indices=[3])
        assert time.monotonic() - began < 10
        # (named as hung at the step that replaces it too, not as a worker that died with exit code -15)
        with pytest.warns(RuntimeWarning, match="worker 1 .* was ended in 'step', still running after step_timeout"):
            obs, _, dones, infos = venv.step(np.zeros(4, np.int64))
        assert venv.pool.worker_restarts == 1 and venv.pool.state.value == "idle"
        assert all(infos[i]["fastvec.restarted"].startswith("worker hung") for i in (2, 3))
        assert "fastvec.restarted" not in infos[0]
        venv.step(np.zeros(4, np.int64))


def test_a_worker_hung_in_a_call_is_named_hung_when_batches_replace_it() -> None:
    """As above, with asynchronous batches: the group the replacement returns said "worker process died"."""
    from fastvec.errors import WorkerDiedError

    with SubprocVecEnv([_hangs_on_call] * 4, start_method="fork", batch_size=2, on_error="restart",
                       step_timeout=0.5) as venv:
        venv.async_reset()
        for _ in range(2):
            venv.recv()
        with pytest.raises(WorkerDiedError, match="ended, still running after step_timeout"):
            venv.env_method("hang", indices=[3])
        venv.send(np.zeros(2, np.int64), [0, 1])
        venv.send(np.zeros(2, np.int64), [2, 3])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            infos = {}
            for _ in range(2):
                _, _, _, batch_infos, ids = venv.recv()
                infos.update(zip(ids.tolist(), batch_infos))
        assert all(infos[i]["fastvec.restarted"].startswith("worker hung: still running after step_timeout=0.5 s")
                   for i in (2, 3)), infos


class MadeCounted:
    """Env ``bad``'s factory counts its makings in the file ``count``; its second making (in the worker that
    replaces a dead one) fails while the file ``block`` exists ("raise"), or ends the process ("crash")."""

    def __init__(self, i: int, bad: int, folder: str, fault: str):
        self.i, self.bad, self.folder, self.fault = i, bad, folder, fault

    def __call__(self):
        if self.i == self.bad:
            count = os.path.join(self.folder, "count")
            made = int(open(count).read()) if os.path.exists(count) else 0
            with open(count, "w") as f:
                f.write(str(made + 1))
            if made == 1 and self.fault == "crash":
                os._exit(3)  # (the OOM killer, a segfault in a simulator's start)
            if made >= 1 and self.fault == "raise" and os.path.exists(os.path.join(self.folder, "block")):
                raise RuntimeError("simulator not ready")
        return envs.Counter(self.i)


@pytest.mark.parametrize(
    "front, bad", [("sb3", 3), ("gymnasium-batches", 3), ("sb3", 2)], ids=["sb3", "gymnasium-batches", "sb3-first-env"]
)
def test_a_dead_worker_whose_replacement_cannot_make_an_env_yet_goes_on(tmp_path, front: str, bad: int) -> None:
    """The replacement of a dead worker fails to make one env: that env's error is raised (the others step) and its
    factory is tried again until the env is back, as for an env that raised. The pool used to break for good. (Its
    first env: the one made after it is made.)"""
    (tmp_path / "block").touch()
    fns = [MadeCounted(i, bad, str(tmp_path), "raise") for i in range(4)]
    actions = np.zeros(2 if front != "sb3" else 4, dtype=np.int64)
    if front == "sb3":
        venv = SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart")
        venv.reset()
        step = lambda: venv.step(actions)  # noqa: E731
    else:  # the worker's group of envs 2..3, sent and received alone (the own group of 0..1 waits, ready)
        venv = VectorEnv(fns, start_method="fork", num_workers=2, on_error="restart", batch_size=2, step_in_parent=True)
        venv.async_reset()
        got = {tuple(venv.recv()[4]["env_id"].tolist()) for _ in range(2)}
        assert got == {(0, 1), (2, 3)}

        def step():
            venv.send(actions, [2, 3])
            return venv.recv()
    with venv, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        (pid,) = venv.pool.worker_pids
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EnvError) as caught:  # the step it died in: the env it could not make
            step()
        assert caught.value.env_index == bad and caught.value.others == []
        assert "make (worker restart)" in str(caught.value) and "simulator not ready" in str(caught.value)
        with pytest.raises(EnvError, match="simulator not ready"):  # tried again, still failing
            step()
        (tmp_path / "block").unlink()
        result = step()
        restarted = result[-1][bad] if front == "sb3" else dict(zip(result[4]["env_id"].tolist(), result[4]["_fastvec_restarted"].tolist()))[bad]
        assert restarted  # back, as a restarted env
        for _ in range(2):
            step()
        assert venv.pool.call("get_attr", [2, 3], ("index",)) == [2, 3] and venv.pool.worker_pids != [pid]


def test_a_replacement_that_dies_while_making_its_envs_is_replaced_again(tmp_path) -> None:
    fns = [MadeCounted(i, 3, str(tmp_path), "crash") for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        (pid,) = venv.pool.worker_pids
        os.kill(pid, signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="worker 1 .* died"):
            _, _, dones, infos = venv.step(np.zeros(4, dtype=np.int64))
        assert dones.tolist() == [False, False, True, True] and infos[3]["fastvec.restarted"] == "worker process died"
        assert (tmp_path / "count").read_text() == "3"  # made at the start, by the replacement that died, and again
        venv.step(np.zeros(4, dtype=np.int64))


class MadeOnceResetDies(envs.Counter):
    """Env 3's second making fails while ``<folder>/block`` exists; env 2's reset in a worker ends the process
    while ``<folder>/crash`` exists (it is removed first)."""

    def __init__(self, index: int, folder: str):
        path = Path(folder)
        if index == 3 and (path / "made3").exists() and (path / "block").exists():
            (path / "block").unlink()  # (fails once: the reset's re-making works)
            raise RuntimeError("simulator not ready")
        (path / f"made{index}").touch()
        super().__init__(index)
        self.folder = path

    def reset(self, *, seed=None, options=None):
        if self.index == 2 and (self.folder / "crash").exists():
            (self.folder / "crash").unlink()
            os._exit(3)
        return super().reset(seed=seed, options=options)


def test_a_replacement_that_makes_its_env_in_the_reset_it_took_over_raises_nothing(tmp_path) -> None:
    """The worker died in a reset; its replacement could not make env 3, then made it in that reset's own retry:
    the reset returns every env's observation (it raised env 3's stale error, and lost every env's reset)."""
    fns = [partial(MadeOnceResetDies, i, str(tmp_path)) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=False, on_error="restart") as venv:
        venv.reset()
        (tmp_path / "crash").touch()
        (tmp_path / "block").touch()
        with pytest.warns(RuntimeWarning, match="died during 'reset'"):
            obs = venv.reset()
        assert obs[:, 1].tolist() == [0.0, 1.0, 2.0, 3.0] and not (tmp_path / "block").exists()
        venv.step(np.zeros(4, np.int64))


class _FailsOnOne(gym.Env):
    """obs [index, t]; action 1 raises in step, and ``fail_reset`` in reset."""

    observation_space = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, index: int):
        self.index, self.t, self.fail_reset = index, 0, False

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.fail_reset:
            raise ValueError(f"env {self.index} fails in reset")
        self.t = 0
        return np.array([self.index, 0], np.float32), {}

    def step(self, action):
        if int(action) == 1:
            raise ValueError(f"env {self.index} fails in step")
        self.t += 1
        return np.array([self.index, self.t], np.float32), 0.0, False, False, {}


class _MakesAfterFailures:
    """Makes env ``i``; env ``bad``'s making fails while the file ``count`` holds a positive count."""

    def __init__(self, i: int, bad: int, count: str):
        self.i, self.bad, self.count = i, bad, count

    def __call__(self):
        n = int(Path(self.count).read_text() or 0)
        if self.i == self.bad and n > 0:
            Path(self.count).write_text(str(n - 1))
            raise OSError(f"the factory of env {self.i} failed")
        return _FailsOnOne(self.i)


@pytest.mark.parametrize("command", ["step", "reset"])
@pytest.mark.parametrize("good, bad", [(2, 3), (0, 1)])  # a worker's shard; the calling process's
def test_a_restart_in_a_command_that_raised_is_not_reported_by_a_later_one(tmp_path, command, good, bad) -> None:
    """Env ``good`` is re-made in a step (or reset) that raises for env ``bad``, whose re-making fails: the
    command's results are lost, its restart report with them. It came with the shard's next step, on an env
    not restarted there (done False, no final observation). And SubprocVecEnv.reset() names a restart in its
    reset_infos, as the gymnasium front-end and recv() do."""
    count = tmp_path / "count"
    count.write_text("0")
    fns = [_MakesAfterFailures(i, bad, str(count)) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        venv.step(np.zeros(4, np.int64))
        count.write_text("1")
        actions = np.zeros(4, np.int64)
        actions[[good, bad]] = 1
        if command == "reset":
            venv.set_attr("fail_reset", True, indices=[good, bad])
        with pytest.raises(EnvError, match=f"env {bad} raised OSError during 'make"):
            venv.reset() if command == "reset" else venv.step(actions)
        for _ in range(2):
            infos = venv.step(np.zeros(4, np.int64))[3]
            assert "fastvec.restarted" not in infos[good], infos[good]
        if command == "reset":  # (the rows a reset that raised left: env good's latest is its reset's, [good, 0])
            count.write_text("1")
            venv.set_attr("fail_reset", True, indices=[bad])  # (it raises, and its making fails: the reset raises)
            with pytest.raises(EnvError):
                venv.reset()
            actions = np.zeros(4, np.int64)
            actions[good] = 1
            infos = venv.step(actions)[3]
            np.testing.assert_array_equal(infos[good]["terminal_observation"], [good, 0])
        venv.set_attr("fail_reset", True, indices=[good])
        venv.reset()
        assert f"env {good} fails in reset" in venv.reset_infos[good]["fastvec.restarted"]


class _FreshResetFails(gym.Env):
    """obs [index, reset count, t]. Env 1's second step raises (``where="step"``) or ends its episode
    (``where="autoreset"``), after which the next ``fails`` resets of any copy of it raise."""

    def __init__(self, index: int, where: str, marks: str):
        self.index, self.where, self.marks = index, where, Path(marks)
        self.observation_space = gym.spaces.Box(-1e9, 1e9, (3,), np.float64)
        self.action_space = gym.spaces.Discrete(2)
        self.resets, self.t, self.steps = 0, 0, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.index, self.resets, self.t], np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        left = self.marks / "resets-to-fail"
        if self.index == 1 and left.exists():
            n = int(left.read_text()) - 1
            left.write_text(str(n)) if n else left.unlink()
            raise RuntimeError("reset fails")
        self.resets, self.t = self.resets + 1, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.steps += 1
        if self.index == 1 and self.steps == 2 and not (self.marks / "failed").exists():
            (self.marks / "failed").touch()
            if self.where == "autoreset":  # its autoreset, and its fresh copy's first reset, raise
                (self.marks / "resets-to-fail").write_text("2")
                return self._obs(), 0.0, True, False, {}
            (self.marks / "resets-to-fail").write_text("1")  # its fresh copy's first reset raises
            raise RuntimeError("env 1 fails in step")
        return self._obs(), 0.0, False, False, {}


@pytest.mark.parametrize("where", ["step", "autoreset"])
def test_a_fresh_env_whose_first_reset_raises_is_made_again_not_stepped(tmp_path, where: str) -> None:
    """SAME_STEP: env 1 is re-created after an error and its fresh copy's reset raises, so the step raises. The next
    step stepped the fresh env that was never reset, as the old episode going on (no episode end, the restart
    reported a step late or not at all); it is made again, and its episode ends, reported."""
    fns = [partial(_FreshResetFails, i, where, str(tmp_path)) for i in range(2)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=1, on_error="restart") as venv:
        venv.reset()
        venv.step(np.zeros(2, dtype=np.int64))
        with pytest.raises(EnvError, match="reset fails"):
            venv.step(np.zeros(2, dtype=np.int64))
        obs, _, dones, infos = venv.step(np.zeros(2, dtype=np.int64))
        assert dones.tolist() == [False, True] and infos[1]["TimeLimit.truncated"] is True
        assert "was made again after an error, and its reset raised" in infos[1]["fastvec.restarted"]
        assert obs[1].tolist() == [1, 1, 0]  # a fresh env, reset
        _, _, dones, infos = venv.step(np.zeros(2, dtype=np.int64))
        assert not dones.any() and "fastvec.restarted" not in infos[1]


def test_a_worker_dying_in_an_env_s_autoreset_step_starts_its_episode_once(tmp_path) -> None:
    """NEXT_STEP: env 0's episode ends in step 1, and step 2 is its reset, in which env 1 kills their worker. Env 0
    ended its ended episode a second time (truncated, its final observation again): a phantom episode of no steps.
    Its fresh env starts the new episode in step 2, not ended; env 1's, cut short, ends truncated."""
    fns = [partial(_Controlled, i, str(tmp_path)) for i in range(2)]  # (action 1 terminates, 3 kills the process)
    options = {"num_workers": 1, "step_in_parent": False, "on_error": "restart", "autoreset_mode": AutoresetMode.NEXT_STEP}
    with VectorEnv(fns, context="fork", **options) as venv:
        venv.reset(seed=0)
        obs, _, terminated, truncated, _ = venv.step(np.array([1, 0]))
        assert terminated.tolist() == [True, False] and obs[0].tolist() == [0, 0, 1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            obs, rewards, terminated, truncated, infos = venv.step(np.array([0, 3]))
        assert terminated.tolist() == [False, False] and truncated.tolist() == [False, True]
        assert obs[0].tolist() == [0, 0, 0] and obs[1].tolist() == [1, 0, 1]  # (env 0's fresh env, reset)
        assert infos["_fastvec_restarted"].tolist() == [True, True]
        obs, _, terminated, truncated, _ = venv.step(np.array([1, 0]))
        assert obs[0].tolist() == [0, 0, 1] and terminated.tolist() == [True, False]  # (stepped, not reset again)
        assert obs[1].tolist() == [1, 0, 0] and not truncated.any()  # (its reset step)


class _Controlled(gym.Env):
    """obs [index, episode, t]; action 1 terminates, 2 raises, 3 kills its process. Its factory fails while
    ``nomake`` exists, its reset while ``noreset`` does (env 0's only)."""

    def __init__(self, index: int, marks: str):
        self.marks = Path(marks)
        if (self.marks / "nomake").exists():
            raise RuntimeError("factory fails")
        self.index, self.episode, self.t = index, -1, 0
        self.observation_space = gym.spaces.Box(-1e9, 1e9, (3,), np.float64)
        self.action_space = gym.spaces.Discrete(4)

    def _obs(self) -> np.ndarray:
        return np.array([self.index, self.episode, self.t], np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.index == 0 and (self.marks / "noreset").exists():
            raise ValueError("reset fails")
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action):
        if self.episode < 0:
            (self.marks / f"stepped-unreset-{self.index}").touch()
        self.t += 1
        if action == 2:
            raise ValueError("env raises")
        if action == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return self._obs(), 1.0, action == 1, False, {}


def test_a_worker_dying_after_a_step_that_raised_reads_that_step_s_flags(tmp_path) -> None:
    """NEXT_STEP: a step raised (env 1 could not be made again), then the worker died: its replacement took the raised
    step's slot's flags, ring_slots commands old, for "ended in the previous step": env 0, whose episode had run
    since, was reset with both flags False, its episode end lost. It ends truncated, as the others."""
    fns = [partial(_Controlled, i, str(tmp_path)) for i in range(3)]
    options = {"num_workers": 1, "step_in_parent": False, "on_error": "restart", "autoreset_mode": AutoresetMode.NEXT_STEP}
    with VectorEnv(fns, context="fork", **options) as venv, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        venv.reset(seed=0)
        venv.step(np.array([0, 0, 0]))
        venv.step(np.array([1, 0, 0]))  # env 0's episode ends
        obs, *_ = venv.step(np.array([0, 0, 0]))  # and it resets (NEXT_STEP)
        assert obs[0].tolist() == [0, 1, 0]
        (tmp_path / "nomake").touch()
        with pytest.raises(EnvError, match="factory fails"):
            venv.step(np.array([0, 2, 0]))
        (tmp_path / "nomake").unlink()
        obs, _, terminated, truncated, _ = venv.step(np.array([0, 0, 3]))
        assert truncated.tolist() == [True, True, True] and not terminated.any() and obs[0].tolist() == [0, 1, 1]


def test_a_replacement_s_env_whose_first_reset_raises_is_made_again_and_the_others_reset(tmp_path) -> None:
    """SAME_STEP: the replacement's env 0 raised in its first reset: it stayed a never-reset env, stepped at the next
    step as is, and env 1 after it was never reset either (the loop stopped at env 0's error)."""
    fns = [partial(_Controlled, i, str(tmp_path)) for i in range(2)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=1, step_in_parent=False, on_error="restart") as venv:
        venv.reset()
        venv.step(np.array([0, 0]))
        (tmp_path / "noreset").touch()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with pytest.raises(EnvError, match="reset fails"):
                venv.step(np.array([0, 3]))  # env 1 kills the worker; its replacement's env 0 cannot reset
        (tmp_path / "noreset").unlink()
        obs, _, dones, infos = venv.step(np.array([0, 0]))
        assert dones[0] and "fastvec.restarted" in infos[0] and obs[0].tolist() == [0, 0, 0]
    assert not list(tmp_path.glob("stepped-unreset-*"))


class _LockInFreshResetInfo(gym.Env):
    """Made after ``died`` exists (by a replacement worker), its reset's info holds a lock; action 1 kills its process."""

    observation_space = gym.spaces.Box(-1e9, 1e9, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, marks: str):
        self.marks = Path(marks)
        self.fresh = (self.marks / "died").exists()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), ({"lock": threading.Lock()} if self.fresh else {})

    def step(self, action):
        if action == 1:
            (self.marks / "died").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return np.ones(1, np.float32), 0.0, False, False, {}


def test_a_replacement_whose_fresh_env_s_reset_info_cannot_be_pickled_names_the_env(tmp_path) -> None:
    """The replacement died sending its attach reply, and so did the next two: WorkerDiedError naming no env or cause,
    the pool broken. As any other reply's value that cannot be pickled: the env's error, and the pool goes on."""
    fns = [partial(_LockInFreshResetInfo, str(tmp_path))] * 4
    options = {"num_workers": 2, "step_in_parent": False, "on_error": "restart", "autoreset_mode": AutoresetMode.SAME_STEP}
    with VectorEnv(fns, context="fork", **options) as venv, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        venv.reset()
        with pytest.raises(EnvError, match=r"env 2 raised TypeError during 'attach \(worker restart\) \(sending the result\)'"):
            venv.step(np.array([0, 0, 0, 1]))
        venv.step(np.zeros(4, np.int64))  # (the pool goes on)


@pytest.mark.parametrize("wrapper", ["VecMonitor", "VecNormalize", "RecordEpisodeStatistics"])
def test_a_restart_s_warning_points_at_the_program_s_line_through_the_usual_wrappers(wrapper: str) -> None:
    """It pointed into the wrapper's own file (vec_monitor.py, vec_normalize.py, gymnasium's vector wrappers)."""
    fns = [partial(envs.FailingEnv, "die" if i >= 2 else None, 1) for i in range(4)]
    if wrapper == "RecordEpisodeStatistics":
        venv = gym.wrappers.vector.RecordEpisodeStatistics(VectorEnv(fns, context="fork", num_workers=2, on_error="restart"))
    else:
        from stable_baselines3.common import vec_env

        venv = getattr(vec_env, wrapper)(SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart"))
    try:
        venv.reset()
        venv.step(np.zeros(4, np.int64))
        with pytest.warns(RuntimeWarning, match="restarted it") as warned:
            venv.step(np.zeros(4, np.int64))  # (envs 2 and 3 kill their worker)
        assert [w.filename for w in warned if "restarted it" in str(w.message)] == [__file__]
    finally:
        venv.close()


def test_a_restart_s_warning_points_at_the_program_s_line_through_an_sb3_algorithm() -> None:
    """PPO.learn steps the env from SB3's collect_rollouts: the warning pointed into on_policy_algorithm.py."""
    from stable_baselines3 import PPO

    fns = [partial(envs.FailingEnv, "die" if i >= 2 else None, 1) for i in range(4)]
    venv = SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart")
    try:
        model = PPO("MlpPolicy", venv, n_steps=4, batch_size=16, n_epochs=1, device="cpu")
        with pytest.warns(RuntimeWarning, match="restarted it") as warned:
            model.learn(16)  # (envs 2 and 3 kill their worker at their second step)
        assert {w.filename for w in warned if "restarted it" in str(w.message)} == {__file__}
    finally:
        venv.close()


@pytest.mark.parametrize("name", ["sb3_contrib", "rl_zoo3"])
def test_a_restart_s_warning_points_at_the_program_s_line_through_the_sb3_team_s_packages(tmp_path, monkeypatch, name) -> None:
    """sb3_contrib (the SB3 team's algorithms: RecurrentPPO, QRDQN, TQC...) steps the env from its own
    collect_rollouts, rl_zoo3's ExperimentManager (which takes the program's VecEnv class) from its learn(): the
    warning pointed there (ppo_recurrent.py, qrdqn.py, exp_manager.py). (A stand-in package of that name, which
    steps the env as they do, here: this suite does not install them.)"""
    import importlib

    if name in sys.modules:
        pytest.skip(f"the real {name} is imported")
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "algorithm.py").write_text("def learn(venv, actions):\n    for _ in range(2):\n        venv.step(actions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    algorithm = importlib.import_module(f"{name}.algorithm")
    fns = [partial(envs.FailingEnv, "die" if i >= 2 else None, 1) for i in range(4)]
    venv = SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart")
    try:
        venv.reset()
        with pytest.warns(RuntimeWarning, match="restarted it") as warned:
            algorithm.learn(venv, np.zeros(4, np.int64))  # (envs 2 and 3 kill their worker at their second step)
        assert {w.filename for w in warned if "restarted it" in str(w.message)} == {__file__}
    finally:
        venv.close()
        for module in (f"{name}.algorithm", name):
            sys.modules.pop(module, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_env_whose_autoreset_raises_gives_its_last_step_s_final_observation(dtype) -> None:
    """SAME_STEP, on_error="restart": the final observation is read after the env's reset (as the references read
    the env's own array), but where that reset raised and the env was made again, as its step left it: it was read
    after the restart had closed the env (99, what its close() wrote)."""
    fns = [partial(envs.ReusesItsArray, dtype), partial(envs.ReusesItsArrayFailingItsSecondReset, dtype)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (float64 arrays cast to the space's float32: said)
        with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv:
            venv.reset()
            venv.step(np.zeros(2, np.int64))
            _, _, dones, infos = venv.step(np.zeros(2, np.int64))
    assert dones.tolist() == [True, True] and "fastvec.restarted" in infos[1]
    assert infos[0]["terminal_observation"].tolist() == [-1.0, -1.0]  # (its own array, after its reset: SB3's)
    assert infos[1]["terminal_observation"].tolist() == [2.0, 2.0]  # (the episode's last observation)


def test_envs_sharing_memory_made_again_give_their_own_values(tmp_path) -> None:
    """A copying process's env made again after it raised (its fresh reset's observation), and the envs of a worker
    that replaced a dead one (its fresh envs' resets): each its own values (they went uncopied, and the next env's
    step or reset wrote over them)."""
    fns = [partial(envs.SharesItsClassBuffer, i, None, 2 if i == 0 else None) for i in range(4)]
    fns[3] = partial(envs.SharesItsClassBuffer, 3, None, None, str(tmp_path / "died"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the restarts, said)
        with SubprocVecEnv(fns, start_method="fork", num_workers=2, on_error="restart") as venv:
            assert venv.reset().ravel().tolist() == [0.0, 1.0, 2.0, 3.0]
            assert venv.step(np.zeros(4, np.int64))[0].ravel().tolist() == [1.0, 11.0, 21.0, 31.0]
            obs, _, dones, _ = venv.step(np.zeros(4, np.int64))  # (env 0 raises; env 3's worker dies)
            assert dones.tolist() == [True, False, True, True]
            assert obs.ravel().tolist() == [0.0, 11.0, 2.0, 3.0]  # (the fresh envs' first observations)
            assert venv.step(np.zeros(4, np.int64))[0].ravel().tolist() == [1.0, 11.0, 21.0, 31.0]


class _ClosesLogged(envs.FailingEnv):
    """Env ``index`` of a pool: its first life raises in step 2; every close() appends "<index> <life>" to ``log``."""

    lives: dict = {}

    def __init__(self, index: int, log: str):
        super().__init__("step" if index == 0 and (index, log) not in _ClosesLogged.lives else None, after=1)
        self.index, self.log = index, log
        self.life = _ClosesLogged.lives[(index, log)] = _ClosesLogged.lives.get((index, log), 0) + 1

    def close(self):
        with open(self.log, "a") as f:
            f.write(f"{self.index} {self.life}\n")


def _interrupted_remake(index: int, log: str) -> gym.Env:
    """Env ``index``; making env 0 a second time in this process is interrupted (a Ctrl-C as a slow factory runs)."""
    if index == 0 and _ClosesLogged.lives.get((index, log)) == 1:
        raise KeyboardInterrupt
    return _ClosesLogged(index, log)


def test_an_interrupt_while_an_env_is_made_again_leaves_the_old_one_closed_once(tmp_path) -> None:
    """A Ctrl-C while the calling process made a failed env again (on_error="restart": the old one closed first, then
    its factory called): close() then closed the old env a second time (it stayed in the env's place)."""
    log = str(tmp_path / "closes")
    venv = SubprocVecEnv([partial(_interrupted_remake, i, log) for i in range(2)], start_method="fork", num_workers=1,
                         step_in_parent=True, on_error="restart")  # fmt: skip
    venv.reset()
    venv.step(np.zeros(2, np.int64))
    with pytest.raises(KeyboardInterrupt):
        venv.step(np.zeros(2, np.int64))
    venv.close()
    assert sorted(Path(log).read_text().split("\n")[:-1]) == ["0 1", "1 1"]
