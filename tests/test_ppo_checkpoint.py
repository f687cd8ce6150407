"""Checkpoints: save/load restores parameters and optimizer state; a resumed run continues exactly."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppo.agent import Agent
from ppo.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from ppo.config import Config
from ppo.train import Trainer


def _agent_and_optimizer(seed: int) -> tuple[Agent, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    agent = Agent(spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2), norm_obs=True)
    return agent, torch.optim.Adam(agent.parameters(), lr=1e-3, eps=1e-5)


def _gradient_step(agent: Agent, optimizer: torch.optim.Optimizer, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(32, 4, generator=gen)
    actions = torch.randint(0, 2, (32,), generator=gen)
    log_prob, entropy, value = agent.evaluate(obs, actions)
    loss = -(log_prob * torch.randn(32, generator=gen)).mean() + value.square().mean() - 0.01 * entropy.mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_save_load_and_resume_give_the_same_parameters(tmp_path) -> None:
    agent, optimizer = _agent_and_optimizer(0)
    agent.obs_rms.update(torch.randn(100, 4) * 3 + 1)
    for k in range(3):
        _gradient_step(agent, optimizer, k)
    path = save_checkpoint(tmp_path / "ckpt.pt", agent, optimizer, config={"seed": 0}, global_step=96, iteration=3)

    restored, restored_optimizer = _agent_and_optimizer(1)  # different initial weights
    state = load_checkpoint(path, restored, restored_optimizer)
    assert state["global_step"] == 96 and state["iteration"] == 3 and state["config"] == {"seed": 0}
    _assert_same_parameters(agent, restored)  # includes the observation normalizer's statistics
    # resuming: the same further updates from the original and from the restored copy agree exactly
    for k in range(3, 6):
        _gradient_step(agent, optimizer, k)
        _gradient_step(restored, restored_optimizer, k)
    _assert_same_parameters(agent, restored)


def test_a_checkpoint_keeps_the_cuda_generator_of_a_run_on_a_gpu(tmp_path, monkeypatch) -> None:
    """On a GPU the actions and the minibatch permutations draw from the device's generator: checkpoints kept
    the CPU one only, so a resume there did not sample as the run would have. (No GPU here: torch.cuda's
    generator calls are stood in for; the lent GPU machine runs the real ones.)"""
    from ppo import checkpoint
    from ppo.distributed import Distributed

    assert checkpoint.cuda_rng_state(torch.device("cpu")) is None  # (a CPU run keeps none)
    drawn = torch.arange(16, dtype=torch.uint8)
    set_to: list = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": drawn)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": set_to.append((state, device)))
    gpu = torch.device("cuda", 0)
    assert checkpoint.cuda_rng_state(gpu) is drawn
    agent, optimizer = _agent_and_optimizer(0)
    path = save_checkpoint(tmp_path / "ckpt.pt", agent, optimizer, cuda_rng_state=checkpoint.cuda_rng_state(gpu))
    load_checkpoint(path, restore_rng=True)  # (onto the CPU: its CUDA generator is not touched)
    assert set_to == []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, map_location, weights_only: real_load(f, weights_only=weights_only))
    load_checkpoint(path, restore_rng=True, map_location=gpu)
    assert len(set_to) == 1 and torch.equal(set_to[0][0], drawn) and set_to[0][1] == gpu
    # distributed: each rank its own row, or rank 0 the checkpoint's one state; said once (for the CPU generator)
    set_to.clear()
    rows = torch.stack([drawn, drawn + 1])
    assert Distributed(rank=1, world_size=2).restore_rng_state(rows, drawn, set_to.append, warn=False)
    assert torch.equal(set_to[0], drawn + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not Distributed(rank=0, world_size=3).restore_rng_state(rows, drawn, set_to.append, warn=False)
    assert torch.equal(set_to[1], drawn)


def test_checkpoints_load_with_weights_only(tmp_path) -> None:
    agent, optimizer = _agent_and_optimizer(0)
    path = save_checkpoint(tmp_path / "ckpt.pt", agent, optimizer, config=Config().to_dict())
    torch.load(path, map_location="cpu", weights_only=True)  # raises if anything but tensors and plain containers is inside
    assert find_checkpoint(tmp_path / "ckpt.pt") == path
    with pytest.raises(FileNotFoundError):
        find_checkpoint(tmp_path)  # a folder without latest/final/best


def test_trainer_resumes_from_a_run(tmp_path) -> None:
    """A run resumed from final.pt starts from its parameters, optimizer and step count."""
    common = dict(
        runs_dir=str(tmp_path),
        num_envs=2,
        num_steps=16,
        vec_backend="serial",
        progress=False,
        tensorboard=False,
        eval_episodes=0,
        stop_when_solved=False,
    )
    with Trainer(Config(run_name="first", total_timesteps=64, **common)) as first:
        first.run()
        saved = {k: v.clone() for k, v in first.agent.state_dict().items()}
        saved_step = first.global_step
    final = tmp_path / "first" / "final.pt"
    with Trainer(Config(run_name="second", total_timesteps=128, resume=str(tmp_path / "first"), **common)) as second:
        assert second.global_step == saved_step == 64
        for key, value in second.agent.state_dict().items():
            assert torch.equal(value, saved[key]), key
        reference = torch.load(final, map_location="cpu", weights_only=True)["optimizer"]["state"]
        for index, values in second.optimizer.state_dict()["state"].items():
            assert torch.equal(values["exp_avg"], reference[index]["exp_avg"])
        summary = second.run()
    assert summary["global_step"] == 128 and summary["iterations"] == 4


@pytest.mark.one_pass  # the serial backend: no fastvec kernels
def test_a_resume_whose_budget_is_spent_says_so(tmp_path, capsys) -> None:
    """Resuming a run with a budget its checkpoint has already trained trains nothing (the run folder is
    still written, as a round trip), and says so, with what to change; a budget left says nothing."""
    common = dict(runs_dir=str(tmp_path), num_envs=2, num_steps=16, vec_backend="serial", progress=False,
                  tensorboard=False, eval_episodes=0, stop_when_solved=False)
    with Trainer(Config(run_name="first", total_timesteps=64, **common)) as first:
        first.run()
        mean = first.episodes.mean_return()
    capsys.readouterr()
    resume = str(tmp_path / "first")
    with Trainer(Config(run_name="spent", total_timesteps=64, resume=resume, **common)) as spent:
        summary = spent.run()
    assert summary["global_step"] == 64
    err = capsys.readouterr().err
    assert "has trained 64 steps, the whole budget (--total-timesteps 64): nothing to train" in err, err
    import json

    def strict(constant: str) -> None:
        raise AssertionError(f"summary.json holds {constant}: not JSON")

    written = json.loads((tmp_path / "spent" / "summary.json").read_text(), parse_constant=strict)
    assert written["mean_return_100"] == pytest.approx(mean)  # the episodes of the run it resumed
    old = torch.load(tmp_path / "first" / "final.pt", map_location="cpu", weights_only=True)
    del old["episodes"]  # a checkpoint written before they were kept
    torch.save(old, tmp_path / "old.pt")
    with Trainer(Config(run_name="spent-old", total_timesteps=64, resume=str(tmp_path / "old.pt"), **common)) as spent:
        spent.run()
    capsys.readouterr()
    written = json.loads((tmp_path / "spent-old" / "summary.json").read_text(), parse_constant=strict)
    assert written["mean_return_100"] is None  # (no episode: null, not NaN)
    with Trainer(Config(run_name="more", total_timesteps=96, resume=resume, **common)) as more:
        more.run()
    assert "nothing to train" not in capsys.readouterr().err


@pytest.mark.one_pass  # the serial backend: no fastvec kernels
def test_a_resume_in_place_writes_the_summary_a_run_stopped_before(tmp_path) -> None:
    """A run stopped after final.pt but before its summary and curve (a SIGTERM in its last moments), resumed in its
    own folder with its budget spent: nothing is trained, and the missing summary and curve are written, from the
    checkpoint (they were never written: the resume wrote nothing, by design, and the summary stayed missing)."""
    import json

    common = dict(runs_dir=str(tmp_path), run_name="x", num_envs=2, num_steps=64, vec_backend="serial", progress=False,
                  tensorboard=False, eval_episodes=0, stop_when_solved=False, total_timesteps=1024)  # fmt: skip
    with Trainer(Config(**common)) as first:
        summary = first.run()
    run = tmp_path / "x"
    for name in ("summary.json", "learning_curve.png"):
        (run / name).unlink()
    with Trainer(Config(resume=str(run), **common)) as again:
        resumed = again.run()
    assert not resumed["trained"] and resumed["global_step"] == 1024
    written = json.loads((run / "summary.json").read_text())
    assert written["episodes"] == summary["episodes"] and written["mean_return_100"] == pytest.approx(summary["mean_return_100"])
    assert (run / "learning_curve.png").is_file()
    with Trainer(Config(resume=str(run), **common)) as third:  # (now the run's own summary is kept as it is)
        assert third.run()["episodes"] == summary["episodes"]
    assert json.loads((run / "summary.json").read_text()) == written


@pytest.mark.one_pass  # the serial backend, or the references: no fastvec kernels
def test_a_run_folder_resumes_from_its_newest_state(tmp_path) -> None:
    """A finished run's folder holds latest.pt from an earlier iteration and final.pt: resuming takes
    final.pt (it took latest.pt and lost the iterations after it). The resumed run's steps/s counts
    only the steps it trained."""
    common = dict(
        runs_dir=str(tmp_path), num_envs=2, num_steps=16, vec_backend="serial", progress=False,
        tensorboard=False, eval_episodes=0, stop_when_solved=False,
    )
    with Trainer(Config(run_name="first", total_timesteps=128, checkpoint_interval=3, **common)) as first:
        first.run()
    assert torch.load(tmp_path / "first" / "latest.pt", map_location="cpu", weights_only=True)["global_step"] == 96
    assert find_checkpoint(tmp_path / "first").name == "final.pt"
    # a copy of the folder whose times say latest.pt was written last (cp, scp, a download): still final.pt
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("final.pt", "latest.pt"):
        shutil.copyfile(tmp_path / "first" / name, copy / name)
    os.utime(copy / "latest.pt", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert find_checkpoint(copy).name == "final.pt"
    with Trainer(Config(run_name="second", total_timesteps=192, resume=str(tmp_path / "first"), **common)) as second:
        assert second.global_step == 128 and second.iteration == 4
        summary = second.run()
    assert summary["global_step"] == 192
    assert summary["sps"] * summary["train_wall_s"] == pytest.approx(64)


@pytest.mark.one_pass  # the serial backend: no fastvec kernels
def _tiny(tmp_path) -> dict:
    """Settings of a run of one 32-step rollout of 2 envs in this process, writing under tmp_path."""
    return dict(
        runs_dir=str(tmp_path), num_envs=2, num_steps=16, vec_backend="serial", progress=False,
        tensorboard=False, eval_episodes=0, stop_when_solved=False, total_timesteps=32,
    )  # fmt: skip


def test_resuming_another_network_names_the_settings_that_differ(tmp_path) -> None:
    """--resume with a checkpoint of another network (other hidden sizes, env, or obs normalization) is
    refused naming the setting it was trained with and this run's, not with torch's list of tensors."""
    common = _tiny(tmp_path)
    with Trainer(Config(run_name="first", **common)) as first:
        first.run()
    resume = str(tmp_path / "first")
    wrong = [
        ({"hidden_sizes": (32, 32)}, r"hidden_sizes=\[64, 64\] \(this run: \[32, 32\]\)"),
        ({"env_id": "Acrobot-v1"}, r"env_id='CartPole-v1' \(this run: 'Acrobot-v1'\)"),
        ({"norm_obs": True}, r"norm_obs=False \(this run: True\)"),
    ]
    for change, message in wrong:
        with pytest.raises(ValueError, match=rf"--resume {re.escape(resume)}: .*{message}"):
            Trainer(Config(run_name="second", resume=resume, **{**common, **change})).close()


def test_a_run_that_cannot_start_leaves_the_runs_folder_alone(tmp_path) -> None:
    """A run that fails before training (a mistyped env id, a checkpoint of another network, best.pt
    given to --resume) writes nothing: it used to make its folder and write config.json first, so a
    typo under an existing --run-name overwrote that run's config and broke ppo.eval of it. best.pt
    holds no optimizer state: refused naming the file, not an in-memory buffer."""
    common = _tiny(tmp_path)
    with Trainer(Config(run_name="a", **common)) as first:
        first.run()
    config_before = (tmp_path / "a" / "config.json").read_text()
    import gymnasium as gym

    with pytest.raises(gym.error.Error, match="CartPolee"):
        Trainer(Config(run_name="a", env_id="CartPolee-v1", **common))
    with pytest.raises(gym.error.Error, match="CartPolee"):
        Trainer(Config(run_name=None, env_id="CartPolee-v1", **common))
    best = tmp_path / "a" / "best.pt"
    with pytest.raises(ValueError, match=rf"--resume {re.escape(str(best))}: the checkpoint has no optimizer state"):
        Trainer(Config(run_name="a", resume=str(best), **common))
    assert (tmp_path / "a" / "config.json").read_text() == config_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    from ppo.eval import load_agent

    load_agent(tmp_path / "a", "final.pt")  # still evaluates


def test_eval_takes_the_checkpoint_name_in_the_run_folder(tmp_path, monkeypatch) -> None:
    """ppo.eval RUN --checkpoint final.pt: the run's final.pt, even when the working directory holds a
    file of that name (another run's folder); --episodes below 1 is refused by name."""
    from ppo.eval import load_agent, main

    common = _tiny(tmp_path)
    for name, seed in (("a", 1), ("b", 7)):
        with Trainer(Config(run_name=name, seed=seed, **common)) as trainer:
            trainer.run()
    monkeypatch.chdir(tmp_path / "b")
    agent, _, state = load_agent(tmp_path / "a", "final.pt")
    assert state["path"] == str(tmp_path / "a" / "final.pt")
    wanted = torch.load(tmp_path / "a" / "final.pt", map_location="cpu", weights_only=True)["agent"]
    assert all(torch.equal(agent.state_dict()[k], v) for k, v in wanted.items())
    with pytest.raises(SystemExit, match="--episodes must be >= 1"):
        main([str(tmp_path / "a"), "--episodes", "0"])
    # a path that is no run: one line naming it, not a traceback from deep inside
    with pytest.raises(SystemExit, match="nope: no such run folder"):
        main([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty holds no config.json"):
        main([str(tmp_path / "empty")])
    # a file that is no checkpoint, and a checkpoint of another network: one line each (they were tracebacks)
    with pytest.raises(SystemExit, match=r"^ppo.eval: .*config.json is not a checkpoint this trainer can read \("):
        main([str(tmp_path / "a" / "config.json")])
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "config.json").write_text('{"env_id": ')  # (cut short)
    with pytest.raises(SystemExit, match=r"^ppo.eval: .*cut/config.json is not a config of ppo.train: Expecting value"):
        main([str(tmp_path / "cut")])
    (tmp_path / "cut" / "config.json").write_text("[]")  # (JSON, but no settings)
    with pytest.raises(SystemExit, match=r"^ppo.eval: .*cut/config.json is not a config of ppo.train: it holds a list"):
        main([str(tmp_path / "cut")])
    with Trainer(Config(run_name="wide", hidden_sizes=(8,), **common)) as trainer:
        trainer.run()
    with pytest.raises(SystemExit, match=r"^ppo.eval: checkpoint .*wide.*does not fit this run's network"):
        main([str(tmp_path / "a"), "--checkpoint", str(tmp_path / "wide" / "final.pt")])
    # a mistyped device, a negative seed: named (the device was blamed on the checkpoint, the seed a traceback)
    with pytest.raises(SystemExit, match=r"^ppo.eval: --device 'cpux' is no torch device"):
        main([str(tmp_path / "a"), "--device", "cpux"])
    for device in ("cpu:1", "meta"):  # (torch parses them; this process cannot use them)
        with pytest.raises(SystemExit, match=rf"^ppo.eval: --device '{device}' cannot be used here"):
            main([str(tmp_path / "a"), "--device", device])
    with pytest.raises(SystemExit, match=r"^ppo.eval: --seed must be >= 0"):
        main([str(tmp_path / "a"), "--seed", "-5"])
    # a run whose env cannot be made here (its module not importable in this shell): one line naming the env
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, "env_id": "no_such_module_here:Env-v0"}))
    with pytest.raises(SystemExit, match=r"^ppo.eval: .*a: its env 'no_such_module_here:Env-v0' cannot be made here: "
                                         r"ModuleNotFoundError"):  # fmt: skip
        main([str(tmp_path / "a")])


