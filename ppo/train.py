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
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ppo.agent import Agent
from ppo.backends import Backend, make_backend
from ppo.checkpoint import load_checkpoint, save_checkpoint
from ppo.config import Config
from ppo.episodes import EpisodeTracker
from ppo.gae import compute_gae
from ppo.logger import RunLogger, plot_learning_curve
from ppo.loss import clipped_policy_loss, value_loss
from ppo.normalize import RunningMeanStd
from ppo.storage import RolloutStorage

__all__ = ["Trainer", "train", "main", "resolve_device", "solve_threshold"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def solve_threshold(config: Config) -> float | None:
    """config.solve_return, else the env's registered reward_threshold (475 for CartPole-v1), else None."""
    if config.solve_return is not None:
        return config.solve_return
    try:
        threshold = gym.spec(config.env_id).reward_threshold
    except Exception:
        return None
    return None if threshold is None else float(threshold)


def _run_dir(config: Config) -> Path:
    env = config.env_id.replace("/", "-").replace(":", "-")
    name = config.run_name or f"{env}__{config.vec_backend}__s{config.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(config.runs_dir) / name
    if config.run_name is None:  # two runs in the same second must not share a folder
        base, k = path, 1
        while path.exists():
            path, k = Path(f"{base}-{k}"), k + 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def _adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with eps=1e-5 as in the PPO baselines (CleanRL detail #3); fused (one kernel for all
    parameters) where this torch supports it on the device."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, eps=1e-5, fused=True)
    except (RuntimeError, TypeError, ValueError):  # torch < 2.4 has no fused Adam on CPU
        return torch.optim.Adam(params, lr=lr, eps=1e-5)


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
        config.validate()
        self.config = config
        self.run_dir = _run_dir(config)
        with open(self.run_dir / "config.json", "w") as f:
            json.dump(config.to_dict(), f, indent=2)

        # Seeding: same seed, same run on CPU (CleanRL's torch_deterministic)
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        torch.backends.cudnn.deterministic = True
        self.device = resolve_device(config.device)
        if self.device.type == "cpu" and config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)  # small nets: threads cost more than they give
        self.amp = config.amp and self.device.type == "cuda"
        # bfloat16 autocast on CUDA with --amp (no GradScaler needed: bf16 has float32's range)
        self.autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if self.amp else contextlib.nullcontext
        if config.amp and not self.amp:
            print("note: --amp only applies on CUDA; training in float32", file=sys.stderr)
        self.solve_return = solve_threshold(config)

        # The engine runs with S = num_steps + 1 ring slots: one whole rollout plus the
        # observation after it stays in place until the update has used it.
        self.backend: Backend = make_backend(
            config.vec_backend,
            config.env_id,
            config.num_envs,
            config.num_steps + 1,
            num_workers=config.num_workers,
            # fork is safe here: no thread (torch's pool, progress bar, TensorBoard writer) exists yet
            start_method=config.start_method or ("fork" if sys.platform == "linux" else None),
            pin=self.device.type == "cuda",
            fastvec_config=config.fastvec_config,
        )
        self.storage: RolloutStorage | None = None
        self.logger: RunLogger | None = None
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        config, backend, device = self.config, self.backend, self.device
        self.agent = Agent(backend.observation_space, backend.action_space, config.hidden_sizes, config.norm_obs).to(
            device
        )
        self.optimizer = _adam(self.agent.parameters(), config.effective_learning_rate)
        self.reward_rms = RunningMeanStd(()) if config.norm_reward else None
        self.discounted_returns = np.zeros(config.num_envs)  # for reward scaling (as VecNormalize)
        self.global_step = 0
        self.iteration = 0
        self.solved_at: tuple[int, float] | None = None  # (global step, seconds since the first step)
        self._start = time.perf_counter()
        if config.resume:
            state = load_checkpoint(
                config.resume, self.agent, self.optimizer, self.reward_rms, map_location=device, restore_rng=True
            )
            self.global_step, self.iteration = int(state["global_step"]), int(state["iteration"])

        action_space = backend.action_space
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        action_dtype = torch.int64 if self.discrete else torch.float32
        if not self.discrete:  # the policy's Gaussian is unbounded: clip what the env gets (SB3 does too)
            self.action_low = torch.as_tensor(action_space.low, dtype=torch.float32, device=device)
            self.action_high = torch.as_tensor(action_space.high, dtype=torch.float32, device=device)
        self.storage = RolloutStorage(backend.ring, config.num_steps, self.agent.action_shape, action_dtype, device)
        self.episodes = EpisodeTracker(config.num_envs)
        # numpy views of the ring for per-step bookkeeping (no copy, no torch dispatch)
        ring = backend.ring
        self.rewards_np = ring.rewards.numpy()
        self.terminated_np = ring.terminated.numpy()
        self.truncated_np = ring.truncated.numpy()

        # env i gets seed + i: never one seed for all envs (a resumed run starts fresh episodes)
        self.slot = backend.reset([config.seed + config.num_envs * self.iteration + i for i in range(config.num_envs)])
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
        for t in range(config.num_steps):
            with torch.no_grad(), self.autocast():
                action = agent.sample(storage.obs_at(t))  # log-probs and values come in evaluate_rollout
            storage.actions[t] = action

            self.slot = slot = backend.step(self._env_action(action))
            storage.arrived(slot)
            self.global_step += config.num_envs

            rewards, terminated, truncated = self.rewards_np[slot], self.terminated_np[slot], self.truncated_np[slot]
            done = terminated | truncated
            if self.reward_rms is not None:
                # running discounted return per env; its variance scales the rewards (as VecNormalize)
                self.discounted_returns = self.discounted_returns * config.gamma + rewards
                self.reward_rms.update(torch.from_numpy(self.discounted_returns))
                self.discounted_returns[done] = 0.0
            if not done.any():
                self.episodes.step(rewards, done, self.global_step)
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
            self.episodes.step(rewards, done, self.global_step)
            if self.solved_at is None and self._solved():
                self.solved_at = (self.global_step, time.perf_counter() - self._start)
                if config.stop_when_solved:
                    return True
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
        return b_obs, float(entropy.float().mean())

    # -- phase 3: advantages ----------------------------------------------------------------------
    def compute_advantages(self) -> tuple[torch.Tensor, torch.Tensor]:
        config, storage = self.config, self.storage
        rewards, terminated, truncated = storage.results()
        if self.reward_rms is not None:
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
        if full_batch and config.norm_adv:  # one minibatch: its normalization is the same every epoch
            b_advantages = (b_advantages - b_advantages.mean()) / (b_advantages.std() + 1e-8)
        with_entropy = config.ent_coef != 0.0
        params = list(agent.parameters())
        sums = torch.zeros(4, device=self.device)  # policy loss, value loss, approx kl, clip fraction
        steps = 0
        for _epoch in range(config.update_epochs):
            order = None if full_batch else torch.randperm(batch_size, device=self.device)
            for start in range(0, batch_size, minibatch_size):
                mb: Any = slice(None) if order is None else order[start : start + minibatch_size]
                with self.autocast():
                    new_log_prob, entropy, new_value = agent.evaluate(b_obs[mb], b_actions[mb], with_entropy)
                new_log_prob, new_value = new_log_prob.float(), new_value.float()
                mb_advantages = b_advantages[mb]
                if config.norm_adv and not full_batch:  # per-minibatch advantage normalization (CleanRL detail #7)
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
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
            if config.target_kl is not None and approx_kl.item() > config.target_kl:
                break  # early stop of the epochs (detail #12)
        means = (sums / steps).tolist()
        with torch.no_grad():
            variance = b_returns.var()
            explained = 1.0 - (b_returns - b_values).var() / variance if variance > 0 else torch.tensor(float("nan"))
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
            self.agent.obs_rms.update(b_obs)

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until solved or out of budget; write the run folder; return the summary."""
        config = self.config
        initial_lr = config.effective_learning_rate
        horizon = config.anneal_timesteps or config.total_timesteps
        self.logger = RunLogger(
            self.run_dir, config.total_timesteps, config.tensorboard, config.progress, f"PPO {config.env_id}"
        )
        best_return, best_state, best_step = -math.inf, None, 0
        self._start = start = time.perf_counter()
        start_step = self.global_step
        no_update = dict.fromkeys(_UPDATE_STATS, math.nan)
        while self.global_step < config.total_timesteps:
            self.iteration += 1
            # Linear decay of lr (and clip) to 0 over the horizon (PPO paper's Atari setting; rl-zoo CartPole)
            remaining = max(0.0, 1.0 - self.global_step / horizon)
            lr = initial_lr * (remaining if config.anneal_lr else 1.0)
            clip_coef = config.clip_coef * (remaining if config.anneal_clip else 1.0)
            for group in self.optimizer.param_groups:
                group["lr"] = lr

            stop = self.collect_rollout()
            stats = no_update
            if not stop:
                b_obs, entropy = self.evaluate_rollout()
                advantages, returns = self.compute_advantages()
                stats = {"entropy": entropy, **self.update(b_obs, advantages, returns, clip_coef)}
                self._update_obs_rms(b_obs)

            elapsed = time.perf_counter() - start
            mean_return = self.episodes.mean_return()
            metrics: dict[str, Any] = {
                "iteration": self.iteration,
                "global_step": self.global_step,
                "wall_s": round(elapsed, 4),
                "sps": (self.global_step - start_step) / max(elapsed, 1e-9),
                "mean_return_100": mean_return,
                "mean_length_100": self.episodes.mean_length(),
                "episodes": self.episodes.count,
                "learning_rate": lr,
                "clip_coef": clip_coef,
            }
            metrics.update(stats)
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
        self.logger.close()
        self.logger = None
        if best_state is None:
            best_state = self.agent.state_dict()
            best_step = self.global_step
        self._save_best(best_state, best_return, best_step)
        return self._finish(train_wall)

    def _save(self, name: str) -> Path:
        return save_checkpoint(
            self.run_dir / name,
            self.agent,
            self.optimizer,
            config=self.config.to_dict(),
            reward_rms=self.reward_rms,
            global_step=self.global_step,
            iteration=self.iteration,
        )

    def _save_best(self, state: dict[str, torch.Tensor], mean_return: float, global_step: int) -> Path:
        """Weights only (no optimizer): the agent with the best mean return of the last 100 episodes."""
        return save_checkpoint(
            self.run_dir / "best.pt",
            state,
            config=self.config.to_dict(),
            global_step=global_step,
            mean_return_100=float(mean_return),
        )

    def _finish(self, train_wall: float) -> dict[str, Any]:
        config, solved_at = self.config, self.solved_at
        self._save("final.pt")
        steps, returns, _lengths = self.episodes.history()
        plot_learning_curve(
            self.run_dir / "learning_curve.png",
            steps,
            returns,
            f"PPO {config.env_id} ({config.vec_backend}, {config.num_envs} envs, seed {config.seed})",
            self.solve_return,
        )
        eval_returns = np.zeros(0)
        if config.eval_episodes > 0:
            from ppo.eval import evaluate

            eval_returns = evaluate(
                self.agent, config.env_id, config.eval_episodes, seed=config.seed + 10_000, device=self.device
            )
        summary = {
            "env_id": config.env_id,
            "vec_backend": config.vec_backend,
            "num_envs": config.num_envs,
            "seed": config.seed,
            "solved": solved_at is not None,
            "solve_return": self.solve_return,
            "solve_step": solved_at[0] if solved_at else None,
            "solve_wall_s": solved_at[1] if solved_at else None,
            "global_step": self.global_step,
            "iterations": self.iteration,
            "train_wall_s": train_wall,
            "sps": self.global_step / max(train_wall, 1e-9),
            "mean_return_100": self.episodes.mean_return(),
            "episodes": self.episodes.count,
            "eval_mean_return": float(eval_returns.mean()) if len(eval_returns) else None,
            "eval_episodes": len(eval_returns),
            "run_dir": str(self.run_dir),
        }
        with open(self.run_dir / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
        return summary

    def close(self) -> None:
        """Stop the envs. Tensors over the engine's buffers are dropped first so it can unmap them."""
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self.storage is not None:
            self.storage.release()
            self.storage = None
        self.rewards_np = self.terminated_np = self.truncated_np = None
        self.backend.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def train(config: Config) -> dict[str, Any]:
    """Run one training; returns the summary (also in runs/<run>/summary.json)."""
    with Trainer(config) as trainer:
        return trainer.run()


