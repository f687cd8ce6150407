"""Distributed training as users launch it: ranks started by torchrun (gloo, this machine), or by any
launcher that sets the torch.distributed variables.

Each rank steps its 4 envs in its own process (``--num-workers 0``) to stay light on 2 cores.
torchrun launches the runs whose launch is under test (the run every rank starts, a rank that dies or
fails, rank 0's refusal said by every rank); the others start their ranks themselves, as any launcher
may (``_launch``: the torch.distributed variables set, as ``--standalone`` does): a launcher process
imports torch too, seconds each on 2 cores.
Run as a module (``python -m tests.test_ppo_distributed_run fixed-rollout DIR``) this file is
also the rank side of the fixed-rollout comparison.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import psutil
import pytest
import torch
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from ppo.agent import Agent
from ppo.config import Config
from ppo.distributed import state_digest
from ppo.normalize import RunningMeanStd
from ppo.train import Trainer

pytestmark = pytest.mark.one_pass  # distributed launch and reductions; the engine's kernels are tested elsewhere

ROOT = Path(__file__).resolve().parents[1]
ENVS_PER_RANK, NUM_STEPS = 4, 16
STEPS_PER_ITERATION_2_RANKS = 2 * ENVS_PER_RANK * NUM_STEPS
# every run: small, in-process envs, nothing but what a test reads
SMALL = [
    "--num-envs", str(ENVS_PER_RANK),
    "--num-steps", str(NUM_STEPS),
    "--num-workers", "0",
    "--no-progress",
    "--no-tensorboard",
    "--eval-episodes", "0",
    "--no-stop-when-solved",
]  # fmt: skip


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        OMP_NUM_THREADS="1",
    )


def _torchrun(nproc: int, *args: str, module: str = "ppo.train") -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", module, *args
    ]  # fmt: skip


def _run(command: list[str], timeout: float = 150) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-6000:]}"
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(nproc: int, *args: str, module: str = "ppo.train") -> list[subprocess.Popen]:
    """``nproc`` ranks of ``python -m module args`` on this machine, started as a launcher starts them."""
    port, ranks = _free_port(), []
    for rank in range(nproc):
        env = dict(
            _env(), RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        command = [sys.executable, "-m", module, *args]
        ranks.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return ranks


def _wait_ranks(ranks: list[subprocess.Popen], timeout: float = 150) -> str:
    """Wait for ranks started by _start_ranks (every one must succeed; any left is killed); their stdout, joined."""
    outputs = []
    try:
        for rank, proc in enumerate(ranks):
            stdout, stderr = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, (
                f"rank {rank} of {proc.args} failed ({proc.returncode}):\n{stdout}\n{stderr[-6000:]}"
            )
            outputs.append(stdout)
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return "".join(outputs)


def _launch(nproc: int, *args: str, module: str = "ppo.train", timeout: float = 150) -> str:
    """A run of ``nproc`` ranks (_start_ranks), waited for; the ranks' stdout."""
    return _wait_ranks(_start_ranks(nproc, *args, module=module), timeout)


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _digest_of_checkpoint(path: Path, norm_obs: bool) -> str:
    """state_digest of the agent and reward statistics in a checkpoint, as the trainer computes it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    agent = Agent(spaces.Box(-np.inf, np.inf, (4,), np.float32), spaces.Discrete(2), norm_obs=norm_obs)
    agent.load_state_dict(state["agent"])
    reward_rms = None
    if "reward_rms" in state:
        reward_rms = RunningMeanStd(())
        reward_rms.load_state_dict(state["reward_rms"])
    return state_digest(agent, reward_rms)


# -- every rank holds the same parameters -------------------------------------------------------------
def test_two_ranks_hold_identical_parameters_after_every_update(tmp_path) -> None:
    """torchrun, 2 ranks, gloo: --check-replicas compares a SHA-256 of every rank's parameters and
    normalization statistics after each update (the run fails if one differs); with shuffled
    minibatches, target-KL stop and both normalizations, which each need their own reduction."""
    iterations = 5
    args = [
        "--distributed", "--check-replicas", *SMALL,
        "--total-timesteps", str(iterations * STEPS_PER_ITERATION_2_RANKS),
        "--num-minibatches", "2", "--target-kl", "0.02", "--norm-obs", "--norm-reward",
        "--checkpoint-interval", "2", "--seed", "3", "--runs-dir", str(tmp_path), "--run-name", "two",
    ]  # fmt: skip
    done = _run(_torchrun(2, *args))
    assert done.stdout.count("run folder:") == 1  # rank 0 speaks for the run
    assert [p.name for p in tmp_path.iterdir()] == ["two"]  # and only rank 0 writes
    run = tmp_path / "two"
    rows = _metrics(run)
    assert [int(r["iteration"]) for r in rows] == list(range(1, iterations + 1))
    assert [int(r["global_step"]) for r in rows] == [k * STEPS_PER_ITERATION_2_RANKS for k in range(1, 6)]
    digests = [r["replica_digest"] for r in rows]
    assert all(len(d) == 64 for d in digests) and len(set(digests)) == iterations  # checked, and moving
    assert _digest_of_checkpoint(run / "final.pt", norm_obs=True) == digests[-1]
    rng_states = torch.load(run / "final.pt", map_location="cpu", weights_only=True)["torch_rng_states"]
    assert rng_states.shape[0] == 2 and not torch.equal(rng_states[0], rng_states[1])  # each rank samples its own
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["global_step"] == iterations * STEPS_PER_ITERATION_2_RANKS
    assert summary["episodes"] > 0


def test_one_rank_trains_and_resumes_exactly_as_the_plain_run(tmp_path) -> None:
    """One rank (DDP, a process group, the gathered episodes) gives the same bits as ppo.train alone, both
    from the start and resumed from the plain run's checkpoint: rank 0 takes a single process's generator (its
    seed is rank 0's; it kept its fresh seed, and replayed the draws of the run's first iterations). (Each pair
    runs side by side: one process each.)"""
    budget = 2 * ENVS_PER_RANK * NUM_STEPS
    common = ["--check-replicas", "--norm-obs", "--norm-reward", *SMALL, "--runs-dir", str(tmp_path)]
    plain = subprocess.Popen(
        [sys.executable, "-m", "ppo.train", *common, "--total-timesteps", str(budget), "--run-name", "first"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    one_rank = _start_ranks(1, "--distributed", *common, "--total-timesteps", str(budget), "--run-name", "one-rank")
    _wait_ranks([plain, *one_rank])
    first, rank_first = _metrics(tmp_path / "first"), _metrics(tmp_path / "one-rank")
    assert [int(r["iteration"]) for r in first] == [1, 2]
    for name in ("replica_digest", "mean_return_100", "policy_loss", "explained_variance"):
        assert [r[name] for r in rank_first] == [r[name] for r in first], name

    resume = ["--resume", str(tmp_path / "first"), "--total-timesteps", str(2 * budget)]
    plain = subprocess.Popen(
        [sys.executable, "-m", "ppo.train", *common, *resume, "--run-name", "plain"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    one_rank = _start_ranks(1, "--distributed", *common, *resume, "--run-name", "resumed")
    _wait_ranks([plain, *one_rank])
    plain_rows, resumed = _metrics(tmp_path / "plain"), _metrics(tmp_path / "resumed")
    assert [int(r["iteration"]) for r in plain_rows] == [3, 4]
    assert len({r["replica_digest"] for r in plain_rows + first}) == 4  # checked, and moving
    for name in ("replica_digest", "mean_return_100", "policy_loss", "value_loss"):
        assert [r[name] for r in resumed] == [r[name] for r in plain_rows], name


# -- 2 ranks update as one process on the whole batch ------------------------------------------------------
TOTAL_ENVS = 2 * ENVS_PER_RANK
FIXED = dict(
    vec_backend="serial",
    num_steps=NUM_STEPS,
    update_epochs=3,
    num_minibatches=1,  # with shuffled minibatches, each rank shuffles its own share: not one process's order
    norm_adv=True,
    norm_obs=True,
    norm_reward=True,
    ent_coef=0.01,
    clip_vloss=True,
    progress=False,
    tensorboard=False,
    eval_episodes=0,
)


def _fixed_rollout(seed: int = 0) -> dict[str, torch.Tensor]:
    """A rollout of TOTAL_ENVS CartPole-shaped envs, made up (not played) so that every party sees the same
    data: observations away from 0 (so the normalizer matters), terminations and time-limit truncations."""
    gen = torch.Generator().manual_seed(seed)
    shape = (NUM_STEPS, TOTAL_ENVS)
    obs = torch.randn(NUM_STEPS + 1, TOTAL_ENVS, 4, generator=gen) * torch.tensor([0.5, 2.0, 0.1, 3.0]) + 0.3
    terminated = torch.rand(shape, generator=gen) < 0.08
    truncated = (torch.rand(shape, generator=gen) < 0.05) & ~terminated
    torch.manual_seed(seed)
    agent = Agent(spaces.Box(-np.inf, np.inf, (4,), np.float32), spaces.Discrete(2), norm_obs=True)
    return {
        "obs": obs,
        "actions": torch.randint(0, 2, shape, generator=gen),
        "rewards": torch.rand(shape, generator=gen, dtype=torch.float64) * 2,
        "terminated": terminated,
        "truncated": truncated,
        "terminal_values": torch.randn(shape, generator=gen) * truncated,
        "initial_agent": agent.state_dict(),
    }


def _update_on_fixed_rollout(trainer: Trainer, rollout: dict[str, torch.Tensor], envs: slice) -> dict:
    """Put envs ``envs`` of ``rollout`` where collect_rollout would have put them (the engine's ring, the
    storage, the per-step bookkeeping), then run the iteration's other phases; return what they made."""
    config, storage, ring = trainer.config, trainer.storage, trainer.backend.ring
    trainer.agent.load_state_dict(rollout["initial_agent"])
    storage.begin(trainer.slot)
    for t in range(NUM_STEPS + 1):
        ring.obs[storage.slot(t)] = rollout["obs"][t, envs]
    for t in range(NUM_STEPS):
        storage.actions[t] = rollout["actions"][t, envs]
        result = storage.slot(t + 1)  # step t's results land with observation t + 1
        for name in ("rewards", "terminated", "truncated"):
            getattr(ring, name)[result] = rollout[name][t, envs]
        storage.terminal_values[t] = rollout["terminal_values"][t, envs]
        rewards = rollout["rewards"][t, envs].numpy()
        done = (rollout["terminated"][t, envs] | rollout["truncated"][t, envs]).numpy()
        trainer.discounted_returns = trainer.discounted_returns * config.gamma + rewards
        trainer.rollout_discounted_returns[t] = torch.from_numpy(trainer.discounted_returns)
        trainer.discounted_returns[done] = 0.0
        trainer.global_step += config.num_envs * trainer.dist.world_size
        trainer.rank_episodes.step(rewards, done, trainer.global_step)
    if trainer.dist.enabled:
        trainer.share_episodes()
    b_obs, entropy = trainer.evaluate_rollout()
    advantages, returns = trainer.compute_advantages()
    stats = trainer.update(b_obs, advantages, returns, config.clip_coef)
    trainer._update_obs_rms(b_obs)
    return {
        "agent": {k: v.clone() for k, v in trainer.agent.state_dict().items()},
        "reward_rms": {k: v.clone() for k, v in trainer.reward_rms.state_dict().items()},
        "episodes": [torch.from_numpy(a) for a in trainer.episodes.history()],
        "stats": {"entropy": entropy, **stats},
    }


