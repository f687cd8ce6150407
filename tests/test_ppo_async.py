"""ppo.train --async-envs: double-buffered sampling collects exactly what a serial run of each env gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppo.backends import make_env
from ppo.config import Config
from ppo.train import Trainer


def _config(tmp_path, name: str, **overrides) -> Config:
    values = dict(
        runs_dir=str(tmp_path),
        run_name=name,
        num_envs=4,
        num_steps=40,
        total_timesteps=4 * 40 * 2,
        start_method="fork",
        progress=False,
        tensorboard=False,
        eval_episodes=0,
        stop_when_solved=False,
        async_envs=True,
    )
    values.update(overrides)
    return Config(**values)


@pytest.mark.parametrize("num_workers", [None, 4])
def test_every_env_replays_serially_from_the_rollout(tmp_path, num_workers) -> None:
    """Each env's observations, rewards and flags in the storage are what the same env gives, stepped
    serially with the actions the storage says it got (SAME_STEP autoreset), over two rollouts."""
    config = _config(tmp_path, "replay", num_workers=num_workers)
    with Trainer(config) as trainer:
        seeds = trainer.dist.env_seeds(config.seed, config.num_envs, steps=0)
        models = [make_env(config.env_id) for _ in range(config.num_envs)]
        current = [m.reset(seed=s)[0] for m, s in zip(models, seeds)]
        try:
            for rollout in range(2):
                assert not trainer.collect_rollout()
                storage = trainer.storage
                rewards, terminated, truncated = (x.cpu().numpy() for x in storage.results())
                for t in range(config.num_steps):
                    obs_t = storage.obs_at(t).cpu().numpy()
                    for i, model in enumerate(models):
                        np.testing.assert_array_equal(obs_t[i], current[i], err_msg=f"env {i} step {t}")
                        obs, reward, term, trunc, _ = model.step(int(storage.actions[t, i]))
                        assert (rewards[t, i], terminated[t, i], truncated[t, i]) == (reward, term, trunc)
                        current[i] = model.reset()[0] if term or trunc else obs
                for i in range(config.num_envs):  # the observation to bootstrap from
                    np.testing.assert_array_equal(storage.obs_at(config.num_steps).cpu().numpy()[i], current[i])
                assert trainer.global_step == config.num_envs * config.num_steps * (rollout + 1)
        finally:
            for model in models:
                model.close()


def test_training_runs_and_learns_from_every_sample(tmp_path) -> None:
    with Trainer(_config(tmp_path, "train", norm_reward=True)) as trainer:
        summary = trainer.run()
        assert summary["global_step"] == 4 * 40 * 2
        assert all(torch.isfinite(v).all() for v in trainer.agent.state_dict().values())
        assert summary["episodes"] > 0


def test_async_envs_settings_are_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match="num_envs must be even"):
        _config(tmp_path, "x", num_envs=3).validate()
    with pytest.raises(ValueError, match="fastvec backend"):
        _config(tmp_path, "x", vec_backend="serial").validate()
    with pytest.raises(ValueError, match="num_workers must be even"):
        _config(tmp_path, "x", num_workers=3).validate()


def test_the_same_seed_gives_the_same_run(tmp_path) -> None:
    """The groups are taken in the order they were sent, whichever finishes first (envs whose steps take
    0-2 ms at random here): the same seed gives the same parameters (it used to depend on timing)."""
    states = []
    for name in ("first", "second"):
        config = _config(tmp_path, name, env_id="tests.envs:fastvec-test/JitteryCartPole-v1", num_workers=4, num_steps=16,
                         total_timesteps=4 * 16 * 3)
        with Trainer(config) as trainer:
            trainer.run()
            states.append({k: v.clone() for k, v in trainer.agent.state_dict().items()})
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("solve_return", [0.1, -0.5])
def test_solved_is_decided_on_whole_steps(tmp_path, solve_return) -> None:
    """Two envs (one per half) end their episodes at the same steps, +k and -k: after every whole step the mean of
    the last 100 episodes is 0. Solved (-0.5) or never (0.1), the run is the synchronous one: the same verdict,
    steps, episodes' end steps, parameters and generator. (It used to look after each half: 0.1 was "solved"
    at step 407, after env 0's episode alone; and a solve counted the half still stepping, 401 steps for 400.)"""
    runs = []
    for async_envs in (False, True):
        config = _config(tmp_path, f"{solve_return}-{async_envs}", env_id="tests.envs:fastvec-test/Opposed-v0",
                         num_envs=2, num_workers=2, num_steps=16, total_timesteps=2 * 16 * 16, seed=0,
                         solve_return=solve_return, stop_when_solved=True, async_envs=async_envs)  # fmt: skip
        with Trainer(config) as trainer:
            summary = trainer.run()
            runs.append((
                {k: summary[k] for k in ("solved", "solve_step", "global_step", "iterations", "episodes")},
                trainer.episodes.history()[0],
                trainer.agent.state_dict(),
                torch.get_rng_state(),
            ))  # fmt: skip
    (sync, sync_steps, sync_params, sync_rng), (other, steps, params, rng) = runs
    assert sync["solved"] == (solve_return < 0) and other == sync
    np.testing.assert_array_equal(steps, sync_steps)
    for key in sync_params:
        torch.testing.assert_close(params[key], sync_params[key], rtol=0, atol=0, msg=key)
    assert torch.equal(rng, sync_rng)


def test_one_policy_call_per_half_whatever_the_groups(tmp_path, monkeypatch) -> None:
    """With more cores than halves, the pool splits each half into several groups (one per core; seen
    on 16 cores: a worker per half of 32 envs ran at 0.26x the synchronous rollout). The sampler
    still calls the policy once per half and step, on the whole half, not once per group."""
    from fastvec import pool as pool_module

    monkeypatch.setattr(pool_module, "default_num_workers", lambda: 8)  # 8 "cores": 8 groups of 1 env
    config = _config(tmp_path, "groups", num_envs=8, num_steps=6, total_timesteps=8 * 6)
    with Trainer(config) as trainer:
        assert trainer.backend.pool.num_workers == 8 and trainer.backend.group_size == 1
        sizes = []
        sample = trainer.agent.sample
        monkeypatch.setattr(trainer.agent, "sample", lambda obs: (sizes.append(len(obs)), sample(obs))[1])
        assert not trainer.collect_rollout()
        assert sizes == [4] * (2 * config.num_steps)


def test_a_tuned_config_s_num_workers_is_not_the_halves_layout(tmp_path) -> None:
    """--async-envs with --fastvec-config: the tuner's num_workers (measured for the synchronous step) made a layout
    whose groups need not tile a half (one worker for 4 envs in halves of 2: refused); --num-workers still wins."""
    import json

    from ppo.backends import make_backend

    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"config": {"num_workers": 1, "step_in_parent": True}}))
    for given, workers in ((None, 2), (4, 4)):
        backend = make_backend("fastvec", "CartPole-v1", 4, 3, num_workers=given, start_method="fork",
                               fastvec_config=str(tuned), async_envs=True)  # fmt: skip
        try:
            assert backend.pool.num_workers == workers and backend.pool._async.batch_size == 2
        finally:
            backend.close()
