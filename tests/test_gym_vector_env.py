"""fastvec.VectorEnv against gymnasium's SyncVectorEnv: same seeds, same everything."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from fastvec import SubprocVecEnv, VectorEnv
from tests import envs


def _same(a, b, what):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{what}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _same(a[key], b[key], f"{what}[{key!r}]")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert a.shape == b.shape, what
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{what}[{i}]")
    elif a is None or b is None:
        assert a is b, what
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("factory", [envs.make_cartpole, envs.make_dict], ids=["cartpole", "dict"])
def test_matches_sync_vector_env(mode, factory) -> None:
    n = 4
    reference = SyncVectorEnv([factory] * n, autoreset_mode=mode)
    fast = VectorEnv([factory] * n, autoreset_mode=mode, num_workers=2, start_method="fork")
    try:
        assert fast.single_observation_space == reference.single_observation_space
        assert fast.observation_space == reference.observation_space
        assert fast.action_space == reference.action_space
        assert fast.metadata["autoreset_mode"] == mode
        obs_f, info_f = fast.reset(seed=42)
        obs_r, info_r = reference.reset(seed=42)
        _same(obs_f, obs_r, "reset obs")
        _same(info_f, info_r, "reset info")
        reference.action_space.seed(1)
        ended = 0
        for t in range(300):
            actions = reference.action_space.sample()
            out_f = fast.step(actions)
            out_r = reference.step(actions)
            for name, a, b in zip(["obs", "rewards", "terminations", "truncations", "infos"], out_f, out_r):
                _same(a, b, f"step {t} {name}")
            assert out_f[1].dtype == np.float64
            ended += int(np.sum(out_r[2] | out_r[3]))
        assert ended > 0
        # partial reset by mask
        mask = np.array([True, False, True, False])
        obs_f, info_f = fast.reset(seed=[7, None, 8, None], options={"reset_mask": mask})
        obs_r, info_r = reference.reset(seed=[7, None, 8, None], options={"reset_mask": mask})
        _same(obs_f, obs_r, "masked reset obs")
        _same(info_f, info_r, "masked reset info")
        actions = reference.action_space.sample()
        for name, a, b in zip(["obs", "rewards", "terminations", "truncations", "infos"], fast.step(actions), reference.step(actions)):
            _same(a, b, f"after masked reset {name}")
    finally:
        fast.close()
        reference.close()


def test_call_get_set_attr_and_render() -> None:
    with VectorEnv([lambda: envs.ImageEnv(render_mode="rgb_array")] * 3, num_workers=2, start_method="fork") as venv:
        assert venv.render_mode == "rgb_array"
        venv.reset(seed=0)
        assert venv.get_attr("episode_length") == (37, 37, 37)
        venv.set_attr("episode_length", [1, 2, 3])
        assert venv.call("episode_length") == (1, 2, 3)
        frames = venv.render()
        assert len(frames) == 3 and frames[0].shape == (8, 8, 3)
        with pytest.raises(ValueError, match="length equal"):
            venv.set_attr("episode_length", [1, 2])
    assert venv.closed


class _TextAndBox(gym.Env):
    """obs {"a": [index, t], "t": "index/t"}; env 1 raises in its second step."""

    def __init__(self, index: int, bad: int = 1):
        self.index, self.bad, self.t = index, bad, 0
        self.observation_space = gym.spaces.Dict({"a": gym.spaces.Box(-1e9, 1e9, (2,), np.float64), "t": gym.spaces.Text(20)})
        self.action_space = gym.spaces.Discrete(2)

    def _obs(self) -> dict:
        return {"a": np.array([self.index, self.t], np.float64), "t": f"{self.index}/{self.t}"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        if self.index == self.bad and self.t == 2:
            raise RuntimeError(f"env {self.bad} fails")
        return self._obs(), 0.0, False, False, {}


@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_masked_reset_after_a_step_that_raised_keeps_the_others_latest_observations(num_workers: int) -> None:
    """The pool stays usable after an env's error; a masked reset then gave the envs it left out the rows of a slot
    written ring_slots commands before (the first reset's), beside the Text parts of another step. Each is its
    latest observation, one step's parts (the others stepped in the step that raised, as each in its own process)."""
    fns = [partial(_TextAndBox, i) for i in range(3)]
    options = {"num_workers": num_workers, "step_in_parent": num_workers > 1, "autoreset_mode": AutoresetMode.DISABLED}
    with VectorEnv(fns, context="fork", **options) as venv:
        venv.reset(seed=0)
        venv.step(np.zeros(3, np.int64))
        with pytest.raises(RuntimeError, match="env 1 fails"):
            venv.step(np.zeros(3, np.int64))
        obs, _ = venv.reset(options={"reset_mask": np.array([False, True, False])})
    assert obs["a"].tolist() == [[0, 2], [1, 0], [2, 2]] and list(obs["t"]) == ["0/2", "1/0", "2/2"]


def test_a_masked_reset_after_an_error_of_the_calling_process_s_env_keeps_its_neighbours_parts() -> None:
    """The same with the env that raised in the calling process's own shard; and the pool's record of its neighbour's
    latest Text part is the step's at once (it came with the next command, the row's array part newer meanwhile)."""
    fns = [partial(_TextAndBox, i, 0) for i in range(4)]
    with VectorEnv(fns, context="fork", num_workers=2, step_in_parent=True, autoreset_mode=AutoresetMode.DISABLED) as venv:
        assert [list(r) for r in venv.pool.shard_envs] == [[0, 1], [2, 3]]
        venv.reset(seed=0)
        venv.step(np.zeros(4, np.int64))
        with pytest.raises(RuntimeError, match="env 0 fails"):
            venv.step(np.zeros(4, np.int64))
        assert venv.pool.object_columns()[0] == ["0/1", "1/2", "2/2", "3/2"]
        obs, _ = venv.reset(options={"reset_mask": np.array([False, False, True, False])})
    assert obs["a"][:, 1].tolist() == [1, 2, 0, 2] and list(obs["t"]) == ["0/1", "1/2", "2/0", "3/2"]


class _GraphAndBox(gym.Env):
    """obs {"g": a graph of one node [index, t], "a": [index, t]}."""

    def __init__(self, index: int):
        self.index, self.t = index, 0
        box = gym.spaces.Box(-1e9, 1e9, (2,), np.float64)
        self.observation_space = gym.spaces.Dict({"g": gym.spaces.Graph(box, None), "a": box})
        self.action_space = gym.spaces.Discrete(2)

    def _obs(self) -> dict:
        nodes = np.array([[self.index, self.t]], np.float64)
        return {"g": gym.spaces.GraphInstance(nodes=nodes, edges=None, edge_links=None), "a": nodes[0].copy()}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, False, False, {}


def test_copied_observations_copy_their_object_parts_too() -> None:
    """copy=True handed out the object parts (Graph, Sequence, custom spaces) the pool keeps as each env's latest:
    a caller's edit in place came back as env 2's observation in a masked reset of env 0 (gymnasium copies)."""
    fns = [partial(_GraphAndBox, i) for i in range(3)]
    options = {"context": "fork", "num_workers": 2, "shared_memory": False}
    with VectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED, **options) as venv:
        venv.reset(seed=0)
        obs, *_ = venv.step(np.zeros(3, np.int64))
        obs["g"][2].nodes[:] = -1.0
        obs, _ = venv.reset(options={"reset_mask": np.array([True, False, False])})
        assert obs["g"][2].nodes.tolist() == [[2.0, 1.0]]
    with VectorEnv(fns[:2] * 2, batch_size=2, **options) as venv:  # (asynchronous batches)
        venv.async_reset()
        for _ in range(2):
            obs, *_, infos = venv.recv()
            kept = venv.pool.object_columns()[0]
            for k, i in enumerate(infos["env_id"]):
                assert obs["g"][k] is not kept[i] and obs["g"][k].nodes.tolist() == kept[i].nodes.tolist()