def _fixed_rollout_rank(folder: Path) -> None:
    """Rank side: this rank's envs of the fixed rollout, one update, the result to rank<r>.pt."""
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    per_rank = TOTAL_ENVS // world_size
    config = Config(**FIXED, num_envs=per_rank, distributed=True, runs_dir=str(folder / "runs"), run_name="ranks")
    rollout = torch.load(folder / "rollout.pt", map_location="cpu", weights_only=True)
    with Trainer(config) as trainer:
        result = _update_on_fixed_rollout(trainer, rollout, slice(rank * per_rank, (rank + 1) * per_rank))
    torch.save(result, folder / f"rank{rank}.pt")


def test_two_ranks_update_as_one_process_on_the_whole_batch(tmp_path) -> None:
    """One iteration on a fixed rollout of 8 envs: 2 ranks x 4 envs (DDP, global advantage normalization,
    reduced normalization statistics, gathered episodes) against one process with all 8 envs.

    Equal where the mathematics says so: with one minibatch per epoch the averaged gradient of the
    ranks' means is the gradient of the mean over the whole batch, so the parameters agree up to
    float32 rounding (sums in another order); the float64 statistics agree to 1e-12; the gathered
    episodes are exactly the one process's, in the same order; and both ranks hold the same bits.
    """
    rollout = _fixed_rollout()
    torch.save(rollout, tmp_path / "rollout.pt")
    _launch(2, "fixed-rollout", str(tmp_path), module="tests.test_ppo_distributed_run")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in range(2)]

    config = Config(**FIXED, num_envs=TOTAL_ENVS, runs_dir=str(tmp_path / "runs"), run_name="one")
    with Trainer(config) as trainer:
        one = _update_on_fixed_rollout(trainer, rollout, slice(None))

    for key, value in ranks[0]["agent"].items():
        assert torch.equal(value, ranks[1]["agent"][key]), key  # replicas: the same bits
        # measured: float32 parameters within 3e-8 of one process's after moving ~1e-2; float64 within 1e-14
        tolerance = {"rtol": 1e-12, "atol": 1e-12} if value.dtype == torch.float64 else {"rtol": 1e-5, "atol": 2e-7}
        torch.testing.assert_close(value, one["agent"][key], **tolerance, msg=key)
    assert not torch.equal(ranks[0]["agent"]["actor.0.weight"], rollout["initial_agent"]["actor.0.weight"])
    for key, value in ranks[0]["reward_rms"].items():
        torch.testing.assert_close(value, one["reward_rms"][key], rtol=1e-12, atol=1e-12, msg=key)
    for gathered, single in zip(ranks[0]["episodes"], one["episodes"]):
        assert torch.equal(gathered, single)
    assert len(one["episodes"][0]) > 5  # the rollout does end episodes, on both ranks' envs
    for name, value in one["stats"].items():
        assert ranks[0]["stats"][name] == pytest.approx(value, rel=1e-3, abs=1e-6), name


