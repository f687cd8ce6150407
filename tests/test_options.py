"""PoolOptions: every knob once, validated, merged from a tuning file (fastvec.options)."""

from __future__ import annotations

import json
import re

import gymnasium as gym
import numpy as np
import pytest

from fastvec import SubprocVecEnv, VectorEnv
from fastvec.options import TUNABLE, PoolOptions
from fastvec.pool import Pool
from tests import envs


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"num_workers": 0}, "num_workers"),
        ({"num_workers": True}, "num_workers"),
        ({"ring_slots": 0}, "ring_slots"),
        ({"start_method": "telepathy"}, "cannot find context for 'telepathy'"),
        ({"spin_ns": 1.5}, "spin_ns"),
        ({"step_timeout": -1}, "step_timeout"),
        ({"on_error": "ignore"}, "on_error"),
        ({"check": "maybe"}, "check"),
        ({"monitor_interval": float("inf")}, "monitor_interval"),  # (its thread died at once, close() overflowed)
        ({"monitor_interval": 0}, "monitor_interval"),
        ({"monitor_interval": True}, "monitor_interval"),  # (a bool is an int: it was taken as 1 s)
        ({"monitor_interval": 10**400}, "monitor_interval"),  # (a bare OverflowError of float())
        ({"spin_ns": 10**5000}, r"spin_ns .*, got an int of 16,610 bits"),  # (its repr raised: the message was lost)
        ({"check": 10**5000}, r"check must be .*, got an int of 16,610 bits"),
        ({"on_error": 10**5000}, r"on_error must be .*, got an int of 16,610 bits"),
        # (hand-written configs: "false" was taken as True, the pool pinned its caller for pin_workers="false")
        ({"step_in_parent": "false"}, "step_in_parent must be True or False"),
        ({"pin_workers": "false"}, "pin_workers must be True or False"),
        ({"monitor": 1}, "monitor must be True or False"),
        ({"spin_ns": 2**63}, "spin_ns"),  # (the worker died of an OverflowError that named no option)
        ({"spin_ns": True}, "spin_ns"),
        ({"step_timeout": True}, "step_timeout"),
        ({"step_timeout": float("nan")}, "step_timeout"),
        ({"pin": [True]}, "pin must name cores"),
        ({"daemon": "false"}, "daemon must be True or False"),  # (it made daemonic workers: their envs' children failed)
        ({"ring_slots": 2**32}, "ring_slots"),  # (a bare OverflowError of numpy's, once every env was made)
        # (a worker dying after it wrote its rows left its envs' final observations half overwritten)
        ({"ring_slots": 1, "on_error": "restart"}, "on_error='restart' needs ring_slots >= 2"),
    ],
)
def test_bad_values_are_named(knobs, message) -> None:
    with pytest.raises(ValueError, match=message):
        PoolOptions(**knobs)


def test_near_miss_values_are_taken_as_meant(tmp_path) -> None:
    """Values that mean what they say: numpy numbers for step_timeout (refused as "not a positive number"), an
    infinite step_timeout (no limit: every command then overflowed converting it), core ids in an array (numpy's
    "truth value of an array is ambiguous")."""
    import numpy as np

    assert PoolOptions(step_timeout=np.float32(5)).step_timeout == 5 and PoolOptions(step_timeout=np.int64(2)).step_timeout == 2
    assert PoolOptions(step_timeout=float("inf")).step_timeout is None
    from fractions import Fraction  # (kept as given, its message could not be formatted: the timeout error was lost)

    assert PoolOptions(step_timeout=Fraction(1, 2)).step_timeout == 0.5
    for huge in (1e300, 10**400):  # (no limit: seconds beyond any clock overflowed its nanoseconds, or isinf)
        assert PoolOptions(step_timeout=huge).step_timeout is None
    assert PoolOptions(pin=np.array([0, 1])).pin == [0, 1]
    for interval in (np.int64(2), np.float32(0.5), Fraction(1, 4)):  # (refused as "not a positive number")
        assert PoolOptions(monitor_interval=interval).monitor_interval == float(interval)
    assert type(PoolOptions(monitor_interval=np.int64(2)).monitor_interval) is float
    with SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", step_timeout=float("inf")) as venv:
        venv.reset()
    with pytest.raises(TypeError, match="config must be PoolOptions, a dict or a JSON file's path, got list"):
        PoolOptions.load([{"num_workers": 2}])
    broken = tmp_path / "tuned.json"
    broken.write_text('{"config": {"num_workers": 2,')
    with pytest.raises(ValueError, match=f"config '{broken}' is not JSON"):
        PoolOptions.load(broken)


