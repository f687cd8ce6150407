"""SB3's VecEnv contract, one test run against fastvec and SB3's own implementations."""

from __future__ import annotations

import warnings
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import TimeLimit
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from stable_baselines3.common.vec_env import SubprocVecEnv as SB3SubprocVecEnv

import fastvec
from fastvec import SubprocVecEnv
from fastvec.errors import AlreadyPendingCallError, ClosedError, NoAsyncCallError
from tests import envs

IMPLEMENTATIONS = {
    "fastvec": lambda fns: SubprocVecEnv(fns, start_method="fork", num_workers=2),
    "fastvec-no-parent": lambda fns: SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=False),
    "sb3-dummy": DummyVecEnv,
    "sb3-subproc": lambda fns: SB3SubprocVecEnv(fns, start_method="fork"),
}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def make_venv(request):
    made = []
    request.node.reference_may_leak_fds = request.param == "sb3-subproc"

    def make(fns):
        venv = IMPLEMENTATIONS[request.param](fns)
        made.append(venv)
        return venv

    yield make
    for venv in made:
        venv.close()


def test_is_an_sb3_vec_env(make_venv) -> None:
    venv = make_venv([envs.make_cartpole] * 3)
    assert isinstance(venv, VecEnv)
    assert venv.num_envs == 3
    assert venv.observation_space == gym.make("CartPole-v1").observation_space


def test_attributes_and_methods_with_indices(make_venv) -> None:
    venv = make_venv([envs.make_cartpole] * 4)
    assert venv.get_attr("spec")[0].id == "CartPole-v1"
    venv.set_attr("custom_value", 5, indices=[1, 3])
    assert venv.get_attr("custom_value", indices=[1, 3]) == [5, 5]
    assert venv.get_attr("custom_value", indices=[True, 3]) == [5, 5]  # (a bool is an int: SB3 takes True as 1)
    venv.set_attr("custom_value", 9, indices=2)
    assert venv.get_attr("custom_value", indices=2) == [9]
    assert venv.has_attr("gravity") and not venv.has_attr("no_such_attribute")
    venv.reset()
    states = venv.env_method("get_wrapper_attr", "state", indices=[0, 2])
    assert len(states) == 2 and all(np.asarray(s).shape == (4,) for s in states)
    assert venv.env_is_wrapped(TimeLimit) == [True] * 4
    assert venv.env_is_wrapped(gym.wrappers.RecordEpisodeStatistics, indices=[1]) == [False]


@pytest.mark.parametrize("impl", ["fastvec", "fastvec-no-parent", "sb3-dummy"])  # SB3's worker dies here
def test_missing_attribute_raises_attribute_error(impl: str) -> None:
    venv = IMPLEMENTATIONS[impl]([envs.make_cartpole] * 2)
    try:
        with pytest.raises(AttributeError):
            venv.get_attr("custom_value", indices=[1])
        assert venv.get_attr("spec", indices=[1])[0].id == "CartPole-v1"  # still usable
    finally:
        venv.close()


def test_seed_and_options_apply_once(make_venv) -> None:
    venv = make_venv([envs.make_dict] * 3)
    assert list(venv.seed(10)) == [10, 11, 12]
    venv.set_options({"level": 2})
    first = venv.reset()
    assert [info.get("options") for info in venv.reset_infos] == [{"level": 2}] * 3
    venv.seed(10)
    again = venv.reset()
    np.testing.assert_array_equal(first["position"], again["position"])
    assert [info.get("options") for info in venv.reset_infos] == [None] * 3  # options were used once
    different = venv.reset()  # no seed: a new episode
    assert not np.array_equal(first["position"], different["position"])


def test_set_options_list_longer_than_num_envs(make_venv) -> None:
    """SB3 keeps the list as given and env i takes entry i: extra entries go unused."""
    venv = make_venv([envs.make_dict] * 3)
    venv.set_options([{"level": i} for i in range(5)])
    venv.reset()
    assert [info.get("options") for info in venv.reset_infos] == [{"level": 0}, {"level": 1}, {"level": 2}]


def test_step_async_wait_and_episode_end(make_venv) -> None:
    venv = make_venv([envs.make_cartpole] * 2)
    venv.seed(0)
    venv.reset()
    seen_done = False
    for _ in range(200):
        venv.step_async(np.array([1, 1]))
        obs, rewards, dones, infos = venv.step_wait()
        assert obs.shape == (2, 4) and rewards.shape == (2,) and dones.dtype == np.bool_
        for i in np.flatnonzero(dones):
            seen_done = True
            assert infos[i]["TimeLimit.truncated"] is False
            assert infos[i]["terminal_observation"].shape == (4,)
        if seen_done:
            break
    assert seen_done


def test_truncation_is_reported(make_venv) -> None:
    venv = make_venv([lambda: envs.ImageEnv(episode_length=3)] * 2)
    venv.seed(1)
    venv.reset()
    truncated = []
    for _ in range(6):
        _, _, dones, infos = venv.step(np.zeros(2, dtype=np.int64))
        truncated += [info["TimeLimit.truncated"] for info, d in zip(infos, dones) if d]
    assert True in truncated


def test_render_and_images(make_venv) -> None:
    venv = make_venv([lambda: envs.ImageEnv(render_mode="rgb_array")] * 3)
    assert venv.render_mode == "rgb_array"
    venv.reset()
    images = venv.get_images()
    assert len(images) == 3 and images[0].shape == (8, 8, 3)
    tiled = venv.render(mode="rgb_array")
    assert tiled.ndim == 3 and tiled.shape[2] == 3


def test_close_is_idempotent(make_venv) -> None:
    venv = make_venv([envs.make_cartpole] * 2)
    venv.reset()
    venv.close()
    venv.close()


def test_easy_rl_tutorial_usage() -> None:
    """The easy-rl PPO tutorial's loop: envs.reset(), envs.step(actions) -> obs, reward, done, info."""
    envs_ = SubprocVecEnv([envs.make_cartpole for _ in range(8)], start_method="fork")
    try:
        state = envs_.reset()
        for _ in range(50):
            action = np.random.randint(0, 2, size=8)
            next_state, reward, done, _info = envs_.step(action)
            assert next_state.shape == state.shape
            state = next_state
    finally:
        envs_.close()