# -- resuming ---------------------------------------------------------------------------------------------
def test_two_ranks_resume_from_a_checkpoint(tmp_path) -> None:
    """Rank 0 writes the checkpoint with every rank's generator state; on resume every rank loads the
    bytes rank 0 read and its own generator state: resumed for zero iterations, the run writes back
    exactly what it loaded; resumed for more, it continues the step count with replicas equal."""
    per_iteration = STEPS_PER_ITERATION_2_RANKS
    common = ["--distributed", "--check-replicas", "--norm-obs", *SMALL, "--runs-dir", str(tmp_path)]
    _launch(2, *common, "--total-timesteps", str(2 * per_iteration), "--run-name", "first")
    resume = ["--resume", str(tmp_path / "first")]  # a run folder: its final.pt
    _launch(2, *common, "--total-timesteps", str(2 * per_iteration), "--run-name", "reloaded", *resume)
    first = torch.load(tmp_path / "first" / "final.pt", map_location="cpu", weights_only=True)
    reloaded = torch.load(tmp_path / "reloaded" / "final.pt", map_location="cpu", weights_only=True)
    assert reloaded["global_step"] == first["global_step"] == 2 * per_iteration
    assert torch.equal(reloaded["torch_rng_states"], first["torch_rng_states"])  # rank 1's state included
    for key, value in first["agent"].items():
        assert torch.equal(reloaded["agent"][key], value), key
    for index, values in first["optimizer"]["state"].items():
        assert torch.equal(reloaded["optimizer"]["state"][index]["exp_avg_sq"], values["exp_avg_sq"])

    _launch(2, *common, "--total-timesteps", str(4 * per_iteration), "--run-name", "continued", *resume)
    rows = _metrics(tmp_path / "continued")
    assert [int(r["iteration"]) for r in rows] == [3, 4]
    assert [int(r["global_step"]) for r in rows] == [3 * per_iteration, 4 * per_iteration]