def test_reset_mask_validation() -> None:
    with VectorEnv([envs.make_cartpole] * 2, num_workers=2, start_method="fork") as venv:
        with pytest.raises(TypeError, match="numpy array"):
            venv.reset(options={"reset_mask": [True, False]})
        with pytest.raises(ValueError, match="at least one True"):
            venv.reset(options={"reset_mask": np.zeros(2, dtype=bool)})


def test_reset_mask_is_taken_from_the_callers_options_as_gymnasium_does() -> None:
    """gymnasium pops "reset_mask" from the caller's dict; its RecordEpisodeStatistics then finds no
    mask and resets every env's statistics. The same program must count the same episodes."""

    def run(cls) -> tuple[list, list]:
        extra = {"num_workers": 2} if cls is VectorEnv else {}
        venv = gym.wrappers.vector.RecordEpisodeStatistics(
            cls([envs.make_cartpole] * 3, autoreset_mode=AutoresetMode.DISABLED, **extra)
        )
        try:
            venv.reset(seed=0)
            options = {"reset_mask": np.array([True, False, False]), "other": 1}
            venv.reset(seed=0, options=options)
            lengths = []
            for _ in range(60):
                _, _, terminated, truncated, info = venv.step(np.ones(3, dtype=np.int64))
                if "episode" in info:
                    lengths.append(info["episode"]["l"][info["_episode"]].tolist())
                done = terminated | truncated
                if done.any():
                    venv.reset(options={"reset_mask": done})
        finally:
            venv.close()
        return sorted(options), lengths

    assert run(VectorEnv) == run(SyncVectorEnv)


