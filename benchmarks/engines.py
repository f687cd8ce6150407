"""The vectorizers a benchmark can run, each behind one tiny adapter: reset(), step(actions), close().

Every adapter gets the same env factories and is stepped with the same action
batches; each steps all N envs per call and resets an env when its episode ends
(in whichever way the engine does that). An engine that cannot run here raises
EngineUnavailable with the reason; the study reports it as such instead of
dropping it silently.

PufferLib is not installed in the venv (its setup.py downloads a C library while it
builds): ``make peers`` unpacks its pure-Python vectorizers into benchmarks/.peers,
and the PufferLib adapters put that folder on sys.path of the measuring child
process only.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fastvec.measure import cores

PEERS = Path(__file__).resolve().parent / ".peers"
PUFFERLIB_VERSION = "3.0.0"
ENVPOOL_ENVS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1")


class EngineUnavailable(Exception):
    """The engine cannot run here (package missing, workload unsupported)."""


@dataclass(frozen=True)
class Engine:
    """One entry of the registry: how to build it, and what the study needs to know about it."""

    build: Callable[[list, str], Any]
    description: str
    processes: bool  # steps envs in processes other than the caller's (EnvPool's threads do not count)
    family: str
    knob: bool = False  # a variant of one engine's settings, measured on fewer grid points

    def __call__(self, fns: list, workload: str) -> Any:
        return self.build(fns, workload)


def peer_status() -> dict:
    """What `make peers` recorded: {name: {"status", "version", "reason"}} (empty when never run)."""
    try:
        return json.loads((PEERS / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _peer_missing(name: str, exc: Exception) -> EngineUnavailable:
    entry = peer_status().get(name)
    if entry and entry.get("status") != "installed":
        return EngineUnavailable(f"{name}: {entry.get('reason')}")
    return EngineUnavailable(f"{name} not installed ({type(exc).__name__}: {exc}); run `make peers`")


# -- the adapters ---------------------------------------------------------------------------------
class SerialLoop:
    """N envs stepped by a plain Python loop with autoreset: the no-vectorizer baseline."""

    def __init__(self, fns: list):
        self.envs = [fn() for fn in fns]

    def reset(self) -> None:
        for i, env in enumerate(self.envs):
            env.reset(seed=i)

    def step(self, actions: np.ndarray) -> None:
        for env, action in zip(self.envs, actions):
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()

    def close(self) -> None:
        for env in self.envs:
            env.close()


class Ceiling:
    """No engine at all: one process per core, each stepping its share of the envs in a plain loop
    (SerialLoop's), all started together and timed together. The most this machine gives the
    workload right now; no engine can beat it. It times itself (``measure``): there is no batch
    to step from the caller."""

    def __init__(self, fns: list, lockstep: bool = False):
        self.fns = fns
        self.cores = max(1, min(len(fns), cores()))
        # lockstep: every loop waits for the others after each step (a busy wait on shared counters),
        # as a synchronous engine's step does, with nothing else of an engine: what the per-step
        # barrier alone costs against the free-running loops
        self.lockstep = lockstep

    def reset(self) -> None:
        pass

    def measure(self, batches: np.ndarray, seconds: float, repeats: int) -> dict:
        """What ``fastvec.measure.time_steps`` returns: env steps/s of all the loops together."""
        import multiprocessing
        import statistics
        import time

        import psutil

        from fastvec.measure import busy_cpu_seconds

        ctx = multiprocessing.get_context("fork")
        shares = [(self.fns[c :: self.cores], batches[:, c :: self.cores]) for c in range(self.cores)]
        rates = []
        busy0, children0, wall0 = busy_cpu_seconds(), _children_cpu_seconds(), time.perf_counter()
        # (an Event and a Queue, no Barrier: a Barrier's shared counter would leave multiprocessing's
        # heap holding a /dev/shm file open in this process)
        out = ctx.Queue()
        try:
            for _ in range(repeats):
                go = ctx.Event()
                # (an anonymous shared mapping made before the fork: each loop's count of steps done)
                counts = mmap.mmap(-1, 8 * len(shares)) if self.lockstep else None
                procs = [
                    ctx.Process(target=_ceiling_loop, args=(*share, seconds, go, out, counts, k))
                    for k, share in enumerate(shares)
                ]
                for proc in procs:
                    proc.start()
                try:  # (a loop that died is a timeout, not a hang)
                    for _ in procs:
                        out.get(timeout=120)  # each loop is ready: made, reset and warmed up
                    go.set()
                    results = [out.get(timeout=60 + 10 * seconds) for _ in procs]
                finally:
                    for proc in procs:
                        proc.join(timeout=10 + 10 * seconds)
                        if proc.is_alive():
                            proc.kill()
                            proc.join()
                    if counts is not None:
                        counts.close()
                rates.append(sum(n for n, _ in results) / max(t for _, t in results))
                rounds = [n // len(share[0]) for (n, _), share in zip(results, shares)]  # each loop's steps
        finally:
            out.close()
            out.join_thread()
        wall = time.perf_counter() - wall0
        used = _children_cpu_seconds() - children0  # (the loops' processes, joined: their CPU is in ours)
        return {
            "rate": statistics.median(rates),
            "rates": rates,
            "loop_steps": rounds,  # the last repeat's, per loop (lockstep: within one of each other)
            "cpu_used_by_run": used / wall,
            "other_load": max(0.0, (busy_cpu_seconds() - busy0 - used) / (wall * psutil.cpu_count())),
        }

    def close(self) -> None:
        pass


def _children_cpu_seconds() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _ceiling_loop(
    fns: list, actions: np.ndarray, seconds: float, go: Any, out: Any, counts: Any = None, index: int = 0
) -> None:
    """One core's share: a warm-up, then (after every loop is ready) ``seconds`` of plain stepping.
    ``counts`` (lockstep): a shared int64 per loop; after each step a loop adds one to its own and
    waits until every loop's count reached it (the first loop to pass the deadline ends them all)."""
    import time

    if counts is not None:
        done = np.frombuffer(counts, dtype=np.int64)
        others = [j for j in range(len(done)) if j != index]

    loop = SerialLoop(fns)
    loop.reset()
    k, count = 0, len(actions)
    end = time.perf_counter() + min(0.3, seconds / 3)
    while time.perf_counter() < end:
        loop.step(actions[k % count])
        k += 1
    out.put("ready")
    go.wait()
    steps, began = 0, time.perf_counter()
    deadline = began + seconds
    if counts is None:
        while True:
            loop.step(actions[k % count])
            k += 1
            steps += len(fns)
            now = time.perf_counter()
            if now >= deadline:
                break
        out.put((steps, now - began))
        return
    n = 0
    stop = 1 << 62  # a loop past the deadline stores this: the others stop at their next wait
    while True:
        loop.step(actions[k % count])
        k += 1
        n += 1
        steps += len(fns)
        now = time.perf_counter()
        if now >= deadline:
            done[index] = stop
            break
        done[index] = n
        for j in others:
            while done.item(j) < n:
                pass
        if others and max(done.item(j) for j in others) >= stop:
            break
    out.put((steps, time.perf_counter() - began))


class _SB3:
    def __init__(self, venv: Any):
        self.venv = venv

    def reset(self) -> None:
        self.venv.seed(0)
        self.venv.reset()

    def step(self, actions: np.ndarray) -> None:
        self.venv.step(actions)

    def close(self) -> None:
        self.venv.close()


class _Gym:
    """A gymnasium-style vector env: reset(seed=...), step -> 5-tuple. Also EnvPool's gymnasium API."""

    def __init__(self, venv: Any):
        self.venv = venv

    def reset(self) -> None:
        self.venv.reset(seed=0)

    def step(self, actions: np.ndarray) -> None:
        self.venv.step(actions)

    def close(self) -> None:
        close = getattr(self.venv, "close", None)
        if close is not None:
            close()


class _Puffer:
    def __init__(self, vecenv: Any):
        self.vecenv = vecenv

    def reset(self) -> None:
        self.vecenv.reset(seed=0)

    def step(self, actions: np.ndarray) -> None:
        self.vecenv.step(actions)

    def close(self) -> None:
        self.vecenv.close()


# -- builders -------------------------------------------------------------------------------------
def _sb3(kind: str, **kwargs: Any) -> Callable:
    def build(fns: list, workload: str) -> Any:
        try:
            from stable_baselines3.common import vec_env
        except ImportError as exc:
            raise EngineUnavailable(f"stable-baselines3 not installed: {exc}") from exc
        if kwargs.get("start_method") == "forkserver":
            # Each forkserver child would import SB3 and torch afresh (~2 s of CPU each, minutes
            # for 64 envs on 2 cores): import them once in the server. Start-up only; the
            # stepping measured is unchanged.
            import multiprocessing

            multiprocessing.set_forkserver_preload(
                ["stable_baselines3.common.vec_env.subproc_vec_env", "benchmarks.workloads"]
            )
        return _SB3(getattr(vec_env, kind)(fns, **kwargs))

    return build


def _gym(kind: str, **kwargs: Any) -> Callable:
    def build(fns: list, workload: str) -> Any:
        import gymnasium

        return _Gym(getattr(gymnasium.vector, kind)(fns, **kwargs))

    return build


def _fastvec(**kwargs: Any) -> Callable:
    def build(fns: list, workload: str) -> Any:
        import fastvec

        settings = {k: (v() if callable(v) else v) for k, v in kwargs.items()}
        return _SB3(fastvec.SubprocVecEnv(fns, **settings))

    return build


def _fastvec_gym(**kwargs: Any) -> Callable:
    def build(fns: list, workload: str) -> Any:
        import fastvec

        return _Gym(fastvec.VectorEnv(fns, **kwargs))

    return build


def _envpool_make(workload: str, num_envs: int, batch_size: int) -> Any:
    """EnvPool's own C++ implementation of ``workload`` (gymnasium API)."""
    if workload not in ENVPOOL_ENVS:
        raise EngineUnavailable(f"EnvPool has no such env: {workload} (it runs only its own {', '.join(ENVPOOL_ENVS)})")
    try:
        import envpool
    except ImportError as exc:
        raise _peer_missing("envpool", exc) from exc
    return envpool.make(workload, env_type="gymnasium", num_envs=num_envs, batch_size=batch_size, seed=0)


def _envpool() -> Callable:
    def build(fns: list, workload: str) -> Any:
        # stepped synchronously: batch_size = num_envs
        return _Gym(_envpool_make(workload, len(fns), len(fns)))

    return build


class _Batches:
    """EnvPool-style asynchronous batches: each call receives the first ``batch_size`` envs that
    finished and sends them their actions (``steps_per_call`` env steps)."""

    def __init__(self, venv: Any, batch_size: int, recv: Callable[[Any], Any]):
        self.venv, self.steps_per_call, self._ids = venv, batch_size, recv

    def reset(self) -> None:
        self.venv.async_reset()

    def step(self, actions: np.ndarray) -> None:
        ids = self._ids(self.venv.recv())
        self.venv.send(actions[: len(ids)], ids)

    def close(self) -> None:
        self.venv.close()


def _half(fns: list) -> int:
    """An asynchronous engine's batch: half the envs (at one env, none: unavailable, not a rate of 0)."""
    if len(fns) < 2:
        raise EngineUnavailable("asynchronous batches of half the envs need at least 2 envs")
    return len(fns) // 2


def _fastvec_async(**kwargs: Any) -> Callable:
    def build(fns: list, workload: str) -> Any:
        import fastvec

        batch = _half(fns)
        return _Batches(fastvec.SubprocVecEnv(fns, batch_size=batch, **kwargs), batch, lambda out: out[4])

    return build


def _envpool_async() -> Callable:
    def build(fns: list, workload: str) -> Any:
        batch = _half(fns)
        return _Batches(_envpool_make(workload, len(fns), batch), batch, lambda out: out[4]["env_id"])

    return build


def import_pufferlib() -> Any:
    """Import PufferLib from benchmarks/.peers (this process only)."""
    paths = [str(PEERS / "site"), str(PEERS / f"pufferlib-{PUFFERLIB_VERSION}")]
    for path in reversed(paths):
        if path not in sys.path and Path(path).is_dir():
            sys.path.insert(0, path)
    cwd = os.getcwd()
    PEERS.mkdir(exist_ok=True)
    os.chdir(PEERS)  # pufferlib/__init__ makes a 'resources' symlink in the working directory
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pufferlib
            import pufferlib.emulation
            import pufferlib.vector
    except ImportError as exc:
        raise _peer_missing("pufferlib", exc) from exc
    finally:
        os.chdir(cwd)
    return pufferlib


def _puffer_env(fn: Callable, buf: Any = None, seed: int = 0) -> Any:
    import pufferlib.emulation

    return pufferlib.emulation.GymnasiumPufferEnv(env_creator=fn, buf=buf, seed=seed)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _puffer(backend: str, workers: Callable[[], int] | None = None) -> Callable:
    def build(fns: list, workload: str) -> Any:
        pufferlib = import_pufferlib()
        n = len(fns)
        kwargs: dict[str, Any] = {}
        if backend == "Multiprocessing":
            # PufferLib needs num_workers to divide num_envs; batch_size = num_envs keeps it
            # synchronous like every other engine here (all N envs stepped per call).
            # overwork=True only lifts its refusal to start more workers than physical cores.
            kwargs = dict(num_workers=_largest_divisor_at_most(n, workers()), batch_size=n, overwork=True)
        return _Puffer(
            pufferlib.vector.make(
                [partial(_puffer_env, fn) for fn in fns],
                env_args=[[] for _ in fns],
                env_kwargs=[{} for _ in fns],
                backend=getattr(pufferlib.vector, backend),
                num_envs=n,
                **kwargs,
            )
        )

    return build


ENGINES: dict[str, Engine] = {
    "serial": Engine(
        lambda fns, workload: SerialLoop(fns), "a Python loop over the envs, no vectorizer", False, "serial"
    ),
    "ceiling": Engine(
        lambda fns, workload: Ceiling(fns),
        "no engine: one process per core stepping its share of the envs in a plain loop, all at once",
        True,
        "serial",
        knob=True,
    ),
    "ceiling-lockstep": Engine(
        lambda fns, workload: Ceiling(fns, lockstep=True),
        "no engine, a barrier: the ceiling's loops waiting for each other after every step (busy wait)",
        True,
        "serial",
        knob=True,
    ),
    "sb3-dummy": Engine(_sb3("DummyVecEnv"), "SB3 DummyVecEnv (in-process loop)", False, "sb3"),
    "sb3-subproc": Engine(
        _sb3("SubprocVecEnv", start_method="forkserver"),
        "SB3 SubprocVecEnv, forkserver, 1 process per env",
        True,
        "sb3",
    ),
    "sb3-subproc-fork": Engine(
        _sb3("SubprocVecEnv", start_method="fork"), "SB3 SubprocVecEnv, fork, 1 process per env", True, "sb3"
    ),
    "gym-sync": Engine(_gym("SyncVectorEnv"), "gymnasium SyncVectorEnv (in-process loop)", False, "gymnasium"),
    "gym-async": Engine(
        _gym("AsyncVectorEnv", shared_memory=False, context="fork"),
        "gymnasium AsyncVectorEnv, shared_memory=False (pickled obs), 1 process per env",
        True,
        "gymnasium",
    ),
    "gym-async-shm": Engine(
        _gym("AsyncVectorEnv", shared_memory=True, context="fork"),
        "gymnasium AsyncVectorEnv, shared_memory=True, 1 process per env",
        True,
        "gymnasium",
    ),
    "puffer-serial": Engine(_puffer("Serial"), "PufferLib 3.0 Serial (in-process)", False, "pufferlib"),
    "puffer-mp": Engine(
        _puffer("Multiprocessing", workers=cores),
        "PufferLib 3.0 Multiprocessing, one worker per core, batch_size = num_envs",
        True,
        "pufferlib",
    ),
    "puffer-mp-2xcores": Engine(
        _puffer("Multiprocessing", workers=lambda: 2 * cores()),
        "PufferLib 3.0 Multiprocessing, two workers per core (overwork=True)",
        True,
        "pufferlib",
        knob=True,
    ),
    "envpool": Engine(
        _envpool(),
        "EnvPool, its own C++ env in C++ threads (not processes), synchronous (batch_size = num_envs), default threads",
        False,
        "envpool",
    ),
    "envpool-async": Engine(
        _envpool_async(),
        "EnvPool, its own C++ env, asynchronous: batch_size = num_envs / 2 (send/recv)",
        False,
        "envpool",
        knob=True,
    ),
    "fastvec": Engine(_fastvec(start_method="fork"), "fastvec SubprocVecEnv, defaults", True, "fastvec"),
    "fastvec-gym": Engine(
        _fastvec_gym(context="fork"),
        "fastvec VectorEnv (gymnasium's API, NEXT_STEP autoreset), defaults",
        True,
        "fastvec",
        knob=True,
    ),
    "fastvec-async": Engine(
        _fastvec_async(start_method="fork"),
        "fastvec SubprocVecEnv, asynchronous: batch_size = num_envs / 2 (send/recv), defaults (on 2 cores a group "
        "per batch, the calling process stepping the first itself, in recv(), and a worker the other)",
        True,
        "fastvec",
        knob=True,
    ),
    "fastvec-async-own": Engine(
        _fastvec_async(start_method="fork", step_in_parent=True),
        "fastvec SubprocVecEnv, asynchronous: batch_size = num_envs / 2 (send/recv), step_in_parent=True: the "
        "calling process steps the first group itself, in recv()",
        True,
        "fastvec",
        knob=True,
    ),
    "fastvec-async-workers": Engine(
        _fastvec_async(start_method="fork", step_in_parent=False),
        "fastvec SubprocVecEnv, asynchronous: batch_size = num_envs / 2 (send/recv), one worker per batch "
        "(step_in_parent=False: the calling process steps none)",
        True,
        "fastvec",
        knob=True,
    ),
    "fastvec-inproc": Engine(
        _fastvec(start_method="fork", num_workers=1, step_in_parent=True),
        "fastvec, num_workers=1 + step_in_parent: no worker process at all",
        False,
        "fastvec",
        knob=True,
    ),
    "fastvec-no-parent": Engine(
        _fastvec(start_method="fork", step_in_parent=False),
        "fastvec, step_in_parent=False: all envs in workers",
        True,
        "fastvec",
        knob=True,
    ),
    "fastvec-w1": Engine(
        _fastvec(start_method="fork", num_workers=1), "fastvec, one worker process", True, "fastvec", knob=True
    ),
    "fastvec-w4": Engine(
        _fastvec(start_method="fork", num_workers=4), "fastvec, 4 workers", True, "fastvec", knob=True
    ),
    "fastvec-w8": Engine(
        _fastvec(start_method="fork", num_workers=8), "fastvec, 8 workers", True, "fastvec", knob=True
    ),
    "fastvec-2xcores": Engine(
        _fastvec(start_method="fork", num_workers=lambda: 2 * cores()),
        "fastvec, two workers per core",
        True,
        "fastvec",
        knob=True,
    ),
    "fastvec-nospin": Engine(
        _fastvec(start_method="fork", spin_ns=0),
        "fastvec, spin_ns=0: sleep on the futex at once",
        True,
        "fastvec",
        knob=True,
    ),
    "fastvec-spin": Engine(
        _fastvec(start_method="fork", spin_ns=200_000),
        "fastvec, spin_ns=200000: busy-poll 200 us before sleeping",
        True,
        "fastvec",
        knob=True,
    ),
    "fastvec-yield": Engine(
        _fastvec(start_method="fork", spin_ns=-200_000),
        "fastvec, spin_ns=-200000: poll with sched_yield 200 us before sleeping",
        True,
        "fastvec",
        knob=True,
    ),
    "fastvec-pin": Engine(
        _fastvec(start_method="fork", pin_workers=True), "fastvec, pin_workers=True", True, "fastvec", knob=True
    ),
}


def unsupported(engine: str, workload: str) -> str | None:
    """A reason known without starting anything (so the study need not spawn a child to learn it)."""
    if ENGINES[engine].family == "envpool" and workload not in ENVPOOL_ENVS:
        return f"EnvPool has no such env: {workload} (it runs only its own {', '.join(ENVPOOL_ENVS)})"
    return None