def test_context_manager_and_misuse() -> None:
    with SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork") as venv:
        venv.reset()
        with pytest.raises(NoAsyncCallError):
            venv.step_wait()
        venv.step_async(np.array([0, 1]))
        with pytest.raises(AlreadyPendingCallError):
            venv.step_async(np.array([0, 1]))
        venv.step_wait()
    with pytest.raises(ClosedError, match="closed"):
        venv.step(np.array([0, 1]))
    with pytest.raises(ClosedError):
        venv.reset()


def test_close_during_pending_step() -> None:
    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork")
    venv.reset()
    venv.step_async(np.array([0, 1, 0, 1]))
    venv.close()
    assert venv.pool.closed


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_start_methods(start_method: str) -> None:
    with SubprocVecEnv([envs.make_cartpole] * 3, start_method=start_method, num_workers=2) as venv:
        venv.seed(3)
        obs = venv.reset()
        reference = DummyVecEnv([envs.make_cartpole] * 3)
        reference.seed(3)
        np.testing.assert_array_equal(obs, reference.reset())
        for _ in range(30):
            actions = np.array([0, 1, 1])
            np.testing.assert_array_equal(venv.step(actions)[0], reference.step(actions)[0])
        pids = venv.env_method("get_wrapper_attr", "np_random")  # picklable round trip
        assert len(pids) == 3


def test_copy_false_views_stay_valid_for_ring_minus_one_steps() -> None:
    with SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", copy=False, ring_slots=4) as venv:
        views = [venv.reset()]
        copies = [views[0].copy()]
        for _ in range(3):
            obs = venv.step(np.array([0, 1]))[0]
            views.append(obs)
            copies.append(obs.copy())
        # the latest ring_slots views are all intact, and they are views of shared memory
        for view, copy in zip(views, copies):
            np.testing.assert_array_equal(view, copy)
        assert not views[-1].flags.owndata
        # the next step reuses the oldest slot: that view now shows the new observation
        newest = venv.step(np.array([0, 1]))[0]
        assert np.shares_memory(views[0], newest)
        assert not np.array_equal(views[0], copies[0])
    with pytest.raises(ValueError, match="ring_slots"):
        SubprocVecEnv([envs.make_cartpole], copy=False, ring_slots=1)


def test_sb3_wrappers_and_ppo_accept_fastvec() -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecFrameStack, VecMonitor, VecNormalize

    venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork")
    try:
        wrapped = VecNormalize(VecFrameStack(VecMonitor(venv), n_stack=2))
        obs = wrapped.reset()
        assert obs.shape == (4, 8)
        for _ in range(20):
            obs, rewards, dones, infos = wrapped.step(np.array([0, 1, 0, 1]))
        model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
        model.learn(total_timesteps=256)
        assert model.num_timesteps >= 256
    finally:
        venv.close()


def test_sb3_video_recorder_takes_the_envs_frame_rate(monkeypatch, tmp_path) -> None:
    """SB3's VecVideoRecorder reads the env's metadata from SB3's SubprocVecEnv, and a VecEnv's own from any
    other: over fastvec it recorded at 30 fps, not CartPole's 50."""
    import sys
    import types

    from stable_baselines3.common.vec_env import VecVideoRecorder

    monkeypatch.setitem(sys.modules, "moviepy", sys.modules.get("moviepy") or types.ModuleType("moviepy"))
    make = partial(gym.make, "CartPole-v1", render_mode="rgb_array")
    rates = {}
    for name, cls in (("fastvec", SubprocVecEnv), ("sb3", SB3SubprocVecEnv)):
        venv = cls([make] * 2, start_method="fork")
        try:
            rates[name + " modes"] = venv.metadata["render_modes"]  # (the VecEnv's own, kept)
            rates[name] = VecVideoRecorder(venv, str(tmp_path / name), lambda step: False).frames_per_sec
        finally:
            venv.close()
    assert rates["fastvec"] == rates["sb3"] == 50 and rates["fastvec modes"] == rates["sb3 modes"]


class LockedMetadata(envs.Counter):
    """metadata that cannot be pickled (it holds a lock)."""

    def __init__(self, index: int = 0):
        import threading

        super().__init__(index)
        self.metadata = {"render_modes": [], "lock": threading.Lock()}


def test_an_env_whose_metadata_does_not_pickle_is_accepted_as_by_sb3() -> None:
    """SubprocVecEnv reads env 0's metadata for its own (SB3's VecVideoRecorder's frame rate): one that cannot travel
    back from its worker made the constructor fail, where SB3's SubprocVecEnv takes the env."""
    for cls in (SubprocVecEnv, SB3SubprocVecEnv):
        venv = cls([LockedMetadata] * 2, start_method="fork", **({"step_in_parent": False} if cls is SubprocVecEnv else {}))
        try:
            assert venv.metadata["render_modes"] == []
            venv.reset()
        finally:
            venv.close()


def test_kernels_selected() -> None:
    import os

    expected = "python" if os.environ.get("FASTVEC_PURE_PYTHON") == "1" else "cython"
    assert fastvec.KERNELS == expected


