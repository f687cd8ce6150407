"""Every space SB3's SubprocVecEnv and gymnasium's AsyncVectorEnv accept, end to end through both
front-ends, against the reference implementations themselves (issue 10)."""

from __future__ import annotations

from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from stable_baselines3.common.vec_env import SubprocVecEnv as SB3SubprocVecEnv

from fastvec import SubprocVecEnv, VectorEnv
from fastvec.errors import UnsupportedSpaceError
from tests import envs

N = 3
BOX = spaces.Box(-1, 1, (2,), np.float32)
DYNAMIC = {
    "text": spaces.Text(6, charset="abc"),
    "dict-text": spaces.Dict({"word": spaces.Text(4), "pos": BOX}),
    "graph": spaces.Graph(node_space=spaces.Discrete(3), edge_space=spaces.Box(0, 1, (2,), np.float32)),
    "sequence": spaces.Sequence(spaces.Discrete(4)),
    "oneof": spaces.OneOf((spaces.Discrete(2), BOX)),
    "tuple-graph": spaces.Tuple((spaces.Discrete(3), spaces.Graph(node_space=BOX, edge_space=None))),
}
STRUCTURED_ACTIONS = {
    "dict": spaces.Dict({"move": spaces.Discrete(3), "aim": BOX}),
    "tuple": spaces.Tuple((spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(2))),
    "nested": spaces.Dict({"a": spaces.Tuple((spaces.Discrete(2), BOX)), "b": spaces.Discrete(5, start=-2)}),
    "text": spaces.Text(5),
}


def _fns(obs_space: spaces.Space, act_space: spaces.Space) -> list:
    return [partial(envs.EchoEnv, obs_space, act_space) for _ in range(N)]


def _run_gym(venv, act_space: spaces.Space, steps: int = 7) -> list:
    out = [venv.reset(seed=3)]
    batch_space = gym.vector.utils.batch_space(act_space, N)
    batch_space.seed(0)
    for _ in range(steps):
        out.append(venv.step(batch_space.sample()))
    return out


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("name", sorted(DYNAMIC))
def test_dynamic_observations_match_gymnasium(name: str, mode: AutoresetMode) -> None:
    space = DYNAMIC[name]
    fns = _fns(space, spaces.Discrete(2))
    reference = SyncVectorEnv(fns, autoreset_mode=mode)
    with VectorEnv(fns, shared_memory=False, num_workers=2, context="fork", autoreset_mode=mode) as venv:
        assert venv.single_observation_space == space
        got, want = _run_gym(venv, spaces.Discrete(2)), _run_gym(reference, spaces.Discrete(2))
        for t, (a, b) in enumerate(zip(got, want)):
            assert data_equivalence(a, b), f"step {t}: {a} != {b}"
    reference.close()


@pytest.mark.parametrize("name", sorted(DYNAMIC))
def test_dynamic_spaces_with_shared_memory_as_gymnasium(name: str) -> None:
    """gymnasium 1.x lays out Text and OneOf in shared memory, and refuses Graph and Sequence: fastvec
    takes and refuses the same, and returns what SyncVectorEnv returns."""
    space = DYNAMIC[name]
    fns = _fns(space, spaces.Discrete(2))
    if "graph" in name or "sequence" in name:
        with pytest.raises(TypeError, match="dynamic shape") as info:
            VectorEnv(fns, shared_memory=True, context="fork")
        assert isinstance(info.value, UnsupportedSpaceError)
        return
    reference = SyncVectorEnv(fns)
    with VectorEnv(fns, shared_memory=True, num_workers=2, context="fork") as venv:
        got, want = _run_gym(venv, spaces.Discrete(2)), _run_gym(reference, spaces.Discrete(2))
        for t, (a, b) in enumerate(zip(got, want)):
            assert data_equivalence(a, b), f"step {t}: {a} != {b}"
    reference.close()


