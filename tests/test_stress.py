"""Fault injection: random commands, interrupts at random points, worker kills and env
exceptions, against a serial reference run of the same envs.

Every round ends in data equal to the reference's, or in a named error after which the
pool is closed and a new one (and a new reference) starts. Never stale rows, never a hang.
"""

from __future__ import annotations

import os
import random
import signal
from contextlib import contextmanager
from functools import partial

import numpy as np
import pytest

import fastvec
from fastvec.errors import BrokenPoolError, EnvError, WorkerDiedError
from fastvec.pool import Pool, PoolState
from fastvec.protocol import SAME_STEP
from tests import envs

N = 4
# (the pure-Python twin's pass runs fewer: its kernels take the same paths in every round, and at a third of
# the compiled speed 1,500 rounds were a tenth of its pass)
ROUNDS = int(os.environ.get("FASTVEC_STRESS_ROUNDS", "1500" if fastvec.KERNELS == "cython" else "600"))


class Raising(envs.Counter):
    """A Counter that raises in step when its action is 4 (the test decides when)."""

    def step(self, action):
        if int(action) == 4:
            raise ZeroDivisionError("injected")
        return super().step(action)


class Reference:
    """The same envs, stepped one by one in this process: what the pool must return."""

    def __init__(self) -> None:
        self.envs = [Raising(i) for i in range(N)]

    def reset(self, seeds: list[int]) -> np.ndarray:
        return np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)])

    def step(self, actions: np.ndarray, restarted: set[int]) -> tuple:
        obs, rewards, terminated, truncated = [], [], [], []
        for i, (env, a) in enumerate(zip(self.envs, actions)):
            if i in restarted:  # its worker died: a fresh env, its old episode truncated
                self.envs[i] = env = Raising(i)
                o, _ = env.reset()
                obs.append(o), rewards.append(0.0), terminated.append(False), truncated.append(True)
                continue
            o, r, term, trunc, _ = env.step(a)
            if term or trunc:
                o, _ = env.reset()
            obs.append(o), rewards.append(r), terminated.append(term), truncated.append(trunc)
        return np.stack(obs), np.array(rewards), np.array(terminated), np.array(truncated)