def _run_in_copy(folder, code: str):  # type: ignore[no-untyped-def]
    """``python -c code`` in ``folder``, which holds a copy of the package, with no FASTVEC_ setting."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTVEC_", "_FASTVEC_"))}
    env["PYTHONPATH"] = str(folder)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=folder, capture_output=True, text=True, timeout=120)


@pytest.mark.one_pass
def test_without_the_extension_one_warning_names_it(tmp_path) -> None:
    """A checkout never built (or an install that lost its .so) falls back to the pure kernels with a warning that
    said "cannot import name '_kernels' from partially initialized module 'fastvec' (most likely due to a
    circular import)", once in the program and again in every worker a spawn started."""
    import os
    import shutil

    shutil.copytree(
        os.path.dirname(fastvec.__file__), tmp_path / "fastvec", ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__")
    )
    shutil.copytree(os.path.join(os.path.dirname(os.path.dirname(fastvec.__file__)), "tests"), tmp_path / "tests",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    code = (
        # (an editable install's finder would serve fastvec._kernels from the checkout: a plain install has none)
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
        "import numpy as np\n"
        "import fastvec\n"
        "from tests import envs\n"
        "with fastvec.SubprocVecEnv([envs.make_cartpole] * 2, start_method='spawn', num_workers=2,\n"
        "                           step_in_parent=False) as venv:\n"
        "    venv.reset()\n"
        "    venv.step(np.zeros(2, np.int64))\n"
        "print('kernels', fastvec.KERNELS)\n"
    )
    run = _run_in_copy(tmp_path, code)
    assert run.returncode == 0 and "kernels python" in run.stdout, run.stderr
    assert run.stderr.count("compiled kernels are not built") == 1, run.stderr
    assert "No module named 'fastvec._kernels'" in run.stderr and "circular" not in run.stderr


@pytest.mark.compiled_only
def test_an_unbuilt_checkout_never_uses_another_checkouts_compiled_kernels(tmp_path) -> None:
    """An unbuilt checkout beside an editable install of a built one (setuptools' finder hands out that tree's
    extension): fastvec's import refused it, but the module stayed loaded, so ``from fastvec import _kernels``
    (benchmarks.kernels' compiled column, the kernel tests) and ``kernels.select("cython")`` used it."""
    import os
    import shutil

    from fastvec import _kernels as built

    shutil.copytree(
        os.path.dirname(fastvec.__file__), tmp_path / "fastvec", ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__")
    )
    code = (
        "import importlib.abc, importlib.util, sys, warnings\n"
        "class Finder(importlib.abc.MetaPathFinder):  # (as setuptools' editable finder: after the path's)\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        return importlib.util.spec_from_file_location(name, {built.__file__!r}) "
        "if name == 'fastvec._kernels' else None\n"
        "sys.meta_path.append(Finder())\n"
        "warnings.simplefilter('ignore')\n"
        "import fastvec, fastvec.kernels as kernels\n"
        "print('at import', fastvec.KERNELS)\n"
        "try:\n"
        "    from fastvec import _kernels\n"
        "    print('imported', _kernels.__file__)\n"
        "except ImportError as exc:\n"
        "    print('import refused:', exc)\n"
        "try:\n"
        "    kernels.select('cython')\n"
        "    print('selected', kernels.IMPLEMENTATION)\n"
        "except ImportError as exc:\n"
        "    print('select refused:', exc)\n"
    )
    run = _run_in_copy(tmp_path, code)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "at import python", run.stdout
    assert lines[1].startswith("import refused:") and "another checkout's" in lines[1], run.stdout
    assert lines[2].startswith("select refused: fastvec's compiled kernels are not built in"), run.stdout
    assert "another checkout's" in lines[2] and built.__file__ in lines[2], run.stdout


def test_a_spawned_worker_uses_its_pools_kernels(monkeypatch) -> None:
    """FASTVEC_PURE_PYTHON changed after fastvec's import (a notebook debugging its workers) reached the workers a
    spawn starts, which import fastvec anew: a compiled pool with pure workers, whose finish never counts the pool's
    countdown down, waited out its 100 ms poll on every step. A worker uses its pool's kernels."""
    monkeypatch.setenv("FASTVEC_PURE_PYTHON", "0" if fastvec.KERNELS == "python" else "1")
    with SubprocVecEnv([envs.KernelsReporter] * 2, start_method="spawn", num_workers=2, step_in_parent=False) as venv:
        assert venv.env_method("kernels") == [(fastvec.KERNELS, fastvec.KERNELS)] * 2  # (fastvec.KERNELS too)
        venv.reset()
        venv.step(np.zeros(2, dtype=np.int64))


def test_pinning_and_worker_stats_and_config_file(tmp_path) -> None:
    import json
    import os

    import psutil

    before = os.sched_getaffinity(0)
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"config": {"num_workers": 2, "pin_workers": True, "spin_ns": 1000}}))
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", config=path) as venv:
        assert venv.pool.spin_ns == 1000 and venv.pool.pin_workers
        venv.reset()
        for _ in range(10):
            venv.step(np.zeros(4, dtype=np.int64))
        (stats,) = venv.pool.worker_stats()
        assert stats["commands"] == 10 and stats["env_steps"] == 20 and stats["busy_s"] > 0  # (step commands: not the reset)
        (pid,) = venv.pool.worker_pids
        assert len(psutil.Process(pid).cpu_affinity()) == 1
    assert os.sched_getaffinity(0) == before, "close() restores the caller's affinity"
    with pytest.raises(ValueError, match="unknown config keys"):
        SubprocVecEnv([envs.make_cartpole], config={"workers": 2})


def test_seeds_are_sb3s() -> None:
    """seed() with no argument draws its root from NumPy's global generator, as SB3's does (a script
    that calls np.random.seed gets SB3's seeds and observations); seeds beyond 64 bits reach the envs
    as in SB3, whose envs get any int."""
    fns = [envs.make_cartpole] * 3
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        reference = DummyVecEnv(fns)
        for root in (None, 2**63 - 2, 2**64 + 5):
            np.random.seed(3)
            seeds = venv.seed(root)
            np.random.seed(3)
            assert seeds == reference.seed(root)
            np.testing.assert_array_equal(venv.reset(), reference.reset())
            np.testing.assert_array_equal(venv.step(np.zeros(3, dtype=np.int64))[0], reference.step(np.zeros(3, dtype=np.int64))[0])
        reference.close()
        np.random.seed(4)
        assert venv.seed() != seeds
        # a numpy integer root (the references' envs refuse it; fastvec takes it as its int): no wrapping in its type
        assert venv.seed(np.uint8(254)) == [254, 255, 256]
        assert venv.seed(np.int8(126)) == [126, 127, 128]
        assert all(type(s) is int for s in venv.seed(np.uint32(2**32 - 2)))
        first = venv.reset()
        venv.seed(2**32 - 2)
        np.testing.assert_array_equal(venv.reset(), first)


@pytest.mark.one_pass  # (the front-end's class, in a child: the kernels play no part)
def test_without_sb3_imported_it_is_still_an_sb3_vec_env_once_sb3_is() -> None:
    """fastvec.SubprocVecEnv does not import SB3 (nor torch); SB3 imported later still sees a VecEnv."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from fastvec import SubprocVecEnv
        from tests import envs
        venv = SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", num_workers=2)
        venv.reset()
        assert "stable_baselines3" not in sys.modules and "torch" not in sys.modules
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import VecEnv, VecNormalize
        assert isinstance(venv, VecEnv)
        VecNormalize(venv).step(np.zeros(4, dtype=np.int64))
        model = PPO("MlpPolicy", venv, n_steps=8, batch_size=32, n_epochs=1)
        assert model.get_env() is venv  # used as a VecEnv, not wrapped as one env
        model.learn(32)
        venv.close()
        print("ok")
        """
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


