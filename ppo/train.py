"""PPO (Schulman et al. 2017) on fastvec's shared-memory envs: ``python -m ppo.train``.

With no arguments it trains CartPole-v1 on 8 fastvec envs until the mean return of
the last 100 episodes reaches 475 (solved) or the step budget ends, and says which.

The loop is CleanRL's ``ppo.py`` split into named phases; one iteration is

    anneal lr / clip -> collect_rollout -> evaluate_rollout -> compute_advantages -> update -> log

The rollout is not copied out of the env engine: observations, rewards and done
flags stay in fastvec's shared-memory ring (``ppo.storage``). Each step the policy
reads the newest ring slot in place; after the rollout its observations are gathered
from the ring once, in sample order, for one batched pass of the old policy (log-probs
and values: the same parameters as during the rollout, in a few large ops instead of
many small ones per step) and for every epoch of the update. Other engines
(``--vec-backend``) copy into a ring of the same shape, so the comparison is of
engines, not of trainers.

Output, in runs/<run>/: config.json, metrics.csv, TensorBoard events, best.pt and
final.pt (state dicts; ``torch.load(..., weights_only=True)``), learning_curve.png and
summary.json.

``torchrun --nproc-per-node=P -m ppo.train --distributed`` trains data-parallel: every
rank runs this same loop on its own envs, and a few calls into ``ppo.distributed``
(marked "distributed:" below) share what must be shared; see that module.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import itertools
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ppo.agent import Agent, is_image_space
from ppo.backends import Backend, _kill_workers, make_backend
from ppo.checkpoint import (
    CHECKPOINT_NAMES,
    checkpoint_step,
    cuda_rng_state,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ppo.config import Config
from ppo.distributed import Distributed, pin_to_core_share, state_digest
from ppo.episodes import EpisodeTracker
from ppo.errors import SetupError, SpaceError, allocating, first_line
from ppo.gae import compute_gae
from ppo.logger import RunLogger, plot_learning_curve
from ppo.loss import clipped_policy_loss, value_loss
from ppo.normalize import RunningMeanStd
from ppo.storage import RolloutStorage

__all__ = ["Trainer", "train", "main", "resolve_device", "device_note", "solve_threshold"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def device_note(asked: str, device: torch.device, observation_space: gym.Space) -> str | None:
    """What to tell a user whom ``--device auto`` put on CUDA with an MLP policy (vector observations),
    as SB3 warns: such a small network is usually faster on the CPU."""
    if asked != "auto" or device.type != "cuda" or is_image_space(observation_space):
        return None
    return (
        "note: --device auto chose CUDA for an MLP policy, which often trains slower there than on the CPU "
        "(on the lent H200 machine one policy call for 64 CartPole observations took 166 us on CUDA and 55 us "
        "on a CPU core: benchmarks/README.md); pass --device cpu to compare"
    )


def solve_threshold(config: Config) -> float | None:
    """config.solve_return, else the env's registered reward_threshold (475 for CartPole-v1), else None."""
    if config.solve_return is not None:
        return config.solve_return
    env_id = config.env_id
    try:
        if ":" in env_id:  # "module:env-id", as gym.make takes it: the module registers the env
            module, env_id = env_id.split(":", 1)
            importlib.import_module(module)
        threshold = gym.spec(env_id).reward_threshold
    except Exception:
        return None
    return None if threshold is None else float(threshold)


def _run_dir(config: Config) -> Path:
    """The run's folder, made. A ``--run-name`` whose folder holds a run already is refused, unless this run
    resumes that one in place (``--resume`` its folder or a checkpoint in it): a new run there erased its
    metrics and left its latest.pt, which ``--resume`` of the folder then took for the new run's."""
    env = config.env_id.replace("/", "-").replace(":", "-")
    name = config.run_name or f"{env}__{config.vec_backend}__s{config.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(config.runs_dir) / name
    if config.run_name is not None:
        if config.nested_run_name() and not (_holds_run(path) and resumes_in_place(config, path)):
            raise config.run_name_error()  # (a nested name only resumes, in place, a run an older version wrote)
        if _holds_run(path) and not resumes_in_place(config, path):
            if not any((path / checkpoint).is_file() for checkpoint in CHECKPOINT_NAMES):
                raise FileExistsError(
                    f"--run-name {config.run_name}: {path} holds a run that stopped before its first checkpoint (so it "
                    "cannot be resumed); give another --run-name, or remove that folder"
                )
            raise FileExistsError(
                f"--run-name {config.run_name}: {path} holds a run already; give another --run-name, or continue "
                f"that run in its folder with --resume {path} --run-name {config.run_name}"
            )
        path.mkdir(parents=True, exist_ok=True)
        return path
    # two runs started in the same second must not share a folder: whichever makes a name first owns it
    path.parent.mkdir(parents=True, exist_ok=True)
    base, k = path, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, k = Path(f"{base}-{k}"), k + 1


def _summary_of(run_dir: Path, global_step: int) -> dict[str, Any] | None:
    """The summary.json a run wrote when it ended at ``global_step`` (its nulls, returns never measured, read back
    as nan; its folder where it is now), or None: none, or one of an earlier part (a run interrupted before it
    wrote its own)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or "env_id" not in summary or summary.get("global_step") != global_step:
        return None
    summary = {k: math.nan if v is None and k == "mean_return_100" else v for k, v in summary.items()}
    return {**summary, "run_dir": str(run_dir)}


def _holds_run(path: Path) -> bool:
    """Whether folder ``path`` holds a run's files (its config, metrics or checkpoints)."""
    return path.is_dir() and any((path / name).exists() for name in ("config.json", "metrics.csv", *CHECKPOINT_NAMES))


def resumes_in_place(config: Config, path: Path) -> bool:
    """Whether ``config`` resumes the run of folder ``path`` in that folder: ``--resume`` names the folder or
    a checkpoint in it."""
    if config.resume is None:
        return False
    source = Path(config.resume).resolve()
    return path.resolve() in (source, source.parent if source.is_file() else None)


def _adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with eps=1e-5 as in the PPO baselines (CleanRL detail #3); fused (one kernel for all
    parameters) where this torch supports it on the device."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, eps=1e-5, fused=True)
    except (RuntimeError, TypeError, ValueError):  # torch < 2.4 has no fused Adam on CPU
        return torch.optim.Adam(params, lr=lr, eps=1e-5)


EPISODES_KEPT = 1_000_000  # finished episodes a checkpoint keeps for a resumed run (the most recent)

_UPDATE_STATS = (
    "entropy",
    "policy_loss",
    "value_loss",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "gradient_steps",
)