def test_eval_of_a_checkpoint_file_refuses_another_checkpoint_beside_it(tmp_path, capsys, monkeypatch) -> None:
    """ppo.eval runs/a/final.pt --checkpoint best.pt: one line, not final.pt evaluated with --checkpoint dropped
    silently; --checkpoint naming that same file is fine. --checkpoint of a folder says so (it said "runs/a holds
    none of ['runs/b']")."""
    from ppo.eval import main

    common = _tiny(tmp_path)
    for name in ("a", "b"):
        with Trainer(Config(run_name=name, **common)) as trainer:
            trainer.run()
    final = tmp_path / "a" / "final.pt"
    with pytest.raises(SystemExit, match=rf"^ppo.eval: {re.escape(str(final))} is a checkpoint file and --checkpoint best.pt names "
                                         "another: give the run's folder with --checkpoint, or the checkpoint file alone$"):  # fmt: skip
        main([str(final), "--checkpoint", "best.pt", "--episodes", "1"])
    for same in ("final.pt", str(final)):
        main([str(final), "--checkpoint", same, "--episodes", "1"])
        assert f"({final}, trained 32 steps)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=rf"^ppo.eval: --checkpoint {re.escape(str(tmp_path / 'b'))} is a folder: give a checkpoint file"):
        main([str(tmp_path / "a"), "--checkpoint", str(tmp_path / "b"), "--episodes", "1"])
    (tmp_path / "a" / "old").mkdir()  # (a folder in the run folder, named as a checkpoint would be)
    with pytest.raises(SystemExit, match=r"^ppo.eval: --checkpoint old is a folder: give a checkpoint file"):
        main([str(tmp_path / "a"), "--checkpoint", "old", "--episodes", "1"])
    # ... but a file of that name where it runs is the checkpoint given (the folder check refused it)
    shutil.copy(tmp_path / "b" / "final.pt", tmp_path / "old")
    monkeypatch.chdir(tmp_path)
    main([str(tmp_path / "a"), "--checkpoint", "old", "--episodes", "1"])
    assert "(old, trained 32 steps)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "edit, named",
    [
        ({"hidden_sizes": 64}, "hidden_sizes: expected a list of integers, got 64"),
        ({"hidden_sizes": "64"}, 'hidden_sizes: expected a list of integers, got "64"'),
        ({"hidden_sizes": [64, True]}, "hidden_sizes: expected a list of integers, got [64, true]"),
        ({"env_id": 5}, "env_id: expected a string, got 5"),
        ({"seed": "1"}, 'seed: expected an integer, got "1"'),
        ({"seed": True}, "seed: expected an integer, got true"),
        ({"norm_obs": "no"}, 'norm_obs: expected true or false, got "no"'),
        ({"device": "gpu"}, 'device: expected one of "auto", "cpu", "cuda", got "gpu"'),
        ({"num_workers": 1.5}, "num_workers: expected an integer or null, got 1.5"),
        ({"hidden_sizes": [64, 0]}, "hidden_sizes must be one or more layer widths >= 1 (and < 2**63), got (64, 0)"),
    ],
)
def test_eval_of_a_hand_edited_config_names_the_file_and_key_in_one_line(tmp_path, edit, named) -> None:
    """A value of the wrong type in config.json failed later, outside ppo.eval's try: a traceback naming neither
    the file nor the key ("'int' object is not iterable" for "hidden_sizes": 64), or another check's misfit line;
    a value out of its range (validate()'s) as well."""
    from ppo.eval import main

    with Trainer(Config(run_name="a", **_tiny(tmp_path))) as trainer:
        trainer.run()
    path = tmp_path / "a" / "config.json"
    fields = json.loads(path.read_text())
    path.write_text(json.dumps({**fields, **edit}))
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "a"), "--episodes", "1"])
    assert str(stop.value.code) == f"ppo.eval: {path} is not a config of ppo.train: {named}"