def test_ranks_resumed_from_a_single_process_checkpoint_keep_their_own_generators(tmp_path) -> None:
    """A checkpoint without one generator state per rank (here a plain run's) cannot give each rank its
    own: rank 0 takes the plain run's (test_ppo_distributed.py), the others keep their fresh seeds; no two
    ranks share a generator."""
    per_iteration = STEPS_PER_ITERATION_2_RANKS
    plain = [*SMALL, "--runs-dir", str(tmp_path), "--total-timesteps", str(per_iteration), "--run-name", "plain"]
    _run([sys.executable, "-m", "ppo.train", *plain])
    resume = ["--resume", str(tmp_path / "plain"), "--run-name", "resumed", "--total-timesteps", str(per_iteration)]
    ranks = _start_ranks(2, "--distributed", *SMALL, "--runs-dir", str(tmp_path), *resume)
    try:
        stderr = [proc.communicate(timeout=150)[1] for proc in ranks]
    finally:
        _end_all(ranks, [])  # (a rank left running: ended)
    assert [proc.returncode for proc in ranks] == [0, 0], stderr
    # no per-rank states at all: nothing to warn of
    assert not any("every rank keeps its fresh seed" in text for text in stderr)
    states = torch.load(tmp_path / "resumed" / "final.pt", map_location="cpu", weights_only=True)["torch_rng_states"]
    assert states.shape[0] == 2 and not torch.equal(states[0], states[1])