class Anything(spaces.Space):
    """A custom space (no fixed size, no shared-memory layout in gymnasium)."""

    def sample(self, mask=None, probability=None):
        return {"x": int(self.np_random.integers(10))}

    def contains(self, x):
        return isinstance(x, dict)

    def __eq__(self, other):  # as gymnasium's own CustomSpace: the envs' copies compare equal
        return isinstance(other, Anything)


def test_custom_space() -> None:
    fns = _fns(Anything(), spaces.Discrete(2))
    with pytest.raises(ValueError, match="shared_memory=False"):
        VectorEnv(fns, shared_memory=True, context="fork")
    with VectorEnv(fns, shared_memory=False, num_workers=2, context="fork") as venv:
        obs, _ = venv.reset(seed=1)
        assert isinstance(obs, tuple) and len(obs) == N and all("x" in o for o in obs)
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:  # SB3 pickles what it cannot stack
        obs = venv.reset()
        assert obs.shape == (N,) and all("x" in o for o in obs)


@pytest.mark.parametrize("name", sorted(STRUCTURED_ACTIONS))
def test_structured_actions_reach_the_env_unchanged_gymnasium(name: str) -> None:
    space = STRUCTURED_ACTIONS[name]
    fns = _fns(BOX, space)
    reference = SyncVectorEnv(fns)
    with VectorEnv(fns, shared_memory=False, num_workers=2, context="fork") as venv:
        got, want = _run_gym(venv, space), _run_gym(reference, space)
        for t, (a, b) in enumerate(zip(got, want)):
            assert data_equivalence(a, b), f"step {t}: {a} != {b}"
    reference.close()


@pytest.mark.parametrize("name", ["dict", "tuple", "text"])
def test_structured_actions_and_dynamic_observations_match_sb3(name: str) -> None:
    """SB3 passes one action per env; its SubprocVecEnv is the reference (same seeds, same actions)."""
    act_space = STRUCTURED_ACTIONS[name]
    obs_space = DYNAMIC["dict-text"] if name == "text" else BOX
    fns = _fns(obs_space, act_space)
    ours = SubprocVecEnv(fns, start_method="fork", num_workers=2)
    reference = SB3SubprocVecEnv(fns, start_method="fork")
    try:
        for venv in (ours, reference):
            venv.seed(11)
        obs_f, obs_r = ours.reset(), reference.reset()
        act_space.seed(5)
        for t in range(7):
            actions = [act_space.sample() for _ in range(N)]
            (obs_f, rew_f, done_f, infos_f), (obs_r, rew_r, done_r, infos_r) = ours.step(actions), reference.step(actions)
            assert rew_f.dtype == rew_r.dtype == np.float64
            np.testing.assert_array_equal(rew_f, rew_r)
            np.testing.assert_array_equal(done_f, done_r)
            for i in range(N):
                assert data_equivalence(infos_f[i]["action"], infos_r[i]["action"]), f"step {t} env {i}"
            if isinstance(obs_r, dict):
                for key in obs_r:
                    np.testing.assert_array_equal(obs_f[key], obs_r[key])
            else:
                np.testing.assert_array_equal(obs_f, obs_r)
    finally:
        ours.close()
        reference.close()


def test_continuous_actions_outside_the_box_pass_through() -> None:
    fns = _fns(BOX, spaces.Box(-2, 2, (1,), np.float32))
    actions = np.array([[2.7], [-9.0], [0.5]], dtype=np.float32)
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        venv.reset()
        _, _, _, infos = venv.step(actions)
        assert [float(info["action"][0]) for info in infos] == [2.700000047683716, -9.0, 0.5]
    with VectorEnv(fns, context="fork", num_workers=2) as venv:
        venv.reset(seed=0)
        infos = venv.step(actions)[-1]
        np.testing.assert_array_equal(np.stack(infos["action"]), actions)
    with VectorEnv(fns, context="fork", num_workers=2, check="warn") as venv:  # only when asked
        venv.reset(seed=0)
        with pytest.warns(RuntimeWarning, match=r"env 0 is 2.7.*outside Box"):
            venv.step(actions)