def describe(summary: dict[str, Any]) -> str:
    """One line saying whether the run solved the task or ran out of budget."""
    env, mean = summary["env_id"], summary["mean_return_100"]
    if summary["solved"]:
        text = (
            f"SOLVED {env}: mean return of the last 100 episodes {mean:.1f} >= {summary['solve_return']:g} "
            f"after {summary['solve_step']:,} steps in {summary['solve_wall_s']:.2f} s"
        )
    elif summary["solve_return"] is None:
        text = (
            f"Budget of {summary['global_step']:,} steps done on {env} (no solve threshold): "
            f"mean return of the last 100 episodes {mean:.1f}"
        )
    else:
        text = (
            f"NOT SOLVED {env}: the budget of {summary['global_step']:,} steps ended with a mean return of the "
            f"last 100 episodes of {mean:.1f} (< {summary['solve_return']:g})"
        )
    text += f"; {summary['train_wall_s']:.2f} s training at {summary['sps']:,.0f} steps/s"
    if summary["eval_mean_return"] is not None:
        text += f"; deterministic eval {summary['eval_mean_return']:.1f} over {summary['eval_episodes']} episodes"
    return text + f"\nrun folder: {summary['run_dir']}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tyro

    config = tyro.cli(Config, args=argv)
    summary = train(config)
    print(describe(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
