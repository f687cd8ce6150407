"""Training is deterministic: same seed, same parameters; and the engine does not change the result."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch

from ppo.config import Config
from ppo.train import Trainer, _run_dir, solve_threshold


def _train(tmp_path, name: str, **overrides) -> tuple[dict, dict[str, torch.Tensor]]:
    config = Config(
        runs_dir=str(tmp_path),
        run_name=name,
        num_envs=4,
        num_steps=16,
        total_timesteps=4 * 16 * 3,
        start_method="fork",
        progress=False,
        tensorboard=False,
        eval_episodes=0,
        **overrides,
    )
    with Trainer(config) as trainer:
        summary = trainer.run()
        return summary, {k: v.clone() for k, v in trainer.agent.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_same_parameters(tmp_path) -> None:
    summary_a, params_a = _train(tmp_path, "a", seed=3)
    summary_b, params_b = _train(tmp_path, "b", seed=3)
    _assert_same(params_a, params_b)
    assert summary_a["mean_return_100"] == summary_b["mean_return_100"]
    _, params_c = _train(tmp_path, "c", seed=4)
    assert any(not torch.equal(params_a[k], params_c[k]) for k in params_a)


def test_fastvec_and_serial_backends_train_identically(tmp_path) -> None:
    """Zero copy changes where the data lives, not what the learner sees."""
    _, fastvec_params = _train(tmp_path, "fastvec", vec_backend="fastvec", num_workers=2)
    _, serial_params = _train(tmp_path, "serial", vec_backend="serial")
    _assert_same(fastvec_params, serial_params)


def test_continuous_actions_with_normalization_run(tmp_path) -> None:
    summary, _ = _train(
        tmp_path,
        "pendulum",
        env_id="Pendulum-v1",
        vec_backend="fastvec",
        num_workers=0,
        norm_obs=True,
        norm_reward=True,
        num_minibatches=4,
    )
    assert summary["episodes"] == 0 and summary["global_step"] == 192  # Pendulum episodes last 200 steps


def test_image_observations_train_through_the_cnn(tmp_path, capsys) -> None:
    """84x84x4 uint8 frames in the ring, read in place by the Nature CNN (forked workers inherit the registration);
    --norm-obs, which the CNN does not use (it scales pixels by 1/255), says so."""
    if "FastvecTestImage-v0" not in gym.registry:
        gym.register("FastvecTestImage-v0", entry_point="tests.envs:ImageEnv")
    config = Config(
        runs_dir=str(tmp_path),
        run_name="image",
        env_id="FastvecTestImage-v0",
        num_envs=2,
        num_steps=8,
        total_timesteps=2 * 8 * 2,
        num_workers=2,
        start_method="fork",
        progress=False,
        tensorboard=False,
        eval_episodes=0,
        norm_obs=True,
    )
    with Trainer(config) as trainer:
        assert trainer.agent.image and trainer.storage.obs.dtype == torch.uint8 and trainer.agent.obs_rms is None
        summary = trainer.run()
    assert summary["global_step"] == 32
    assert "--norm-obs does not apply to image observations" in capsys.readouterr().err


def test_solve_threshold_comes_from_the_env_spec() -> None:
    assert solve_threshold(Config()) == 475.0
    assert solve_threshold(Config(solve_return=100.0)) == 100.0
    assert solve_threshold(Config(env_id="Pendulum-v1")) is None
    # "module:env-id", as gym.make takes it: the module is imported, then its env's spec read
    assert solve_threshold(Config(env_id="benchmarks.workloads:fastvec-bench/CartPole1ms-v1")) == 475.0


def test_monitor_logs_each_shards_busy_share_and_trains_the_same(tmp_path) -> None:
    """--monitor: the shards' busy shares go to metrics.csv; the learning is unchanged."""
    import csv

    _, watched = _train(tmp_path, "watched", num_workers=2, monitor=True)
    _, plain = _train(tmp_path, "plain", num_workers=2)
    _assert_same(watched, plain)
    with open(tmp_path / "watched" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"fastvec_busy_shard0", "fastvec_busy_shard1", "fastvec_moves"} <= set(rows[0])
    assert all(0.0 <= float(row["fastvec_busy_shard1"]) <= 1.0 for row in rows)


