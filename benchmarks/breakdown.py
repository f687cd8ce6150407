"""Where one step of a batch goes, in microseconds (issue 14): env, shard loop, pool, front-end, hand-off.

    python -m benchmarks.breakdown [--num-envs 8] [--seconds 0.5] [--repeats 5]

Every figure is the median of ``repeats`` timed runs in this process (the workers, where
there are any, in their own). Measured from the inside out, each layer minus the one it
wraps gives that layer's own cost:

- env: one CartPole-v1 (gym.make, with its wrappers) stepped in a plain loop, per env step;
- shard: fastvec's env loop over N envs writing into a block (no processes), per env step;
- pool, in-process: Pool(num_workers=1, step_in_parent=True) (the same loop behind the
  command protocol, action checks and the typed Batch), per command;
- SB3 front-end, in-process: SubprocVecEnv on that pool (dones, infos, copies), per command;
- hand-off: a pool whose one worker steps one env that does nothing, the parent none:
  issue, wake, countdown, parent wake, per command;
- defaults: SubprocVecEnv with its defaults (this machine's cores), per command and per env step;
- ceiling: what the cores give with no engine at all: one process per core, started together,
  each stepping its share of the envs in a plain loop (no hand-off, no results to gather), per
  env step. No engine can beat it; the gap between it and the defaults is the engine's.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from benchmarks import _cli
from fastvec.measure import machine_facts, time_steps


class NullEnv(gym.Env):
    """An env that costs (almost) nothing: what is left is the engine's own cost."""

    observation_space = spaces.Box(-1, 1, (4,), np.float32)
    action_space = spaces.Discrete(2)
    _obs = np.zeros(4, np.float32)

    def reset(self, *, seed=None, options=None):
        return self._obs, {}

    def step(self, action):
        return self._obs, 1.0, False, False, {}


class EpisodicNullEnv(NullEnv):
    """A NullEnv whose episodes end (terminated) after ``length`` steps, the first ``offset`` steps
    shorter (benchmarks.instructions sets both)."""

    t = 0
    length = 1
    offset = 0

    def reset(self, *, seed=None, options=None):
        self.t, self.offset = self.offset, 0
        return self._obs, {}

    def step(self, action):
        self.t += 1
        return self._obs, 1.0, self.t >= self.length, False, {}


def make_cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def make_null() -> gym.Env:
    return NullEnv()


def timed(call: Any, seconds: float, repeats: int) -> float:
    """Median seconds per call of ``call()`` over ``repeats`` runs of about ``seconds`` (the timed loop
    the tuner and the study use, with its warm-up)."""
    runs = time_steps(lambda _: call(), [None], 1, seconds, repeats)["rates"]
    return statistics.median(1.0 / rate for rate in runs)


def ceiling(num_envs: int, seconds: float, repeats: int) -> float:
    """Median seconds per env step of ``cores`` processes stepping their share of the envs each in
    plain loops at the same time (the machine's own limit for this workload): the ``ceiling``
    engine of benchmarks.engines, with actions alternating 0 and 1."""
    from benchmarks.engines import Ceiling

    batches = np.arange(2 * num_envs).reshape(2, num_envs) & 1
    return 1.0 / Ceiling([make_cartpole] * num_envs).measure(batches, seconds, repeats)["rate"]