def test_config_from_dict_takes_what_to_dict_writes_and_ints_for_floats() -> None:
    config = Config(hidden_sizes=(32,), start_method="spawn", solve_return=10.0, num_workers=0)
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    taken = Config.from_dict({"gamma": 1, "solve_return": 200, "collective_timeout_s": 60, "unknown": "ignored"})
    assert (taken.gamma, taken.solve_return, taken.collective_timeout_s) == (1.0, 200.0, 60.0)
    assert type(taken.gamma) is float


_SLOW_SAVE = """
import sys, time
import torch
from ppo import train

save = torch.save

def slow_save(obj, path, *args, **kwargs):  # a checkpoint's write that takes long: SIGTERM comes in the middle
    save(obj, path, *args, **kwargs)
    print("writing", path, flush=True)
    time.sleep(60)

torch.save = slow_save
train.main(sys.argv[1:])
"""


def test_sigterm_while_a_checkpoint_is_written_stops_the_run_cleanly(tmp_path) -> None:
    """SIGTERM (a scheduler's preemption) stops `python -m ppo.train` as Ctrl-C does: a checkpoint being
    written is dropped (no latest.pt.tmp left), the envs' workers end, and the exit code says SIGTERM."""
    import signal
    import subprocess
    import sys

    import psutil

    script = tmp_path / "slow_save.py"
    script.write_text(_SLOW_SAVE)
    args = ["--runs-dir", str(tmp_path / "runs"), "--run-name", "x", "--num-envs", "2", "--num-steps", "16",
            "--total-timesteps", "100000", "--checkpoint-interval", "1", "--vec-backend", "fastvec", "--no-progress"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, str(script), *args], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": root})
    try:
        line = child.stdout.readline()
        assert line.startswith("writing") and line.strip().endswith("latest.pt.tmp"), line + child.stderr.read()
        workers = psutil.Process(child.pid).children(recursive=True)
        assert workers
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM; no checkpoint was written yet: this run cannot be resumed" in err  # (the first was cut)
    run = tmp_path / "runs" / "x"
    assert not list(run.glob("*.tmp")), sorted(p.name for p in run.iterdir())
    psutil.wait_procs(workers, timeout=10)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