@pytest.mark.one_pass  # the serial backend, or the references: no fastvec kernels
def test_a_minibatch_of_one_sample_trains_without_nan(tmp_path) -> None:
    """Advantages of a one-sample minibatch are left as they are, as SB3 does (their unbiased std is NaN,
    which turned every weight into NaN while the run finished as if all was well)."""
    config = Config(runs_dir=str(tmp_path), run_name="one", num_envs=2, num_steps=8, num_minibatches=16,
                    total_timesteps=32, vec_backend="serial", progress=False, tensorboard=False, eval_episodes=0,
                    stop_when_solved=False)
    with Trainer(config) as trainer:
        trainer.run()
        assert all(torch.isfinite(v).all() for v in trainer.agent.state_dict().values())


@pytest.mark.one_pass  # the serial backend, or the references: no fastvec kernels
@pytest.mark.parametrize("backend", ["serial", "gym-async", "sb3-subproc"])
def test_dict_observations_are_refused_by_name_on_every_backend(request, tmp_path, backend: str) -> None:
    request.node.reference_may_leak_fds = backend != "serial"  # (gymnasium's and SB3's pipes and buffers)
    env_id = "fastvec-test/DictEcho-v0"  # (registered by tests.envs)
    config = Config(runs_dir=str(tmp_path), run_name=backend, env_id=f"tests.envs:{env_id}", vec_backend=backend,
                    num_envs=2, start_method="fork", progress=False, tensorboard=False, eval_episodes=0)
    with pytest.raises(TypeError, match="single-array \\(Box\\) observations"):
        Trainer(config)


@pytest.mark.parametrize(
    "name, value",
    [
        ("max_grad_norm", -0.5),  # clip_grad_norm_ would flip the gradients' sign
        ("max_grad_norm", 0.0),
        ("learning_rate", float("inf")),
        ("learning_rate", 0.0),
        ("vf_coef", float("nan")),
        ("ent_coef", float("inf")),
        ("clip_coef", -0.2),
        ("target_kl", -1.0),
        ("target_kl", float("nan")),
        ("total_timesteps", 0),
        ("hidden_sizes", (64, 0)),
        ("hidden_sizes", ()),
        ("checkpoint_interval", -1),
        ("eval_episodes", -5),
        ("torch_threads", -2),
        ("collective_timeout_s", float("inf")),
        ("collective_timeout_s", float("nan")),
        ("collective_timeout_s", 1e10),  # (torch.distributed's int64 nanoseconds wrapped: it timed out at once)
        ("hidden_sizes", (64, 2**64)),
        ("solve_return", float("nan")),
        ("solve_return", float("inf")),  # (summary.json wrote it as null, "no threshold": hunt79 bug 5)
        ("solve_return", float("-inf")),
        ("run_name", ".."),  # (the run's files were written outside runs_dir: hunt79 bug 3)
        ("run_name", "."),
        ("run_name", "a/b"),
        ("run_name", ""),
        ("run_name", "x" * 256),  # (OSError "File name too long" after the envs had started: hunt83 bug 4)
        ("num_workers", -1),  # (fastvec said "a positive int", though 0 is ppo's every env in the learner's process)
    ],
)
def test_settings_that_would_train_wrongly_are_refused_by_name(name: str, value) -> None:
    with pytest.raises(ValueError, match=name):
        Config(**{name: value}).validate_new_run()


@pytest.mark.parametrize(("name", "value"), [("solve_return", float("inf")), ("run_name", "exp/seed0")])
def test_the_config_of_a_run_written_before_the_new_run_rules_still_validates(name: str, value) -> None:
    """ppo.eval validates a run folder's config.json: one written before run names and thresholds were checked
    (a nested --run-name, --solve-return inf) was refused there (hunt83 bug 1); only a new run must meet them."""
    Config(**{name: value}).validate()


def test_defaults_and_edge_values_validate() -> None:
    Config().validate()
    Config(collective_timeout_s=9e9).validate()
    Config(ent_coef=-0.01, clip_coef=0.0, vf_coef=0.0, target_kl=None, checkpoint_interval=0, eval_episodes=0).validate()
    Config(num_workers=0).validate()


