"""Per-shard counters and the typed snapshot (fastvec.stats)."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pytest

from fastvec.pool import Pool
from fastvec.protocol import SAME_STEP, Stats
from fastvec.stats import percentile_ms
from tests import envs


def test_percentiles_from_power_of_two_bins() -> None:
    histogram = np.zeros(Stats.HISTOGRAM_BINS)
    histogram[3] = 90  # 8..16 us
    histogram[10] = 10  # 1024..2048 us
    assert 0.008 <= percentile_ms(histogram, 0.5) <= 0.016
    assert 1.024 <= percentile_ms(histogram, 0.95) <= 2.048
    assert percentile_ms(np.zeros(4), 0.5) is None


def test_a_snapshot_of_every_shard() -> None:
    with Pool([envs.make_cartpole] * 4, num_workers=2, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        pool.reset()
        for _ in range(300):
            pool.step(np.zeros(4, np.int64))
        snap = pool.stats()  # the first: since the pool started (it used to cover only the call itself)
        # 1,200 env steps, read back as rates times the interval (a float product: 1199.9999... is 1,200)
        assert snap.interval_s > 0.001 and sum(s.steps_per_s for s in snap.shards) * snap.interval_s == pytest.approx(1200)
        parent, worker = snap.shards
        assert parent.in_parent and parent.pid == os.getpid() and parent.envs == range(0, 2)
        assert not worker.in_parent and worker.pid == pool.worker_pids[0] and worker.envs == range(2, 4)
        assert snap.workers == [worker]
        for shard in snap.shards:
            assert shard.steps_per_s > 0 and 0 < shard.busy <= 1
            assert 0 < shard.p50_ms <= shard.p95_ms
        assert snap.throughput == pytest.approx(parent.steps_per_s + worker.steps_per_s)
        assert 0 <= snap.learner_share <= 1 and snap.straggler_ratio > 0
        assert worker.cpu_percent is None or worker.cpu_percent >= 0  # psutil's first reading only starts its clock
        assert pool.stats().workers[0].cpu_percent is not None


@pytest.mark.serial
@pytest.mark.parametrize("batches", [False, True])
def test_the_learner_share_counts_recv_and_send_as_time_in_the_pool(batches: bool) -> None:
    """A caller that only steps (or only receives and sends batches) of envs that each take 2 ms spends
    nearly all its time inside the pool: learner_share near 0 (asynchronous batches read about 1.0:
    recv and send were not counted)."""
    from tests.test_monitor import make_busy

    fns = [partial(make_busy, 2e-3)] * 4
    kw = {"batch_size": 2} if batches else {}
    with Pool(fns, num_workers=2, start_method="fork", autoreset_mode=SAME_STEP, **kw) as pool:
        pool.async_reset() if batches else pool.reset()
        pool.stats()
        for _ in range(100):
            if batches:
                batch = pool.recv()
                pool.send(np.zeros(2, np.int64), batch.env_ids)
            else:
                pool.step(np.zeros(4, np.int64))
        assert pool.stats().learner_share < 0.5


def test_per_env_step_times_are_per_step_with_rare_calls_between_steps() -> None:
    """Envs of 2 ms a step read at least 2 ms a step in every shard, with a get_attr between steps (a worker
    counted the calls as commands too, so its envs read about half their step time, and the monitor
    balanced by that)."""
    from tests.test_monitor import make_busy

    with Pool([partial(make_busy, 2e-3)] * 4, num_workers=2, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        pool.reset()
        pool.timing = True
        pool.stats()
        for _ in range(40):
            pool.step(np.zeros(4, np.int64))
            pool.call("get_attr", [0, 3], ("step_seconds",))
        times = [ms for shard in pool.stats().shards for ms in shard.env_step_ms]
        assert len(times) == 4 and min(times) >= 1.9, times


@pytest.mark.serial
def test_per_env_step_times_while_timing() -> None:
    from tests.test_monitor import make_busy

    fns = [partial(make_busy, 4e-3 if i == 3 else 1e-4) for i in range(4)]
    with Pool(fns, num_workers=2, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        pool.reset()
        assert not pool.timing
        pool.timing = True
        pool.stats()
        for _ in range(240):  # 30 timed commands: one preemption of a fast env must not hide the slow one
            pool.step(np.zeros(4, np.int64))
        times = [ms for shard in pool.stats().shards for ms in shard.env_step_ms]
        # the slow env shows (a margin for a loaded host: there, a fast env preempted for 25 ms in all
        # averaged 1 ms a step over the 30 timed commands)
        assert times[3] > 2 * max(times[:3]), times
        assert 3 < times[3] < 40  # one command in TIMING_EVERY is timed; the estimate is still ~4 ms a step


@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_stats_and_counters_after_close_raise_closed_error(front: str) -> None:
    """After close(), stats() and the pool's counters say the env is closed (they failed with an
    AttributeError, a TypeError or "process object is closed")."""
    from fastvec import ClosedError, SubprocVecEnv, VectorEnv

    fns = [envs.make_cartpole] * 4
    venv = SubprocVecEnv(fns, start_method="fork", num_workers=2) if front == "sb3" else VectorEnv(fns, context="fork", num_workers=2)
    venv.reset()
    pool = venv.pool
    venv.close()
    for read in (venv.stats, pool.stats, pool.worker_stats, pool.shard_restarts, pool.shard_counters, pool.env_step_ns,
                 lambda: pool.worker_pids, lambda: pool.timing):
        with pytest.raises(ClosedError, match="closed"):
            read()


@pytest.mark.parametrize("batches", [False, True])
def test_the_calling_process_shard_counts_as_a_worker_does(batches: bool) -> None:
    """Shard 0's row (the calling process's own shard) and a worker's row count the same commands of the
    same envs alike: restarted envs (on_error="restart"), a reset's time but not as a step command, and a
    step whose env raised. The own shard counted none of its restarts or resets, and no step that raised."""
    from fastvec import EnvError

    def rows() -> np.ndarray:
        counters = pool.shard_counters()
        return counters[:, [Stats.COMMANDS, Stats.ENV_STEPS, Stats.ENV_RESTARTS]], counters[:, Stats.HISTOGRAM :].sum(1)

    fns = [partial(envs.FailingEnv, "step", 2)] * 2
    kw = {"batch_size": 1, "step_in_parent": True} if batches else {}
    with Pool(fns, num_workers=2, start_method="fork", on_error="restart", autoreset_mode=SAME_STEP, **kw) as pool:
        assert pool.shard_envs == [range(0, 1), range(1, 2)]
        if batches:
            pool.async_reset()
        else:
            pool.reset()
            counts, commands = rows()
            assert counts.tolist() == [[0, 0, 0], [0, 0, 0]] and commands.tolist() == [1, 1]  # the reset: one command each
        sent = [0, 0]
        for _ in range(8 if batches else 3):  # the third step of each env raises, and the env is made again
            if batches:  # (the groups come back in any order: each gets three steps)
                (env,) = pool.recv().env_ids
                if sent[env] < 3:
                    sent[env] += 1
                    pool.send(np.zeros(1, np.int64), [env])
            else:
                pool.step(np.zeros(2, np.int64))
        counts, commands = rows()
        assert counts.tolist() == [[3, 3, 1], [3, 3, 1]] and commands.tolist() == [4, 4]
    with Pool(fns, num_workers=2, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        pool.reset()
        for _ in range(2):
            pool.step(np.zeros(2, np.int64))
        with pytest.raises(EnvError):
            pool.step(np.zeros(2, np.int64))  # both envs raise: the step counts in both rows
        counts, commands = rows()
        assert counts[:, :2].tolist() == [[3, 2], [3, 2]] and commands.tolist() == [4, 4]


def test_the_sampler_forgets_replaced_workers() -> None:
    """stats() keeps a psutil handle and a context-switch count per worker pid: with on_error="restart" each
    replaced worker's stayed for the pool's life (one more per restart, without bound)."""
    import signal
    import warnings

    with Pool([envs.make_cartpole] * 4, num_workers=2, step_in_parent=False, on_error="restart", start_method="fork") as pool:
        pool.reset()
        actions = np.zeros(4, dtype=np.int64)
        pool.step(actions)
        pool.stats()
        for _ in range(3):
            dead, restarts = pool.worker_pids[0], pool.worker_restarts
            os.kill(dead, signal.SIGKILL)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # (the restart's warning)
                while pool.worker_restarts == restarts:
                    pool.step(actions)
            pool.stats()
            sampler = pool._sampler
            assert set(sampler._processes) == set(sampler._switches) == set(pool.worker_pids)


def test_stats_while_another_thread_closes_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """stats() reads each worker's pid after its counters: a close() in another thread meanwhile released the
    worker's Process object, whose pid then raised multiprocessing's raw ValueError('process object is closed')."""
    import threading

    from fastvec.stats import Sampler

    facts = Sampler._process_facts

    def closed_meanwhile(self, pid):
        closer = threading.Thread(target=pool.close)
        closer.start()
        closer.join()
        return facts(self, pid)

    pool = Pool([envs.make_cartpole] * 4, num_workers=2, step_in_parent=False, start_method="fork")
    try:
        pool.reset()
        pids = pool.worker_pids
        monkeypatch.setattr(Sampler, "_process_facts", closed_meanwhile)
        snapshot = pool.stats()  # (the counters were read before the close: that snapshot)
        assert pool.closed and [s.pid for s in snapshot.shards] == pids
    finally:
        pool.close()


class _SlowStep(envs.Counter):
    """A Counter whose steps take 0.6 s."""

    def step(self, action):
        import time

        time.sleep(0.6)
        return super().step(action)


@pytest.mark.serial
@pytest.mark.parametrize("in_parent", [False, True])  # (the calling process's own shard read idle through it)
def test_an_interval_inside_one_long_command_counts_it(monkeypatch: pytest.MonkeyPatch, in_parent: bool) -> None:
    """The counters grow when a command ends: an interval read while every worker stepped through it showed
    them idle (busy 0.0) and the next one over-full (capped at 1.0), and the learner share read from another
    thread during one wait swung between 1 and 0. What ran through an interval counts in it, and not again
    when it ends."""
    import threading
    import time

    with Pool([_SlowStep] * 2, num_workers=2, step_in_parent=in_parent, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        pool.reset()
        pool.step_async(np.zeros(2, np.int64))
        readings = []

        def sample() -> None:
            time.sleep(0.1)
            pool.stats()  # (the baseline: both workers are stepping, the caller waits in step_wait)
            time.sleep(0.3)
            readings.append(pool.stats())

        sampler = threading.Thread(target=sample)
        sampler.start()
        pool.step_wait()
        sampler.join()
        (during,) = readings
        assert [s.busy for s in during.shards] == [1.0, 1.0] and during.learner_share == 0.0
        time.sleep(0.3)
        # the step ended 0.2 s into this 0.5 s: the rest of its 0.6 s counts here (0.3 s, what ran before the first
        # reading too), not the 0.3 s counted already (0.6 / 0.5 s: capped at 1.0, the caller's share at 0)
        after = pool.stats()
        assert all(0.3 < s.busy < 0.9 for s in after.shards) and 0.2 < after.learner_share < 0.8, after
        assert all(s.steps_per_s * after.interval_s == pytest.approx(1) for s in after.shards)


@pytest.mark.one_pass  # (the sampler's arithmetic: the kernels play no part)
def test_a_dead_worker_is_not_running_and_its_replacement_keeps_its_own_time() -> None:
    """A worker that died in a command read busy 1.0 in every later stats() of its (broken) pool: its DONE word
    stays behind. And what was counted of a dead worker's command was taken off its replacement's."""
    import signal
    import time

    with Pool([_SlowStep] * 2, num_workers=2, step_in_parent=False, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        pool.reset()
        pool.step_async(np.zeros(2, np.int64))
        time.sleep(0.1)
        os.kill(pool.worker_pids[1], signal.SIGKILL)
        with pytest.raises(Exception, match="died"):
            pool.step_wait()
        pool.stats()
        time.sleep(0.2)
        assert pool.stats().shards[1].busy == 0.0
    from fastvec.stats import Sampler

    sampler = Sampler.__new__(Sampler)
    sampler._credits = {}
    assert sampler._credited(1, 0.0, 7, 7, 0.5, owner=100) == 0.5  # (worker 100's command 7 ran through it)
    assert sampler._credited(1, 0.4, 7, 3, 0.5, owner=200) == 0.4  # (100 died; its replacement 200's 0.4 s stand)
    assert sampler._credited(1, 0.0, 3, 3, 0.5, owner=200) == 0.5
    assert sampler._credited(1, 0.7, 3, None, 0.5, owner=200) == pytest.approx(0.2)  # (its own: 0.5 taken off)


class _SlowReset(envs.Counter):
    """A Counter whose resets with options {"slow": True} take 0.6 s."""

    def reset(self, *, seed=None, options=None):
        import time

        if options and options.get("slow"):
            time.sleep(0.6)
        return super().reset(seed=seed, options=options)


@pytest.mark.one_pass  # (the sampler's arithmetic over sleeping envs: the kernels play no part)
def test_the_calling_process_s_shard_counts_a_long_reset_and_a_paused_step_once() -> None:
    """The calling process's own shard read idle through a reset (or a call) that filled the interval, which a
    worker's read busy; and its asynchronous step stopped between envs had what ran before the stop counted in
    that interval and again when the step ended (its time reaches the counters then)."""
    import threading
    import time

    from fastvec.stats import Sampler

    with Pool([_SlowReset] * 2, num_workers=2, step_in_parent=True, start_method="fork", autoreset_mode=SAME_STEP) as pool:
        readings = []

        def sample() -> None:
            time.sleep(0.1)
            pool.stats()
            time.sleep(0.3)
            readings.append(pool.stats())

        sampler = threading.Thread(target=sample)
        sampler.start()
        pool.reset(options=[{"slow": True}] * 2)
        sampler.join()
        assert [s.busy for s in readings[0].shards] == [1.0, 1.0]
    sampler = Sampler.__new__(Sampler)
    sampler._credits = {}
    # the own shard's command 5 runs through an interval; it stops between envs (not running, not counted:
    # its credit stays); it runs again through the next; it ends (counted): what was credited comes off once
    assert sampler._credited(0, 0.0, 5, 5, 0.5, owner=1, counted=4) == 0.5
    assert sampler._credited(0, 0.0, 5, None, 0.5, owner=1, counted=4) == 0.0
    assert sampler._credited(0, 0.0, 5, 5, 0.5, owner=1, counted=4) == 0.5
    assert sampler._credited(0, 1.3, 5, None, 0.5, owner=1, counted=5) == pytest.approx(0.3)