def test_actions_an_integer_space_cannot_hold_reach_the_env_as_sb3_hands_them_on() -> None:
    """3.7 for a Discrete env, 2**63 as uint64: SB3's SubprocVecEnv hands them to the env as sent (it
    decides); fastvec refused them with a ValueError unless check="raise" asked for that."""
    fns = _fns(BOX, spaces.Discrete(3))
    ref = SB3SubprocVecEnv(fns, start_method="fork")
    try:
        ref.reset()
        want = [info["action"] for info in ref.step(np.array([3.7, np.nan, 1.0]))[3]]
    finally:
        ref.close()
    with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
        venv.reset()
        got = [info["action"] for info in venv.step(np.array([3.7, np.nan, 1.0]))[3]]
        assert [type(a) for a in got] == [type(a) for a in want] == [np.float64] * 3
        np.testing.assert_array_equal(got, want)
        huge = venv.step(np.array([2**63, 0, 1], dtype=np.uint64))[3][0]["action"]
        assert huge == 2**63 and type(huge) is np.uint64
    with SubprocVecEnv(fns, start_method="fork", num_workers=2, check="raise") as venv:  # only when asked
        venv.reset()
        with pytest.raises(ValueError, match="action for env 0 is 3.7"):
            venv.step(np.array([3.7, 0.0, 1.0]))


class OtherShapeObs(gym.Env):
    """Returns as many values as its Box holds, in another shape: (3,) for (3, 1), [] for (0, 3)
    (ending every 3rd step)."""

    action_space = spaces.Discrete(2)

    def __init__(self, shape: tuple):
        self.observation_space = spaces.Box(-10, 10, shape, np.float32)
        self.t = 0

    def _obs(self):
        size = int(np.prod(self.observation_space.shape))
        return list(np.arange(size, dtype=np.float32) + self.t) if size == 0 else np.arange(size, dtype=np.float32) + self.t

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.t % 3 == 0, False, {}


@pytest.mark.parametrize("shape", [(3, 1), (0, 3)])
def test_observations_of_the_spaces_size_in_another_shape_are_stored_as_gymnasium_does(shape: tuple) -> None:
    """gymnasium's AsyncVectorEnv (shared memory) writes observations flat, so it takes the space's
    number of values in any shape; fastvec refused them. They are stored in the space's shape, with one
    warning per env; a final observation is the env's own object."""
    fns = [partial(OtherShapeObs, shape)] * 2
    size = int(np.prod(shape))

    def expected(t: int) -> np.ndarray:  # (what AsyncVectorEnv gives; not run here: its shared memory stays mapped)
        return np.stack([np.arange(size, dtype=np.float32).reshape(shape) + t] * 2)

    with VectorEnv(fns, context="fork", num_workers=2, autoreset_mode=AutoresetMode.SAME_STEP) as venv:
        with pytest.warns(RuntimeWarning, match=r"observation of shape .*stored in that shape"):
            obs = venv.reset(seed=0)[0]
        np.testing.assert_array_equal(obs, expected(0))
        assert obs.shape == (2, *shape) and obs.dtype == np.float32
        for t in (1, 2, 3):
            obs, _, terminated, _, infos = venv.step(np.zeros(2, np.int64))
            np.testing.assert_array_equal(obs, expected(t % 3))
        assert terminated.all()
        for final in infos["final_obs"]:  # the env's own object
            assert type(final) is type(OtherShapeObs(shape)._obs()) and np.shape(final) == (size,)
    with VectorEnv(fns, context="fork", num_workers=2, check="raise") as venv:  # asked for checks: refused
        with pytest.raises(ValueError, match="shape"):
            venv.reset(seed=0)