# -- failures end the run ------------------------------------------------------------------------------------
def _wait_for_iterations(run: Path, proc: subprocess.Popen, count: int, timeout: float = 90) -> None:
    """Until rank 0 logged ``count`` iterations (every rank is then inside the training loop)."""
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.csv"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        if metrics.exists() and len(metrics.read_text().splitlines()) > count:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {count} iterations within {timeout} s")


def _rank_processes(launcher: psutil.Process) -> dict[int, psutil.Process]:
    """torchrun's worker processes by rank: its direct children (their own children, such as a resource
    tracker, inherit RANK too)."""
    return {int(child.environ()["RANK"]): child for child in launcher.children()}


def _end_all(processes: list[subprocess.Popen], descendants: list[psutil.Process]) -> None:
    """SIGKILL whatever of these is still alive (a stopped process too), then reap the launched ones."""
    for process in [*descendants, *(psutil.Process(p.pid) for p in processes if p.poll() is None)]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    for proc in processes:
        proc.communicate()


def test_a_killed_rank_ends_the_torchrun_run(tmp_path) -> None:
    """SIGKILL one rank mid-run: the other must not wait forever; torchrun ends with an error and no rank
    process is left (the collective timeout is long here: the peer's closed connection is what ends it)."""
    command = _torchrun(
        2, "--distributed", *SMALL, "--total-timesteps", "100000000", "--collective-timeout-s", "120",
        "--runs-dir", str(tmp_path), "--run-name", "killed",
    )  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    descendants: list[psutil.Process] = []
    try:
        _wait_for_iterations(tmp_path / "killed", proc, 2)
        launcher = psutil.Process(proc.pid)
        descendants = launcher.children(recursive=True)
        ranks = _rank_processes(launcher)
        assert sorted(ranks) == [0, 1]
        killed_at = time.monotonic()
        ranks[1].kill()
        _stdout, stderr = proc.communicate(timeout=60)
        assert time.monotonic() - killed_at < 30, "the surviving rank took too long to stop"
        assert proc.returncode != 0
        assert "SIGKILL" in stderr  # torchrun names the rank that died, and how
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, f"processes left: {alive}"
    finally:
        _end_all([proc], descendants)


