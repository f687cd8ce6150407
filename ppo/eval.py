"""Evaluate a trained agent: ``python -m ppo.eval runs/<run>``.

Loads the run's config.json and a checkpoint (best.pt by default, ``weights_only=True``),
plays N episodes with the deterministic policy (argmax / Gaussian mean) and reports
their mean return. ``--video`` records one episode when the env renders rgb_array:
a GIF with imageio when it is installed, else the frames as a compressed .npz.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

try:
    import tyro
except ImportError as _tyro_error:  # (said by main in one line: the train extra)
    tyro = None  # type: ignore[assignment]
    _TYRO_ERROR = str(_tyro_error)

from ppo.agent import Agent
from ppo.backends import make_env
from ppo.checkpoint import find_checkpoint, load_checkpoint
from ppo.config import Config

__all__ = ["evaluate", "record_video", "load_agent", "EvalArgs", "main"]


def _env_actions(agent: Agent, obs: np.ndarray, action_space: gym.Space, device: torch.device) -> np.ndarray:
    with torch.no_grad():
        action = agent.sample(torch.as_tensor(obs, device=device), deterministic=True)
    action = action.cpu().numpy()
    if isinstance(action_space, gym.spaces.Box):
        action = np.clip(action, action_space.low, action_space.high)
    return action


MAX_EPISODE_STEPS = 100_000  # an evaluation episode's longest (see evaluate)


def _step_cap(env: gym.Env, steps: int) -> float:
    """The steps an evaluation episode may take: ``steps`` where the env has no time limit of its own, else no cap."""
    spec = getattr(env, "spec", None)
    return math.inf if spec is not None and spec.max_episode_steps else steps


def evaluate(
    agent: Agent,
    env_id: str,
    episodes: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_envs: int = 8,
    max_episode_steps: int = MAX_EPISODE_STEPS,
) -> np.ndarray:
    """Returns of ``episodes`` episodes of the deterministic policy, played on up to ``max_envs`` envs.

    Env i plays a fixed share of the episodes (as SB3's ``evaluate_policy``), so short
    episodes do not crowd out long ones. Env i is first reset with ``seed + i``. On an env without a
    time limit of its own, an episode still running after ``max_episode_steps`` steps (one the policy
    never ends) counts as ended there, with a warning, and its env plays no more (fewer returns than
    ``episodes``): the evaluation (and the run whose end it is) ends, where SB3's ``evaluate_policy``
    would loop for ever.
    """
    if episodes < 1:
        return np.zeros(0)
    device = torch.device(device)
    num_envs = min(episodes, max_envs)
    targets = np.array([(episodes + i) // num_envs for i in range(num_envs)])
    venv = gym.vector.SyncVectorEnv(
        [lambda: make_env(env_id) for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    was_training = agent.training
    agent.eval()
    try:
        obs, _ = venv.reset(seed=[seed + i for i in range(num_envs)])
        max_episode_steps = _step_cap(venv.envs[0], max_episode_steps)
        running = np.zeros(num_envs)
        lengths = np.zeros(num_envs, dtype=np.int64)
        finished = np.zeros(num_envs, dtype=np.int64)
        returns: list[float] = []
        while (finished < targets).any():
            obs, rewards, terminated, truncated, _ = venv.step(
                _env_actions(agent, obs, venv.single_action_space, device)
            )
            running += rewards
            lengths += 1
            done = terminated | truncated
            capped = ~done & (lengths >= max_episode_steps) & (finished < targets)
            ended = np.flatnonzero((done | capped) & (finished < targets))
            returns.extend(running[ended].tolist())
            finished[ended] += 1
            if capped.any():
                warnings.warn(
                    f"evaluation of {env_id}: an episode ran {max_episode_steps} steps without ending; counted as "
                    "ended there, and its env plays no more episodes (the env has no time limit)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                targets[capped] = finished[capped]
            running[done] = 0.0
            lengths[done] = 0
        return np.asarray(returns)
    finally:
        agent.train(was_training)
        venv.close()


def record_video(
    agent: Agent, env_id: str, path: str | Path, seed: int = 0, device: torch.device | str = "cpu", fps: int = 30
) -> Path | None:
    """Record one deterministic episode; returns the file written, or None if the env cannot render rgb_array."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame-rendered envs: no display needed
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    try:
        env = make_env(env_id, render_mode="rgb_array")
    except Exception:
        return None
    device = torch.device(device)
    frames = []
    try:
        obs, _ = env.reset(seed=seed)
        try:
            frame = env.render()
        except NotImplementedError:  # (gymnasium.Env.render's own default: the env does not render)
            return None
        if not isinstance(frame, np.ndarray):
            return None
        frames.append(frame)
        done = False
        cap = _step_cap(env, MAX_EPISODE_STEPS)
        while not done:
            action = _env_actions(agent, obs[None], env.action_space, device)[0]
            obs, _reward, terminated, truncated, _ = env.step(action)
            frames.append(env.render())
            done = terminated or truncated
            if not done and len(frames) > cap:  # (an env without a time limit: see evaluate)
                done = True
                warnings.warn(
                    f"video of {env_id}: the episode ran {MAX_EPISODE_STEPS} steps without ending; the video ends there "
                    "(the env has no time limit)",
                    RuntimeWarning,
                    stacklevel=2,
                )
    finally:
        env.close()
    path = Path(path)
    try:
        import imageio.v2 as imageio  # optional; not a dependency of fastvec
    except ImportError:
        out = path.with_suffix(".npz")
        np.savez_compressed(out, frames=np.stack(frames), fps=fps)
        return out
    out = path.with_suffix(".gif")
    imageio.mimsave(out, frames, duration=1000 / fps)
    return out


def load_agent(
    run_dir: str | Path, checkpoint: str | None = None, device: torch.device | str = "cpu"
) -> tuple[Agent, Config, dict]:
    """Rebuild the agent of a run from its config.json and load a checkpoint into it.

    ``checkpoint``: a file name in the run folder, else a file path (default: best.pt, else final.pt); not
    with ``run_dir`` a checkpoint file, unless it names that file.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():  # a checkpoint file: its folder is the run
        # (another --checkpoint beside it was dropped silently, and the file evaluated)
        if checkpoint is not None and not _same_file(run_dir, run_dir.parent / checkpoint, Path(checkpoint)):
            raise ValueError(
                f"{run_dir} is a checkpoint file and --checkpoint {checkpoint} names another: give the run's folder "
                "with --checkpoint, or the checkpoint file alone"
            )
        checkpoint, run_dir = str(run_dir), run_dir.parent
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder or checkpoint file")
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.json: not a run folder of ppo.train")
    try:
        with open(run_dir / "config.json") as f:
            fields = json.load(f)
        if not isinstance(fields, dict):
            raise ValueError(f"it holds a {type(fields).__name__}, not the settings of a run")
        config = Config.from_dict(fields)
        config.validate()  # (a value out of its range failed later, outside this try: a traceback)
    except (ValueError, TypeError) as exc:  # (cut short, or edited by hand: named, as ppo.eval says it in one line)
        raise ValueError(f"{run_dir / 'config.json'} is not a config of ppo.train: {exc}") from None
    if checkpoint is None:
        path = next((run_dir / n for n in ("best.pt", "final.pt", "latest.pt") if (run_dir / n).is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{run_dir} holds no best.pt, final.pt or latest.pt")
    else:
        # a name in the run folder first (not a file of that name in the working directory), else a path
        in_run, given = run_dir / checkpoint, Path(checkpoint)
        if not in_run.is_file() and not given.is_file() and (in_run.is_dir() or given.is_dir()):
            # (it said "runs/A holds none of ['runs/B']")
            raise ValueError(f"--checkpoint {checkpoint} is a folder: give a checkpoint file, by its name in {run_dir} or its path")
        path = in_run if in_run.is_file() else given if given.is_file() else find_checkpoint(run_dir, prefer=checkpoint)
    try:
        probe = make_env(config.env_id)
    except (ImportError, gym.error.Error) as exc:  # (its module not importable here, an id no longer registered)
        raise ValueError(f"{run_dir}: its env {config.env_id!r} cannot be made here: {type(exc).__name__}: {exc}") from None
    try:
        agent = Agent(probe.observation_space, probe.action_space, config.hidden_sizes, config.norm_obs)
    finally:
        probe.close()
    state = load_checkpoint(path, agent, map_location=device, config=config.to_dict())
    state["path"] = str(path)
    return agent.to(device), config, state


def _same_file(path: Path, *others: Path) -> bool:
    """Whether one of ``others`` is the file ``path``."""
    return any(other.is_file() and other.samefile(path) for other in others)


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a run's checkpoint."""

    run: tyro.conf.Positional[str]
    """run folder (runs/<run>) or a checkpoint file"""
    checkpoint: str | None = None
    """checkpoint file name in the run folder, or its path (default: best.pt, else final.pt); with a run folder only"""
    episodes: int = 10
    """number of evaluation episodes"""
    seed: int | None = None
    """seed of env 0 (env i: seed + i); default: the run's seed + 10000, away from the training seeds"""
    video: bool = False
    """also record one episode to <run>/video.gif (or video.npz without imageio)"""
    device: str = "cpu"
    """torch device for the network"""


def main(argv: list[str] | None = None) -> float:
    if tyro is None:
        raise SystemExit(
            f"python -m ppo.eval needs tyro ({_TYRO_ERROR}): pip install '.[train]' in fastvec's folder (the train extra)"
        )
    args = tyro.cli(EvalArgs, args=argv, prog="python -m ppo.eval")
    if args.episodes < 1:
        raise SystemExit(f"ppo.eval: --episodes must be >= 1, got {args.episodes}")
    if args.seed is not None and args.seed < 0:
        raise SystemExit(f"ppo.eval: --seed must be >= 0 (gymnasium's seeds are), got {args.seed}")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise SystemExit(f"ppo.eval: --device {args.device!r} is no torch device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"ppo.eval: --device {args.device} was asked for, but torch sees no CUDA device")
    usable = (device.type == "cpu" and device.index in (None, 0)) or (
        device.type == "cuda" and (device.index or 0) < torch.cuda.device_count()
    )
    if not usable:
        raise SystemExit(f"ppo.eval: --device {args.device!r} cannot be used here (cpu, cuda or cuda:N of the GPUs torch sees)")
    torch.set_num_threads(1)
    try:
        agent, config, state = load_agent(args.run, args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as exc:  # a wrong path or file, another run's: one line, not a traceback
        raise SystemExit(f"ppo.eval: {exc}") from None
    seed = config.seed + 10_000 if args.seed is None else args.seed
    returns = evaluate(agent, config.env_id, args.episodes, seed=seed, device=args.device)
    print(
        f"{config.env_id}: mean return {returns.mean():.2f} +- {returns.std():.2f} over {len(returns)} episodes "
        f"({state['path']}, trained {state.get('global_step', 0):,} steps)"
    )
    if args.video:
        run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
        out = record_video(agent, config.env_id, run_dir / "video", seed=seed, device=args.device)
        print(f"video: {out}" if out else f"{config.env_id} does not render rgb_array frames; no video")
    return float(returns.mean())


if __name__ == "__main__":
    main(sys.argv[1:])