def test_a_thousand_envs_in_another_shape_in_one_shard() -> None:
    """Each such observation is reshaped in one pass over the shard (it recursed per env: a RecursionError
    past about 990 envs, and quadratic work)."""
    fns = [partial(OtherShapeObs, (3, 1))] * 1100
    with VectorEnv(fns, num_workers=1, step_in_parent=True, check="off") as venv:
        obs = venv.reset(seed=0)[0]
        assert obs.shape == (1100, 3, 1)
        obs = venv.step(np.zeros(1100, np.int64))[0]
        np.testing.assert_array_equal(obs[:, :, 0], np.tile(np.arange(3, dtype=np.float32) + 1, (1100, 1)))


class MatrixObs(gym.Env):
    """Returns np.matrix rows (shape (1, 2)) for a Box of shape (2,)."""

    observation_space = spaces.Box(-10, 10, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.matrix([0, self.t], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        return np.matrix([0, self.t], dtype=np.float32), 1.0, False, False, {}


def test_matrix_observations_are_stored_as_plain_rows() -> None:
    """SB3 and gymnasium take np.matrix rows; a matrix keeps two dimensions through reshape, and the
    reshape recursed until the stack ran out."""
    with VectorEnv([MatrixObs] * 4, context="fork", num_workers=2, check="off") as venv:
        venv.reset(seed=0)
        obs = venv.step(np.zeros(4, np.int64))[0]
        assert type(obs) is np.ndarray and obs.tolist() == [[0.0, 1.0]] * 4


class MissingKey(gym.Env):
    """A Dict observation without one of its space's keys."""

    observation_space = spaces.Dict({"a": spaces.Box(-1, 1, (2,)), "b": spaces.Discrete(3)})
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"a": np.zeros(2, np.float32)}, {}


@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_an_observation_without_a_key_of_its_space_raises_a_key_error(front: str) -> None:
    """The references raise KeyError (gymnasium's AsyncVectorEnv, SB3's stacking); fastvec raised EnvValueError,
    which an ``except KeyError`` around reset() did not catch."""
    make = {"sb3": partial(SubprocVecEnv, start_method="fork"), "gym": partial(VectorEnv, context="fork")}[front]
    venv = make([MissingKey] * 2)
    try:
        with pytest.raises(KeyError, match="env 0 raised KeyError during 'reset': .*observation has no part 'b'"):
            venv.reset()
    finally:
        venv.close()


class LongLongObs(gym.Env):
    """An int64 Box whose observations are np.longlong arrays (pybind11's ``py::array_t<long long>``, ctypes'):
    the same dtype as int64 on Linux, another numpy type number."""

    observation_space = spaces.Box(-10, 10, (3,), np.int64)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.longlong), {}

    def step(self, action):
        return np.full(3, action, np.longlong), 0.0, False, False, {}


def test_observations_of_an_equal_dtype_are_not_a_cast(recwarn) -> None:
    """The compiled kernels took np.longlong for another dtype than int64: every env was warned of a cast, and
    check="raise" refused the env, which SB3 and gymnasium step as it is."""
    assert np.dtype(np.longlong) == np.dtype(np.int64)
    for check in (None, "raise"):
        with SubprocVecEnv([LongLongObs] * 2, start_method="fork", num_workers=2, check=check) as venv:
            venv.reset()
            obs = venv.step(np.array([1, 0]))[0]
        np.testing.assert_array_equal(obs, [[1, 1, 1], [0, 0, 0]])
    assert not [w for w in recwarn if "cast" in str(w.message)]


class RecordsAction(gym.Env):
    """Keeps the last action it was given (``last()``: its type, dtype and value)."""

    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.action = action
        return np.zeros(2, np.float32), 0.0, False, False, {}

    def last(self):
        return type(self.action).__name__, str(getattr(self.action, "dtype", "")), repr(self.action)


ODD_ACTIONS = {
    "float128": np.array([[0.5, 1 + np.longdouble(2) ** -60], [0.25, -0.5]], np.longdouble),  # (float64 rounds it)
    "complex": np.array([[1 + 2j, 0], [0, 3j]]),
    "object": np.array([[None, 1.5], ["x", 2]], dtype=object),
}


