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