def test_cleanrl_style_loop_with_record_episode_statistics() -> None:
    venv = gym.wrappers.vector.RecordEpisodeStatistics(VectorEnv([envs.make_cartpole] * 4, start_method="fork"))
    try:
        venv.reset(seed=1)
        returns = []
        for _ in range(200):
            _, _, _, _, infos = venv.step(venv.action_space.sample())
            if "episode" in infos:
                returns += list(infos["episode"]["r"][infos["_episode"]])
        assert returns and all(r > 0 for r in returns)
    finally:
        venv.close()


# -- AsyncVectorEnv's constructor and API (issue 10) ---------------------------------------------
def test_async_api_timeouts_and_state_errors() -> None:
    from gymnasium.error import AlreadyPendingCallError, ClosedEnvironmentError, NoAsyncCallError

    fns = [partial(envs.FailingEnv, "hang" if i == 3 else None, 1) for i in range(4)]
    venv = VectorEnv(fns, shared_memory=True, copy=True, context="fork", daemon=True, num_workers=2)
    try:
        with pytest.raises(NoAsyncCallError, match="Calling `reset_wait` without any prior call to `reset_async`"):
            venv.reset_wait()
        venv.reset_async(seed=[1, 2, 3, 4])
        with pytest.raises(AlreadyPendingCallError, match="pending call to `reset`") as info:
            venv.step_async(np.zeros(4, np.int64))
        assert info.value.name == "reset"
        obs, _ = venv.reset_wait(timeout=5)
        assert obs.shape == (4, 2)
        venv.call_async("pid")
        pids = venv.call_wait(timeout=5)
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[3]
        venv.step(np.zeros(4, np.int64))
        venv.step_async(np.zeros(4, np.int64))  # env 3 hangs in this one
        with pytest.raises(multiprocessing.TimeoutError, match="within 0.2 s"):  # (the timeout asked for)
            venv.step_wait(timeout=0.2)
        with pytest.raises(multiprocessing.TimeoutError):  # still pending: the wait can be tried again
            venv.step_wait(timeout=0.1)
        with pytest.raises(ValueError, match="use `step` directly"):
            venv.call("step", 0)
    finally:
        with pytest.warns(UserWarning, match="Calling `close` while waiting for a pending call to `step`"):
            venv.close(terminate=True)
    with pytest.raises(ClosedEnvironmentError):
        venv.step(np.zeros(4, np.int64))


def test_constructor_arguments_of_async_vector_env() -> None:
    fns = [envs.make_cartpole] * 3
    with VectorEnv(fns, False, False, "fork", False, None, "same", AutoresetMode.SAME_STEP, 1) as venv:
        assert venv.pool.num_workers == 1  # max_concurrency=1: one process steps the envs
        assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP and venv.copy is False
        venv.reset(seed=0)
    with pytest.raises(ValueError, match="custom `worker`"):
        VectorEnv(fns, worker=lambda *args: None)
    with pytest.raises(ValueError, match="max_concurrency"):
        VectorEnv(fns, max_concurrency=0)
    with pytest.raises(TypeError, match="unknown pool option"):
        VectorEnv(fns, num_worker=2)


def test_max_concurrency_is_a_limit_that_never_adds_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """gymnasium's max_concurrency bounds how many envs step at a time. It set num_workers to the limit: 16
    workers on 2 cores for max_concurrency=16, and with batch_size a count whose groups need not tile a batch,
    refused naming a num_workers the caller never gave."""
    import fastvec.gym_vector_env as front

    monkeypatch.setattr(front, "default_num_workers", lambda: 2, raising=False)  # (a 2-core host's default, on any host)
    fns = [envs.make_cartpole] * 16
    for limit, batch, given, workers in [(16, None, None, 2), (1, None, None, 1), (6, 8, None, 2), (3, 8, None, 2),
                                         (4, 4, None, 4), (6, 8, 16, 4), (3, 8, 16, 2), (6, 4, 8, 4), (8, 4, 8, 8)]:
        # (a given num_workers above the limit: the most within it whose groups tile a batch, as the default's)
        with VectorEnv(fns, context="fork", max_concurrency=limit, batch_size=batch, num_workers=given) as venv:
            assert venv.pool.num_workers == workers, (limit, batch, given)
    with pytest.raises(ValueError, match=r"max_concurrency=1 with batch_size=8 and 16 envs: .* at least 2 processes"):
        VectorEnv(fns, context="fork", max_concurrency=1, batch_size=8)