@pytest.mark.parametrize("name", ODD_ACTIONS)
def test_actions_no_8_bytes_hold_reach_the_env_as_sb3_hands_them_on(name: str) -> None:
    """float128 that float64 would round, complex and object actions were refused ("send float64", "must be
    numbers"), where SB3's SubprocVecEnv and gymnasium hand each env its row: they travel pickled now, in both
    front-ends, synchronous and asynchronous, wherever the env runs."""
    actions = ODD_ACTIONS[name]
    reference = SB3SubprocVecEnv([RecordsAction] * 2, start_method="fork")
    try:
        reference.reset()
        reference.step(actions)
        expected = reference.env_method("last")
    finally:
        reference.close()
    for options in ({"num_workers": 2}, {"num_workers": 2, "step_in_parent": False}):
        with SubprocVecEnv([RecordsAction] * 2, start_method="fork", **options) as venv:
            venv.reset()
            venv.step(actions)
            assert venv.env_method("last") == expected
            venv.step(np.zeros((2, 2)))  # (and back to the shared rows)
            assert venv.env_method("last")[1][:2] == ("ndarray", "float64")
        with VectorEnv([RecordsAction] * 2, context="fork", **options) as gym_venv:
            gym_venv.reset()
            gym_venv.step(actions)
            assert list(gym_venv.call("last")) == expected
    with SubprocVecEnv([RecordsAction] * 4, start_method="fork", batch_size=2) as venv:
        venv.async_reset()
        sent: set[int] = set()
        while len(sent) < 4:  # (env i gets row i % 2; a group may come back before the other is stepped)
            ids = venv.recv()[4]
            venv.send(actions[ids % 2], ids)
            sent.update(ids.tolist())
        venv.recv(), venv.recv()  # (both groups: none runs during env_method)
        assert venv.env_method("last") == expected * 2


def test_an_empty_box_action_space_with_range_checks_steps() -> None:
    """A Box of shape (0,) (no values, no bounds): the range kernels refused it on every step with check="warn"
    or "raise", where gymnasium steps it."""
    for dtype in (np.float32, np.int64, np.uint64):  # (uint64's bounds go through the generic check)
        fns = [partial(envs.EchoEnv, spaces.Box(-1, 1, (2,), np.float32), spaces.Box(0, 1, (0,), dtype))] * 2
        for check in ("warn", "raise"):
            with SubprocVecEnv(fns, start_method="fork", num_workers=2, check=check) as venv:
                venv.reset()
                venv.step(np.zeros((2, 0), dtype))


class MutatesAction(RecordsAction):
    """Records its action, then changes it in place (an env may: the action is its own)."""

    def step(self, action):
        result = super().step(action)
        self.action = action.copy()
        action[0] = 99
        return result


def test_each_env_gets_its_own_copy_of_a_pickled_action() -> None:
    """One object sent to every env ([a] * 4) travelled as one object in a worker's message (and in the calling
    process's copy): an env that changed its action changed the next env's. Each env gets its own, as over a pipe
    of its own (SB3)."""
    a = np.array([1j, 0])
    for options in ({"num_workers": 2}, {"num_workers": 2, "step_in_parent": False}):
        with SubprocVecEnv([MutatesAction] * 4, start_method="fork", **options) as venv:
            venv.reset()
            venv.step([a] * 4)
            assert [got[2] for got in venv.env_method("last")] == [repr(a)] * 4
    assert a[0] == 1j  # (the caller's own array is not the envs' either)


def _load_fails():
    raise RuntimeError("this action cannot be loaded")


class LoadsBadly:
    """Pickles, but its unpickling raises."""

    def __reduce__(self):
        return _load_fails, ()