class Trainer:
    """One training run: the envs, the agent, the storage, and the phases of an iteration."""

    def __init__(self, config: Config):
        config.validate_new_run()
        self.config = config
        # distributed: this process's rank, from the launcher's environment (no communication yet)
        self.dist = Distributed.from_environment() if config.distributed else Distributed()
        # only rank 0 writes anything: logs, checkpoints, the progress bar; its run folder is made once the
        # envs, the networks and a resumed checkpoint are in place, so a run that cannot start leaves no folder
        # and overwrites no earlier run's config.json (a mistyped --env-id with an existing --run-name did)
        self.run_dir: Path | None = None
        self.in_place = False  # resuming the run of the run folder itself: its metrics and best.pt go on
        self.checkpoint: tuple[Path, int] | None = None  # the run folder's newest checkpoint to resume from, and its step
        self.resumed_at: int | None = None  # the step a resumed run started from
        # a resumed run whose checkpoint finished it: its budget trained, or the task solved (against this run's
        # threshold) with stop_when_solved. Nothing is trained. (Decided at the resume: a part that gets solved
        # itself trained.)
        self.done_before = False
        self.resumed_episodes = False  # whether its checkpoint held the finished episodes
        self.wall_offset = 0.0  # a resumed run's: the training time before its checkpoint (wall_s goes on from it)

        # Seeding: same seed, same run on CPU (CleanRL's torch_deterministic); every rank samples its own actions
        seed = self.dist.seed(config.seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        torch.backends.cudnn.deterministic = True
        self.device = self.dist.device(resolve_device(config.device), chosen=config.device != "auto")
        if self.device.type == "cpu" and config.torch_threads > 0:
            # (checked here, not in Config.validate: a run's config is evaluated on other machines too; 2**31 threads
            # said "Overflow when unpacking long", and 100,000 crashed torch's first parallel op)
            # (more threads than cores is legal, if slow: a bound of 4 per core refuses only the absurd)
            most = 4 * (os.cpu_count() or 1)
            if config.torch_threads > most:
                raise ValueError(
                    f"torch_threads must be at most {most} (4 per core of this machine's {most // 4}), got {config.torch_threads}"
                )
            torch.set_num_threads(config.torch_threads)  # small nets: threads cost more than they give
        self.amp = config.amp and self.device.type == "cuda"
        # bfloat16 autocast on CUDA with --amp (no GradScaler needed: bf16 has float32's range)
        self.autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if self.amp else contextlib.nullcontext
        if config.amp and not self.amp and self.dist.is_main:
            print("note: --amp only applies on CUDA; training in float32", file=sys.stderr)
        self.solve_return = solve_threshold(config)
        rank_cores = None
        if config.distributed and config.pin_rank_cores:
            # distributed: ranks on one machine split its cores, before the pool starts workers that inherit them
            rank_cores = pin_to_core_share(self.dist.local_rank, self.dist.local_world_size)

        # The engine runs with S = num_steps + 1 ring slots: one whole rollout plus the
        # observation after it stays in place until the update has used it.
        self.backend: Backend = make_backend(
            config.vec_backend,
            config.env_id,
            config.num_envs,
            config.num_steps + 1,
            num_workers=config.num_workers,
            # fork: the workers never call torch or CUDA, and the threads this process may have
            # (OpenBLAS's, which handles fork; CUDA's driver's after a GPU is found) do nothing in them,
            # as with torch's DataLoader workers; about a second sooner than forkserver
            start_method=config.start_method,
            default_start_method="fork" if sys.platform == "linux" else None,  # (where the fastvec config names none)
            pin=self.device.type == "cuda",
            fastvec_config=config.fastvec_config,
            monitor=config.monitor,
            async_envs=config.async_envs,
            rank_cores=rank_cores,
        )
        self.storage: RolloutStorage | None = None
        self.logger: RunLogger | None = None
        try:
            if config.distributed:
                # distributed: join the process group only now, after the pool forked its workers (no thread
                # before a fork); every collective from here on gives up after collective_timeout_s
                self.dist.connect(self.device, config.collective_timeout_s)
            self._setup()
            error: Exception | None = None
            if self.dist.is_main:
                try:
                    self.run_dir = _run_dir(config)
                    self.in_place = resumes_in_place(config, self.run_dir)
                    if not self._nothing_to_train_in_place():  # (then the run's files stay as they are)
                        with open(self.run_dir / "config.json", "w") as f:
                            json.dump(config.to_dict(), f, indent=2)
                except Exception as exc:
                    error = exc
            # distributed: every rank learns whether rank 0 made the run folder (else they trained on, and died
            # in the first collective with a traceback)
            self.in_place = self.dist.agree(error, "make the run folder", self.in_place)
        except BaseException as exc:
            self.close(abort=isinstance(exc, (KeyboardInterrupt, SystemExit)))
            raise

    def _setup(self) -> None:
        config, backend, device = self.config, self.backend, self.device
        note = device_note(config.device, device, backend.observation_space)
        if note and self.dist.is_main:
            print(note, file=sys.stderr)
        self.agent = Agent(backend.observation_space, backend.action_space, config.hidden_sizes, config.norm_obs).to(
            device
        )
        if config.norm_obs and self.agent.image and self.dist.is_main:
            print("note: --norm-obs does not apply to image observations: the CNN scales pixels by 1/255", file=sys.stderr)
        self.optimizer = _adam(self.agent.parameters(), config.effective_learning_rate(self.dist.world_size))
        self.reward_rms = RunningMeanStd(()) if config.norm_reward else None
        self.discounted_returns = np.zeros(config.num_envs)  # for reward scaling (as VecNormalize)
        # ... and its values over the rollout: the statistics take them in one batch after it
        self.rollout_discounted_returns = torch.zeros(config.num_steps, config.num_envs, dtype=torch.float64)
        self.global_step = 0
        self.iteration = 0
        self.solved_at: tuple[int, float] | None = None  # (global step, seconds since the first step)
        self._start = time.perf_counter()
        self.episodes = EpisodeTracker(config.num_envs)  # what is logged and decides "solved"
        # distributed: this rank's envs; their finished episodes join every rank's in self.episodes after each rollout
        self.rank_episodes = EpisodeTracker(config.num_envs) if self.dist.enabled else self.episodes
        if config.resume:
            # distributed: rank 0 reads the checkpoint and every rank loads the same bytes
            source = self.dist.broadcast_checkpoint(config.resume)
            # one process: the checkpoint's generator. Distributed: each rank its own generator, from the
            # checkpoint's per-rank states when it has one per rank, else rank 0 takes the checkpoint's (that of
            # its rank 0, or of the single process, whose seed is rank 0's: a 1-rank resume is the plain resume)
            # and the other ranks keep their fresh seeds
            try:
                state = load_checkpoint(
                    source,
                    self.agent,
                    self.optimizer,
                    self.reward_rms,
                    map_location=device,
                    restore_rng=not self.dist.enabled,
                    config=config.to_dict(),
                )
            except ValueError as exc:  # a checkpoint of another network, named by the path given
                raise ValueError(f"--resume {config.resume}: {exc}") from None
            if self.dist.enabled:
                self.dist.restore_rng_state(state.get("torch_rng_states"), state.get("torch_rng_state"))
                if self.device.type == "cuda":  # (the actions drawn on the GPU; load_checkpoint sets one process's)
                    self.dist.restore_rng_state(
                        state.get("cuda_rng_states"),
                        state.get("cuda_rng_state"),
                        functools.partial(torch.cuda.set_rng_state, device=self.device),
                        warn=False,
                    )
            self.global_step, self.iteration = int(state["global_step"]), int(state["iteration"])
            self.resumed_at = self.global_step
            self.wall_offset = float(state.get("wall_s", 0.0))
            episodes = state.get("episodes")  # (a checkpoint written before they were kept has none)
            self.resumed_episodes = episodes is not None
            if episodes is not None:
                self.episodes.restore(
                    int(episodes["count"]), episodes["steps"].numpy(), episodes["returns"].numpy(), episodes["lengths"].numpy()
                )
            # (a "solved" measured against another threshold is not this run's: it is looked for again)
            if state.get("solved_at") is not None and state.get("solve_return") == self.solve_return:
                step, wall = state["solved_at"]
                self.solved_at = (int(step), float(wall))
            # (another threshold that the restored episodes already meet: solved at the resume, not after the next
            # episode ends, and a run that ended none said "NOT SOLVED ... 22.3 (< 10)")
            self._check_solved()
            spent = self.global_step >= config.total_timesteps
            self.done_before = spent or (self.solved_at is not None and config.stop_when_solved)
            if spent and self.dist.is_main:  # (the run still writes its files)
                print(
                    f"note: --resume {config.resume} has trained {self.global_step:,} steps, the whole budget "
                    f"(--total-timesteps {config.total_timesteps:,}): nothing to train; pass a larger "
                    "--total-timesteps to train on",
                    file=sys.stderr,
                )
            elif self.done_before and self.dist.is_main:
                print(
                    f"note: --resume {config.resume} solved {config.env_id} at step {self.solved_at[0]:,} "  # type: ignore[index]
                    "and --stop-when-solved is on: nothing to train; pass --no-stop-when-solved to train on",
                    file=sys.stderr,
                )
        # distributed: the update's forward runs through DistributedDataParallel, which averages the gradients
        # (and starts every rank from rank 0's parameters); the plain agent when not distributed
        self.policy = self.dist.wrap(self.agent)

        action_space = backend.action_space
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        action_dtype = torch.int64 if self.discrete else torch.float32
        if not self.discrete:  # the policy's Gaussian is unbounded: clip what the env gets (SB3 does too)
            self.action_low = torch.as_tensor(action_space.low, dtype=torch.float32, device=device)
            self.action_high = torch.as_tensor(action_space.high, dtype=torch.float32, device=device)
        with allocating(
            f"num_steps={config.num_steps} x num_envs={config.num_envs}: the rollout storage (actions of shape "
            f"{tuple(self.agent.action_shape)})"
        ):
            self.storage = RolloutStorage(backend.ring, config.num_steps, self.agent.action_shape, action_dtype, device)
        # numpy views of the ring for per-step bookkeeping (no copy, no torch dispatch)
        ring = backend.ring
        self.rewards_np = ring.rewards.numpy()
        self.terminated_np = ring.terminated.numpy()
        self.truncated_np = ring.truncated.numpy()

        # env i gets seed + i: never one seed for all envs (a resumed run starts fresh episodes);
        # distributed: distinct over all ranks' envs too
        self.slot = backend.reset(self.dist.env_seeds(config.seed, config.num_envs, self.global_step))
        self.storage.arrived(self.slot)

    # -- phase 1: collect a rollout ---------------------------------------------------------------
    def _env_action(self, action: torch.Tensor) -> np.ndarray:
        if not self.discrete:
            action = torch.clamp(action, self.action_low, self.action_high)
        return action.cpu().numpy()

    def collect_rollout(self) -> bool:
        """Step all envs num_steps times with the current policy.

        Returns True when the task got solved and the run should stop now (``stop_when_solved``):
        the rest of the rollout would not be used.
        """
        config, agent, storage, backend = self.config, self.agent, self.storage, self.backend
        storage.begin(self.slot)
        if config.async_envs:
            return self._collect_rollout_async()
        for t in range(config.num_steps):
            with torch.no_grad(), self.autocast():
                action = agent.sample(storage.obs_at(t))  # log-probs and values come in evaluate_rollout
            storage.actions[t] = action

            self.slot = slot = backend.step(self._env_action(action))
            storage.arrived(slot)
            self.global_step += config.num_envs * self.dist.world_size  # every rank stepped its envs

            rewards, terminated, truncated = self.rewards_np[slot], self.terminated_np[slot], self.truncated_np[slot]
            done = terminated | truncated
            if self.reward_rms is not None:
                # running discounted return per env; its variance scales the rewards (as VecNormalize)
                self.discounted_returns = self.discounted_returns * config.gamma + rewards
                self.rollout_discounted_returns[t] = torch.from_numpy(self.discounted_returns)
                self.discounted_returns[done] = 0.0
            if not done.any():
                self.rank_episodes.step(rewards, done, self.global_step)
                continue
            # Time-limit truncation: the episode did not end in the MDP, so its return is
            # bootstrapped with V(final observation) (Pardo et al. 2018; SB3's
            # terminal_observation handling). The final observation is only in the ring
            # until the next step, so evaluate it now.
            cut = truncated & ~terminated
            if cut.any():
                envs = torch.from_numpy(np.flatnonzero(cut))
                final_obs = backend.ring.terminal_obs.index_select(0, envs).to(self.device)
                with torch.no_grad(), self.autocast():
                    storage.terminal_values[t, envs.to(self.device)] = agent.value(final_obs).float()
            self.rank_episodes.step(rewards, done, self.global_step)
            # distributed: all ranks must stop at the same iteration, so "solved" is decided after the
            # rollout from every rank's episodes (share_episodes), not here from this rank's alone
            if not self.dist.enabled and self._check_solved():
                return True
        return False

    def _collect_rollout_async(self) -> bool:
        """``collect_rollout`` double-buffered (async_envs): the envs step in halves; while one half steps,
        the policy computes the other half's actions. Each env still takes num_steps steps with the
        rollout's policy, and each half advances its own ring slot one per step, so step t of every env
        lands in the slot it does in synchronous mode: the storage, the advantages and the update are
        the same. Returns True when the task got solved (after the envs still stepping have finished).

        A half is one or more groups (a worker's envs: smaller groups where there are cores for them).
        Halves are taken in the order they were sent, each once all its groups are back, whichever
        finished first: the random draws, the episodes' order and the policy's batches (one call per
        half) do not depend on timing, so the same seed gives the same run."""
        config, agent, storage, backend = self.config, self.agent, self.storage, self.backend
        num_steps, gamma = config.num_steps, config.gamma
        t_env = np.zeros(config.num_envs, dtype=np.int64)  # per env: the step whose action it needs next
        half = config.num_envs // 2
        sent: collections.deque = collections.deque()  # per half sent, its groups' first envs, in sending order
        held: dict[int, tuple] = {}  # first env -> (slot, stop, rewards, terminated, truncated) received
        # every env's first observation is in the rollout's first slot: send one half, then the other
        for ids in (np.arange(half), np.arange(half, config.num_envs)):
            self._act_async(ids, storage.slot(0), t_env, sent)
        running, solved = config.num_envs, False
        ended_in_step = False  # whether an env of the step the halves are taking ended an episode
        # the generators (the CPU's; on a GPU the device's too, which the actions draw from) before the first
        # half's latest actions
        rng_before_step: tuple | None = None
        may_stop = config.stop_when_solved and self.solve_return is not None and not self.dist.enabled
        while running:
            while not all(first in held for first in sent[0]):
                batch = backend.recv()
                at = 0
                for slot, start, stop in batch.parts:
                    rows = slice(at, at + stop - start)
                    held[start] = (slot, stop, batch.rewards[rows], batch.terminated[rows], batch.truncated[rows])
                    at += stop - start
            firsts = sent.popleft()
            groups = [held.pop(first) for first in firsts]
            # a half's groups are consecutive envs that took the same step, so their results share a slot
            slot, start, stop = groups[0][0], firsts[0], groups[-1][1]
            rewards, terminated, truncated = (
                (groups[0][k] if len(groups) == 1 else np.concatenate([g[k] for g in groups])) for k in (2, 3, 4)
            )
            ids = np.arange(start, stop)
            if solved:  # sent before the solve, which a synchronous run stops at: received (the pool idle), not counted
                running -= len(ids)
                continue
            t = t_env[ids]  # the step each of these envs just took (their results are in slot(t + 1))
            storage.arrived_rows(slot, start, stop)
            self.global_step += len(ids) * self.dist.world_size
            # the halves come in sending order (the first, then the second, per step): once every env took step
            # t, global_step is what a synchronous run's is after it, and the episodes a half ends get that step
            step_done_at = self.global_step + (config.num_envs - stop) * self.dist.world_size
            done = terminated | truncated
            if self.reward_rms is not None:
                self.discounted_returns[ids] = self.discounted_returns[ids] * gamma + rewards
                self.rollout_discounted_returns[torch.from_numpy(t), torch.from_numpy(ids)] = torch.from_numpy(
                    self.discounted_returns[ids]
                )
                self.discounted_returns[ids[done]] = 0.0
            cut = truncated & ~terminated
            if cut.any():  # bootstrap truncated episodes with V(final observation), as collect_rollout
                envs = torch.from_numpy(ids[cut])
                final_obs = backend.ring.terminal_obs.index_select(0, envs).to(self.device)
                with torch.no_grad(), self.autocast():
                    values = agent.value(final_obs).float()
                storage.terminal_values[torch.from_numpy(t[cut]).to(self.device), envs.to(self.device)] = values
            self.rank_episodes.step(rewards, done, step_done_at, envs=ids)
            ended_in_step = ended_in_step or bool(done.any())
            if stop == config.num_envs:
                # "solved" is looked at once every env took the step, as collect_rollout does: after the first
                # half alone, the window of 100 episodes holds another set of episodes than any synchronous step's
                if ended_in_step and not self.dist.enabled and self._check_solved():
                    solved = True  # stop: send nothing more, receive what still steps
                    if rng_before_step is not None:
                        torch.set_rng_state(rng_before_step[0])
                        if rng_before_step[1] is not None:
                            torch.cuda.set_rng_state(rng_before_step[1], self.device)
                ended_in_step = False
            t_env[ids] = t + 1
            running -= len(ids)
            if start == 0 and may_stop and self.solved_at is None:
                # the generators before the next step's draws: a solve after the second half undoes them, so the
                # run stops with a synchronous run's generators (its checkpoint keeps them)
                rng_before_step = (torch.get_rng_state(), cuda_rng_state(self.device))
            # the half, with steps left, acts on the observations just written
            if not solved and t_env[start] < num_steps:
                self._act_async(ids, slot, t_env, sent)
                running += len(ids)
        self.slot = storage.slot(num_steps)  # where every env's last observation is, as after a sync rollout
        return solved

    def _act_async(self, ids: np.ndarray, slot: int, t_env: np.ndarray, sent: collections.deque) -> None:
        """Sample actions for the consecutive envs ``ids`` (observations in ``slot``) at their steps
        ``t_env[ids]``, in one policy call; send them (the first envs of their groups join ``sent``)."""
        storage = self.storage
        with torch.no_grad(), self.autocast():
            action = self.agent.sample(storage.rows(slot, int(ids[0]), int(ids[-1]) + 1))
        steps = torch.from_numpy(t_env[ids]).to(storage.device)
        storage.actions[steps, torch.from_numpy(ids).to(storage.device)] = action
        self.backend.send(self._env_action(action), ids)  # type: ignore[attr-defined]
        group = self.backend.group_size  # type: ignore[attr-defined]
        sent.append(list(range(int(ids[0]), int(ids[-1]) + 1, group)))

    def share_episodes(self) -> bool:
        """Distributed: add every rank's episodes of this rollout to ``self.episodes`` (on every rank, so all
        log the same figures and take the same decision). Returns True when the run should stop now."""
        self.episodes.record(*self.dist.gather_episodes(*self.rank_episodes.take_new()))
        return self._check_solved()

    def _check_solved(self) -> bool:
        """Note when the task first got solved; True when the run should stop now (``stop_when_solved``)."""
        if self.solved_at is None and self._solved():
            self.solved_at = (self.global_step, self.wall_offset + time.perf_counter() - self._start)
            return self.config.stop_when_solved
        return False

    def _solved(self) -> bool:
        """The mean return of the last 100 episodes reached the threshold."""
        return self.solve_return is not None and self.episodes.full and self.episodes.mean_return() >= self.solve_return

    # -- phase 2: the old policy on the whole rollout ------------------------------------------------
    def evaluate_rollout(self) -> tuple[torch.Tensor, float]:
        """Gather the rollout's observations from the ring (time-major, ``[T * N, *obs_shape]``) and fill
        the storage's log-probs and values with one batched pass of the policy that collected them.
        Returns (observations, mean policy entropy)."""
        storage = self.storage
        b_obs = storage.rollout_obs()
        b_actions = storage.actions.reshape(-1, *storage.actions.shape[2:])
        with torch.no_grad(), self.autocast():
            log_probs, entropy, values = self.agent.evaluate(b_obs, b_actions)
        storage.log_probs.copy_(log_probs.view_as(storage.log_probs))
        storage.values.copy_(values.view_as(storage.values))
        return b_obs, float(self.dist.average(entropy.float().mean()))  # distributed: over all ranks

    # -- phase 3: advantages ----------------------------------------------------------------------
    def compute_advantages(self) -> tuple[torch.Tensor, torch.Tensor]:
        config, storage = self.config, self.storage
        rewards, terminated, truncated = storage.results()
        if self.reward_rms is not None:
            # One update with the rollout's discounted returns gives the statistics one per step would (Chan's
            # combination of batches is associative), and costs one collective per rollout when distributed.
            # The rollout's rewards are then all scaled with the statistics after it; VecNormalize scales
            # each step's with those up to that step (so its first steps, on little data, differ most)
            self.dist.update_running_stats(self.reward_rms, self.rollout_discounted_returns)
            rewards = self.reward_rms.scale(rewards)
        with torch.no_grad(), self.autocast():
            next_value = self.agent.value(storage.obs_at(config.num_steps)).float()
        return compute_gae(
            rewards,
            storage.values,
            next_value,
            terminated,
            truncated,
            storage.terminal_values,
            config.gamma,
            config.gae_lambda,
        )

    # -- phase 4: update ------------------------------------------------------------------------------
    def update(
        self, b_obs: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor, clip_coef: float
    ) -> dict[str, float]:
        """update_epochs passes of minibatch gradient steps on the clipped surrogate + value loss.

        ``b_obs``: the rollout's observations from evaluate_rollout, time-major like everything else.
        """
        config, agent, storage = self.config, self.agent, self.storage
        batch_size, minibatch_size = config.batch_size, config.minibatch_size
        b_actions = storage.actions.reshape(batch_size, *storage.actions.shape[2:])
        b_log_probs = storage.log_probs.reshape(-1)
        b_values = storage.values.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        full_batch = config.num_minibatches == 1
        # distributed: advantages are normalized over every rank's samples (what one process with the whole
        # batch would do), and self.policy is DDP, whose backward averages the gradients over ranks
        normalize = self.dist.normalize_advantages
        if full_batch and config.norm_adv:  # one minibatch: its normalization is the same every epoch
            b_advantages = normalize(b_advantages)
        with_entropy = config.ent_coef != 0.0
        params = list(agent.parameters())
        sums = torch.zeros(4, device=self.device)  # policy loss, value loss, approx kl, clip fraction
        steps = 0
        for _epoch in range(config.update_epochs):
            order = None if full_batch else torch.randperm(batch_size, device=self.device)
            for start in range(0, batch_size, minibatch_size):
                mb: Any = slice(None) if order is None else order[start : start + minibatch_size]
                with self.autocast():
                    new_log_prob, entropy, new_value = self.policy(b_obs[mb], b_actions[mb], with_entropy)
                new_log_prob, new_value = new_log_prob.float(), new_value.float()
                mb_advantages = b_advantages[mb]
                if config.norm_adv and not full_batch:  # per-minibatch advantage normalization (CleanRL detail #7)
                    mb_advantages = normalize(mb_advantages)
                pg_loss, approx_kl, clip_fraction = clipped_policy_loss(
                    new_log_prob, b_log_probs[mb], mb_advantages, clip_coef
                )
                v_loss = value_loss(new_value, b_values[mb], b_returns[mb], clip_coef if config.clip_vloss else None)
                loss = pg_loss + config.vf_coef * v_loss
                if entropy is not None:  # the entropy bonus (skipped, not multiplied by 0, when ent_coef is 0)
                    loss = loss - config.ent_coef * entropy.float().mean()

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, config.max_grad_norm)  # global norm clip (detail #11)
                self.optimizer.step()
                sums += torch.stack([pg_loss.detach(), v_loss.detach(), approx_kl, clip_fraction])
                steps += 1
            # early stop of the epochs (detail #12); distributed: on the KL over all ranks, so all stop together
            if config.target_kl is not None and self.dist.average(approx_kl).item() > config.target_kl:
                break
        with torch.no_grad():
            # logged figures, as means over all ranks (distributed: one collective; the ranks' equal
            # sample counts make the mean of their means the mean over the whole batch)
            errors = (b_returns - b_values).double()
            moments = [
                b_returns.double().mean(),
                b_returns.double().square().mean(),
                errors.mean(),
                errors.square().mean(),
            ]
            means = self.dist.average(torch.cat([(sums / steps).double(), torch.stack(moments)])).tolist()
        returns_mean, returns_square, errors_mean, errors_square = means[4:]
        variance = returns_square - returns_mean**2
        explained = 1.0 - (errors_square - errors_mean**2) / variance if variance > 0 else math.nan
        return {  # the keys of _UPDATE_STATS, but entropy (from evaluate_rollout)
            "policy_loss": means[0],
            "value_loss": means[1],
            "approx_kl": means[2],
            "clip_fraction": means[3],
            "explained_variance": float(explained),
            "gradient_steps": steps,
        }

    def _update_obs_rms(self, b_obs: torch.Tensor) -> None:
        # After the update, so a rollout and its update see the same statistics
        # (the ratio of new to old log-probs starts at exactly 1).
        if self.agent.obs_rms is not None:
            self.dist.update_running_stats(self.agent.obs_rms, b_obs)  # distributed: every rank's observations

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until solved or out of budget; write the run folder; return the summary."""
        config = self.config
        initial_lr = config.effective_learning_rate(self.dist.world_size)
        horizon = config.anneal_timesteps or config.total_timesteps
        if self.run_dir is not None and not self._nothing_to_train_in_place():  # (else not a file is written)
            self.logger = RunLogger(
                self.run_dir, config.total_timesteps, config.tensorboard, config.progress, f"PPO {config.env_id}",
                # in place: metrics.csv goes on from the checkpoint's iteration (rows logged after it, by a run
                # interrupted before its next checkpoint, are of a history this run replaces)
                continue_after=self.iteration if self.in_place else None,
                # (TensorBoard hides the discarded history's events from the first step this run logs on)
                purge_step=self.global_step + 1 if self.in_place else None,
            )
            if self.in_place:
                self._set_aside_replaced()
        # in place: the run's best.pt stays unless this part of the run beats it
        kept_best = self._kept_best()
        best_return, best_state, best_step = kept_best if kept_best is not None else -math.inf, None, 0
        self._start = start = time.perf_counter()
        start_step = self.global_step
        no_update = dict.fromkeys(_UPDATE_STATS, math.nan)
        while self.global_step < config.total_timesteps and not self.done_before:
            self.iteration += 1
            # Linear decay of lr (and clip) to 0 over the horizon (PPO paper's Atari setting; rl-zoo CartPole)
            remaining = max(0.0, 1.0 - self.global_step / horizon)
            lr = initial_lr * (remaining if config.anneal_lr else 1.0)
            clip_coef = config.clip_coef * (remaining if config.anneal_clip else 1.0)
            for group in self.optimizer.param_groups:
                group["lr"] = lr

            stop = self.collect_rollout()
            if self.dist.enabled:
                stop = self.share_episodes()
            stats = no_update
            if not stop:
                b_obs, entropy = self.evaluate_rollout()
                advantages, returns = self.compute_advantages()
                stats = {"entropy": entropy, **self.update(b_obs, advantages, returns, clip_coef)}
                self._update_obs_rms(b_obs)
                if config.check_replicas:
                    # distributed: every rank must hold the same parameters and statistics after the update
                    stats["replica_digest"] = digest = state_digest(self.agent, self.reward_rms)
                    self.dist.check_replicas(digest)

            elapsed = time.perf_counter() - start
            mean_return = self.episodes.mean_return()
            metrics: dict[str, Any] = {
                "iteration": self.iteration,
                "global_step": self.global_step,
                "wall_s": round(self.wall_offset + elapsed, 4),  # (a resumed run's: from its checkpoint's time on)
                "sps": (self.global_step - start_step) / max(elapsed, 1e-9),
                "mean_return_100": mean_return,
                "mean_length_100": self.episodes.mean_length(),
                "episodes": self.episodes.count,
                "learning_rate": lr,
                "clip_coef": clip_coef,
            }
            metrics.update(stats)
            if config.monitor:  # the engine's shards: how busy each was over this iteration
                metrics.update(self.backend.utilisation())
            if self.logger is not None:
                self.logger.log(metrics)
            if mean_return > best_return:  # kept in memory; written at checkpoints and at the end
                best_return, best_step = mean_return, self.global_step
                best_state = {k: v.detach().clone() for k, v in self.agent.state_dict().items()}
            if config.checkpoint_interval and self.iteration % config.checkpoint_interval == 0:
                self._save("latest.pt")
                if best_state is not None:
                    self._save_best(best_state, best_return, best_step)
            if stop:
                break
        train_wall = time.perf_counter() - start
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if best_state is None and kept_best is None:
            best_state = self.agent.state_dict()
            best_step = self.global_step
        if best_state is not None and not self._nothing_to_train_in_place():
            self._save_best(best_state, best_return, best_step)
        return self._finish(train_wall, self.global_step - start_step)

    def _set_aside_replaced(self) -> None:
        """Resuming in place from a checkpoint behind the run folder's newest (latest.pt after the run went on
        to final.pt): the checkpoints trained further, and the summary and curve of that history, which this run
        replaces, are renamed ``<name>.replaced``. ``--resume`` of the folder took them (the furthest trained)
        and went on with the replaced history if this run stopped before its next checkpoint."""
        assert self.run_dir is not None and self.config.resume is not None
        resumed = find_checkpoint(self.config.resume).resolve()
        self.checkpoint = (resumed, self.global_step)
        further = [
            path for path in (self.run_dir / name for name in ("latest.pt", "final.pt", "best.pt"))
            if path.is_file() and path.resolve() != resumed and checkpoint_step(path) > self.global_step
        ]  # fmt: skip  (best.pt too where it is of the replaced history: this run's own best is then written)
        if further:
            further += [path for path in (self.run_dir / "summary.json", self.run_dir / "learning_curve.png") if path.is_file()]
        for path in further:
            aside = path.with_name(path.name + ".replaced")
            for n in itertools.count(2):  # (an earlier rewind's are kept too)
                if not aside.exists():
                    break
                aside = path.with_name(f"{path.name}.replaced.{n}")
            os.replace(path, aside)
            print(f"note: {path.name} was of the history this run replaces: now {aside.name}", file=sys.stderr)

    def _nothing_to_train_in_place(self) -> bool:
        """Resuming in place a run finished before its resume (done_before): nothing is trained, and nothing of
        the run's folder is written (its summary and curve would describe an empty part)."""
        return self.in_place and self.done_before

    def _kept_best(self) -> float | None:
        """Resuming in place: the mean return of the run's best.pt, which stays unless beaten (None: no best.pt
        to keep, or not in place)."""
        path = self.run_dir / "best.pt" if self.run_dir is not None and self.in_place else None
        if path is None or not path.is_file():
            return None
        try:
            value = float(torch.load(path, map_location="cpu", weights_only=True).get("mean_return_100", math.nan))
        except Exception:  # (unreadable: this run writes its own)
            return None
        return value if not math.isnan(value) else -math.inf

    def _save(self, name: str) -> Path | None:
        """A checkpoint to resume from. Distributed: called on every rank (it gathers each rank's generator
        state, so a resumed rank samples as it would have), written by rank 0."""
        extra: dict[str, Any] = {}
        rng_states = self.dist.gather_rng_states()
        if rng_states is not None:
            extra["torch_rng_states"] = rng_states
        cuda_state = cuda_rng_state(self.device)  # (on a GPU the actions draw from its generator)
        if cuda_state is not None:
            extra["cuda_rng_state"] = cuda_state
            cuda_states = self.dist.gather_rng_states(cuda_state)
            if cuda_states is not None:
                extra["cuda_rng_states"] = cuda_states
        if self.run_dir is None:
            return None
        # the finished episodes (the last EPISODES_KEPT: 24 MB), so a resumed run's learning curve, its mean of the
        # last 100 episodes and its "solved" go on from this run's (they began again from nothing)
        steps, returns, lengths = (torch.from_numpy(a[-EPISODES_KEPT:].copy()) for a in self.episodes.history())
        extra["episodes"] = {"count": self.episodes.count, "steps": steps, "returns": returns, "lengths": lengths}
        if self.solved_at is not None:
            extra["solved_at"] = self.solved_at
            extra["solve_return"] = self.solve_return  # (the threshold it was solved against)
        extra["wall_s"] = self.wall_offset + time.perf_counter() - self._start
        path = save_checkpoint(
            self.run_dir / name,
            self.agent,
            self.optimizer,
            config=self.config.to_dict(),
            reward_rms=self.reward_rms,
            global_step=self.global_step,
            iteration=self.iteration,
            **extra,
        )
        self.checkpoint = (path, self.global_step)
        return path

    def _save_best(self, state: dict[str, torch.Tensor], mean_return: float, global_step: int) -> Path | None:
        """Weights only (no optimizer): the agent with the best mean return of the last 100 episodes."""
        if self.run_dir is None:
            return None
        return save_checkpoint(
            self.run_dir / "best.pt",
            state,
            config=self.config.to_dict(),
            global_step=global_step,
            mean_return_100=float(mean_return),
        )

    def _finish(self, train_wall: float, trained_steps: int) -> dict[str, Any]:
        """``trained_steps``: the steps of this run's training (a resumed run's start excluded)."""
        config, solved_at = self.config, self.solved_at
        keep = self._nothing_to_train_in_place()  # (the run's own files stay: this part did nothing)
        if keep and self.run_dir is not None:
            kept = _summary_of(self.run_dir, self.global_step)
            if kept is not None:  # the run's own verdict (this part has none: it would say "NOT SOLVED ... nan")
                return kept
            newest = find_checkpoint(self.run_dir)  # (a rewind behind it: the run's own files stay as they are)
            if self.resumed_episodes and not self.dist.enabled and checkpoint_step(newest) <= self.global_step:
                # a run stopped while it wrote its last files (after final.pt, before summary.json): they are
                # written now, from the checkpoint (its episodes give the curve, the window's mean and "solved";
                # a checkpoint without them would make a verdict up)
                keep = False
        if not keep:
            self._save("final.pt")
        eval_returns = np.zeros(0)
        if self.run_dir is not None and not keep:  # distributed: the plot and the evaluation on rank 0 only
            steps, returns, _lengths = self.episodes.history()
            ranks = f"{self.dist.world_size} ranks x " if self.dist.enabled else ""
            resumed = f", resumed at step {self.resumed_at:,}" if self.resumed_at is not None else ""
            plot_learning_curve(  # (a resumed run's: with the episodes of the run it resumed, from its checkpoint)
                self.run_dir / "learning_curve.png",
                steps,
                returns,
                f"PPO {config.env_id} ({config.vec_backend}, {ranks}{config.num_envs} envs, seed {config.seed}{resumed})",
                self.solve_return,
            )
            if config.eval_episodes > 0:
                from ppo.eval import evaluate

                eval_returns = evaluate(
                    self.agent, config.env_id, config.eval_episodes, seed=config.seed + 10_000, device=self.device
                )
        summary = {
            "env_id": config.env_id,
            "vec_backend": config.vec_backend,
            "num_envs": config.num_envs,
            "ranks": self.dist.world_size,
            "seed": config.seed,
            "solved": solved_at is not None,
            "solve_return": self.solve_return,
            "solve_step": solved_at[0] if solved_at else None,
            "solve_wall_s": solved_at[1] if solved_at else None,
            "global_step": self.global_step,
            "iterations": self.iteration,
            "train_wall_s": train_wall,
            "sps": trained_steps / max(train_wall, 1e-9),
            "mean_return_100": self.episodes.mean_return(),
            "episodes": self.episodes.count,
            "eval_mean_return": float(eval_returns.mean()) if len(eval_returns) else None,
            "eval_episodes": len(eval_returns),
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            "trained": trained_steps > 0 or self.resumed_at is None,  # (False: a resume with its budget spent)
        }
        if self.run_dir is not None and not keep:
            with open(self.run_dir / "summary.json", "w") as f:  # (strict JSON: a return never measured is null)
                json.dump({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()},
                          f, indent=2, allow_nan=False)
        return summary

    def close(self, abort: bool = False) -> None:
        """Stop the envs (``abort``: after an interrupt, Backend.abort). Tensors over the engine's buffers are
        dropped first so it can unmap them."""
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self.storage is not None:
            self.storage.release()
            self.storage = None
        self.rewards_np = self.terminated_np = self.truncated_np = None
        self.policy = None  # distributed: the DDP wrapper goes before the process group (Distributed.close)
        try:
            if abort:
                self.backend.abort()
            else:
                self.backend.close()
        finally:
            self.dist.close()

    def __enter__(self) -> Trainer:
        global _RUNNING
        _RUNNING = self
        return self

    def __exit__(self, kind: type | None, *exc: Any) -> None:
        global _RUNNING
        try:  # (_RUNNING stays while the envs close: a SIGTERM then still names the run's checkpoint)
            try:
                self.close(abort=kind is not None and issubclass(kind, (KeyboardInterrupt, SystemExit)))
            except (KeyboardInterrupt, SystemExit):  # an interrupt while the envs closed: end the rest at once
                self.backend.abort()
                raise
        finally:
            _RUNNING = None