def measure(num_envs: int, seconds: float, repeats: int) -> dict[str, float]:
    from fastvec import SubprocVecEnv
    from fastvec.layout import Views, plan_layout
    from fastvec.pool import Pool
    from fastvec.protocol import SAME_STEP
    from fastvec.shard import Shard
    from fastvec.spaces import leaves

    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, (256, num_envs))
    out: dict[str, float] = {}

    env = make_cartpole()
    env.reset(seed=0)
    k = [0]

    def env_step() -> None:
        _, _, term, trunc, _ = env.step(int(actions[k[0] & 255, 0]))
        k[0] += 1
        if term or trunc:
            env.reset()

    out["env step (one CartPole, plain loop), per env step"] = timed(env_step, seconds, repeats)

    envs = [make_cartpole() for _ in range(num_envs)]
    layout = plan_layout(leaves(envs[0].observation_space), leaves(envs[0].action_space), num_envs, 1, 2)
    views = Views(layout, memoryview(bytearray(layout.size)))
    shard = Shard(envs, 0, views, SAME_STEP)
    shard.reset(0, None, False, False)
    slot = [0]

    def shard_step() -> None:
        views.actions[0][:] = actions[k[0] & 255]
        k[0] += 1
        slot[0] ^= 1
        shard.step(slot[0])

    out["shard loop, per env step"] = timed(shard_step, seconds, repeats) / num_envs

    def pool_step(pool: Pool) -> Any:
        def step() -> None:
            pool.step_async(actions[k[0] & 255])
            k[0] += 1
            pool.step_wait()

        return step

    with Pool([make_cartpole] * num_envs, num_workers=1, step_in_parent=True, start_method="fork") as pool:
        pool.reset()
        out["pool in-process, per command"] = timed(pool_step(pool), seconds, repeats)
    with SubprocVecEnv([make_cartpole] * num_envs, num_workers=1, step_in_parent=True, start_method="fork") as venv:
        venv.reset()

        def venv_step() -> None:
            venv.step(actions[k[0] & 255])
            k[0] += 1

        out["SB3 front-end in-process, per command"] = timed(venv_step, seconds, repeats)
    with Pool([make_null], num_workers=1, step_in_parent=False, start_method="fork") as pool:
        pool.reset()
        single = actions[:, :1]

        def handoff() -> None:
            pool.step_async(single[k[0] & 255])
            k[0] += 1
            pool.step_wait()

        out["hand-off to one worker (null env), per command"] = timed(handoff, seconds, repeats)
    with SubprocVecEnv([make_cartpole] * num_envs, start_method="fork") as venv:
        venv.reset()
        out[f"SubprocVecEnv defaults ({venv.pool.num_workers} shards), per command"] = timed(
            venv_step, seconds, repeats
        )
    out["ceiling: one plain loop per core, no engine, per env step"] = ceiling(num_envs, seconds, repeats)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.breakdown", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-envs", type=_cli.count, default=8)
    parser.add_argument("--seconds", type=_cli.seconds, default=0.5)
    parser.add_argument("--repeats", type=_cli.count, default=5)
    args = parser.parse_args(argv)
    facts = machine_facts()
    n = args.num_envs
    out = measure(n, args.seconds, args.repeats)
    us = {key: 1e6 * value for key, value in out.items()}
    keys = list(us)
    env, shard, pool, front, handoff, default, top = (us[key] for key in keys)
    print(
        f"{facts['cpu']}, {facts['cores']} cores, Python {facts['python']}, kernels {facts.get('kernels')}; {n} CartPole-v1 envs"
    )
    print()
    print("| layer | measured | its own cost |")
    print("|---|---:|---:|")
    print(f"| {keys[0]} | {env:.2f} us | {env:.2f} us per env step |")
    print(f"| {keys[1]} | {shard:.2f} us | {shard - env:.2f} us per env step |")
    print(f"| {keys[2]} | {pool:.1f} us | {pool - n * shard:.1f} us per command |")
    print(f"| {keys[3]} | {front:.1f} us | {front - pool:.1f} us per command |")
    print(f"| {keys[4]} | {handoff:.1f} us | {handoff:.1f} us per command |")
    print(
        f"| {keys[5]} | {default:.1f} us | {default / n:.2f} us per env step = {n / default * 1e6:,.0f} steps/s, "
        f"{env * n / default:.2f}x one env in one process |"
    )
    print(
        f"| {keys[6]} | {top:.2f} us | {1e6 / top:,.0f} steps/s, {env / top:.2f}x one env in one process; "
        f"the defaults reach {top * n / default:.0%} of it |"
    )


if __name__ == "__main__":
    main()