class Interrupter:
    """SIGALRM after a random delay raises KeyboardInterrupt, but only inside ``armed()``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.armed_now = False
        self.previous = signal.signal(signal.SIGALRM, self._handler)

    def _handler(self, signum, frame) -> None:
        if self.armed_now:
            self.armed_now = False
            raise KeyboardInterrupt

    @contextmanager
    def armed(self, probability: float):
        fire = self.rng.random() < probability
        if fire:
            self.armed_now = True
            signal.setitimer(signal.ITIMER_REAL, self.rng.uniform(1e-6, 300e-6))
        try:
            yield
        finally:
            self.armed_now = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def restore(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)


def _pool(on_error: str) -> Pool:
    return Pool(
        [partial(Raising, i) for i in range(N)],
        num_workers=2,
        start_method="fork",
        autoreset_mode=SAME_STEP,
        on_error=on_error,
        check="off",
    )


def _ts(pool: Pool) -> list[int]:
    return pool.call("get_attr", list(range(N)), ("t",))


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_random_commands_with_interrupts_kills_and_env_errors(on_error: str) -> None:
    rng = random.Random(int(os.environ.get("FASTVEC_STRESS_SEED", "0")) + (1234 if on_error == "raise" else 4321))
    interrupter = Interrupter(rng)
    pool = _pool(on_error)
    reference = Reference()
    outcomes = {"steps": 0, "resumed": 0, "broken": 0, "env errors": 0, "kills": 0, "lost": 0}

    def restart_all(seed: int) -> tuple[Pool, Reference]:
        nonlocal pool, reference, dead
        dead = set()
        pool.close()
        pool, reference = _pool(on_error), Reference()
        seeds = [seed + i for i in range(N)]
        np.testing.assert_array_equal(pool.reset(seeds=seeds).observations(), reference.reset(seeds))
        return pool, reference

    dead: set[int] = set()  # envs of a killed worker not yet replaced (a step or reset replaces it)
    try:
        seeds = list(range(N))
        np.testing.assert_array_equal(pool.reset(seeds=seeds).observations(), reference.reset(seeds))
        for round_ in range(ROUNDS):
            op = rng.random()
            restarted: set[int] = set()
            if op < 0.08:  # a reset
                seeds = [rng.randrange(100) for _ in range(N)]
                try:
                    with interrupter.armed(0.3):
                        batch = pool.reset(seeds=seeds)
                    dead = set()
                except KeyboardInterrupt:
                    if pool.state is PoolState.BROKEN:
                        outcomes["broken"] += 1
                        pool, reference = restart_all(round_)
                        continue
                    batch = pool.reset(seeds=seeds)  # again: a pending one is finished first
                    dead = set()
                np.testing.assert_array_equal(batch.observations(), reference.reset(seeds), err_msg=f"round {round_}")
                continue
            if op < 0.13:  # a rare call
                try:
                    with interrupter.armed(0.3):
                        pids = pool.call("env_method", list(range(N)), ("pid", (), {}))
                    assert pids[0] == os.getpid() and pids[3] != os.getpid()
                except WorkerDiedError:  # a killed worker not replaced yet: a call does not replace it
                    assert dead and pool.state is PoolState.IDLE
                except KeyboardInterrupt:
                    if pool.state is PoolState.BROKEN:
                        outcomes["broken"] += 1
                        pool, reference = restart_all(round_)
                continue
            actions = np.array([rng.randrange(4) for _ in range(N)])
            if op > 0.99:  # an env raises: an EnvError, or with on_error="restart" a fresh env
                bad = rng.randrange(N)
                actions[bad] = 4
                if on_error == "restart":
                    restarted.add(bad)
            if on_error == "restart" and 0.13 <= op < 0.15 and not dead:  # the worker dies first
                os.kill(pool.worker_pids[0], signal.SIGKILL)
                dead = set(range(2, N))
                outcomes["kills"] += 1
            restarted |= dead
            try:
                try:
                    with interrupter.armed(0.25):
                        pool.step_async(actions)
                        batch = pool.step_wait()
                except KeyboardInterrupt:
                    if pool.state is PoolState.BROKEN:
                        outcomes["broken"] += 1
                        with pytest.raises(BrokenPoolError):
                            pool.step_wait()
                        pool, reference = restart_all(round_)
                        continue
                    if pool.pending != "step":
                        # the step either never started, or completed and its result was lost
                        try:
                            now = _ts(pool)
                        except WorkerDiedError:
                            continue  # never issued: the killed worker is still to be replaced
                        if now == reference_ts(reference):
                            continue  # never issued: the reference does not step either
                        outcomes["lost"] += 1
                        reference.step(actions, restarted)
                        dead = set()
                        assert _ts(pool) == reference_ts(reference), f"round {round_}: desync"
                        continue
                    outcomes["resumed"] += 1  # interrupted while waiting: resume
                    batch = pool.step_wait()
            except EnvError as err:
                assert err.env_index == int(np.flatnonzero(actions == 4)[0]) and isinstance(err, ZeroDivisionError)
                outcomes["env errors"] += 1
                pool, reference = restart_all(round_)  # envs are mid-step after an env error: start over
                continue
            dead = set()
            obs, rewards, terminated, truncated = reference.step(actions, restarted)
            np.testing.assert_array_equal(batch.observations(), obs, err_msg=f"round {round_}")
            np.testing.assert_array_equal(batch.rewards, rewards, err_msg=f"round {round_}")
            np.testing.assert_array_equal(batch.terminated, terminated, err_msg=f"round {round_}")
            np.testing.assert_array_equal(batch.truncated, truncated, err_msg=f"round {round_}")
            if restarted:
                assert set(batch.restarted) == restarted
            outcomes["steps"] += 1
    finally:
        interrupter.restore()
        pool.close()
    print(outcomes)
    assert outcomes["steps"] > ROUNDS // 2
    assert outcomes["resumed"] > 0 and outcomes["broken"] > 0


def reference_ts(reference: Reference) -> list[int]:
    return [int(env.t) for env in reference.envs]