def test_np_random_seed_is_the_tuple_of_the_sub_envs_seeds() -> None:
    with VectorEnv([envs.make_cartpole] * 4, context="fork", num_workers=2) as venv:
        venv.reset(seed=42)
        assert venv.np_random_seed == (42, 43, 44, 45)
        assert all(isinstance(g, np.random.Generator) for g in venv.np_random)


@pytest.mark.parametrize("mode", ["same", "different", "custom"])
def test_observation_modes(mode: str) -> None:
    from gymnasium.spaces import Box

    def make(high: float) -> gym.Env:
        env = envs.EchoEnv(Box(0, high, (3,), np.float32), gym.spaces.Discrete(2))
        return env

    fns = [partial(make, float(h)) for h in (1, 2, 3)]
    if mode == "same":
        with pytest.raises(RuntimeError, match="If this is intentional, use `observation_mode='different'`"):
            VectorEnv(fns, context="fork", observation_mode="same")
        return
    observation_mode = mode if mode == "different" else (Box(0, 3, (3, 3), np.float32), Box(0, 3, (3,), np.float32))
    with VectorEnv(fns, context="fork", num_workers=2, observation_mode=observation_mode) as venv:
        obs, _ = venv.reset(seed=0)
        assert obs.shape == (3, 3) and venv.observation_space.shape == (3, 3)
        assert (obs.max(axis=1) <= [1, 2, 3]).all()
    bad = [
        partial(envs.EchoEnv, Box(0, 1, (3,), np.float32), gym.spaces.Discrete(2)),
        partial(envs.EchoEnv, Box(0, 1, (4,), np.float32), gym.spaces.Discrete(2)),
    ]
    # "different": gymnasium's batch_differing_spaces refuses other shapes (before gymnasium 1.4 by an assertion, as
    # its AsyncVectorEnv does there); a custom pair: fastvec checks
    with pytest.raises((ValueError, RuntimeError, AssertionError), match="shape"):
        VectorEnv(bad, context="fork", num_workers=2, observation_mode=observation_mode)


def test_autoreset_disabled_with_partial_resets_matches_sync_vector_env() -> None:
    reference = gym.vector.SyncVectorEnv([envs.make_cartpole] * 4, autoreset_mode=AutoresetMode.DISABLED)
    with VectorEnv([envs.make_cartpole] * 4, context="fork", num_workers=2, autoreset_mode="Disabled") as venv:
        assert data_equivalence(venv.reset(seed=7), reference.reset(seed=7))
        rng = np.random.default_rng(0)
        ended = 0
        for t in range(150):
            actions = rng.integers(0, 2, 4)
            result = venv.step(actions)
            assert data_equivalence(result, reference.step(actions)), f"step {t}"
            done = result[2] | result[3]
            if done.any():
                ended += int(done.sum())
                mask = {"reset_mask": done}
                assert data_equivalence(venv.reset(options=dict(mask)), reference.reset(options=dict(mask))), f"{t}"
        assert ended > 0
    reference.close()


def test_seeds_beyond_64_bits_as_sync_vector_env() -> None:
    """gymnasium passes any int seed on to its envs: so does fastvec (beyond the shared block's int64
    words, by a call before the reset), also in a masked reset, where unmasked envs keep theirs."""
    reference = gym.vector.SyncVectorEnv([envs.make_cartpole] * 4, autoreset_mode=AutoresetMode.DISABLED)
    with VectorEnv([envs.make_cartpole] * 4, context="fork", num_workers=2, autoreset_mode="Disabled") as venv:
        assert data_equivalence(venv.reset(seed=2**64 + 5), reference.reset(seed=2**64 + 5))
        seeds = [2**70, 3, None, 2**63]
        for mask in ([True, True, False, True], [False, False, True, True]):
            options = {"reset_mask": np.array(mask)}
            assert data_equivalence(venv.reset(seed=seeds, options=dict(options)), reference.reset(seed=seeds, options=dict(options)))
            for _ in range(3):
                assert data_equivalence(venv.step(np.ones(4, np.int64)), reference.step(np.ones(4, np.int64)))
    reference.close()