def test_build_merges_a_tuning_file_under_explicit_knobs(tmp_path) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"config": {"num_workers": 3, "spin_ns": -1000, "pin_workers": True}, "throughput": 1}))
    options = PoolOptions.build(str(path), num_workers=2, step_timeout=None)
    assert (options.num_workers, options.spin_ns, options.pin_workers) == (2, -1000, True)
    assert PoolOptions.build({"ring_slots": 4}).ring_slots == 4
    assert PoolOptions.build(options) == options
    with pytest.raises(ValueError, match="unknown config keys"):
        PoolOptions.build({"on_error": "restart"})  # a tuning file only sets what the tuner tunes
    with pytest.raises(TypeError, match="unknown pool option"):
        PoolOptions.build(None, num_worker=2)
    # an explicit pin wins over the file's pin_workers=True, "auto" too (it was read as "spread", the default's
    # meaning under pin_workers=True)
    for pin in ("auto", "compact", [0]):
        assert PoolOptions.build(str(path), pin=pin).placement == pin
    assert PoolOptions.build(str(path), pin="auto", pin_workers=True).placement == "spread"
    # and an explicit pin_workers=True over the file's pin (a hand-written one): "spread", as it says
    assert PoolOptions.build({"pin": "compact"}, pin_workers=True).placement == "spread"
    assert PoolOptions.build({"pin": "compact"}, pin_workers=False).placement == "compact"
    assert set(TUNABLE) <= {f for f in PoolOptions.__dataclass_fields__}


def test_a_tuning_file_s_layout_is_not_applied_to_asynchronous_batches(tmp_path, monkeypatch) -> None:
    """The tuner measures num_workers and step_in_parent for the synchronous step and always writes them: an
    asynchronous pool made with its file took that layout instead of the batches' own default (on 2 cores: the
    caller steps a group), or was refused where the file's num_workers does not tile a batch."""
    from fastvec import pool as pool_module

    monkeypatch.setattr(pool_module, "default_num_workers", lambda: 2)
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"config": {"num_workers": 2, "step_in_parent": False}, "throughput": 1}))
    assert PoolOptions.build(str(path)).step_in_parent is False  # the synchronous step: as tuned
    batches = PoolOptions.build(str(path), batch_size=2)
    assert batches.step_in_parent is None and batches.num_workers is None  # batches: their own default
    assert PoolOptions.build(str(path), batch_size=2, step_in_parent=False).step_in_parent is False  # given: kept
    assert PoolOptions.build(PoolOptions(step_in_parent=False), batch_size=2).step_in_parent is False  # options: kept
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", config=str(path), batch_size=2) as venv:
        assert venv.pool.step_in_parent and len(venv.pool.worker_pids) == 1
    # the gymnasium front-end too (it loaded the file into options first, and build() then kept their step_in_parent)
    for config in (str(path), {"num_workers": 2, "step_in_parent": False}):
        with VectorEnv([envs.make_cartpole] * 4, context="fork", config=config, batch_size=2) as venv:
            assert venv.pool.step_in_parent and len(venv.pool.worker_pids) == 1
    # a tuned num_workers that does not tile a batch (one worker, 4 envs, batches of 2): it was refused, naming it
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", config={"num_workers": 1}, batch_size=2) as venv:
        assert venv.pool.num_workers == 2


def test_batch_size_of_every_env_is_the_synchronous_step_and_keeps_a_tuning_file_s_layout(tmp_path, monkeypatch) -> None:
    """batch_size=num_envs is the synchronous step (README): a tuning file's layout, measured for that step,
    applies to it as without batch_size; it had been dropped as for asynchronous batches."""
    from fastvec import pool as pool_module

    monkeypatch.setattr(pool_module, "default_num_workers", lambda: 2)
    config = {"num_workers": 2, "step_in_parent": False}
    assert PoolOptions.build(config, num_envs=4, batch_size=4) == PoolOptions.build(config).replace(batch_size=4)
    assert PoolOptions.build(config, num_envs=4, batch_size=2).step_in_parent is None
    with SubprocVecEnv([envs.make_cartpole] * 4, start_method="fork", config=config, batch_size=4) as venv:
        assert not venv.pool.step_in_parent and len(venv.pool.worker_pids) == 2
    with VectorEnv([envs.make_cartpole] * 4, context="fork", config=config, batch_size=4) as venv:
        assert not venv.pool.step_in_parent and len(venv.pool.worker_pids) == 2
    with Pool([envs.make_cartpole] * 4, config, start_method="fork", batch_size=4) as pool:
        assert not pool.step_in_parent and len(pool.worker_pids) == 2


