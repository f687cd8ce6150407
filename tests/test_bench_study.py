"""benchmarks.vec_env's interleaved rounds: the schedule, merging a point's rounds, per-round ratios, goals."""

from __future__ import annotations

import pytest

from benchmarks.vec_env import check_goals, merge_rounds, paired_ratio, schedule


def spec(engine: str, n: int, workload: str = "CartPole-v1") -> dict:
    return {"engine": engine, "workload": workload, "num_envs": n, "seconds": 0.5, "repeats": 1}


def ok(engine: str, n: int, rate: float, workload: str = "CartPole-v1", **extra) -> dict:
    return {**spec(engine, n, workload), "status": "ok", "rate": rate, "rates": [rate], "other_load": 0.0, **extra}


def test_each_grid_point_runs_all_its_rounds_before_the_next_in_a_rotating_order() -> None:
    specs = [spec("serial", 1), spec("a", 8), spec("b", 8), spec("c", 8), spec("a", 64), spec("b", 64)]
    order = schedule(specs, rounds=3)
    points = [(s["num_envs"] if not s.get("paired_with") else s["paired_with"]) for s, _ in order]
    # grid points in plan order, never revisited: 1 x3, then 8 (a, b, c, paired serial) x3, then 64 (a, b, serial) x3
    assert points == [1] * 3 + [8] * 12 + [64] * 9
    at8 = [(s["engine"], r) for s, r in order if points[order.index((s, r))] == 8]
    firsts = [next(e for e, r in at8 if r == k) for k in range(3)]
    assert firsts == ["a", "b", "c"]  # each round starts with another engine
    for k in range(3):  # every engine, and the single-env reference, once per round
        assert sorted(e for e, r in at8 if r == k) == ["a", "b", "c", "serial"]
    paired = [s for s, _ in order if s.get("paired_with")]
    assert {s["paired_with"] for s in paired} == {8, 64} and all(s["num_envs"] == 1 for s in paired)


def test_without_a_single_env_measurement_nothing_is_paired() -> None:
    order = schedule([spec("a", 8), spec("b", 8)], rounds=2)
    assert [(s["engine"], r) for s, r in order] == [("a", 0), ("b", 0), ("b", 1), ("a", 1)]


def test_merging_rounds_takes_the_median_and_keeps_each_round() -> None:
    failed = {**spec("a", 8), "status": "timeout", "reason": "hung", "attempts": 1}
    merged = merge_rounds([ok("a", 8, 100.0, attempts=1), failed, ok("a", 8, 300.0, attempts=2)])
    assert merged["status"] == "ok" and merged["rate"] == 200.0
    assert merged["round_rates"] == [100.0, None, 300.0] and merged["attempts"] == 4
    none_ran = merge_rounds([failed, failed])
    assert none_ran["status"] == "timeout" and none_ran["round_rates"] == [None, None]


def test_ratios_are_medians_of_per_round_ratios_not_ratios_of_medians() -> None:
    # the host slowed down in round 2 for b only: b's median is inflated, a/b per round is steady
    a = {**ok("a", 8, 200.0), "round_rates": [100.0, 200.0, 300.0]}
    b = {**ok("b", 8, 150.0), "round_rates": [50.0, 400.0, 150.0]}
    ratio, per_round = paired_ratio(a, b)
    assert per_round == [2.0, 0.5, 2.0] and ratio == 2.0  # the ratio of the medians would say 1.33
    assert paired_ratio(a, b, scale=2.0)[0] == 1.0
    assert paired_ratio(a, None) == (None, [])
    # measured in different runs (no rounds to pair): the ratio of the figures
    assert paired_ratio(ok("a", 8, 300.0), ok("b", 8, 100.0)) == (3.0, [])