def test_learning_rate_scales_with_the_envs_of_every_rank() -> None:
    """--scale-lr-with-num-envs: 2 ranks x 4 envs train with the learning rate of 1 x 8 (the same batch)."""
    two_by_four, one_by_eight = Config(num_envs=4, scale_lr_with_num_envs=True), Config(num_envs=8, scale_lr_with_num_envs=True)
    assert two_by_four.effective_learning_rate(world_size=2) == one_by_eight.effective_learning_rate() == 3e-3
    assert Config(num_envs=4).effective_learning_rate(world_size=2) == 3e-3  # no scaling asked: as given


def test_auto_on_cuda_with_an_mlp_says_the_cpu_may_be_faster() -> None:
    """Measured on the lent H200 machine: a 64-unit MLP's policy call took 3x longer on CUDA than on a
    CPU core. --device auto landing on CUDA with vector observations says so (as SB3 warns); a
    device the user named, the CPU, or image observations (the CNN) get no note."""
    from ppo.train import device_note

    vector = gym.spaces.Box(-1, 1, (4,))
    image = gym.spaces.Box(0, 255, (84, 84, 4), dtype="uint8")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert "--device cpu" in device_note("auto", cuda, vector)
    assert device_note("cuda", cuda, vector) is None
    assert device_note("auto", cpu, vector) is None
    assert device_note("auto", cuda, image) is None


def test_a_run_that_cannot_start_says_why_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    """`python -m ppo.train` answers a setting, an env id, a module or a path given wrongly with one line
    naming it (as ppo.eval does), not a traceback of 16 to 88 lines; PPO_TRACEBACK=1 raises as before."""
    from ppo.train import main

    common = ["--runs-dir", str(tmp_path), "--total-timesteps", "64", "--no-progress", "--no-tensorboard",
              "--eval-episodes", "0", "--num-workers", "0"]  # fmt: skip
    monkeypatch.delenv("PPO_TRACEBACK", raising=False)
    cases = [
        (["--num-envs", "0"], "num_envs and num_steps must be >= 1"),
        (["--num-envs", "4", "--num-minibatches", "3"], "not divisible by num_minibatches = 3"),
        (["--env-id", "NoSuchEnv-v0"], "NoSuchEnv"),
        (["--env-id", "nosuchmodule:Foo-v0"], "No module named 'nosuchmodule'"),
        (["--resume", str(tmp_path / "nowhere")], "no checkpoint file or run folder at"),
    ]
    (tmp_path / "a-file").write_text("")
    cases.append((["--runs-dir", str(tmp_path / "a-file")], "a-file"))  # a runs folder that is a file
    # an env whose spaces the trainer does not take, with what to do about it; what the machine or launcher
    # does not give (these were tracebacks: a TypeError or RuntimeError)
    cases.append((["--env-id", "FrozenLake-v1"], "got Discrete(16); gymnasium.wrappers.FlattenObservation"))
    cases.append((["--distributed"], "--distributed needs RANK in the environment"))
    # (SB3's workers printed a traceback each and the trainer died of a broken pipe: hunt79 bug 7)
    cases.append((["--vec-backend", "sb3-subproc", "--env-id", "NoSuchEnv-v0"], "NoSuchEnv"))
    cases.append((["--resume", str(tmp_path / "a-file")], "a-file: this file is not a checkpoint"))  # (an empty file)
    cases.append((["--fastvec-config", str(tmp_path / "a-file")], "--fastvec-config " + str(tmp_path / "a-file")))
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda was asked for, but torch sees no CUDA device"))
    for args, named in cases:
        with pytest.raises(SystemExit) as stop:
            main([*common, *args])
        message = str(stop.value.code)
        assert message.startswith("ppo.train: ") and named in message and "\n" not in message, (args, message)
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]  # no run folder for runs that never started
    monkeypatch.setenv("PPO_TRACEBACK", "1")
    with pytest.raises(ValueError, match="num_envs"):
        main([*common, "--num-envs", "0"])


