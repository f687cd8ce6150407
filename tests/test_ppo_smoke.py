"""End to end, as a user runs it (CleanRL-style smoke test): `python -m ppo.train`, then `python -m ppo.eval`."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: float) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.one_pass  # (the trainer, end to end: test_ppo_train runs it on either twin's kernels)
def test_train_improves_cartpole_and_writes_the_run_folder(tmp_path) -> None:
    out = _run(
        [
            "-m",
            "ppo.train",
            "--runs-dir",
            str(tmp_path),
            "--run-name",
            "smoke",
            "--total-timesteps",
            "30000",
            "--start-method",
            "fork",
            "--no-progress",
            "--eval-episodes",
            "3",
            "--checkpoint-interval",
            "50",
        ],
        timeout=240,
    )
    assert "CartPole-v1" in out and ("SOLVED" in out or "NOT SOLVED" in out)
    run = tmp_path / "smoke"
    for name in (
        "config.json",
        "metrics.csv",
        "final.pt",
        "best.pt",
        "latest.pt",
        "learning_curve.png",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if not math.isnan(float(r["mean_return_100"]))]
    first, last = float(rows[0]["mean_return_100"]), float(rows[-1]["mean_return_100"])
    assert last > first + 100, f"mean return went from {first:.1f} to {last:.1f}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] <= 30000 + 256 and summary["eval_episodes"] == 3
    state = torch.load(run / "final.pt", map_location="cpu", weights_only=True)
    assert state["global_step"] == summary["global_step"] and "optimizer" in state

    out = _run(["-m", "ppo.eval", str(run), "--episodes", "3"], timeout=120)
    assert "mean return" in out and "over 3 episodes" in out