MAIN_SPACE_SCRIPT = textwrap.dedent(
    """
    import sys
    import gymnasium as gym
    from gymnasium import spaces
    from fastvec import VectorEnv

    class Custom(spaces.Space):  # a space of the user's script, equal to any other of its class
        def __init__(self):
            super().__init__((), None, None)

        def contains(self, x):
            return isinstance(x, dict)

        def __eq__(self, other):
            return isinstance(other, Custom)

    class Env(gym.Env):
        def __init__(self):
            self.observation_space, self.action_space = Custom(), spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            return {"v": 0}, {}

        def step(self, action):
            return {"v": int(action)}, 0.0, False, False, {}

    if __name__ == "__main__":
        with VectorEnv([Env] * 4, shared_memory=False, context=sys.argv[1], num_workers=2) as venv:
            venv.reset(seed=0)
            print(venv.step([1, 0, 1, 0])[0])
    """
)


@pytest.mark.parametrize("context", ["fork", "forkserver", "spawn"])
def test_a_custom_space_of_the_main_script(tmp_path, context: str) -> None:
    """Its class is the script's own in every process (workers used to send it back by value, and
    the parent then held a second class, unequal to env 0's). gymnasium accepts it under fork."""
    script = tmp_path / "main_space.py"
    script.write_text(MAIN_SPACE_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, str(script), context], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "({'v': 1}, {'v': 0}, {'v': 1}, {'v': 0})"


def test_float64_actions_reach_the_env_as_float64() -> None:
    """gymnasium hands each env its row of the batch as sent: time.sleep(np.float32) would raise."""
    space = gym.spaces.Box(0.0, 1.0, (), np.float32)
    fns = [partial(envs.EchoEnv, gym.spaces.Discrete(2), space) for _ in range(2)]
    with VectorEnv(fns, context="fork", num_workers=2) as venv:
        venv.reset(seed=0)
        infos = venv.step(np.array([0.1, 0.2]))[-1]
        assert [type(a) for a in infos["action"]] == [np.float64, np.float64]
        assert infos["action"].tolist() == [0.1, 0.2]
        infos = venv.step(np.array([0.1, 0.2], np.float32))[-1]
        assert [type(a) for a in infos["action"]] == [np.float32, np.float32]


def test_a_flat_batch_for_a_one_element_box_reaches_each_env_as_a_scalar() -> None:
    """gymnasium iterates the batch: (n,) actions for a Box of shape (1,) give each env a scalar."""
    fns = [partial(envs.EchoEnv, gym.spaces.Discrete(2), gym.spaces.Box(0, 1, (1,), np.float32)) for _ in range(3)]
    with VectorEnv(fns, context="fork", num_workers=2) as venv:
        venv.reset(seed=0)
        infos = venv.step([0, 1, 2])[-1]
        assert [np.shape(a) for a in infos["action"]] == [(), (), ()] and infos["action"].tolist() == [0, 1, 2]
        infos = venv.step(np.zeros((3, 1)))[-1]
        assert [np.shape(a) for a in infos["action"]] == [(1,), (1,), (1,)]