def test_settings_too_large_for_the_machine_are_refused_in_one_line_naming_them(tmp_path, monkeypatch) -> None:
    """Widths no memory holds (torch's 25-line traceback) and more torch threads than cores (2**31 said
    "Overflow when unpacking long", naming nothing; 100,000 crashed torch's first parallel op)."""
    import os

    from ppo.train import main

    common = ["--runs-dir", str(tmp_path), "--total-timesteps", "64", "--no-progress", "--no-tensorboard",
              "--eval-episodes", "0", "--num-workers", "0", "--device", "cpu"]  # fmt: skip
    monkeypatch.delenv("PPO_TRACEBACK", raising=False)
    cases = [
        # (a size torch cannot even compute: an allocation that fails, 2**40, would depend on the machine's overcommit)
        (["--hidden-sizes", "64", str(2**62)], f"hidden_sizes [64, {2**62}]: the actor and critic layers cannot be"),
        (["--torch-threads", str(2**31)], f"torch_threads must be at most {4 * os.cpu_count()} (4 per core"),
        (["--torch-threads", str(4 * os.cpu_count() + 1)], "torch_threads must be at most"),
        (["--collective-timeout-s", "1e10"], "collective_timeout_s must be at most 9e9 s"),
        # (the serial, gym-async and sb3-subproc rings: torch's 28-line allocator traceback, hunt79 bug 2)
        (["--vec-backend", "serial", "--num-steps", str(10**11)], "the rollout ring of 100000000001 slots of 8 envs"),
    ]
    for args, named in cases:
        with pytest.raises(SystemExit) as stop:
            main([*common, *args])
        message = str(stop.value.code)
        assert message.startswith("ppo.train: ") and named in message and "\n" not in message, (args, message)
    assert list(tmp_path.iterdir()) == []


def test_a_run_name_that_holds_a_run_is_refused_unless_that_run_resumes_in_place(tmp_path) -> None:
    """A new run under the --run-name of an existing run is refused in one line (it erased the run's metrics
    and left its latest.pt, which --resume of the folder then took for the new run's). Resumed in its own
    folder, the run goes on: metrics.csv keeps its rows and its header, and best.pt stays unless beaten."""
    import csv

    from ppo.train import main

    common = ["--runs-dir", str(tmp_path), "--num-envs", "2", "--num-steps", "16", "--no-progress", "--no-tensorboard",
              "--eval-episodes", "0", "--num-workers", "0", "--no-stop-when-solved", "--run-name", "X"]  # fmt: skip
    main([*common, "--total-timesteps", "128"])
    run = tmp_path / "X"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    best = torch.load(run / "best.pt", weights_only=True)
    with pytest.raises(SystemExit) as stop:
        main([*common, "--total-timesteps", "64", "--seed", "7"])
    assert "X holds a run already" in str(stop.value.code) and "--resume" in str(stop.value.code)
    assert list(csv.DictReader(open(run / "metrics.csv"))) == rows  # untouched
    main([*common, "--total-timesteps", "160", "--resume", str(run)])  # in place: one more iteration
    after = list(csv.DictReader(open(run / "metrics.csv")))
    assert after[: len(rows)] == rows and [int(r["iteration"]) for r in after] == list(range(1, len(rows) + 2))
    import json

    assert torch.load(run / "final.pt", weights_only=True)["global_step"] == 160  # (the part's results written)
    assert json.loads((run / "summary.json").read_text())["global_step"] == 160
    kept = torch.load(run / "best.pt", weights_only=True)
    assert kept["mean_return_100"] >= best["mean_return_100"]
    if kept["global_step"] == best["global_step"]:  # not beaten: the same best.pt
        assert all(torch.equal(kept["agent"][k], v) for k, v in best["agent"].items())
    # a checkpoint in it: in place too; its budget spent, so nothing is trained and nothing of the run rewritten
    written = {name: (run / name).read_bytes() for name in ("summary.json", "learning_curve.png", "metrics.csv", "final.pt")}
    files = sorted(p.name for p in run.iterdir())
    with_tensorboard = [arg for arg in common if arg != "--no-tensorboard"]  # (its events file: none either)
    summary = main([*with_tensorboard, "--total-timesteps", "160", "--resume", str(run / "final.pt")])
    assert {name: (run / name).read_bytes() for name in written} == written and sorted(p.name for p in run.iterdir()) == files
    assert summary == json.loads(written["summary.json"])  # the run's own verdict (it said "NOT SOLVED ... nan")
    # a run interrupted before it wrote its summary: written from the checkpoint's episodes, or, for a checkpoint
    # without them (written before they were kept), not at all: no verdict is made up
    from ppo.train import describe

    (run / "summary.json").unlink()
    summary = main([*common, "--total-timesteps", "160", "--resume", str(run)])
    assert not summary["trained"] and describe(summary).startswith("Nothing trained on CartPole-v1: the checkpoint has 160")
    assert json.loads((run / "summary.json").read_text())["episodes"] == json.loads(written["summary.json"])["episodes"]
    (run / "summary.json").unlink()
    old = torch.load(run / "final.pt", weights_only=True)
    del old["episodes"]
    torch.save(old, run / "final.pt")
    summary = main([*common, "--total-timesteps", "160", "--resume", str(run)])
    assert not summary["trained"] and not (run / "summary.json").exists()