class Keeper(gym.Env):
    """Keeps what set_attr gives it; reuses one info dict for every step of an episode (as some envs do)."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.kept: list = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.info = {"t": 0}
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.info["t"] += 1
        return np.zeros(2, np.float32), 0.0, self.info["t"] == 3, False, self.info

    def keep(self, value):
        self.kept.append(value)
        return self.kept


@pytest.mark.parametrize("implementation", ["fastvec", "fastvec-no-parent", "sb3-subproc"])
def test_envs_and_the_caller_hold_values_of_their_own(request, implementation: str) -> None:
    """What envs return and what they are given does not alias between envs, steps or the caller,
    whichever process steps an env, as through SB3's pipes: infos kept from earlier steps stay as
    they were, a list given to set_attr is each env's own, and the lists env_method returns are
    copies. (SB3's DummyVecEnv shares set_attr's value between its envs.)"""
    request.node.reference_may_leak_fds = implementation == "sb3-subproc"
    venv = IMPLEMENTATIONS[implementation]([Keeper] * 4)
    try:
        venv.reset()
        kept = [venv.step(np.zeros(4, dtype=np.int64))[3] for _ in range(3)]
        assert [[info["t"] for info in infos] for infos in kept] == [[1] * 4, [2] * 4, [3] * 4]
        assert [all("terminal_observation" in info for info in infos) for infos in kept] == [False, False, True]
        given: list = []
        venv.set_attr("kept", given)
        returned = venv.env_method("keep", "x")
        assert given == [] and returned == [["x"]] * 4
        returned[0].append("changed by the caller")
        assert venv.get_attr("kept") == [["x"]] * 4
        assert venv.env_method("keep", ["y"]) == [["x", ["y"]]] * 4
    finally:
        venv.close()


class Mutator(gym.Env):
    """Changes what it is given: pops its reset options' "level" (as level-loading envs do) and
    appends to the list a method gets."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {"level": None if options is None else options.pop("level", "missing")}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}

    def add(self, items):
        items.append("mine")
        return len(items)

    def with_shared(self):
        return ("mine", Mutator.metadata)  # a new tuple holding an object every env holds


@pytest.mark.parametrize("implementation", ["fastvec", "fastvec-no-parent", "sb3-subproc"])
def test_an_env_that_changes_its_arguments_changes_no_other_envs(request, implementation: str) -> None:
    """Reset options and method arguments reach every env as its own copy, as through SB3's pipes
    (one each): an env popping a key or appending to a list leaves the next env of its worker, and
    the caller's object, as they were. fastvec used to hand a worker's envs one options dict (and
    the learner's shard the caller's own), and a worker's first env the method's argument itself,
    copied for the next envs only after it ran."""
    request.node.reference_may_leak_fds = implementation == "sb3-subproc"
    venv = IMPLEMENTATIONS[implementation]([Mutator] * 4)
    try:
        options = {"level": 3}
        venv.set_options(options)
        venv.reset()
        assert [info["level"] for info in venv.reset_infos] == [3] * 4 and options == {"level": 3}
        items: list = []
        assert venv.env_method("add", items) == [1] * 4 and items == []
        # what the envs return is each env's own too, also an object they all hold (a class attribute):
        # a worker's results travel in one message, where one object stayed one
        metadata = venv.get_attr("metadata")
        assert all(a is not b for k, a in enumerate(metadata) for b in metadata[k + 1 :])
        parts = [pair[1] for pair in venv.env_method("with_shared")]  # distinct results holding one object
        assert all(a is not b for k, a in enumerate(parts) for b in parts[k + 1 :])
    finally:
        venv.close()
    gym_env = fastvec.VectorEnv([Mutator] * 4, context="fork", num_workers=2)
    try:
        options = {"level": 3}
        _, info = gym_env.reset(options=options)
        assert list(info["level"]) == [3] * 4 and options == {"level": 3}
        assert list(gym_env.call("add", [])) == [1] * 4
        # the caller changing its objects after the asynchronous call changes nothing (the learner's envs
        # read theirs at the wait, the workers' were pickled at the call)
        options = {"level": 1}
        gym_env.reset_async(options=options)
        options["level"] = 2
        _, info = gym_env.reset_wait()
        assert list(info["level"]) == [1] * 4
        items = []
        gym_env.call_async("add", items)
        items.append("the caller's")
        assert list(gym_env.call_wait()) == [1] * 4
    finally:
        gym_env.close()