def test_the_64_env_goal_uses_the_single_env_rate_measured_in_its_own_rounds() -> None:
    results = [
        {**ok("serial", 1, 1000.0), "round_rates": [1000.0, 1000.0, 1000.0]},
        {**ok("serial", 1, 100.0, paired_with=64), "round_rates": [100.0, 120.0, 80.0]},
        {**ok("fastvec", 64, 150.0), "round_rates": [150.0, 180.0, 120.0]},
    ]
    lines = check_goals(results, num_cores=2)
    goal = next(line for line in lines if "64 envs" in line)
    # per round 150/200, 180/240, 120/160 = 0.75: met against its own rounds' single-env rate
    assert "0.75 (goal 0.6) -> met" in goal and "per round: 0.75, 0.75, 0.75" in goal


def test_the_critical_path_timeline_lines_up_both_sides_of_every_command() -> None:
    """benchmarks.critical_path: the worker's moments of command k fall inside the learner's (it
    cannot start stepping before step_async began, nor finish after step_wait returned), and the
    report names every segment."""
    import numpy as np

    from benchmarks import critical_path as cp

    learner, worker = cp.record(num_envs=4, commands=300, env_id="CartPole-v1")
    assert (worker[:, cp.W_BEGIN] > learner[:, cp.A_ENTER]).all()
    assert (worker[:, cp.W_FINISH] < learner[:, cp.RETURNED]).all()
    assert (worker[:, cp.W_END] >= worker[:, cp.W_BEGIN]).all() and (
        learner[:, cp.L_END] >= learner[:, cp.L_BEGIN]
    ).all()
    assert np.all(np.diff(worker[:, cp.W_BEGIN]) > 0)  # one row per step, in order
    text = cp.report(learner, worker, 4, "CartPole-v1")
    assert "worker: its shard" in text and "The worker finished after" in text


def test_the_ceiling_steps_every_env_in_one_process_per_core_and_times_itself() -> None:
    """benchmarks' `ceiling` engine: each core's process steps its own share of the envs (all of them
    stepped, none twice), and the rate counts the steps of all the processes."""
    import os

    import numpy as np

    from benchmarks.engines import Ceiling
    from tests import envs

    engine = Ceiling([envs.make_cartpole] * 3)
    assert engine.cores == min(3, len(os.sched_getaffinity(0)))
    batches = np.zeros((4, 3), np.int64)
    result = engine.measure(batches, 0.2, 2)
    assert len(result["rates"]) == 2 and result["rate"] > 0 and result["cpu_used_by_run"] > 0
    assert 0 <= result["other_load"] <= 1


def test_the_ceiling_is_measured_through_the_measuring_child_s_entry() -> None:
    """The measuring child read every engine's ``step`` first, which the ceiling has none of: each of its
    measurements failed with an AttributeError (hunt92 bug 12)."""
    from benchmarks._measure import measure

    result = measure({"engine": "ceiling", "workload": "CartPole-v1", "num_envs": 2, "seconds": 0.1, "repeats": 1})
    assert result["status"] == "ok" and result["rate"] > 0, result


def test_the_lockstep_ceiling_keeps_its_loops_within_one_step_of_each_other() -> None:
    """`ceiling-lockstep`: the same loops, each waiting for the others after every step, so none is
    more than one step ahead when the first reaches the deadline."""
    import numpy as np

    from benchmarks.engines import Ceiling
    from tests import envs

    engine = Ceiling([envs.make_cartpole] * 4, lockstep=True)
    result = engine.measure(np.zeros((4, 4), np.int64), 0.2, 1)
    steps = result["loop_steps"]
    assert len(steps) == engine.cores and min(steps) > 10 and max(steps) - min(steps) <= 1
    assert result["rate"] > 0


def test_the_async_layouts_study_steps_both_layouts_beside_a_policy() -> None:
    from benchmarks.async_layouts import run

    for own in (True, False):
        assert run(own, num_envs=4, env_ms=0.05, policy_ms=0.05, seconds=0.05) > 0


def test_the_monitors_cost_study_runs_every_state_in_each_round() -> None:
    from benchmarks import monitor

    spec = {"scenario": "cost-parts", "warmup": 0.05, "phases": 2, "phase_seconds": 0.05, "interval": 0.02}
    result = monitor._measure_cost(spec)
    assert result["status"] == "ok" and {k: len(v) for k, v in result["rates"].items()} == {
        "off": 2,
        "timing": 2,
        "thread": 2,
        "on": 2,
    }
    assert all(rate > 0 for rates in result["rates"].values() for rate in rates)
    text = monitor.markdown([monitor._empty_record("cost, the monitor (x)")], "python -m benchmarks.monitor", {"cpu": "x", "cores": 2})
    assert "cost, the monitor (x)" in text