def test_a_run_resumed_in_place_goes_on_from_its_checkpoints_iteration(tmp_path) -> None:
    """Resumed in place from a checkpoint behind its last rows (a run interrupted after latest.pt), metrics.csv
    keeps one row per iteration: the rows after the checkpoint are replaced, not repeated; and columns the
    resumed part adds (--monitor's) are kept, the earlier rows' cells left empty."""
    import csv

    from ppo.train import main

    common = ["--runs-dir", str(tmp_path), "--num-envs", "2", "--num-steps", "16", "--no-progress", "--no-tensorboard",
              "--eval-episodes", "0", "--no-stop-when-solved", "--run-name", "X", "--checkpoint-interval", "2"]  # fmt: skip
    main([*common, "--num-workers", "0", "--total-timesteps", "96"])  # iterations 1-3; latest.pt at 2, final.pt at 3
    run = tmp_path / "X"
    before = list(csv.DictReader(open(run / "metrics.csv")))
    main([*common, "--num-workers", "1", "--monitor", "--total-timesteps", "128", "--resume", str(run / "latest.pt")])
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["global_step"]) for r in rows] == [32, 64, 96, 128]
    # wall_s goes on from the checkpoint's time (it began again from 0: a plot against it went backwards)
    walls = [float(r["wall_s"]) for r in rows]
    assert walls == sorted(walls) and walls[2] > walls[1] > 0, walls
    assert rows[:2] == [dict(r, **{k: "" for k in rows[0] if k not in r}) for r in before[:2]]
    assert "fastvec_busy_shard0" in rows[0] and rows[0]["fastvec_busy_shard0"] == "" and rows[3]["fastvec_busy_shard0"]


def test_a_run_resumed_in_place_from_behind_its_newest_checkpoint_sets_that_history_aside(tmp_path, monkeypatch, capsys) -> None:
    """Resumed in place from latest.pt while final.pt is further on (going back to an earlier state), then stopped
    before its next checkpoint: the folder's final.pt, best.pt, summary and curve of the replaced history are renamed
    <name>.replaced, so a later --resume of the folder goes on from the state metrics.csv describes (it took the
    replaced history's final.pt, the furthest trained, and went on with it)."""
    from ppo import train
    from ppo.checkpoint import find_checkpoint

    common = ["--runs-dir", str(tmp_path), "--num-envs", "2", "--num-steps", "16", "--no-progress", "--no-tensorboard",
              "--eval-episodes", "0", "--no-stop-when-solved", "--run-name", "X", "--checkpoint-interval", "2",
              "--num-workers", "0"]  # fmt: skip
    train.main([*common, "--total-timesteps", "96"])  # iterations 1-3; latest.pt at 2, final.pt at 3
    run = tmp_path / "X"
    replaced = torch.load(run / "final.pt", map_location="cpu", weights_only=True)["agent"]
    collect = train.Trainer.collect_rollout

    def stopped_in_iteration_4(self):  # (a Ctrl-C before the checkpoint at iteration 4)
        if self.iteration == 3:
            raise KeyboardInterrupt
        return collect(self)

    monkeypatch.setattr(train.Trainer, "collect_rollout", stopped_in_iteration_4)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        train.main([*common, "--total-timesteps", "160", "--resume", str(run / "latest.pt")])
    # (as SIGTERM says it: Ctrl-C ended in a traceback that named no checkpoint)
    said = capsys.readouterr().err  # (the run's own options with it: a resume takes the command line's)
    assert f"ppo.train: stopped by Ctrl-C; latest.pt (step 64) is kept: the run's command with --resume {run} --runs-dir {tmp_path} --run-name X added" in said
    names = sorted(p.name for p in run.iterdir())
    # (best.pt too, of the replaced history past step 64: ppo.eval of the folder evaluated a policy metrics.csv no
    # longer held, and this run's own best had to beat it: hunt79 bug 1)
    assert names == ["best.pt.replaced", "config.json", "final.pt.replaced", "latest.pt", "learning_curve.png.replaced",
                     "metrics.csv", "summary.json.replaced"], names  # fmt: skip
    assert find_checkpoint(run).name == "latest.pt"
    state = torch.load(run / "latest.pt", map_location="cpu", weights_only=True)
    assert state["iteration"] == 2 and not all(torch.equal(state["agent"][k], v) for k, v in replaced.items())
    # finished, then back again: the first rewind's set-aside files stay beside the second's
    monkeypatch.setattr(train.Trainer, "collect_rollout", collect)
    train.main([*common, "--total-timesteps", "160", "--resume", str(run)])  # latest.pt at 4, final.pt at 5
    assert (run / "best.pt").is_file()  # (this run's own)
    train.main([*common, "--total-timesteps", "192", "--resume", str(run / "latest.pt")])  # (final.pt at 5 set aside)
    assert {"final.pt.replaced", "final.pt.replaced.2", "summary.json.replaced.2"} <= {p.name for p in run.iterdir()}