def test_the_tuner_s_record_is_a_config_as_a_dict_as_well_as_a_file(tmp_path) -> None:
    """The front-ends' docstrings promise "a dict / JSON file from python -m fastvec.tune": the file's record
    was unwrapped (its "config"), the same record as a dict (json.load of it, tune.search()'s return) refused."""
    record = {"config": {"num_workers": 1, "step_in_parent": False}, "throughput": 1.0, "candidates": []}
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(record))
    assert PoolOptions.load(record) == PoolOptions.load(str(path)) == PoolOptions(num_workers=1, step_in_parent=False)
    with SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", config=record) as venv:
        assert venv.pool.num_workers == 1


def test_both_front_ends_take_every_knob_and_a_config() -> None:
    knobs = {"num_workers": 2, "step_in_parent": False, "ring_slots": 3, "on_error": "restart", "check": "off"}
    with SubprocVecEnv([envs.make_cartpole] * 2, start_method="fork", **knobs) as venv:
        assert venv.pool.options.ring_slots == 3 and venv.pool.on_error == "restart"
    with VectorEnv([envs.make_cartpole] * 2, context="fork", config={"num_workers": 1}, pin_workers=False) as venv:
        assert venv.pool.num_workers == 1


def test_a_config_file_that_is_not_an_object_is_named(tmp_path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"num_workers": 2}]))
    with pytest.raises(ValueError, match="a config file holds a JSON object"):
        PoolOptions.load(path)


def test_gymnasium_s_daemon_is_any_truth_value() -> None:
    """gymnasium's AsyncVectorEnv hands daemon to Process as given: any truth value. fastvec's own options refuse a
    string (a hand-written config's "false" made daemonic workers); the gymnasium front-end takes its truth."""
    with VectorEnv([envs.make_cartpole] * 2, context="fork", num_workers=2, step_in_parent=False, daemon=0) as venv:
        assert venv.daemon is False and not any(r.process.daemon for r in venv.pool._remotes)


def test_a_ring_past_the_machine_s_room_is_named_before_its_block_is_made() -> None:
    """A block larger than /dev/shm and the temp directory can hold failed inside SharedMemory, with a bare EFBIG
    or ENOMEM naming no setting."""
    from fastvec import shm

    with pytest.raises(ValueError, match=r"ring_slots=2147483648 would be [\d,.]+ GiB; .* lower ring_slots to \d+$"):
        SubprocVecEnv([envs.make_image] * 4, start_method="fork", num_workers=2, ring_slots=2**31)
    assert not [n for n in shm.list_segments() if n.startswith(f"{shm.PREFIX}{__import__('os').getpid()}-")]