@pytest.mark.one_pass  # the serial backend: no fastvec kernels
def test_a_resumed_run_goes_on_from_the_episodes_of_the_run_it_resumes(tmp_path) -> None:
    """A resumed run's learning curve, episode count, mean of the last 100 episodes and "solved" go on
    from the checkpoint's run: they began again from nothing (the curve covered only the part after the
    resume, and a run solved before its checkpoint was "not solved" once resumed)."""
    common = dict(
        runs_dir=str(tmp_path), num_envs=2, num_steps=64, vec_backend="serial", progress=False,
        tensorboard=False, eval_episodes=0, stop_when_solved=False, solve_return=10.0,  # (a random policy reaches it)
    )  # fmt: skip
    with Trainer(Config(run_name="first", total_timesteps=4096, **common)) as first:
        summary = first.run()
        steps, returns, lengths = first.episodes.history()
        window = first.episodes.mean_return()
    assert summary["solved"] and summary["episodes"] == len(returns) > 0
    with Trainer(Config(run_name="second", total_timesteps=4608, resume=str(tmp_path / "first"), **common)) as second:
        assert second.episodes.count == len(returns) and second.episodes.mean_return() == pytest.approx(window)
        again = second.episodes.history()
        for a, b in zip(again, (steps, returns, lengths)):
            np.testing.assert_array_equal(a, b)
        resumed = second.run()
        after = second.episodes.history()
    assert resumed["solved"] and resumed["solve_step"] == summary["solve_step"]
    assert resumed["episodes"] == len(after[0]) > len(returns)
    assert (after[0][: len(returns)] == steps).all() and after[0][len(returns) :].min() > 4096