def test_a_run_resumed_in_place_shows_each_step_once_in_tensorboard(tmp_path) -> None:
    """Resumed in place from a checkpoint behind its last rows, TensorBoard hides the replaced history's events
    from the resumed step on, as metrics.csv drops its rows: every step once (its old events file kept them,
    so the replaced iterations showed two values at one step)."""
    import contextlib
    import io

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ppo.train import main

    common = ["--runs-dir", str(tmp_path), "--num-envs", "2", "--num-steps", "16", "--no-progress", "--eval-episodes",
              "0", "--no-stop-when-solved", "--run-name", "X", "--checkpoint-interval", "2", "--num-workers", "0"]  # fmt: skip
    main([*common, "--total-timesteps", "96"])  # iterations 1-3; latest.pt at 2
    main([*common, "--total-timesteps", "128", "--resume", str(tmp_path / "X" / "latest.pt")])
    events = EventAccumulator(str(tmp_path / "X"))
    with contextlib.redirect_stderr(io.StringIO()):
        events.Reload()
    steps = [event.step for event in events.Scalars("charts/learning_rate")]
    assert len(steps) == len(set(steps)) and 96 in steps and steps[-1] == 128, steps


def test_a_run_name_whose_run_left_no_checkpoint_is_refused_without_advising_a_resume(tmp_path) -> None:
    """A run stopped before its first checkpoint cannot be resumed: the refusal says to take another name or
    remove the folder (it advised a --resume that then failed)."""
    from ppo.train import main

    (tmp_path / "X").mkdir()
    (tmp_path / "X" / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as stop:
        main(["--runs-dir", str(tmp_path), "--run-name", "X", "--total-timesteps", "64", "--num-workers", "0"])
    message = str(stop.value.code)
    assert "stopped before its first checkpoint" in message and "remove that folder" in message and "--resume" not in message


def test_an_interrupted_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    """Ctrl-C (or a full disk) while a checkpoint is written: no half-written <name>.pt.tmp is left."""
    from ppo import checkpoint

    def interrupted(state, path):
        open(path, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path / "latest.pt", {"w": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []


def test_the_one_line_keeps_the_whole_message_before_a_traceback() -> None:
    """The one-line start error keeps every line of the message (an env's own multi-line message says
    what is wrong after its first line), drops the worker's traceback after it, and is never empty."""
    from ppo.train import _one_line

    assert _one_line(ValueError("level file 3.txt is invalid:\nrow 3 has 5 columns")) == (
        "level file 3.txt is invalid: row 3 has 5 columns"
    )
    assert _one_line(ValueError("\nthe part that matters")) == "the part that matters"
    import gymnasium as gym

    worker = gym.error.NameNotFound(
        "env 0 raised NameNotFound during 'make': no env\n\nRemote traceback (env 0):\nTraceback (most recent call last):\n  x"
    )
    assert _one_line(worker) == "NameNotFound: env 0 raised NameNotFound during 'make': no env"
    assert _one_line(ValueError("")) == "ValueError"


def test_runs_named_in_the_same_second_never_share_a_folder(tmp_path, monkeypatch) -> None:
    """Two auto-named runs started in the same second: whichever makes the folder first owns it, the other
    takes the next name, even when the other made it between a look and the making (it used to look,
    then make it with exist_ok, so both could write into one folder)."""
    from pathlib import Path

    from ppo import train as train_module

    monkeypatch.setattr(train_module.time, "strftime", lambda fmt: "20261204-120000")
    config = Config(runs_dir=str(tmp_path))
    first = train_module._run_dir(config)
    monkeypatch.setattr(Path, "exists", lambda self: False)  # the other run made it after this one looked
    second = train_module._run_dir(config)
    assert first != second and second.name == first.name + "-1" and second.is_dir()


def test_the_verdict_of_a_run_in_which_no_episode_ended_says_so() -> None:
    """A budget that ended before any episode did: "... mean return of the last 100 episodes nan" said nothing."""
    from ppo.train import describe

    summary = {
        "env_id": "CartPole-v1", "mean_return_100": math.nan, "solved": False, "solve_return": 475.0,
        "global_step": 64, "train_wall_s": 0.1, "sps": 640.0, "eval_mean_return": None, "run_dir": "runs/x",
    }  # fmt: skip
    text = describe(summary)
    assert text.startswith("NOT SOLVED CartPole-v1") and "(none: no episode ended)" in text and "nan" not in text
    assert "(none: no episode ended)" in describe({**summary, "solve_return": None, "mean_return_100": None})
    assert "last 100 episodes of 12.5 (< 475)" in describe({**summary, "mean_return_100": 12.5})


def test_the_verdict_says_what_kept_a_run_from_solving_and_when_it_solved(tmp_path) -> None:
    """The closing line states only what is true: a run whose window of 100 episodes never filled is not solved
    whatever their mean (it said "mean ... of 23.0 (< -inf)"); a solved run that trained on says the mean reached
    the threshold at the solve and what it is at the end (it said "0.0 >= 1 after 200 steps")."""
    from ppo.train import describe

    summary, _ = _train(tmp_path, "few", vec_backend="serial", solve_return=-1e9)  # (-inf is refused: a finite low)
    assert not summary["solved"] and 0 < summary["episodes"] < 100
    text = describe(summary)
    assert text.startswith(
        f"NOT SOLVED CartPole-v1: the budget of 192 steps ended after {summary['episodes']} episodes, fewer than the "
        f"100 whose mean return must reach -1e+09 (their mean: {summary['mean_return_100']:.1f})"
    ), text
    assert "(their mean" not in describe({**summary, "episodes": 0, "mean_return_100": math.nan})
    solved = {
        **summary, "solved": True, "solve_return": 1.0, "solve_step": 200, "solve_wall_s": 0.5, "global_step": 1024,
        "episodes": 300, "mean_return_100": 0.0,
    }  # fmt: skip
    text = describe(solved)
    assert text.startswith(
        "SOLVED CartPole-v1: the mean return of the last 100 episodes reached 1 after 200 steps in 0.50 s; at the end "
        "(1,024 steps) it was 0.0;"
    ), text
    assert "at the end" not in describe({**solved, "global_step": 200})
    # with no threshold (Pendulum's), "the last 100 episodes" of 8 said more than there was
    free = {**summary, "solve_return": None, "episodes": 8, "mean_return_100": -1331.7}
    assert "(no solve threshold): mean return of its 8 episodes -1331.7;" in describe(free)
    assert "(no solve threshold): no episode ended;" in describe({**free, "episodes": 0})
    assert "mean return of the last 100 episodes -1331.7;" in describe({**free, "episodes": 100})


@pytest.mark.one_pass  # no engine at all
def test_the_trainer_without_its_extra_says_what_to_install(monkeypatch, tmp_path) -> None:
    """Installed without the train extra, ``python -m ppo.train`` ended in a bare ModuleNotFoundError traceback."""
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import runpy; runpy.run_module('ppo.train', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "needs torch" in done.stderr and "pip install '.[train]'" in done.stderr

    # the extra's other modules are asked for before any work: matplotlib's absence ended a run in a traceback after
    # the whole budget, before its summary (hunt94 bug 1); ppo.eval without tyro failed at its import
    import matplotlib

    import ppo.train as train_module
    from ppo.train import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # (as if not installed: its import raises ImportError)
    with pytest.raises(SystemExit, match=r"^python -m ppo.train needs matplotlib \(import of matplotlib halted; None in "
                       r"sys\.modules\): pip install '\.\[train\]'"):  # fmt: skip
        main(["--total-timesteps", "64"])
    monkeypatch.setitem(sys.modules, "matplotlib", matplotlib)  # (the module itself: its submodules are loaded)
    # tensorboard is asked for through the module the run imports, torch's writer (tensorboard's own import passed
    # where the writer's protobuf modules failed, and the run died at start-up in a traceback: hunt97 bug 4); a
    # reason that is no ImportError (protobuf's TypeError) counts too, and is said
    import importlib

    real_import = importlib.import_module

    def broken_writer(name: str, *args: object) -> object:
        if name == "torch.utils.tensorboard":
            raise TypeError("Descriptors cannot be created directly.\nIf this call came from a _pb2.py file ...")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken_writer)
    with pytest.raises(SystemExit, match=r"^python -m ppo.train needs tensorboard \(Descriptors cannot be created "
                       r"directly\.\): pip install '\.\[train\]' .*\(or --no-tensorboard\)$"):  # fmt: skip
        main(["--total-timesteps", "64"])
    monkeypatch.setattr(importlib, "import_module", real_import)
    # rich only for the progress bar: --no-progress runs without it (it was refused: hunt101 bug 6)
    monkeypatch.setitem(sys.modules, "rich", None)
    with pytest.raises(SystemExit, match=r"^python -m ppo.train needs rich \(.*\): pip install .*\(or --no-progress\)$"):
        main(["--total-timesteps", "64"])

    def started(config: object) -> None:
        raise RuntimeError("started")  # (past the check: no run needed)

    monkeypatch.setattr(train_module, "_start", started)
    with pytest.raises(RuntimeError, match="started"):
        main(["--total-timesteps", "64", "--no-progress", "--no-tensorboard", "--runs-dir", str(tmp_path)])
    monkeypatch.undo()
    code = "import sys; sys.modules['tyro'] = None; from ppo.eval import main; main(['x'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stderr.startswith("python -m ppo.eval needs tyro (") and "pip install '.[train]'" in done.stderr
    # a tyro whose own import fails with something else than an ImportError is named too (a traceback: hunt101 bug 5)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tyro.py").write_text("raise RuntimeError('tyro broke')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "broken"))
    monkeypatch.delitem(sys.modules, "tyro", raising=False)
    with pytest.raises(SystemExit, match=r"needs tyro \(tyro broke\): pip install"):
        main([])
    monkeypatch.setitem(sys.modules, "tyro", None)  # (its reason quoted, as ppo.eval's: hunt97 bug 2)
    with pytest.raises(SystemExit, match=r"needs tyro \(import of tyro halted; None in sys\.modules\): pip install '\.\[train\]'"):
        main([])


def test_a_run_an_older_version_wrote_under_a_nested_name_resumes_in_place(tmp_path) -> None:
    """--run-name exp/seed0 was accepted before run names had to be one folder name: such a run is resumed in place
    still (it was refused: hunt84 bug 1); a new run under that name, or a name that leaves runs_dir, is not."""
    (tmp_path / "exp" / "seed0").mkdir(parents=True)
    (tmp_path / "exp" / "seed0" / "config.json").write_text("{}")
    resume = str(tmp_path / "exp" / "seed0")
    config = Config(runs_dir=str(tmp_path), run_name="exp/seed0", resume=resume)
    config.validate_new_run()
    assert _run_dir(config) == tmp_path / "exp" / "seed0"
    for name, given in (("exp/seed0", None), ("exp/../exp/seed0", resume), ("exp/" + "x" * 256, resume)):
        with pytest.raises(ValueError, match="run_name must be one folder name"):
            Config(runs_dir=str(tmp_path), run_name=name, resume=given).validate_new_run()
    # the folder is rank 0's to check, where the run folder is made: the other ranks' machines need not hold it
    # (they refused the name, and rank 0 waited out the collective timeout: hunt85 bug 3)
    elsewhere = Config(runs_dir=str(tmp_path / "elsewhere"), run_name="exp/seed0", resume=resume)
    elsewhere.validate_new_run()
    for name, given in (("exp/other", resume), ("exp/seed0", str(tmp_path / "exp"))):
        with pytest.raises(ValueError, match="run_name must be one folder name"):
            _run_dir(Config(runs_dir=str(tmp_path), run_name=name, resume=given))
    assert not (tmp_path / "exp" / "other").exists()
