"""Every setting of a training run: one frozen dataclass, parsed from the command line by tyro.

    python -m ppo.train --help                     # every field, its default and meaning
    python -m ppo.train --env-id Pendulum-v1 --num-envs 4 --num-steps 1024 --gamma 0.9

The defaults solve CartPole-v1 quickly in wall time on a 2-core machine. They start
from rl-zoo's tuned CartPole PPO (8 envs x 32 steps, one full-batch minibatch, gamma
0.98, GAE lambda 0.8, lr and clip decaying linearly, no entropy bonus) and trade its
20 epochs at lr 1e-3 for 4 epochs at lr 3e-3: on a 64-unit MLP one gradient step
costs about as much as 50 env steps, so gradient steps, not env steps, set the wall
time, and 4 larger steps learn about as much per sample as 20 small ones (measured on
seeds 1-8: all solved, in 72k-140k env steps, 98k on average; gamma 0.99, lambda 0.9 or
5 epochs at 2.5e-3 were within the seed-to-seed spread). The decays run over the whole
budget (CleanRL): a horizon shorter than the budget (rl-zoo decays over 100k steps)
saved ~15% of the steps when it worked, but freezes a run that has not solved by then.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Config", "REFERENCE_NUM_ENVS"]

# `scale_lr_with_num_envs` scales the learning rate linearly from this many envs.
REFERENCE_NUM_ENVS = 8
# torch.distributed holds a timeout in int64 nanoseconds (2**63 ns is 9.2e9 s): 1e10 s wrapped around and timed
# out at once
_MAX_COLLECTIVE_TIMEOUT_S = 9e9


@dataclass(frozen=True)
class Config:
    """PPO on fastvec's shared-memory vectorized envs."""

    # --- environment -----------------------------------------------------------------
    env_id: str = "CartPole-v1"
    """gymnasium id of the environment (``module:Id`` imports ``module`` first, as gymnasium.make does)"""
    num_envs: int = 8
    """number of parallel environments (per rank with --distributed)"""
    num_workers: int | None = None
    """fastvec shards stepping the envs (None: one per available core, the learner's process stepping one of
    them; 0: every env in the learner's process, no worker process: fastest for envs as cheap as CartPole)"""
    fastvec_config: str | None = None
    """JSON written by `python -m fastvec.tune` (its num_workers, step_in_parent, spin_ns, ... are used;
    --num-workers wins over its num_workers)"""
    start_method: Literal["fork", "forkserver", "spawn"] | None = None
    """how worker processes are started (None: fork on Linux, about a second sooner than forkserver: the workers
    never call torch or CUDA; the backend's default elsewhere)"""
    monitor: bool = False
    """run fastvec's monitor (re-pins lagging workers, moves envs off a lagging shard at episode ends);
    each shard's busy share goes to the progress view, metrics.csv and TensorBoard (fastvec/...)"""
    async_envs: bool = False
    """double-buffered sampling (fastvec only): the envs step in two halves, one half stepping while the
    policy computes the other half's actions (rlpyt's alternating sampler); the same samples per update
    (with Discrete actions the same run as without it; with Box actions torch draws a half's Gaussian noise
    in other numbers than the whole step's, so the run differs, not its distribution).
    It pays only with cores to spare: the learner stops stepping envs and calls the policy twice a step
    (a small MLP costs about as much for 4 observations as for 8), so on c cores a rollout step takes at
    least max(2 x policy, envs / (c - 1)) against policy + envs / c synchronously: never less on 2 cores
    (benchmarks/README.md, "Asynchronous batches"). Where the policy's time is close to the envs' per
    core, give the learner a core of its own with a --fastvec-config of {"pin": [1, 2, ...]} (with --distributed,
    cores of the rank's share, or --no-pin-rank-cores)"""
    vec_backend: Literal["fastvec", "sb3-subproc", "gym-async", "serial"] = "fastvec"
    """which vectorized-env engine steps the envs: fastvec (zero copy), SB3's SubprocVecEnv,
    gymnasium's AsyncVectorEnv, or gymnasium's SyncVectorEnv in this process"""

    # --- budget and stopping ---------------------------------------------------------------
    total_timesteps: int = 500_000
    """step budget (env steps summed over all envs, of all ranks with --distributed)"""
    solve_return: float | None = None
    """stop once the mean return of the last 100 episodes reaches this (None: the env's registered
    reward_threshold, 475 for CartPole-v1; envs without one train for the whole budget)"""
    stop_when_solved: bool = True
    """stop at solve_return instead of spending the whole budget"""

    # --- PPO -------------------------------------------------------------------------------
    num_steps: int = 32
    """steps per env per rollout (the rollout has num_envs * num_steps samples)"""
    learning_rate: float = 3e-3
    """Adam learning rate (initial value when annealed)"""
    scale_lr_with_num_envs: bool = False
    """the tutorial's linear scaling rule: lr = learning_rate * num_envs / 8 (8 envs is the reference; distributed,
    the envs of every rank count)"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over anneal_timesteps (PPO paper's Atari setting, rl-zoo)"""
    anneal_clip: bool = True
    """decay the clip coefficient linearly to 0 as well (rl-zoo's CartPole setting)"""
    anneal_timesteps: int | None = None
    """horizon of the linear decays, in env steps (None: total_timesteps); values stay at 0 after it"""
    gamma: float = 0.98
    """discount factor"""
    gae_lambda: float = 0.8
    """lambda of generalized advantage estimation"""
    num_minibatches: int = 1
    """minibatches per epoch (1: every epoch is one full-batch gradient step)"""
    update_epochs: int = 4
    """passes over each rollout"""
    norm_adv: bool = True
    """normalize advantages per minibatch"""
    clip_coef: float = 0.2
    """PPO's surrogate clipping coefficient epsilon"""
    clip_vloss: bool = False
    """clip the value loss around the rollout's values, with the same coefficient (off in SB3 by default)"""
    ent_coef: float = 0.0
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """global gradient norm clip"""
    target_kl: float | None = None
    """stop the update's epochs early once the approximate KL exceeds this (None: never)"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layers of the actor and of the critic MLPs (image observations use a CNN)"""

    # --- normalization ---------------------------------------------------------------------
    norm_obs: bool = False
    """normalize observations with running mean and variance (stats are part of the checkpoint); vectors only:
    image observations are scaled by 1/255"""
    norm_reward: bool = False
    """scale rewards by the running standard deviation of the discounted return (VecNormalize's statistics,
    updated once per rollout: a rollout's rewards are scaled with the statistics after it, where VecNormalize
    scales each step with those up to it)"""

    # --- machinery -------------------------------------------------------------------------
    seed: int = 1
    """seed of torch and numpy; env i is reset with seed + i (a resumed run: seed + its env steps so far + i; with
    --distributed: env i of rank r is global env r * num_envs + i, and ranks other than 0 seed torch and numpy with an
    independent stream derived from seed)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where the networks live (auto: cuda when available; a small MLP is often faster on the CPU)"""
    amp: bool = False
    """bfloat16 autocast for the networks; CUDA only, ignored on CPU"""
    torch_threads: int = 1
    """torch intra-op threads on CPU (small nets are fastest with 1; 0 keeps torch's default; at most 4 per
    core)"""

    # --- distributed (torchrun) -------------------------------------------------------------
    distributed: bool = False
    """data-parallel training over torch.distributed, launched by torchrun (or any launcher setting RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT): each rank steps its own num_envs envs, DistributedDataParallel
    averages the gradients, normalization statistics and episodes are shared; only rank 0 writes (ppo/distributed.py)"""
    collective_timeout_s: float = 300.0
    """--distributed: a collective that waits longer than this raises and ends the run, so a rank that died or
    hangs never leaves the others waiting forever (at most 9e9 s, about 285 years)"""
    pin_rank_cores: bool = True
    """--distributed: restrict local rank r of LOCAL_WORLD_SIZE ranks (and the env workers it starts) to the r-th
    contiguous share of the cores it may run on; turn off when the launcher binds ranks to cores itself"""
    check_replicas: bool = False
    """after every update, compare a SHA-256 of every rank's parameters and normalization statistics and stop
    with an error if a rank diverged; the digest goes to metrics.csv as replica_digest"""

    # --- output ----------------------------------------------------------------------------
    runs_dir: str = "runs"
    """directory holding one folder per run"""
    run_name: str | None = None
    """folder name of this run (None: <env>__<backend>__s<seed>__<time>); a folder that holds a run already
    is refused, unless --resume names it (or a checkpoint in it): the run then goes on in its folder"""
    checkpoint_interval: int = 0
    """save runs/<run>/latest.pt every this many iterations (0: only best.pt and final.pt at the end)"""
    resume: str | None = None
    """checkpoint file (or run folder, whose latest/final checkpoint is used) to continue from, up to
    --total-timesteps counted from step 0; with --run-name of its own folder, the run goes on in place
    (metrics.csv continued from the checkpoint's iteration, best.pt kept unless beaten)"""
    eval_episodes: int = 10
    """episodes of deterministic evaluation after training (0: skip)"""
    progress: bool = True
    """live progress bar (rich)"""
    tensorboard: bool = True
    """log to TensorBoard in runs/<run>/ as well as to metrics.csv"""

    # --- derived values ----------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Samples per rollout (of one rank with --distributed)."""
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        """Rollout + update cycles in the budget (at least one)."""
        return max(1, math.ceil(self.total_timesteps / self.batch_size))

    def effective_learning_rate(self, world_size: int = 1) -> float:
        """The initial learning rate after the optional linear scaling with the number of envs of the
        whole run (``num_envs`` per rank times the ranks: 2 x 4 envs train as 1 x 8)."""
        if self.scale_lr_with_num_envs:
            return self.learning_rate * self.num_envs * world_size / REFERENCE_NUM_ENVS
        return self.learning_rate

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together."""
        if self.num_envs < 1 or self.num_steps < 1:
            raise ValueError(f"num_envs and num_steps must be >= 1, got {self.num_envs} and {self.num_steps}")
        if not 1 <= self.num_minibatches <= self.batch_size:
            raise ValueError(f"num_minibatches must be in 1..batch_size={self.batch_size}, got {self.num_minibatches}")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"batch_size = num_envs * num_steps = {self.batch_size} is not divisible by "
                f"num_minibatches = {self.num_minibatches}"
            )
        if self.update_epochs < 1:
            raise ValueError(f"update_epochs must be >= 1, got {self.update_epochs}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gamma and gae_lambda must be in [0, 1], got {self.gamma} and {self.gae_lambda}")
        if self.total_timesteps < 1:
            raise ValueError(f"total_timesteps must be >= 1, got {self.total_timesteps}")
        # (a NaN fails every comparison: each range is written so that NaN is refused too)
        for name, low, strict in (
            ("learning_rate", 0.0, True),
            ("max_grad_norm", 0.0, True),  # (a negative one flips the gradients' sign in clip_grad_norm_)
            ("clip_coef", 0.0, False),
            ("vf_coef", 0.0, False),
            ("collective_timeout_s", 0.0, True),
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > low if strict else value >= low)):
                raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value}")
        if not math.isfinite(self.ent_coef):
            raise ValueError(f"ent_coef must be a finite number, got {self.ent_coef}")
        if self.target_kl is not None and not (math.isfinite(self.target_kl) and self.target_kl > 0):
            raise ValueError(f"target_kl must be a finite number > 0 or None, got {self.target_kl}")
        if self.solve_return is not None and math.isnan(self.solve_return):
            raise ValueError("solve_return must be a number or None, got nan")
        if not self.collective_timeout_s <= _MAX_COLLECTIVE_TIMEOUT_S:
            raise ValueError(
                f"collective_timeout_s must be at most 9e9 s (about 285 years: torch.distributed "
                f"counts it in int64 nanoseconds, and a larger value wraps around), got {self.collective_timeout_s:g}"
            )
        if not self.hidden_sizes or any(not 1 <= size < 2**63 for size in self.hidden_sizes):  # (torch's sizes are int64)
            raise ValueError(f"hidden_sizes must be one or more layer widths >= 1 (and < 2**63), got {self.hidden_sizes}")
        if self.num_workers is not None and self.num_workers < 0:  # (fastvec's own message says "positive": 0 is ppo's)
            raise ValueError(f"num_workers must be >= 0 (0: every env in the learner's process) or unset, got {self.num_workers}")
        for name in ("checkpoint_interval", "eval_episodes", "torch_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.async_envs:
            if self.vec_backend != "fastvec":
                raise ValueError(f"async_envs needs the fastvec backend, not {self.vec_backend!r}")
            if self.num_envs < 2 or self.num_envs % 2:
                raise ValueError(f"async_envs steps the envs in two halves: num_envs must be even, got {self.num_envs}")
            if self.num_workers is not None and (self.num_workers < 2 or self.num_workers % 2 or self.num_envs % self.num_workers):
                raise ValueError(
                    f"async_envs: num_workers must be even and divide num_envs={self.num_envs} (each half is whole "
                    f"workers' envs), got {self.num_workers}"
                )
        if self.anneal_timesteps is not None and self.anneal_timesteps < 1:
            raise ValueError(f"anneal_timesteps must be >= 1 or None, got {self.anneal_timesteps}")

    def nested_run_name(self) -> bool:
        """Whether ``run_name`` is a nested one (``exp/seed0``), which an older version accepted: kept only to resume
        such a run in place (its folder is checked where the run's folder is made, on rank 0's machine)."""
        return self.run_name is not None and ("/" in self.run_name or os.sep in self.run_name)

    def run_name_error(self) -> ValueError:
        return ValueError(
            f"run_name must be one folder name (no '/', not '.' or '..', at most 255 bytes): the run's folder in "
            f"runs_dir, got {self.run_name!r}"
        )

    def validate_new_run(self) -> None:
        """What a run started now must also meet (validate's checks aside): not asked of the config.json of a run
        written before these rules, which ``ppo.eval`` reads."""
        self.validate()
        if self.solve_return is not None and not math.isfinite(self.solve_return):
            # (inf is no threshold any run reaches, -inf one every run does; summary.json writes either as null, "no
            # threshold", which a resume of the finished run then read back wrongly)
            raise ValueError(f"solve_return must be a finite number or None, got {self.solve_return}")
        if self.run_name is None:
            return
        if self.nested_run_name():
            # (a run an older version wrote under a nested name resumes in place: each part a folder name, none
            # leaving runs_dir; whether the folder holds that run is for rank 0 to say, whose machine has it)
            parts = self.run_name.replace(os.sep, "/").split("/")
            if self.resume is None or any(part in ("", ".", "..") or len(os.fsencode(part)) > 255 for part in parts):
                raise self.run_name_error()
        elif self.run_name in ("", ".", "..") or len(os.fsencode(self.run_name)) > 255:
            raise self.run_name_error()

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """Inverse of to_dict; unknown keys (from other versions) are ignored. A value its field cannot hold (a
        config.json edited by hand) raises ValueError naming the key; the settings' ranges are validate()'s."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in names:
                continue
            kwargs[key] = _as_field(hints[key], value)
            if kwargs[key] is _MISFIT:  # (it failed later, outside the caller's try: a traceback naming no key)
                raise ValueError(f"{key}: expected {_describe(hints[key])}, got {_json(value)}")
        return cls(**kwargs)


_MISFIT = object()  # what _as_field returns for a value its type cannot hold


def _as_field(hint: Any, value: Any) -> Any:
    """``value`` (as JSON gives it) as a field of type ``hint`` holds it: a list as a tuple, an int as a float;
    _MISFIT for a value of another type (a bool is no int, though Python's bool is one)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return next((v for v in (_as_field(arg, value) for arg in args) if v is not _MISFIT), _MISFIT)
    if hint is type(None):
        return None if value is None else _MISFIT
    if origin is Literal:
        return value if any(type(value) is type(choice) and value == choice for choice in args) else _MISFIT
    if origin is tuple:  # (tuple[int, ...]: the only tuple field)
        if not isinstance(value, (list, tuple)):
            return _MISFIT
        items = [_as_field(args[0], item) for item in value]
        return _MISFIT if any(item is _MISFIT for item in items) else tuple(items)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return _MISFIT
    if hint in (bool, int, float, str):
        return value if type(value) is hint else _MISFIT
    raise TypeError(f"Config.from_dict reads no field of type {hint}")  # (a field of a new type: teach it here)


def _json(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):  # (from_dict called with Python objects)
        return repr(value)


def _describe(hint: Any) -> str:
    """What a field of type ``hint`` takes, in JSON's words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(choice) for choice in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names[hint]