def test_an_episode_history_that_cannot_be_the_last_of_its_episodes_is_refused() -> None:
    from ppo.episodes import EpisodeTracker

    tracker = EpisodeTracker(2, window=4)
    tracker.restore(6, np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4, np.int64))
    tracker.record(np.array([9]), np.array([9.0]), np.array([1]))  # takes the oldest's place in the window
    assert tracker.count == 7 and tracker.mean_return() == pytest.approx((2 + 3 + 4 + 9) / 4)
    with pytest.raises(ValueError, match="cannot hold the last of 6 episodes"):
        tracker.restore(6, np.arange(3), np.ones(3), np.ones(3, np.int64))  # fewer than the window


@pytest.mark.one_pass  # the serial backend: no fastvec kernels
def test_a_sigterm_while_the_envs_close_names_the_runs_checkpoint(tmp_path) -> None:
    """SIGTERM's message while a finished run closes its envs (a slow env close, a preemption at the end) names the
    run's final.pt: it said "stopped by SIGTERM before training began"."""
    from ppo import train

    said = []
    with Trainer(Config(run_name="s", **_tiny(tmp_path))) as trainer:
        trainer.run()
        close = trainer.backend.close

        def closing() -> None:
            said.append(train._resume_advice(train._RUNNING))
            close()

        trainer.backend.close = closing
    assert said and "final.pt (step 32) is kept: the run's command with --resume" in said[0], said
    assert train._RUNNING is None
    # stopped before the first checkpoint of a run resumed into a new folder: the same command starts it again
    resumed = SimpleNamespace(run_dir=tmp_path / "t", checkpoint=None, config=Config(resume=str(tmp_path / "s")))
    assert train._resume_advice(resumed) == (
        "; no checkpoint of this run was written (--checkpoint-interval 0 writes one at the end only): the same "
        f"command starts it again from {tmp_path / 's'}"
    )
    named = SimpleNamespace(run_dir=tmp_path / "t", checkpoint=None, config=Config(resume=str(tmp_path / "s"), run_name="t"))
    assert f"the same command, once {tmp_path / 't'} is removed, starts it again from" in train._resume_advice(named)
    # a run an older version wrote under a nested name, resumed in place: the advice keeps its name (it named the
    # last folder, whose resume went into a new run folder: hunt85 bug 1)
    nested = SimpleNamespace(
        run_dir=tmp_path / "exp" / "seed0", checkpoint=(tmp_path / "exp" / "seed0" / "latest.pt", 512),
        config=Config(resume=str(tmp_path / "exp" / "seed0"), run_name="exp/seed0"),
    )
    assert train._resume_advice(nested).endswith("--run-name exp/seed0 added goes on from it")