class Float64Obs(gym.Env):
    """A float32 Box whose env returns float64 thirds (cast in the batch), ending every 2nd step."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([1 / 3, 2 / 3]), {}

    def step(self, action):
        self.t += 1
        return np.array([1 / 3, 2 / 3]) * self.t, 1.0, self.t % 2 == 0, False, {}


def _sb3_terminal_observations(fns: list) -> list[tuple]:
    """(fastvec.SubprocVecEnv's, SB3's DummyVecEnv's) terminal_observation of each env after 2 steps."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    sb3 = DummyVecEnv(fns)
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        venv.reset(), sb3.reset()
        for _ in range(2):
            infos, reference = venv.step(np.zeros(3, np.int64))[3], sb3.step(np.zeros(3, np.int64))[3]
    return [(a["terminal_observation"], b["terminal_observation"]) for a, b in zip(infos, reference)]


def test_final_observations_are_the_envs_own_as_sync_vector_env() -> None:
    """A final observation the buffers would cast (float64 for a float32 Box) is the env's own, as
    gymnasium's final_obs and SB3's terminal_observation are."""


    fns = [Float64Obs] * 3
    reference = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    with VectorEnv(fns, context="fork", num_workers=2, autoreset_mode=AutoresetMode.SAME_STEP) as venv:
        assert data_equivalence(venv.reset(seed=0), reference.reset(seed=0))
        for _ in range(4):
            got, want = venv.step(np.zeros(3, np.int64)), reference.step(np.zeros(3, np.int64))
            assert data_equivalence(got, want), (got, want)
        assert got[4]["final_obs"][0].dtype == np.float64
    reference.close()
    for a, b in _sb3_terminal_observations(fns):
        assert a.dtype == b.dtype == np.float64
        np.testing.assert_array_equal(a, b)


class OwnFormObs(gym.Env):
    """Returns its observation in its own form: a list for a Box, or a dict in another key order than
    the space's with a list part (ending every 2nd step)."""

    action_space = gym.spaces.Discrete(2)

    def __init__(self, structured: bool):
        box = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.structured = structured
        self.observation_space = gym.spaces.Dict({"a": gym.spaces.MultiBinary(2), "b": box}) if structured else box

    def _obs(self):
        return {"b": np.array([0.5, -0.5], np.float32), "a": [1, 0]} if self.structured else [0.5, -0.5]

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.t % 2 == 0, False, {}


@pytest.mark.parametrize("structured", [False, True], ids=["list", "dict"])
def test_final_observations_in_the_envs_own_form(structured: bool) -> None:
    """gymnasium's final_obs and SB3's terminal_observation are the object the env returned: a list stays
    a list, a dict keeps its key order (they used to be rebuilt from the buffers)."""


    fns = [partial(OwnFormObs, structured)] * 3
    want = OwnFormObs(structured)._obs()
    with VectorEnv(fns, context="fork", num_workers=2, autoreset_mode=AutoresetMode.SAME_STEP) as venv:
        venv.reset(seed=0)
        for _ in range(2):
            infos = venv.step(np.zeros(3, np.int64))[4]
        for got in infos["final_obs"]:
            assert type(got) is type(want) and list(got) == list(want) and repr(got) == repr(want), got
    for a, b in _sb3_terminal_observations(fns):
        assert repr(a) == repr(b) == repr(want)


def test_config_start_method_and_daemon_apply_unless_given() -> None:
    """A config's start_method (and a PoolOptions' daemon) apply where the arguments do not say
    otherwise (gymnasium's defaults were passed on as if given); arguments given win."""
    from fastvec import PoolOptions

    fns = [envs.make_cartpole] * 2
    with VectorEnv(fns, config={"start_method": "forkserver", "num_workers": 2, "step_in_parent": False}) as venv:
        assert venv.pool.start_method == "forkserver" and venv.daemon is True
    with VectorEnv(fns, context="fork", config={"start_method": "forkserver", "num_workers": 2}) as venv:
        assert venv.pool.start_method == "fork"
    with VectorEnv(fns, context="fork", config=PoolOptions(daemon=False, num_workers=2)) as venv:
        assert venv.daemon is False


def test_a_wait_s_timeout_may_be_any_number() -> None:
    """step_wait(timeout=Fraction(1, 50)) on a slower step: gymnasium's AsyncVectorEnv raises its TimeoutError; the
    message's f"{timeout:g}" raised TypeError instead (Python 3.11's Fraction has no 'g' format)."""
    from fractions import Fraction

    with VectorEnv([partial(envs.FailingEnv, "slow", 0)] * 2, context="fork", num_workers=2, step_in_parent=False) as venv:
        venv.reset(seed=0)
        venv.step_async(np.zeros(2, np.int64))
        with pytest.raises(multiprocessing.TimeoutError, match="0.02"):
            venv.step_wait(timeout=Fraction(1, 50))
        venv.step_wait()  # (the step, picked up)
        venv.step_async(np.zeros(2, np.int64))
        with pytest.raises(ValueError, match="timeout must be a number of seconds or None, got nan"):
            venv.step_wait(timeout=float("nan"))
        venv.step_wait(timeout=float("inf"))  # (no limit, as None: it overflowed converting to nanoseconds)
    for timeout in (float("inf"), 1e300, float("nan"), 10**400, 3e6):  # (close() raised, the env left open)
        venv = VectorEnv([envs.make_cartpole] * 2, context="fork", num_workers=2)
        venv.close(timeout=timeout)
        assert venv.closed and venv.pool.closed


def test_seeds_are_taken_and_refused_as_gymnasium_s_envs_take_and_refuse_them() -> None:
    """bools (ints to gymnasium) were refused; floats were refused with a plain TypeError, not gymnasium's error."""
    reference = SyncVectorEnv([envs.make_cartpole] * 2)
    with VectorEnv([envs.make_cartpole] * 2, context="fork", num_workers=2) as venv:
        assert data_equivalence(venv.reset(seed=[True, False])[0], reference.reset(seed=[True, False])[0])
        with pytest.raises(gym.error.Error, match="Seed must be a python integer"):
            reference.reset(seed=[3.0, 4.0])
        with pytest.raises(gym.error.Error, match="Seed must be a python integer"):
            venv.reset(seed=[3.0, 4.0])
        venv.reset(seed=0)  # (nothing was issued)
    reference.close()


class _BigEndianEndsAtOnce(gym.Env):
    """A Dict of big-endian parts ("v" of shape (2,), and with ``scalar`` "s" of shape ()); every episode one step."""

    def __init__(self, index: int, scalar: bool):
        parts = {"v": gym.spaces.Box(-1e9, 1e9, (2,), np.dtype(">f4"))}
        if scalar:
            parts["s"] = gym.spaces.Box(-1e9, 1e9, (), np.dtype(">f4"))
        self.observation_space = gym.spaces.Dict(parts)
        self.action_space = gym.spaces.Discrete(2)
        self.index, self.scalar = index, scalar

    def _obs(self, t: int) -> dict:
        obs = {"v": np.array([self.index, t], ">f4")}
        if self.scalar:
            obs["s"] = np.array(t, ">f4")
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(0), {}

    def step(self, action):
        return self._obs(1), 0.0, True, False, {}


@pytest.mark.parametrize("scalar", [False, True], ids=["buffers", "own-objects"])
def test_final_observations_of_big_endian_parts_are_native_whichever_way_they_travel(scalar: bool) -> None:
    """A part of shape () makes the final observation travel as the env's own object: its other parts came back
    native for all but a worker's first env, and from the buffers in the space's byte order otherwise (AsyncVectorEnv
    gives them native: pickled)."""
    fns = [partial(_BigEndianEndsAtOnce, i, scalar) for i in range(4)]
    with VectorEnv(fns, context="fork", num_workers=2, step_in_parent=False, autoreset_mode=AutoresetMode.SAME_STEP) as venv:
        venv.reset(seed=0)
        obs, _, _, _, infos = venv.step(np.zeros(4, np.int64))
        assert obs["v"].dtype == np.dtype(">f4")  # (the observations: the space's dtype)
        finals = infos["final_obs"]
        assert [final["v"].dtype.isnative for final in finals] == [True] * 4
        assert [final["v"].tolist() for final in finals] == [[i, 1] for i in range(4)]


def test_seeds_of_envs_a_masked_reset_leaves_out_are_not_looked_at() -> None:
    """gymnasium hands seeds only to the envs it resets: one of another type for an env left out was refused."""
    from fastvec.errors import SeedError
    from fastvec.pool import Pool

    mask = np.array([True, False, True, True])
    reference = SyncVectorEnv([envs.make_cartpole] * 4, autoreset_mode=AutoresetMode.DISABLED)
    with VectorEnv([envs.make_cartpole] * 4, context="fork", num_workers=2, autoreset_mode=AutoresetMode.DISABLED) as venv:
        venv.reset(seed=0)
        reference.reset(seed=0)
        seeds = [1, 2.5, 3, 4]
        assert data_equivalence(venv.reset(seed=seeds, options={"reset_mask": mask})[0],
                                reference.reset(seed=seeds, options={"reset_mask": mask})[0])  # fmt: skip
    reference.close()
    with Pool([envs.make_cartpole] * 4, batch_size=2, num_workers=2, start_method="fork") as pool:  # (async_reset too)
        with pytest.raises(SeedError, match="Seed must be a python integer"):
            pool.async_reset([0, 1.5, 2, 3])
        pool.async_reset([0, 1, 2, 3])
        assert sorted(i for _ in range(2) for i in pool.recv().env_ids.tolist()) == [0, 1, 2, 3]


def test_a_reset_refused_while_a_step_is_pending_leaves_the_reset_mask_in_the_caller_s_options() -> None:
    """The mask left the caller's dict before the pending step was found: the same reset tried again then reset
    every env. gymnasium checks first."""
    from gymnasium.error import AlreadyPendingCallError

    with VectorEnv([envs.make_cartpole] * 4, context="fork", num_workers=2) as venv:
        venv.reset(seed=0)
        venv.step_async(np.zeros(4, np.int64))
        options = {"reset_mask": np.array([True, False, False, True])}
        with pytest.raises(AlreadyPendingCallError):
            venv.reset(options=options)
        assert "reset_mask" in options
        venv.step_wait()
        before = venv.step(np.zeros(4, np.int64))[0]
        after, _ = venv.reset(options=options)
        np.testing.assert_array_equal(after[[1, 2]], before[[1, 2]])  # (only envs 0 and 3 were reset)


def test_call_async_takes_name_as_a_keyword_of_the_method_called() -> None:
    """gymnasium's call_async takes ``name`` positionally only, so ``name=`` goes to the method called."""
    with VectorEnv([envs.make_cartpole] * 2, context="fork", num_workers=2) as venv:
        venv.call_async("get_wrapper_attr", name="spec")
        assert [spec.id for spec in venv.call_wait()] == ["CartPole-v1"] * 2


def test_close_refuses_a_keyword_it_does_not_know() -> None:
    """close(terminat=True) closed with the defaults, silently; gymnasium raises TypeError (and stays open)."""
    venv = VectorEnv([envs.make_cartpole] * 2, context="fork", num_workers=2)
    with pytest.raises(TypeError, match="terminat"):
        venv.close(terminat=True)
    assert not venv.closed
    venv.close()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_final_obs_of_an_env_that_changes_its_array_in_place_is_read_as_gymnasium_reads_it(dtype) -> None:
    """SAME_STEP: gymnasium's final_obs is the env's own array, read after its reset (an env that changes it in place
    shows the reset's values); fastvec read an array of the space's dtype before the reset, a cast one after it."""
    fns = [partial(envs.ReusesItsArray, dtype, length) for length in (2, 3, 2, 3)]
    reference = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    with VectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, num_workers=2, start_method="fork") as venv:
        _same(venv.reset()[0], reference.reset()[0], "reset obs")
        for t in range(5):
            for name, a, b in zip(["obs", "rewards", "terminations", "truncations", "infos"],
                                  venv.step(np.zeros(4, np.int64)), reference.step(np.zeros(4, np.int64))):  # fmt: skip
                _same(a, b, f"step {t} {name}")
    reference.close()