class MutatesSequenceAction(gym.Env):
    """A Sequence action space (an object leaf); the env changes its action's first row in place."""

    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Sequence(spaces.Box(-1, 1, (2,)))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.seen = float(action[0][0])
        action[0][0] = 99.0
        return np.zeros(2, np.float32), 0.0, False, False, {}

    def last(self):
        return self.seen


def test_each_env_gets_its_own_copy_of_an_object_part_of_its_action() -> None:
    """The same for an action's object parts (Sequence, Text, custom spaces), which always travel pickled; and an
    action that cannot be pickled still names its envs (the copy refused it first, naming none)."""
    import threading

    a = (np.ones(2),)
    for options in ({"num_workers": 2}, {"num_workers": 2, "step_in_parent": False}):
        with SubprocVecEnv([MutatesSequenceAction] * 4, start_method="fork", **options) as venv:
            venv.reset()
            venv.step([a] * 4)
            assert venv.env_method("last") == [1.0] * 4
        actions = np.array([[0.0, 1.0]] * 4, dtype=object)
        actions[2, 0] = threading.Lock()
        with SubprocVecEnv([RecordsAction] * 4, start_method="fork", **options) as venv:
            venv.reset()
            with pytest.raises(Exception, match=r"env[s]? 2.* cannot be pickled"):
                venv.step(actions)
            actions[2, 0] = 0.0
            for i in (0, 3):  # (one that pickles but cannot be loaded: a worker named its first env)
                actions[i, 1] = LoadsBadly()
                with pytest.raises(TypeError, match=rf"actions for env {i} cannot be unpickled .*cannot be loaded"):
                    venv.step(actions)
                actions[i, 1] = 1.0
            # (a call's arguments too: they named the calling process's envs, not called, or the worker's first)
            with pytest.raises(TypeError, match=r"env_method arguments for env 3 cannot be unpickled"):
                venv.env_method("reset", seed=LoadsBadly(), indices=[3])
            venv.get_attr("observation_space", indices=[3])  # (the pool goes on)


def test_reset_options_that_cannot_be_unpickled_name_their_env() -> None:
    """Options that pickle but cannot be loaded (SB3's set_options deep-copies them: the pool's reset): a worker
    refused them naming its first env (env 2), whichever env's they were; the pool stays usable."""
    from fastvec.pool import Pool

    with Pool([RecordsAction] * 4, start_method="fork", num_workers=2) as pool:
        pool.reset()
        with pytest.raises(TypeError, match=r"reset options for env 3 cannot be unpickled .*cannot be loaded"):
            pool.reset(options=[{}, {}, {}, {"level": LoadsBadly()}])
        pool.reset(options=[{}, {}, {}, {"level": 1}])


def test_the_calling_process_s_env_is_named_for_arguments_and_options_it_cannot_get() -> None:
    """Values for an env the calling process steps were named by its whole range (envs 0..1), and a call's argument
    that cannot be pickled by a worker none of whose envs was called (envs 2..3)."""
    from fastvec.pool import Pool

    with SubprocVecEnv([RecordsAction] * 4, start_method="fork", num_workers=2, step_in_parent=True) as venv:
        venv.reset()
        with pytest.raises(TypeError, match=r"env_method arguments for env 1 cannot be pickled"):
            venv.env_method("reset", seed=lambda: 0, indices=[1])
        with pytest.raises(TypeError, match=r"env_method arguments for env 1 cannot be unpickled"):
            venv.env_method("reset", seed=LoadsBadly(), indices=[1])
    for batches in ({}, {"batch_size": 2}):
        with Pool([RecordsAction] * 4, start_method="fork", num_workers=2, step_in_parent=True, **batches) as pool:
            reset = pool.async_reset if batches else pool.reset
            with pytest.raises(TypeError, match=r"reset options for env 1 cannot be unpickled"):
                reset(options=[{}, {"level": LoadsBadly()}, {}, {}])
            with pytest.raises(TypeError, match=r"reset options for env 1 cannot be pickled"):
                reset(options=[{}, {"level": lambda: 0}, {}, {}])