def _sigterm_when(child: Any, ready: Callable[[], bool], settle: float, group: bool) -> tuple[list, str]:
    """Once ``ready()`` (and ``settle`` seconds more), SIGTERM to ppo.train's process ``child`` (started in a session
    of its own), or with ``group`` to its process group; returns its processes' children as they were then and its
    stderr, after checking that it exited with SIGTERM's code. Its group is killed if it does not end."""
    import signal

    import psutil

    try:
        waited = time.monotonic()
        while not ready():
            assert child.poll() is None and time.monotonic() - waited < 60, child.communicate()
            time.sleep(0.05)
        time.sleep(settle)
        workers = psutil.Process(child.pid).children(recursive=True)
        if group:
            os.killpg(child.pid, signal.SIGTERM)
        else:
            child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 128 + signal.SIGTERM, err
    return workers, err


@pytest.mark.one_pass  # the references: no fastvec kernels
@pytest.mark.parametrize("backend", ["gym-async", "sb3-subproc"])
def test_sigterm_to_the_process_group_stops_a_run_on_a_reference_backend_cleanly(tmp_path, backend: str) -> None:
    """A scheduler's SIGTERM reaches the whole process group (scancel, systemd): the trainer stops once, with exit
    code 143 and no traceback, and says what there is to resume from. The workers that gymnasium's and SB3's
    engines fork inherited the trainer's handler: each said the message and died at once, and the trainer's
    step or close broke on their pipes (EOFError, BrokenPipeError) with exit code 1."""
    import subprocess
    import sys

    import psutil

    run = tmp_path / "runs" / "x"
    interval = "1" if backend == "sb3-subproc" else "0"
    args = ["--runs-dir", str(tmp_path / "runs"), "--run-name", "x", "--num-envs", "4", "--num-steps", "16",
            "--total-timesteps", "10000000", "--checkpoint-interval", interval, "--vec-backend", backend,
            "--no-progress", "--no-tensorboard"]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, "-m", "ppo.train", *args], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    # (training, its workers stepping)
    workers, err = _sigterm_when(child, (run / ("latest.pt" if interval == "1" else "metrics.csv")).is_file, 0.3, group=True)
    assert len(workers) >= 4
    assert err.count("stopped by SIGTERM") == 1 and "Traceback" not in err, err
    if interval == "1":
        assert "latest.pt (step " in err and f"is kept: the run's command with --resume {run} --runs-dir {tmp_path / 'runs'} --run-name x added" in err, err
    else:
        assert "no checkpoint was written (--checkpoint-interval 0 writes one at the end only)" in err, err
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