def test_envs_whose_dict_spaces_list_the_same_keys_in_another_order() -> None:
    """gymnasium compares a Dict's keys as a set (is_space_dtype_shape_equiv), SB3 compares nothing: both take envs
    whose Dict spaces list the same keys in another order, which fastvec refused ("does not share the structure")."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    fns = [partial(envs.KeysInItsOwnOrder, i) for i in range(4)]
    reference = SyncVectorEnv(fns, observation_mode="different")
    with VectorEnv(fns, observation_mode="different", num_workers=2, start_method="fork") as venv:
        _same(venv.reset()[0], reference.reset()[0], "reset obs")
        _same(venv.step(np.zeros(4, np.int64))[0], reference.step(np.zeros(4, np.int64))[0], "step obs")
    reference.close()
    reference = DummyVecEnv(fns)
    with SubprocVecEnv(fns, num_workers=2, start_method="fork") as venv:
        _same(venv.reset(), reference.reset(), "SB3 reset obs")
        _same(venv.step(np.zeros(4, np.int64))[0], reference.step(np.zeros(4, np.int64))[0], "SB3 step obs")
    reference.close()


class _OfSpace(gym.Env):
    action_space = gym.spaces.Discrete(2)

    def __init__(self, space: gym.Space):
        self.observation_space = space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


_BOX = gym.spaces.Box(0, 1, (2,), np.float32)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (gym.spaces.Text(3), gym.spaces.Text(5)),
        (gym.spaces.Text(3), gym.spaces.Text(3, charset="ab")),
        (gym.spaces.Graph(_BOX, gym.spaces.Discrete(3)), gym.spaces.Graph(_BOX, None)),
        (gym.spaces.Dict({"t": gym.spaces.Text(3)}), gym.spaces.Dict({"t": gym.spaces.Text(5)})),
    ],
    ids=["text-length", "text-charset", "graph-edges", "nested-text"],
)
def test_observation_mode_different_refuses_what_gymnasium_refuses(first: gym.Space, second: gym.Space) -> None:
    """gymnasium's is_space_dtype_shape_equiv also compares what fixes a part that travels pickled (a Text's length
    and characters, a Graph's edges): fastvec compared only the structure, shapes and dtypes of its buffers, and
    took these."""
    fns = [partial(_OfSpace, first), partial(_OfSpace, second)]
    with pytest.raises((RuntimeError, AssertionError)):  # (gymnasium 1.1 asserts, later ones raise: hunt94 bug 3)
        SyncVectorEnv(fns, observation_mode="different")
    with pytest.raises(RuntimeError, match="env 1 has observation space .* common shape and dtype"):
        VectorEnv(fns, observation_mode="different", num_workers=2, start_method="fork", shared_memory=False)