def train(config: Config) -> dict[str, Any]:
    """Run one training; returns the summary (also in runs/<run>/summary.json)."""
    with Trainer(config) as trainer:
        return trainer.run()


def describe(summary: dict[str, Any]) -> str:
    """One line saying whether the run solved the task or ran out of budget."""
    env = summary["env_id"]
    mean = summary["mean_return_100"]
    mean = "(none: no episode ended)" if mean is None or not math.isfinite(mean) else f"{mean:.1f}"
    trained = summary.get("trained", True)
    if not trained and not summary["solved"]:  # (no verdict: the checkpoint's run's budget was spent)
        return (
            f"Nothing trained on {env}: the checkpoint has {summary['global_step']:,} steps, the whole budget"
            f"\nrun folder: {summary['run_dir']}"
        )
    episodes = summary.get("episodes")  # (None: a summary.json of a version that did not write it)
    if summary["solved"]:
        # (the mean now is not the one that solved: a run trained on with --no-stop-when-solved may have fallen back)
        text = (
            f"SOLVED {env}: the mean return of the last 100 episodes reached {summary['solve_return']:g} "
            f"after {summary['solve_step']:,} steps in {summary['solve_wall_s']:.2f} s"
        )
        if summary["global_step"] != summary["solve_step"]:
            text += f"; at the end ({summary['global_step']:,} steps) it was {mean}"
    elif summary["solve_return"] is None:
        text = f"Budget of {summary['global_step']:,} steps done on {env} (no solve threshold): "
        if episodes is not None and episodes < 100:  # (the window never filled: "the last 100" were fewer)
            text += f"mean return of its {episodes} episode{'' if episodes == 1 else 's'} {mean}" if episodes else "no episode ended"
        else:
            text += f"mean return of the last 100 episodes {mean}"
    elif episodes is not None and episodes < 100:  # (not solved whatever their mean: the window never filled)
        text = (
            f"NOT SOLVED {env}: the budget of {summary['global_step']:,} steps ended after {episodes} episode{'' if episodes == 1 else 's'}, fewer "
            f"than the 100 whose mean return must reach {summary['solve_return']:g}"
        )
        if episodes:
            text += f" (their mean: {mean})"
    else:
        text = (
            f"NOT SOLVED {env}: the budget of {summary['global_step']:,} steps ended with a mean return of the "
            f"last 100 episodes of {mean} (< {summary['solve_return']:g})"
        )
    if trained:
        text += f"; {summary['train_wall_s']:.2f} s training at {summary['sps']:,.0f} steps/s"
    else:  # (a resume of a run solved before its checkpoint, with --stop-when-solved)
        text += "; nothing more trained (the checkpoint's run was solved)"
    if summary["eval_mean_return"] is not None:
        text += f"; deterministic eval {summary['eval_mean_return']:.1f} over {summary['eval_episodes']} episodes"
    return text + f"\nrun folder: {summary['run_dir']}"