class _TenMegabytes(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (10, 1000, 1000), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros((10, 1000, 1000), np.uint8), {}

    def step(self, action):
        return np.zeros((10, 1000, 1000), np.uint8), 0.0, False, False, {}


def test_no_room_for_the_shared_block_is_said_in_sizes_that_compare_with_a_remedy_that_works(monkeypatch) -> None:
    """A container's 64 MiB /dev/shm: both sizes read 0.1 GiB, and "lower ring_slots" was the advice at ring_slots=1
    too, or where one slot would not fit either."""
    from fastvec import shm
    from fastvec.layout import plan_layout
    from fastvec.spaces import leaves

    monkeypatch.setattr(shm, "room", lambda: 64 * 2**20)
    for ring_slots in (1, 2):
        with pytest.raises(ValueError, match=r"would be [\d,.]+ MiB; .* have 64.0 MiB free at most: fewer envs, smaller"):
            SubprocVecEnv([_TenMegabytes] * 4, start_method="fork", num_workers=2, ring_slots=ring_slots)
    # where fewer slots fit, the most that do are the advice (each slot: 4 envs' observations, 10 MB each)
    spaces = leaves(_TenMegabytes.observation_space), leaves(_TenMegabytes.action_space)
    two = plan_layout(*spaces, 4, 2, 2, final_obs=True).size
    monkeypatch.setattr(shm, "room", lambda: two + 2**20)
    with pytest.raises(ValueError, match=r"lower ring_slots to 2$"):
        SubprocVecEnv([_TenMegabytes] * 4, start_method="fork", num_workers=2, ring_slots=5)
    # never fewer than the front-end allows: copy=False needs two slots (it advised one, then refused it)
    one = plan_layout(*spaces, 4, 2, 1, final_obs=True).size
    monkeypatch.setattr(shm, "room", lambda: one + 2**20)
    with pytest.raises(ValueError, match=r"free at most: fewer envs"):
        SubprocVecEnv([_TenMegabytes] * 4, start_method="fork", num_workers=2, ring_slots=3, copy=False)


def _cartpole_noting_its_making(folder: str):
    import os

    import gymnasium as gym

    open(os.path.join(folder, f"made-{os.getpid()}"), "a").close()
    return gym.make("CartPole-v1")


def test_a_pin_list_outside_the_allowed_cores_is_refused_before_any_env_is_made(tmp_path) -> None:
    """The list was checked once every env was made and the workers started: a slow simulator's start-up, for a
    setting the pool could refuse at once."""
    import os
    from functools import partial

    outside = max(os.sched_getaffinity(0)) + 1000
    for pin in ([outside], (outside,)):  # (a tuple too: it was checked once every env was made)
        with pytest.raises(ValueError, match=rf"pin=\[{outside}\]: core\(s\) \[{outside}\] are not among"):
            SubprocVecEnv([partial(_cartpole_noting_its_making, str(tmp_path))] * 4, start_method="fork", num_workers=2, pin=pin)
    assert not list(tmp_path.iterdir())  # (no env was made)


def test_the_pool_s_own_arguments_show_a_huge_int_by_its_size() -> None:
    """(Python refuses to print an int past 4,300 digits: the error replaced the message naming the argument.)"""
    for name in ("autoreset_mode", "observation_mode"):
        with pytest.raises(ValueError, match=rf"{name} must be .*, got an int of 16,610 bits"):
            Pool([envs.make_cartpole] * 2, start_method="fork", **{name: 10**5000})


def test_the_front_ends_name_every_pool_option_in_their_docstrings() -> None:
    """help() of each front-end lists every PoolOptions field (SubprocVecEnv's left out pin, monitor,
    monitor_interval and batch_size: hunt80 bug 4); the start method is a parameter of its own."""
    import dataclasses

    import fastvec
    from fastvec.options import PoolOptions

    for cls, own in ((fastvec.SubprocVecEnv, {"start_method"}), (fastvec.VectorEnv, {"start_method", "daemon"})):
        doc = (cls.__doc__ or "") + (cls.__init__.__doc__ or "")
        words = set(re.findall(r"\w+", doc))  # (whole words: "pin" is in "pin_workers" as a substring)
        missing = [f.name for f in dataclasses.fields(PoolOptions) if f.name not in words and f.name not in own]
        assert not missing, (cls.__name__, missing)


def test_envpool_s_num_envs_keyword_is_an_unknown_option_named_so() -> None:
    """num_envs= (EnvPool's keyword) or cls= collided with PoolOptions.build's own parameters: "build() got multiple
    values for keyword argument 'num_envs'" (hunt80 bug 8); now the usual refusal, listing the options."""
    import fastvec
    from fastvec.options import PoolOptions

    with pytest.raises(TypeError, match=r"unknown pool option\(s\) \['num_envs'\] \(the number of envs is that of env_fns\)"):
        fastvec.SubprocVecEnv([envs.make_cartpole] * 2, num_envs=2)
    with pytest.raises(TypeError, match=r"unknown pool option\(s\) \['cls'\]; the options are \['batch_size'"):
        fastvec.VectorEnv([envs.make_cartpole] * 2, cls=1)
    with pytest.raises(TypeError, match=r"unknown pool option\(s\) \['num_envs'\]"):
        fastvec.Pool([envs.make_cartpole] * 2, num_envs=2)
    assert PoolOptions.build({"ring_slots": 3}, num_envs=4, batch_size=2).batch_size == 2  # (build's own keyword, public)


def test_a_config_file_that_is_not_text_is_named(tmp_path) -> None:
    """A binary file gave a bare UnicodeDecodeError naming no file (hunt90 bug 5)."""
    path = tmp_path / "tuned.json"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=f"config '{path}' is not JSON"):
        PoolOptions.load(path)