class FailingOnRankOne(CartPoleEnv):
    """CartPole that raises after 40 steps in the envs of rank 1 (with --seed 1 and 2 ranks x 4 envs, the
    envs first reset with seeds 5..8): an env error on one rank only, mid-rollout."""

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.first_seed = getattr(self, "first_seed", seed)
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.steps_taken = getattr(self, "steps_taken", 0) + 1
        if self.first_seed >= 1 + ENVS_PER_RANK and self.steps_taken > 40:
            raise RuntimeError("env failure on rank 1")
        return super().step(action)


if "FailingOnRankOne-v0" not in gym.registry:
    gym.register("FailingOnRankOne-v0", entry_point=FailingOnRankOne, max_episode_steps=500)


def test_an_error_on_one_rank_ends_the_run(tmp_path) -> None:
    """An env raising on rank 1 only: that rank exits with the error, the other does not wait for it."""
    command = _torchrun(
        2, "--distributed", *SMALL, "--env-id", f"{__name__}:FailingOnRankOne-v0", "--seed", "1",
        "--total-timesteps", "100000000", "--collective-timeout-s", "120", "--runs-dir", str(tmp_path),
    )  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "env failure on rank 1" in done.stderr
    assert time.monotonic() - began < 60


def test_a_stuck_rank_times_out_without_torchrun(tmp_path) -> None:
    """Ranks started by another launcher (here: this test, setting the torch.distributed variables). One
    rank stops (SIGSTOP: alive, connection open, silent); the other gives up after the collective timeout
    with an error instead of waiting forever. The launcher then ends the stopped one."""
    timeout_s = 4
    args = [
        "--distributed", *SMALL, "--total-timesteps", "100000000", "--collective-timeout-s", str(timeout_s),
        "--runs-dir", str(tmp_path), "--run-name", "stuck",
    ]  # fmt: skip
    ranks = []
    try:
        ranks = _start_ranks(2, *args)
        _wait_for_iterations(tmp_path / "stuck", ranks[0], 2)
        ranks[1].send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        _stdout, stderr = ranks[0].communicate(timeout=timeout_s + 60)
        waited = time.monotonic() - stopped_at
        assert ranks[0].returncode != 0
        assert "timed out" in stderr.lower(), stderr[-3000:]
        assert timeout_s * 0.9 <= waited < timeout_s + 30
    finally:
        _end_all(ranks, [])  # the launcher's part: end the stopped rank


def test_a_run_folder_rank_0_refuses_is_said_by_every_rank_in_one_line(tmp_path) -> None:
    """A --run-name whose folder holds a run: rank 0 refuses it, and the other ranks say that rank 0 could not
    make the run folder (they trained on and died in the first collective with gloo's traceback)."""
    common = [
        *SMALL,
        "--runs-dir",
        str(tmp_path),
        "--run-name",
        "X",
        "--total-timesteps",
        str(STEPS_PER_ITERATION_2_RANKS),
    ]
    held = tmp_path / "X"  # (a run's files: test_ppo_train makes them with a real run)
    held.mkdir()
    (held / "config.json").write_text("{}")
    (held / "latest.pt").write_bytes(b"")
    done = subprocess.run(
        _torchrun(2, "--distributed", *common), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=150
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("ppo.train: ")]
    assert any("holds a run already" in line for line in lines), done.stderr[-3000:]
    assert any("rank 0 could not make the run folder" in line for line in lines), done.stderr[-3000:]
    # (torchrun's own ChildFailedError traceback follows any failed rank; no rank's traceback through ppo's code)
    assert "Connection closed by peer" not in done.stderr and "ppo/train.py" not in done.stderr


if __name__ == "__main__":
    if sys.argv[1:2] == ["fixed-rollout"]:
        _fixed_rollout_rank(Path(sys.argv[2]))
    else:
        raise SystemExit(f"usage: python -m {__spec__.name} fixed-rollout FOLDER")