# what a run that cannot start raises for a setting, an env id, a module or a path given wrongly: said in one
# line (as ppo.eval says its own), not as a traceback; PPO_TRACEBACK=1 shows the traceback
_START_ERRORS = (
    ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ModuleNotFoundError,
    gym.error.Error,
)  # fmt: skip


def _start(config: Config) -> Trainer:
    try:
        return Trainer(config)
    except _START_ERRORS as exc:
        if os.environ.get("PPO_TRACEBACK"):
            raise
        raise SystemExit(f"ppo.train: {_one_line(exc)} (PPO_TRACEBACK=1 shows where)") from None


def _one_line(exc: BaseException) -> str:
    """An error's message in one line: all of it up to the traceback that an env's error from a worker
    carries after it, named by its type unless it is a plain ValueError or FileNotFoundError."""
    kind = "" if type(exc) in (ValueError, FileNotFoundError, FileExistsError, SetupError, SpaceError) else f"{type(exc).__name__}: "
    lines = itertools.takewhile(lambda line: not line.startswith(("Remote traceback", "Traceback (")), str(exc).splitlines())
    return kind + (" ".join(" ".join(lines).split()) or type(exc).__name__)


_RUNNING: Trainer | None = None  # the trainer main() runs (what SIGTERM's message says of its checkpoint)
_SIGTERM_OWNER = -1  # the process main() installed _stop_on_sigterm in


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (a scheduler's preemption, `kill`) as Ctrl-C is: the run stops where it is and cleans up (its
    envs closed, a checkpoint being written dropped, not left as a .tmp), instead of dying on the spot."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (a second SIGTERM ends the process at once)
    if os.getpid() != _SIGTERM_OWNER:
        # an env worker that gymnasium's AsyncVectorEnv or SB3's SubprocVecEnv forked inherited this handler. A
        # scheduler signals the whole process group: the worker outlives this signal and the trainer ends it
        # (Backend.abort). (Each said the trainer's message, and a worker that died at once broke the trainer's
        # step with an EOFError before the trainer's own handler ran.)
        return
    print(f"ppo.train: stopped by SIGTERM{_resume_advice(_RUNNING)}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signal.SIGTERM)


def _resume_advice(trainer: Trainer | None) -> str:
    """What a stopped run leaves to resume from, said after "stopped by SIGTERM"."""
    if trainer is None:
        return " before training began"
    run_dir, config = trainer.run_dir, trainer.config
    if run_dir is None:  # distributed: rank 0 speaks for the run
        return ""
    if trainer.checkpoint is None:
        when = " (--checkpoint-interval 0 writes one at the end only)" if not config.checkpoint_interval else " yet"
        if config.resume is not None:  # (a resume into a new folder: it can be started again from its checkpoint)
            again = "the same command" if config.run_name is None else f"the same command, once {run_dir} is removed,"
            return f"; no checkpoint of this run was written{when}: {again} starts it again from {config.resume}"
        return f"; no checkpoint was written{when}: this run cannot be resumed"
    path, step = trainer.checkpoint
    runs_dir = "" if config.runs_dir == Config.runs_dir else f" --runs-dir {config.runs_dir}"
    # (the run's own options: a resume takes the command line's, not config.json's; --resume alone would run the
    # defaults, and a run started with --no-stop-when-solved and a larger budget would train nothing)
    return (
        f"; {path.name} (step {step:,}) is kept: the run's command with --resume {run_dir}{runs_dir} --run-name "
        f"{config.run_name if config.run_name is not None else run_dir.name} added goes on from it"
    )


def _import_error(module: str) -> str | None:
    """Why ``module`` cannot be imported (the first line of its error), or None where it can. Any error counts: an
    installed package whose own import fails (a dependency of another version: protobuf's under tensorboard raises
    a TypeError) is as unusable as a missing one, and the reason says which."""
    try:
        importlib.import_module(module)
    except Exception as exc:
        return first_line(exc)
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    try:
        import tyro
    except Exception as exc:  # (not only ImportError: a tyro whose own import fails otherwise is as unusable)
        raise SystemExit(
            f"python -m ppo.train needs tyro ({first_line(exc)}): pip install '.[train]' in fastvec's folder (the train "
            "extra)"
        ) from exc

    config = tyro.cli(Config, args=argv, prog="python -m ppo.train")
    # the train extra's other modules, asked for now: missing, they ended a run in a traceback (matplotlib's after the
    # whole budget, before its summary; rich's and tensorboard's at start-up)
    # (each package by the module the run imports: the package itself, not its heavy parts, matplotlib's not pyplot;
    # tensorboard's through torch's writer, which needs its generated protobuf modules where its own import does not)
    # (rich only for the progress bar, tensorboard only for its logs: each not asked for without them)
    needed = {"matplotlib": "matplotlib"}
    if config.progress:
        needed["rich"] = "rich"
    if config.tensorboard:
        needed["tensorboard"] = "torch.utils.tensorboard"
    missing = {name: error for name, module in needed.items() if (error := _import_error(module)) is not None}
    if missing:
        without = {"rich": "--no-progress", "tensorboard": "--no-tensorboard"}
        instead = " (or " + " ".join(without[name] for name in missing) + ")" if set(missing) <= set(without) else ""
        raise SystemExit(
            f"python -m ppo.train needs {', '.join(f'{name} ({error})' for name, error in missing.items())}: pip install "
            f"'.[train]' in fastvec's folder (the train extra){instead}"
        )
    previous = None
    children = set(multiprocessing.active_children())  # (a calling program's own: never ended here)
    if threading.current_thread() is threading.main_thread():  # (signal handlers are the main thread's)
        global _SIGTERM_OWNER
        _SIGTERM_OWNER = os.getpid()
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    trainer = None
    try:
        with _start(config) as trainer:
            summary = trainer.run()
    except (SystemExit, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt) and os.getpid() == _SIGTERM_OWNER:
            # (as SIGTERM's line says: what the folder keeps, and the --resume that goes on from it; the trainer's
            # exit has let go of _RUNNING by now)
            print(f"ppo.train: stopped by Ctrl-C{_resume_advice(trainer)}", file=sys.stderr, flush=True)
        # an interrupt before the trainer held its engine (SIGTERM while SB3's SubprocVecEnv starts its workers):
        # a reference engine's forked workers ignore a first SIGTERM (_stop_on_sigterm), so multiprocessing's exit
        # hook, which terminate()s and joins them, would wait for ever; the processes this run started are killed
        _kill_workers(list(set(multiprocessing.active_children()) - children), [])
        raise
    finally:
        if previous is not None:  # (main() called from a program: its own handling back)
            signal.signal(signal.SIGTERM, previous)
    if summary["run_dir"] is not None:  # distributed: rank 0 speaks for the run
        print(describe(summary), flush=True)
    return summary


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:  # (said in one line above, with what to resume from: no traceback)
        sys.exit(128 + signal.SIGINT)