def test_the_rollout_layouts_study_times_each_layout_in_every_round(tmp_path) -> None:
    from benchmarks import rollout_layouts

    out = tmp_path / "layouts.md"
    args = ["--env-id", "CartPole-v1", "--num-envs", "4", "--rounds", "2", "--rollouts", "1", "--out", str(out)]
    summary = rollout_layouts.main([*args, "--layouts", "sync", "pinned"])
    assert set(summary) == {"sync", "pinned", "policy_us"} and set(summary.pop("policy_us")) == {2, 4}
    assert all(len(s["us"]) == 2 and min(s["us"]) > 0 for s in summary.values())
    assert summary["sync"]["ratios"] == [1.0, 1.0]
    assert "| pinned |" in out.read_text()


def test_the_core_speed_probe_runs_a_loop_on_every_allowed_core() -> None:
    import os

    from benchmarks import core_speed

    rounds = core_speed.main(["--rounds", "2", "--seconds", "0.05", "--pause", "0"])
    assert len(rounds) == 2
    assert all(set(r) == set(os.sched_getaffinity(0)) and min(r.values()) > 0 for r in rounds)


@pytest.mark.parametrize(
    "argv",
    [
        ["--variant", "a=fastvec", "--variant", "b=no-such-engine", "--workload", "CartPole-v1:8"],
        ["--variant", "a=fastvec", "--variant", "b=serial", "--workload", "NoSuchWorkload:8"],
        ["--variant", "a=fastvec", "--variant", "b=serial", "--workload", "CartPole-v1:0"],
    ],
)
def test_the_interleaved_study_refuses_unknown_names_before_measuring(argv, capsys) -> None:
    """It measured every round (each an error), wrote an empty table and exited 0."""
    from benchmarks import interleaved

    with pytest.raises(SystemExit) as info:
        interleaved.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and ("unknown" in err or "at least 1" in err)


def test_ppo_solve_leaves_a_return_never_measured_out_of_the_median() -> None:
    """A run that finished no episode (null in its summary.json, nan once read) is left out of the median of
    final returns and written as null (a nan made the median depend on the seeds' order, and the file not JSON)."""
    import json
    import math

    from benchmarks import ppo_solve

    case = next(case for case in ppo_solve.CASES.values() if not case.solves)
    runs = [
        {"case": case.name, "seed": seed, "status": "ok", "solved": False, "solve_step": None, "solve_wall_s": None,
         "global_step": 256, "train_wall_s": 1.0, "sps": 256.0, "mean_return_100": value, "process_s": 2.0}
        for seed, value in ((1, 30.0), (2, math.nan), (3, 10.0))
    ]  # fmt: skip
    summary = ppo_solve.summarize(case, runs)
    assert summary["final_return"] == 20.0 and summary["final_return_all"] == [30.0, None, 10.0]
    json.dumps([ppo_solve._strict(run) for run in runs], allow_nan=False)


def test_the_async_pair_study_times_every_layer_and_refuses_a_layout_it_cannot_make(capsys) -> None:
    from benchmarks import async_pair

    took = async_pair.measure(4, 6, settle_us=0.0, spin_us=0.0)
    assert {name: len(values) for name, values in took.items()} == {"front": 2, "pool": 2, "batches": 2, "send": 6}
    assert all(value > 0 for values in took.values() for value in values)
    with pytest.raises(SystemExit):
        async_pair.main(["--num-envs", "6"])
    assert "multiple of 4" in capsys.readouterr().err