_SLOW_MAKE = """
import multiprocessing, time
import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv

class SlowMake(CartPoleEnv):
    def __init__(self, **kw):
        if multiprocessing.parent_process() is not None:  # (in the engine's workers only)
            time.sleep(4.0)
        super().__init__(**kw)

gym.register("SlowMake-v0", entry_point=SlowMake, max_episode_steps=500)
"""


@pytest.mark.one_pass  # a reference engine: no fastvec kernels
def test_sigterm_while_a_reference_engine_starts_its_workers_ends_the_run(tmp_path) -> None:
    """SIGTERM to the trainer while SB3's SubprocVecEnv is still making its envs: the run ends with exit code 143
    (it hung: the workers, which ignore a first SIGTERM, were never killed, and multiprocessing's exit hook waited
    for them)."""
    import subprocess
    import sys

    import psutil

    (tmp_path / "slow_make.py").write_text(_SLOW_MAKE)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = ["--env-id", "slow_make:SlowMake-v0", "--vec-backend", "sb3-subproc", "--num-envs", "2", "--runs-dir",
            str(tmp_path / "runs"), "--no-progress", "--no-tensorboard"]  # fmt: skip
    child = subprocess.Popen([sys.executable, "-m", "ppo.train", *args], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env={**os.environ, "PYTHONPATH": f"{root}:{tmp_path}"})  # fmt: skip
    # (the workers make their envs; the trainer waits for their spaces)
    workers, err = _sigterm_when(child, lambda: len(psutil.Process(child.pid).children()) >= 2, 0.5, group=False)
    assert "stopped by SIGTERM before training began" in err and "Traceback" not in err, err
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


def test_an_interrupted_main_leaves_the_calling_programs_own_processes_alone(monkeypatch) -> None:
    """ppo.train's main() called from a program, and interrupted: it kills the processes its run started (a reference
    engine's workers, which ignore a first SIGTERM), not the program's own."""
    import multiprocessing

    from ppo import train

    own = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,), daemon=True)
    own.start()

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_start", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            train.main(["--total-timesteps", "64"])
        assert own.is_alive()
    finally:
        own.kill()
        own.join()


