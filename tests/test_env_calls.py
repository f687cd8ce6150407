"""The rare calls on single envs (fastvec.env_calls)."""

from __future__ import annotations

import gymnasium as gym
import pytest

from fastvec.env_calls import is_wrapped, run_call


def test_calls_read_and_write_through_the_wrapper_chain() -> None:
    env = gym.wrappers.TimeLimit(gym.make("CartPole-v1"), 50)
    assert run_call(env, "get_attr", ("gravity",)) == 9.8
    assert run_call(env, "has_attr", ("gravity",)) and not run_call(env, "has_attr", ("nonsense",))
    run_call(env, "set_attr", ("gravity", True), 1.5)  # gymnasium: where the chain defines it
    assert env.unwrapped.gravity == 1.5
    run_call(env, "set_attr", ("note", False), "x")  # SB3: on the outermost wrapper
    assert env.note == "x"
    assert run_call(env, "call", ("gravity", (), {})) == 1.5  # call() of a non-callable returns it
    env.reset(seed=0)
    assert run_call(env, "env_method", ("step", (0,), {}))[0].shape == (4,)
    assert is_wrapped(env, gym.wrappers.TimeLimit) and not is_wrapped(env, gym.wrappers.ClipAction)
    with pytest.raises(AttributeError):
        run_call(env, "get_attr", ("nonsense",))
    env.close()


def _shape(value, seen=None):
    """Everything a copy must match of ``value``: types, dtypes with byte order, shapes, memory order, values, and
    which parts are one object."""
    import numpy as np

    seen = {} if seen is None else seen
    if id(value) in seen and isinstance(value, (dict, list, np.ndarray)):
        return ("same as", seen[id(value)])
    seen[id(value)] = len(seen)
    if isinstance(value, dict):
        return ("dict", [(repr(k), _shape(v, seen)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_shape(v, seen) for v in value])
    if isinstance(value, np.ndarray):
        return ("array", type(value).__name__, value.dtype.str, value.shape, value.flags.c_contiguous,
                value.flags.f_contiguous, value.flags.writeable, value.tobytes())  # fmt: skip
    return (type(value).__name__, repr(value))


def test_private_gives_what_a_pipe_gives() -> None:
    """The calling process's envs' values are copied as a worker's pipe pickles them (multiprocessing's
    ForkingPickler): a copy made directly for the usual values must equal the pickle round trip in every
    respect (big-endian arrays arrive native; Fortran order kept; shared parts stay shared); others are pickled;
    what cannot be pickled is refused."""
    import threading
    from multiprocessing.reduction import ForkingPickler

    import numpy as np

    from fastvec.env_calls import private

    shared = np.arange(6, dtype=">f8").reshape(2, 3)
    frozen = np.ones(3, "<i2")
    frozen.flags.writeable = False
    cycle: list = [1]
    cycle.append(cycle)
    deep: list = [1]
    for _ in range(40):  # (deeper than the direct copy goes: pickled)
        deep = [deep]
    values = [
        {"x_position": np.float64(1.5), "lives": 3, "ok": True, "name": "a", "none": None, "b": b"\x00"},
        {"a": shared, "b": shared, "t": (shared, [shared.T, shared[:, ::2]])},
        [np.zeros((2, 2), ">c8"), np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.array(3, ">u2"), frozen],
        {(1, 2): "a tuple key", 3: {"nested": [np.int8(-1), np.uint64(2**64 - 1), 1e300, 2**70]}},
        np.array(["text"]), np.array([(1, 2.0)], dtype=[("a", ">i4"), ("b", "<f8")]), np.ma.masked_array([1, 2]),
        np.zeros(3, "M8[s]"), np.longdouble(1) + np.longdouble(2**-60), np.array([1, "x"], object),
        cycle, {"deep": deep},
        gym.spaces.Discrete(3), range(3), frozenset({1}), {"f": 1 + 2j, "s": {1, 2}},
    ]  # fmt: skip
    for value in values:
        want = ForkingPickler.loads(ForkingPickler.dumps(value))
        got = private(value)
        if value is cycle:
            assert got[1] is got and got[0] == 1
            continue
        assert _shape(got) == _shape(want), value
    mine = {"a": [1]}
    copied = private(mine)
    copied["a"].append(2)
    assert mine == {"a": [1]}  # its own copy
    for bad in ({"f": lambda: 0}, [threading.Lock()], {"ok": 1, "bad": (1, threading.Lock())}):
        with pytest.raises(Exception, match="pickle|local object"):  # (Python 3.13: "Can't get local object")
            private(bad)


_TENSORS = """
import sys
import gymnasium as gym
import numpy as np
import torch
from fastvec import VectorEnv


class TakesTensors(gym.Env):
    observation_space = gym.spaces.Box(-1e9, 1e9, (1,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.array([float(options["start"].sum()) if options else 0.0]), {}

    def step(self, action):
        return np.zeros(1), 0.0, False, False, {}

    def total(self, values):
        return float(values.sum())


if __name__ == "__main__":
    with VectorEnv([TakesTensors] * 2, context="fork", num_workers=1, step_in_parent=False) as venv:
        obs, _ = venv.reset(options={"start": torch.arange(4, dtype=torch.float64)})
        assert obs.tolist() == [[6.0], [6.0]], obs
        assert venv.call("total", torch.ones(3)) == (3.0, 3.0)
        import os

        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):  # (a pickle made only to be checked held a tensor's descriptor open for good: one per call)
            venv.reset(options={"start": torch.arange(4, dtype=torch.float64)})
            venv.call("total", torch.ones(3))
        assert len(os.listdir("/proc/self/fd")) - before < 5, (before, len(os.listdir("/proc/self/fd")))
    print("ok")
"""


@pytest.mark.one_pass
def test_torch_tensors_reach_the_workers_envs_in_reset_options_and_call_arguments(tmp_path) -> None:
    """A torch tensor pickles its storage as a descriptor that loads once: the caller's trial load of a worker's
    options or call arguments (to name an env whose values cannot be loaded) took it, and the worker's load failed.
    (In a process of its own: torch's shared memory and multiprocessing's descriptor server stay open in it.)"""
    import subprocess
    import sys

    script = tmp_path / "tensors.py"
    script.write_text(_TENSORS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