class ConfigEnv(gym.Env):
    """Takes its settings from a config dict (popping them, as RLlib-style envs do) and its noise from
    a generator the factory hands it."""

    observation_space = gym.spaces.Box(-10, 10, (1,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config: dict, rng: np.random.Generator):
        self.size = config.pop("size")
        self.rng = rng

    def reset(self, *, seed=None, options=None):
        return np.array([self.size + self.rng.normal()]), {}

    def step(self, action):
        return np.array([self.rng.normal()]), 0.0, False, False, {}


@pytest.mark.parametrize("implementation", ["fastvec", "fastvec-no-parent", "sb3-subproc"])
def test_envs_do_not_share_what_their_factories_capture(request, implementation: str) -> None:
    """Each env gets its own copy of what its factory closes over, and the caller's objects are left
    alone, as with one process per env (fastvec's envs shared one config and one generator: the
    second env found 'size' popped, the envs drew from the caller's generator)."""
    request.node.reference_may_leak_fds = implementation == "sb3-subproc"
    config, rng = {"size": 3}, np.random.default_rng(0)
    venv = IMPLEMENTATIONS[implementation]([lambda: ConfigEnv(config, rng)] * 4)
    try:
        first = venv.reset()
        np.testing.assert_array_equal(first, np.full((4, 1), first[0, 0]))  # every env: its own generator, seeded 0
        second = venv.step(np.zeros(4, dtype=np.int64))[0]
        np.testing.assert_array_equal(second, np.full((4, 1), second[0, 0]))
    finally:
        venv.close()
    assert config == {"size": 3} and rng.normal() == np.random.default_rng(0).normal()


def _pendulum_with_torque(max_torque: float) -> gym.Env:
    env = gym.make("Pendulum-v1")
    env.unwrapped.max_torque = max_torque
    env.action_space = gym.spaces.Box(-max_torque, max_torque, (1,), np.float32)
    return env


def test_envs_whose_action_bounds_differ_as_sb3() -> None:
    """SB3 takes envs whose action spaces differ only in their bounds (randomised torque limits); so
    does fastvec.SubprocVecEnv. gymnasium's AsyncVectorEnv refuses them, and so does fastvec.VectorEnv."""
    from fastvec import VectorEnv
    from fastvec.errors import SpaceMismatchError

    fns = [partial(_pendulum_with_torque, torque) for torque in (2.0, 2.1, 1.9, 2.0)]
    reference = DummyVecEnv(fns)
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        venv.seed(0), reference.seed(0)
        np.testing.assert_array_equal(venv.reset(), reference.reset())
        actions = np.full((4, 1), 2.05, np.float32)
        np.testing.assert_allclose(venv.step(actions)[1], reference.step(actions)[1])
    reference.close()
    with pytest.raises(SpaceMismatchError, match="env 1 has action space"):
        VectorEnv(fns, context="fork", num_workers=2)


@pytest.mark.one_pass  # (the contract's own base class: no engine)
def test_envs_of_different_render_modes_are_refused_with_sb3_s_exception_type_on_either_base() -> None:
    """SB3's VecEnv asserts its envs share one render mode; fastvec's own base (used while SB3 is not imported)
    raised ValueError there: the exception type depended on the import order."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from fastvec import sb3_contract

    class Modes(sb3_contract.VecEnv):
        def __init__(self, modes: list):
            self.modes = modes
            super().__init__(len(modes), gym.spaces.Discrete(2), gym.spaces.Discrete(2))

        def get_attr(self, name: str, indices=None) -> list:
            return list(self.modes)

    mixed = [partial(gym.make, "CartPole-v1", render_mode=mode) for mode in ("rgb_array", None)]
    with pytest.raises(AssertionError):
        DummyVecEnv(mixed)
    with pytest.raises(AssertionError, match="render_mode"):
        Modes(["rgb_array", None])
    assert Modes(["rgb_array", "rgb_array"]).render_mode == "rgb_array"
    with pytest.raises(AssertionError):  # (SB3 imported here: its base)
        SubprocVecEnv(mixed, start_method="fork", num_workers=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_final_observation_of_an_env_that_changes_its_array_in_place_is_read_as_sb3_reads_it(dtype) -> None:
    """SB3 hands back the env's own array as terminal_observation, read after the env's reset: an env that changes
    its array in place shows the reset's values there. fastvec copied an array of the space's dtype before the reset
    (the step's values) and sent a cast one as it was after it: one env, two answers by its array's dtype."""
    fns = [partial(envs.ReusesItsArray, dtype, length) for length in (2, 3, 2, 3)]
    reference = DummyVecEnv(fns)
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        np.testing.assert_array_equal(venv.reset(), reference.reset())
        for _ in range(5):
            obs, _, dones, infos = venv.step(np.zeros(4, np.int64))
            ref_obs, _, ref_dones, ref_infos = reference.step(np.zeros(4, np.int64))
            np.testing.assert_array_equal(obs, ref_obs)
            assert dones.tolist() == ref_dones.tolist()
            for info, ref_info in zip(infos, ref_infos):
                assert ("terminal_observation" in info) == ("terminal_observation" in ref_info)
                if "terminal_observation" in info:
                    np.testing.assert_array_equal(info["terminal_observation"], ref_info["terminal_observation"])
    reference.close()


@pytest.mark.parametrize("step_in_parent", [False, True])
def test_envs_of_one_process_returning_the_same_memory_each_give_their_own_values(step_in_parent: bool) -> None:
    """Envs that return one array their class shares (as a C extension's static frame): each env's observation was
    read once every env of its process had stepped, so they all gave the last one's values ([11, 11, 31, 31] for
    [1, 11, 21, 31]); SB3's DummyVecEnv copies each as it comes, its SubprocVecEnv runs a process per env. Found at
    the reset, whose observations are copied as they come, and copied from then on, in every shard."""
    fns = [partial(envs.SharesItsClassBuffer, i) for i in range(4)]
    reference = DummyVecEnv(fns)
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=step_in_parent) as venv:
        assert venv.reset().ravel().tolist() == reference.reset().ravel().tolist() == [0.0, 1.0, 2.0, 3.0]
        for _ in range(3):
            obs, _, _, infos = venv.step(np.zeros(4, np.int64))
            assert obs.ravel().tolist() == reference.step(np.zeros(4, np.int64))[0].ravel().tolist() == [1.0, 11.0, 21.0, 31.0]
            assert [info["frame"][0] for info in infos] == [1.0, 11.0, 21.0, 31.0]  # (as SB3's SubprocVecEnv's)
        # a call's results too (a worker's went back in one message, pickled after its last env's call)
        assert [frame[0] for frame in venv.env_method("frame")] == [0.0, 1.0, 2.0, 3.0]
    reference.close()


@pytest.mark.parametrize("cls", [envs.SharesOnlyInSteps, envs.SharesOnlyInStepsInADict])
@pytest.mark.parametrize("step_in_parent", [False, True])
def test_envs_sharing_memory_only_in_their_steps_are_found_there_and_told(step_in_parent: bool, cls) -> None:
    """Envs whose resets return fresh arrays and whose steps return one buffer their class shares: the reset's check
    cannot see it, and every step gave the process's last env's values, with no word. Now the step that first
    returns them over one memory is found as its rows are written (both kernels): from the next step each env's
    observation is copied as it comes, and the envs are told once their values differ (that first step's were
    lost: each env's row was read once every env of its process had stepped)."""
    fns = [partial(cls, i) for i in range(4)]
    frame = (lambda obs: obs["frame"]) if cls is envs.SharesOnlyInStepsInADict else (lambda obs: obs)
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=step_in_parent) as venv:
        assert frame(venv.reset()).ravel().tolist() == [0.0, 1.0, 2.0, 3.0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = frame(venv.step(np.zeros(4, np.int64))[0]).ravel().tolist()
            assert not caught
            assert first == [11.0, 11.0, 31.0, 31.0]  # (lost, as said below)
            assert frame(venv.step(np.zeros(4, np.int64))[0]).ravel().tolist() == [1.0, 11.0, 21.0, 31.0]
        said = sorted(str(w.message) for w in caught if "memory that env" in str(w.message))
        assert len(said) == 2 and said[0].startswith("fastvec: env 0 returned its observations in memory that env 1's")
        assert said[1].startswith("fastvec: env 2 returned its observations in memory that env 3's")
        for _ in range(20):  # (copied for good: the values differ)
            assert frame(venv.step(np.zeros(4, np.int64))[0]).ravel().tolist() == [1.0, 11.0, 21.0, 31.0]


@pytest.mark.parametrize("autoreset", ["SB3", "NEXT_STEP"])
def test_an_env_sharing_memory_moved_into_a_process_of_one_env_keeps_its_values(autoreset: str) -> None:
    """The monitor's move (request_move) of env 1 into the calling process, whose one env (env 0) shares its class's
    buffer: no reset of several envs there looked for it, and both gave the last one's values from then on (hunt71
    bug 4). An env moved in is copied, with the others, while watched: each env's values are its own."""
    fns = [partial(envs.SharesItsClassBuffer, i, 3) for i in range(3)]
    if autoreset == "SB3":
        venv = SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True)
    else:
        venv = fastvec.VectorEnv(fns, num_workers=2, context="fork", step_in_parent=True)
    with venv, warnings.catch_warnings():
        warnings.simplefilter("error")
        pool = venv.pool
        assert [list(pool.envs_of(s)) for s in range(2)] == [[0], [1, 2]]
        venv.reset()
        assert pool.request_move(1, 0) == 1
        for _ in range(12):
            obs = venv.step(np.zeros(3, np.int64))[0]
            assert all(x in (10 * i + 1, i) for i, x in enumerate(obs.ravel().tolist())), obs  # (a step's, or a reset's)
        assert [list(pool.envs_of(s)) for s in range(2)] == [[0, 1], [2]]


def test_envs_sharing_a_constant_only_in_their_steps_are_not_told_and_not_copied_for_good() -> None:
    """Envs whose steps return one array of their class that nothing writes (a constant), beside fresh resets: found
    at the first step and watched, no warning (their values never differed), and copied no longer after the watch,
    nor looked for again (SAME_STEP autoresets every 5 steps, whose final observations are the constant)."""
    fns = [partial(envs.SharesOnlyInSteps, i, 5, True) for i in range(4)]
    reference = DummyVecEnv(fns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SubprocVecEnv(fns, start_method="fork", num_workers=1, step_in_parent=True) as venv:
            np.testing.assert_array_equal(venv.reset(), reference.reset())
            for t in range(1, 41):
                obs, _, dones, infos = venv.step(np.zeros(4, np.int64))
                ref_obs, _, ref_dones, ref_infos = reference.step(np.zeros(4, np.int64))
                np.testing.assert_array_equal(obs, ref_obs)
                assert dones.tolist() == ref_dones.tolist() == [t % 5 == 0] * 4
                assert [np.asarray(i.get("terminal_observation", 9)).tolist() for i in infos] == [
                    np.asarray(i.get("terminal_observation", 9)).tolist() for i in ref_infos
                ]
                assert venv.pool._local.copies_obs == (1 <= t <= 16)
    reference.close()


def test_envs_sharing_memory_keep_their_own_values_through_autoresets_and_restarts() -> None:
    """gymnasium's front-end, NEXT_STEP autoresets (episodes of 2 steps) and a restart of env 3 (it raises at its
    third step): each env's values still its own."""
    fns = [partial(envs.SharesItsClassBuffer, i, 2, 3 if i == 3 else None) for i in range(4)]
    with fastvec.VectorEnv(fns, num_workers=2, context="fork", step_in_parent=True, on_error="restart") as venv:
        assert venv.reset()[0].ravel().tolist() == [0.0, 1.0, 2.0, 3.0]
        seen = [venv.step(np.zeros(4, np.int64))[0].ravel().tolist() for _ in range(4)]
    assert seen[0] == seen[1] == [1.0, 11.0, 21.0, 31.0]
    assert seen[2] == [0.0, 1.0, 2.0, 3.0]  # (episodes of 2 steps ended: this step resets them)
    assert seen[3] == [1.0, 11.0, 21.0, 3.0]  # (env 3 raised at its third step and was made again: its first observation)


@pytest.mark.parametrize("cls", [envs.SharesAReadOnlyView, envs.SharesAList, envs.SharesInANamedTuple])
def test_envs_sharing_memory_in_other_forms_each_give_their_own_values(cls) -> None:
    """The buffer as a read-only view (its class writes it), as a list of its class, inside a named tuple: each is
    found and copied (a read-only view was taken for unwritten, lists and named tuples were not copied)."""
    with SubprocVecEnv([partial(cls, i) for i in range(4)], start_method="fork", num_workers=2) as venv:
        first = (lambda obs: obs[0]) if cls is envs.SharesInANamedTuple else (lambda obs: obs)
        assert first(venv.reset()).ravel().tolist() == [0.0, 1.0, 2.0, 3.0]
        assert first(venv.step(np.zeros(4, np.int64))[0]).ravel().tolist() == [1.0, 11.0, 21.0, 31.0]


def test_beside_envs_sharing_memory_an_env_changing_its_own_array_keeps_sb3_s_final_observation() -> None:
    """Once a process copies its envs' observations (two of them share memory), an env beside them that changes its
    own array in place still gives SB3's final observation, read after its reset (the copy was read: the step's)."""
    def fns() -> list:
        shares, reuses = partial(envs.SharesItsClassBuffer), partial(envs.ReusesItsArray, np.float32, 2, 1)
        return [partial(shares, 0), partial(shares, 1), reuses, partial(shares, 3), partial(shares, 4), reuses]

    reference = DummyVecEnv(fns())
    with SubprocVecEnv(fns(), start_method="fork", num_workers=2) as venv:
        venv.reset(), reference.reset()
        for _ in range(2):
            _, _, dones, infos = venv.step(np.zeros(6, np.int64))
            _, _, ref_dones, ref_infos = reference.step(np.zeros(6, np.int64))
        assert dones.tolist() == ref_dones.tolist() == [False, False, True] * 2
        assert [infos[k]["terminal_observation"].tolist() for k in (2, 5)] == [[-1.0], [-1.0]]
        assert [ref_infos[k]["terminal_observation"].tolist() for k in (2, 5)] == [[-1.0], [-1.0]]
    reference.close()


def test_envs_sharing_memory_whose_resets_agree_are_told_apart_by_their_steps() -> None:
    """Envs over one buffer whose resets write the same values: copied as long as they might differ, so that each
    gives its own values once their steps write different ones; envs that share a constant nothing writes are
    copied for a few steps only (a constant costs no copy for good)."""
    fns = [partial(envs.SharesWithOneStart, i) for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        assert venv.reset().ravel().tolist() == [0.0] * 4
        for _ in range(3):
            assert venv.step(np.zeros(4, np.int64))[0].ravel().tolist() == [1.0, 11.0, 21.0, 31.0]
        assert venv.pool._local.copies_obs
    with SubprocVecEnv([envs.SharesAConstant] * 4, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        venv.reset()
        assert venv.pool._local.copies_obs  # (watched)
        for _ in range(20):
            assert venv.step(np.zeros(4, np.int64))[0].ravel().tolist() == [0.0] * 4
        assert not venv.pool._local.copies_obs


@pytest.mark.parametrize("box", [False, True], ids=["pos-observations", "copied-infos"])
def test_containers_of_an_env_s_own_types_are_copied_as_they_are(box: bool) -> None:
    """A tuple type whose constructor takes its items one by one (a reset's observations are copied as each env
    returns them), and infos of a copying process (a shared constant at reset) holding it and a list type with an
    attribute: copies as a pickle makes them, of their own types (a Pos was rebuilt from one argument, a TypeError
    naming env 0's reset; a Tagged list became a plain list)."""
    fns = [partial(envs.PosEnv, i, box) for i in range(4)]
    reference = DummyVecEnv(fns) if box else None
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        obs = venv.reset()
        if not box:
            assert [tuple(part.tolist()) for part in obs] == [(0, 1, 2, 3), (0, 0, 0, 0)]
        for t in range(1, 4):
            _, _, dones, infos = venv.step(np.zeros(4, np.int64))
            for i, info in enumerate(infos):
                assert type(info["pos"]) is envs.Pos and info["pos"] == (i, t)
                assert type(info["tagged"]) is envs.Tagged and info["tagged"] == [i, t] and info["tagged"].tag == f"env {i}"
        assert dones.tolist() == [True] * 4
        if box:
            reference.reset()
            ref_infos = [reference.step(np.zeros(4, np.int64))[3] for _ in range(3)][-1]
            assert [info["terminal_observation"].tolist() for info in infos] == [
                info["terminal_observation"].tolist() for info in ref_infos
            ]
    if reference is not None:
        reference.close()


@pytest.mark.parametrize("step_in_parent", [False, True])
def test_reset_infos_keep_a_named_tuple_s_own_attributes(step_in_parent: bool) -> None:
    """Reset infos are copied as each env of a process returns them (2578657): a named tuple of a subclass with
    attributes of its own lost them (rebuilt by ``_make``); a pickle, SB3's SubprocVecEnv's, keeps them (hunt76 bug 6),
    one that is the tuple itself too (its copy recursed until a RecursionError failed the reset: hunt78 bug 2)."""
    fns = [partial(envs.LabelledStart, i) for i in range(4)]
    reference = SB3SubprocVecEnv(fns, start_method="fork")
    reference.reset()
    expected = [(tuple(info["start"]), info["start"].label) for info in reference.reset_infos]
    reference.close()
    assert expected == [((i, 0), f"start of env {i}") for i in range(4)]
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=step_in_parent) as venv:
        venv.reset()
        got = [(tuple(info["start"]), getattr(info["start"], "label", None)) for info in venv.reset_infos]
        assert got == expected
        assert all(type(info["start"]) is envs.LabelledPoint for info in venv.reset_infos)
        assert all(info["start"].me is info["start"] for info in venv.reset_infos)  # (its copy held itself: hunt78 bug 2)


def test_an_env_changing_its_own_array_keeps_sb3_s_final_observation_as_the_watch_of_a_shared_constant_ends() -> None:
    """The step in which the copies of envs sharing a constant stop (the 16th watched) reads the final observation
    of an env beside them from its own object, after its reset, as SB3 does (it read the copy: the step's values)."""
    def fns() -> list:
        return [envs.SharesAConstant, envs.SharesAConstant, partial(envs.ReusesItsArray, np.float32, 16, 1)] * 2

    reference = DummyVecEnv(fns())
    with SubprocVecEnv(fns(), start_method="fork", num_workers=2, step_in_parent=True) as venv:
        venv.reset(), reference.reset()
        for _ in range(16):
            _, _, dones, infos = venv.step(np.zeros(6, np.int64))
            _, _, ref_dones, ref_infos = reference.step(np.zeros(6, np.int64))
        assert not venv.pool._local.copies_obs  # (the watch ended with this step)
        assert dones.tolist() == ref_dones.tolist() == [False, False, True] * 2
        assert [infos[k]["terminal_observation"].tolist() for k in (2, 5)] == [[-1.0], [-1.0]]
        assert [ref_infos[k]["terminal_observation"].tolist() for k in (2, 5)] == [[-1.0], [-1.0]]
    reference.close()


def test_the_watch_of_a_shared_constant_keeps_copying_infos_over_one_buffer() -> None:
    """Envs sharing a constant observation, their infos over one buffer with their own values: the copies stay (they
    stopped after 16 steps: every env's info then held the last one's)."""
    with SubprocVecEnv([partial(envs.SharesItsInfoBuffer, i) for i in range(2)], start_method="fork", num_workers=1) as venv:
        venv.reset()
        for t in range(1, 21):
            infos = venv.step(np.zeros(2, np.int64))[3]
            assert [info["state"][0] for info in infos] == [10 * t, 10 * t + 1]


def test_a_dict_type_that_does_not_pickle_is_copied_still() -> None:
    """Envs over one buffer inside a dict type holding a lock: copied (it was returned as it was, uncopied)."""
    with SubprocVecEnv([partial(envs.SharesInALockedDict, i) for i in range(2)], start_method="fork", num_workers=1) as venv:
        assert venv.reset()["x"].ravel().tolist() == [0.0, 1.0]
        assert venv.step(np.zeros(2, np.int64))[0]["x"].ravel().tolist() == [1.0, 11.0]


def test_a_reset_during_the_watch_watches_anew() -> None:
    """Values that first differ at a new episode's tenth step, the reset 8 steps into the watch: each env its own
    (the watch went on from before the reset and ended first)."""
    with SubprocVecEnv([partial(envs.SharesFromStepTen, i) for i in range(2)], start_method="fork", num_workers=1) as venv:
        venv.reset()
        for _ in range(8):
            venv.step(np.zeros(2, np.int64))
        venv.reset()
        for _ in range(12):
            obs = venv.step(np.zeros(2, np.int64))[0].ravel().tolist()
        assert obs == [12.0, 1012.0]


def test_reset_infos_over_one_buffer_are_copied_as_each_env_returns_them() -> None:
    """A reset's infos, as its observations, are copied as each env returns them (each env's reset info held the
    last env's values)."""
    with SubprocVecEnv([partial(envs.SharesItsResetInfoBuffer, i) for i in range(2)], start_method="fork", num_workers=1) as venv:
        venv.reset()
        assert [info["state"][0] for info in venv.reset_infos] == [1000, 1001]


def test_the_watch_ends_where_infos_share_only_a_constant_beside_values_of_their_own() -> None:
    """Infos sharing a constant array beside values of their own: the parts over the same memory are compared, not
    whole infos, so the copies stop after the watch (they stayed for good)."""
    with SubprocVecEnv([partial(envs.ConstantWithInfos, i) for i in range(4)], start_method="fork", num_workers=2,
                       step_in_parent=True) as venv:  # fmt: skip
        venv.reset()
        for t in range(1, 21):
            infos = venv.step(np.zeros(4, np.int64))[3]
            assert [info["t"] for info in infos] == [10 * t + i for i in range(4)]
        assert not venv.pool._local.copies_obs


def test_a_masked_reset_during_the_watch_keeps_watching_the_other_envs() -> None:
    """DISABLED, a masked reset of envs 0 and 1 (whose values agree) during the watch: envs 2 and 3 stay watched (the
    reset's check replaced their group, and their values, first differing after it, were lost once the copies
    stopped)."""
    from gymnasium.vector import AutoresetMode

    fns = [partial(envs.SharesWithATag, i, 0 if i < 2 else i) for i in range(4)]
    with fastvec.VectorEnv(fns, context="fork", num_workers=1, autoreset_mode=AutoresetMode.DISABLED) as venv:
        venv.reset()
        venv.step(np.zeros(4, np.int64))
        venv.reset(options={"reset_mask": np.array([True, True, False, False])})
        for _ in range(20):
            obs = venv.step(np.zeros(4, np.int64))[0].ravel().tolist()
    assert obs == [20.0, 20.0, 221.0, 321.0]


def test_a_reset_info_that_refers_to_itself_or_holds_one_array_twice_is_copied_as_a_pickle_copies_it() -> None:
    """A reset's infos are copied as each env returns them: a dict that refers to itself hung the copy (recursion
    without end), and an array held twice came back as two (SB3's pipes and gymnasium's keep both as pickle does)."""
    with SubprocVecEnv([envs.LinkedResetInfo] * 4, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        venv.reset()
        for info in venv.reset_infos:
            node = info["node"]
            assert node["parent"] is node and node["root"] is node and node["name"] == "root"
            assert info["a"] is info["b"] and info["a"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("implementation", ["fastvec", "fastvec-no-parent", "sb3-subproc"])
def test_the_vec_env_s_spaces_are_not_env_0_s_own(request, implementation: str) -> None:
    """With env 0 in the calling process, the VecEnv's spaces were env 0's own objects: the caller's draws from
    venv.action_space (SB3's DQN and SAC before learning starts) took env 0's stream, and a wrapper changing them
    (VecNormalize) changed env 0's alone (hunt87 bug 1). SB3's SubprocVecEnv's are copies, sent by its workers."""
    request.node.reference_may_leak_fds = implementation == "sb3-subproc"
    venv = IMPLEMENTATIONS[implementation]([envs.DrawsFromItsActionSpace] * 2)
    try:  # (SB3's SubprocVecEnv is no context manager)
        venv.seed(0)
        venv.reset()
        venv.action_space.seed(123)
        seen = [venv.step(np.array([venv.action_space.sample() for _ in range(2)]))[0].ravel().tolist() for _ in range(6)]
        spaces_of_env_0 = venv.get_attr("action_space", [0])[0]
        venv.action_space.n = 7  # (what a wrapper may do to the VecEnv's space)
        assert venv.get_attr("action_space", [0])[0].n == 4
    finally:
        venv.close()
    assert seen == [[0.0, 2.0], [0.0, 3.0], [2.0, 1.0], [2.0, 2.0], [0.0, 1.0], [2.0, 1.0]]  # (SB3's SubprocVecEnv)
    assert spaces_of_env_0 == gym.spaces.Discrete(4)


def test_the_action_space_is_a_copy_beside_an_observation_space_that_cannot_be_one() -> None:
    """An observation space whose copy is not equal to it (gym.Space compares by identity) is env 0's own; the
    action space beside it is still a copy (both were kept as env 0's: hunt88 bug 2)."""
    with SubprocVecEnv([envs.DrawsBesideAnIdentitySpace] * 2, start_method="fork", num_workers=2) as venv:
        env_0 = venv.pool._local_envs[0]
        assert venv.observation_space is env_0.observation_space
        assert venv.action_space is not env_0.action_space and venv.action_space == env_0.action_space


def test_a_reset_cancels_a_pending_step_as_sb3s_contract_says() -> None:
    """SB3's VecEnv.reset: "If step_async is still doing work, that work will be cancelled". Its DummyVecEnv drops the
    actions; fastvec refused the reset with AlreadyPendingCallError (hunt98 bug 8). The step began at step_async here:
    it is collected, its results dropped, and the reset's observations are the reset's."""
    fns = [envs.make_cartpole] * 2
    reference = DummyVecEnv(fns)
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        for v in (venv, reference):
            v.seed(3)
            v.reset()
            v.step_async(np.zeros(2, dtype=np.int64))
            v.seed(5)
        np.testing.assert_array_equal(venv.reset(), reference.reset())
        assert not venv.waiting
        got, want = venv.step(np.ones(2, dtype=np.int64)), reference.step(np.ones(2, dtype=np.int64))
        np.testing.assert_array_equal(got[0], want[0])
    reference.close()


class _SlowCartPole(gym.Wrapper):
    def __init__(self) -> None:
        super().__init__(envs.make_cartpole())

    def step(self, action):
        import time

        time.sleep(0.3)
        return self.env.step(action)


def test_a_reset_after_a_step_wait_cut_short_cancels_that_step() -> None:
    """Ctrl-C in step_wait() leaves the step pending; the reset() after it said AlreadyPendingCallError naming
    reset_async, a call an SB3 user never made (hunt101 bug 3): it cancels that step as after step_async."""
    with SubprocVecEnv([_SlowCartPole] * 2, start_method="fork", num_workers=2, step_in_parent=False) as venv:
        venv.reset()
        venv.step_async(np.zeros(2, dtype=np.int64))
        with pytest.raises(KeyboardInterrupt), envs.ctrl_c_after(0.05):
            venv.step_wait()
        assert venv.pool.pending == "step"
        assert venv.reset().shape == (2, 4) and venv.pool.pending is None