@pytest.mark.one_pass  # the serial backend: no fastvec kernels
def test_resumes_of_a_finished_run_keep_what_it_did(tmp_path) -> None:
    """A solved run (--stop-when-solved) stopped before its summary, resumed in place: nothing more is trained and
    its summary says solved (it trained its whole remaining budget over the solved final.pt). Resumed with another
    --solve-return: "solved" is looked for against that one (it kept the checkpoint's). Rewound in place to a
    checkpoint whose step spends the budget: the run's further final.pt and summary stay (they were overwritten
    with the older state)."""
    import json

    from ppo.train import describe

    common = dict(runs_dir=str(tmp_path), num_envs=2, num_steps=64, vec_backend="serial", progress=False,
                  tensorboard=False, eval_episodes=0, solve_return=10.0, total_timesteps=100_000,
                  checkpoint_interval=2)  # fmt: skip
    with Trainer(Config(run_name="a", **common)) as first:
        solved = first.run()
    assert solved["solved"] and solved["global_step"] < 100_000
    run = tmp_path / "a"
    (run / "summary.json").unlink()
    with Trainer(Config(run_name="a", resume=str(run), **common)) as again:
        summary = again.run()
    assert summary["global_step"] == solved["global_step"] and summary["solve_step"] == solved["solve_step"]
    assert json.loads((run / "summary.json").read_text())["solved"]
    assert "nothing more trained" in describe(summary)
    assert torch.load(run / "final.pt", map_location="cpu", weights_only=True)["global_step"] == solved["global_step"]
    with Trainer(Config(run_name="b", resume=str(run), **{**common, "solve_return": 1e5, "total_timesteps": solved["global_step"] + 128})) as other:
        assert not other.run()["solved"]
    # a rewind to latest.pt with a budget it has spent: the run's own further files stay
    latest = torch.load(run / "latest.pt", map_location="cpu", weights_only=True)["global_step"]
    assert latest < solved["global_step"]
    before = {name: (run / name).read_bytes() for name in ("final.pt", "summary.json")}
    with Trainer(Config(run_name="a", resume=str(run / "latest.pt"), **{**common, "total_timesteps": latest, "stop_when_solved": False})) as back:
        back.run()
    assert {name: (run / name).read_bytes() for name in before} == before


@pytest.mark.one_pass  # the serial backend: no fastvec kernels
def test_a_resume_whose_episodes_meet_its_lower_threshold_is_solved_at_the_resume(tmp_path) -> None:
    """--resume with a --solve-return the restored 100 episodes already meet: solved at the resume step. "Solved"
    was looked for only after an episode ended, so a resumed stretch that ended none said "NOT SOLVED ... of 22.3
    (< 10)", and --stop-when-solved trained on until one did."""
    from ppo.train import describe

    common = dict(runs_dir=str(tmp_path), num_envs=2, num_steps=64, vec_backend="serial", progress=False,
                  tensorboard=False, eval_episodes=0, solve_return=1e5)  # fmt: skip
    with Trainer(Config(run_name="a", total_timesteps=3200, **common)) as first:
        done = first.run()
    assert done["episodes"] >= 100 and 10 <= done["mean_return_100"] < 1e5
    resumed = {**common, "solve_return": 10.0, "resume": str(tmp_path / "a")}
    with Trainer(Config(run_name="b", total_timesteps=3200 + 128, **resumed)) as again:
        summary = again.run()
    assert summary["solved"] and summary["solve_step"] == summary["global_step"] == 3200  # (nothing more trained)
    with Trainer(Config(run_name="c", total_timesteps=3200 + 128, stop_when_solved=False, **resumed)) as on:
        summary = on.run()
    assert summary["solved"] and summary["solve_step"] == 3200 and summary["global_step"] == 3328
    assert describe(summary).startswith("SOLVED")


def test_a_run_resumed_in_place_that_solves_in_its_own_part_keeps_what_it_trained(monkeypatch, tmp_path) -> None:
    """Resumed in place before it was solved, a run that gets solved in its own part (--stop-when-solved) is a run
    that trained: its best.pt and files are written as any run's (the check of a run finished before its resume
    looked at "solved" as it was at the end, and took the part for one that trained nothing)."""
    from ppo import train

    common = dict(runs_dir=str(tmp_path), run_name="a", num_envs=2, num_steps=64, vec_backend="serial", progress=False,
                  tensorboard=False, eval_episodes=0, solve_return=10.0)  # fmt: skip
    with Trainer(Config(total_timesteps=128, **common)) as first:  # (too few episodes to be solved)
        assert not first.run()["solved"]
    saved = []
    save_best = train.Trainer._save_best
    monkeypatch.setattr(train.Trainer, "_save_best", lambda self, *a: saved.append(a[2]) or save_best(self, *a))
    with Trainer(Config(total_timesteps=100_000, resume=str(tmp_path / "a"), **common)) as again:
        summary = again.run()
    assert summary["solved"] and summary["trained"] and 128 < summary["global_step"] < 100_000
    assert saved and saved[-1] > 128  # (best.pt of this part)