def test_compiled_glue_times_both_loops_of_this_checkout(capsys) -> None:
    """benchmarks.compiled_glue's measuring child, on this checkout's modules (Python): both loops timed, the modules
    said not compiled (the parent checks each tree is what it claims)."""
    import json
    import os

    from benchmarks import compiled_glue

    compiled_glue.child(os.path.dirname(os.path.dirname(os.path.abspath(compiled_glue.__file__))), 2, 50)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["plain_us"] > 0 and result["fastvec_us"] > 0 and result["compiled"] is False


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("breakdown", ["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
        ("critical_path", ["--num-envs", "0"], "argument --num-envs: must be at least 1, got 0"),
        ("critical_path", ["--env", "NoSuch-v1"], "--env NoSuch-v1: Environment `NoSuch` doesn't exist"),
        ("core_speed", ["--seconds", "-1"], "argument --seconds: must be a finite number above 0, got -1"),
        ("kernels", ["--repeats", "0"], "argument --repeats: must be at least 1"),  # (it wrote a results file of nothing)
        ("startup", ["--rounds", "0"], "argument --rounds: must be at least 1"),
        ("instructions", ["--steps", "500", "--base-steps", "500"], "--steps (500) must exceed --base-steps (500)"),
        ("learner_share", ["--rounds", "0"], "argument --rounds: must be at least 1"),
        ("compiled_glue", ["--commands", "0"], "argument --commands: must be at least 1, got 0"),
        ("rollout_layouts", ["--rollouts", "nan"], "invalid count value: 'nan'"),
        ("vec_env", ["--seconds", "nan", "--dry-run"], "argument --seconds: must be a finite number above 0, got nan"),
        ("interleaved", ["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),  # (it wrote an empty file)
        ("async_layouts", ["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
        ("async_layouts", ["--num-envs", "5"], "--num-envs must be even and at least 2"),
    ],
)
def test_the_benchmarks_name_a_count_or_duration_given_wrongly(module, argv, message, capsys) -> None:
    """Zero rounds, a negative duration or an unknown env ended in a traceback (IndexError, StatisticsError,
    ZeroDivisionError), or measured nothing and wrote a results file saying so."""
    import importlib

    main = importlib.import_module(f"benchmarks.{module}").main
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_an_out_path_is_checked_without_making_anything(tmp_path) -> None:
    """An --out found unwritable after a run lost its results in a traceback; the check made the folders, also for
    a dry run, and let root's os.access pass where nothing can be made (/proc) (hunt92 bug 6, hunt93 bugs 1, 3)."""
    from benchmarks import _cli

    assert "nothing can be made in /proc" in _cli.out_error("/proc/no-such-dir/result")
    assert _cli.out_error(tmp_path / "a" / "b" / "result.md") is None and not (tmp_path / "a").exists()
    assert "is a folder" in _cli.out_error(tmp_path)
    (tmp_path / "file").write_text("")
    assert "is a file" in _cli.out_error(tmp_path / "file", folder=True)
    assert _cli.stem_file(tmp_path / "run-1.5ms", ".md").name == "run-1.5ms.md"
    assert _cli.stem_file(tmp_path / "x.md", ".json").name == "x.json"
    for folder in (".", "..", "", tmp_path):  # (a traceback, or <folder>.md beside it: hunt96 bug 2)
        assert "give a file stem" in _cli.stem_error(folder, (".md", ".json"))


@pytest.mark.parametrize("module", ["interleaved", "monitor", "rollout_layouts", "faults"])
def test_an_out_written_as_a_folder_that_is_not_there_yet_is_refused(module, tmp_path, capsys) -> None:
    """``--out new/`` (a folder not made yet) lost its slash to ``Path`` and the results went to ``new.md`` beside it
    (hunt97's note): a file's path or stem written as a folder's is refused in one line."""
    import importlib

    main = importlib.import_module(f"benchmarks.{module}").main
    for folder in (f"{tmp_path}/new/", f"{tmp_path}/new/.", f"{tmp_path}/new/.."):  # (the last two: hunt101 bug 7)
        with pytest.raises(SystemExit) as stopped:
            main(["--out", folder])
        assert stopped.value.code == 2 and "give a file's path or stem, not a folder's" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and not list(tmp_path.iterdir())
