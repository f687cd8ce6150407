"""Env factories: each env is made from a copy of its factory of its own, as in a process of its own (SB3's
SubprocVecEnv); under fork a factory holding what processes share (files, pipes, memory maps, shared memory,
multiprocessing's objects, shared torch tensors) is called as it is, so that the envs share those with the
caller, as with SB3's SubprocVecEnv and gymnasium's AsyncVectorEnv under fork."""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import tracemalloc
from functools import partial
from multiprocessing import shared_memory
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from fastvec import SubprocVecEnv, VectorEnv
from fastvec.errors import EnvError
from fastvec.factories import AsItIs, private_copy
from tests import envs

pytestmark = pytest.mark.one_pass  # how factories make envs and reach workers (pickling, copies, sharing): no kernel

# multiprocessing's shared heap (mp.Value, mp.Array) keeps its arena's file open for the process's life: made
# at import, so that the leak check does not blame it on the first test that uses the heap
_ARENA = multiprocessing.Value("i", 0)


class Reporting(gym.Env):
    """At each reset, counts itself in arrays the caller shares with it and says so through a file, a pipe and a
    multiprocessing queue and value."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, index: int, shared: dict):
        self.index, self.shared = index, shared

    def reset(self, *, seed=None, options=None):
        shared, i = self.shared, self.index
        for name in ("memmap", "shm_array", "raw_array", "tensor", "tensor_array"):
            if name in shared:
                shared[name][i] += 1
        if "file" in shared:
            shared["file"].write(f"env {i}\n")
            shared["file"].flush()
        if "pipe" in shared:
            shared["pipe"].send(i)
        if "queue" in shared:
            shared["queue"].put(i)
            with shared["value"].get_lock():
                shared["value"].value += 1
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}

    def ids(self) -> dict:
        return {name: id(value) for name, value in self.shared.items()}


def _make(front: str, fns: list, start_method: str = "fork", **kwargs):
    if front == "sb3":
        return SubprocVecEnv(fns, start_method=start_method, **kwargs)
    return VectorEnv(fns, context=start_method, **kwargs)


@pytest.mark.parametrize("multiprocessing_objects", [False, True], ids=["pickled-lossily", "with-a-queue"])
@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_forked_envs_share_with_the_caller_what_processes_share(tmp_path, front: str, multiprocessing_objects: bool) -> None:
    """What each env's factory captured and the env writes reaches the caller: a memory-mapped array, arrays over
    shared memory and over a multiprocessing shared array, a torch tensor in shared memory and an array over one, a
    file, a pipe's end (each env got a detached copy of the first five and a copy of the file's contents; and the
    copies of the pipe's end, dropped at close(), closed the caller's own); with a multiprocessing queue and shared
    value too."""
    memmap = np.memmap(tmp_path / "counts", dtype=np.int64, mode="w+", shape=(4,))
    block = shared_memory.SharedMemory(create=True, size=4 * 8)
    receiving, sending = multiprocessing.Pipe(duplex=False)
    log = open(tmp_path / "log.txt", "w+")  # noqa: SIM115 (the envs write to it while the pool lives)
    try:
        tensor = torch.zeros(4, dtype=torch.int64).share_memory_()
        shared = {
            "memmap": memmap,
            "shm_array": np.ndarray((4,), np.int64, buffer=block.buf),
            "raw_array": np.frombuffer(multiprocessing.RawArray("q", 4), np.int64),
            "tensor": tensor,
            "tensor_array": torch.zeros(4, dtype=torch.int64).share_memory_().numpy(),
            "file": log,
            "pipe": sending,
        }
        if multiprocessing_objects:
            shared.update(queue=multiprocessing.Queue(), value=multiprocessing.Value("i", 0))
        shared["shm_array"][:] = 0
        venv = _make(front, [partial(Reporting, i, shared) for i in range(4)], num_workers=2)
        try:
            venv.reset()
            for name in ("memmap", "shm_array", "raw_array", "tensor", "tensor_array"):
                assert shared[name].tolist() == [1, 1, 1, 1], name
            assert sorted(receiving.recv() for _ in range(4)) == [0, 1, 2, 3]
            assert sorted((tmp_path / "log.txt").read_text().splitlines()) == [f"env {i}" for i in range(4)]
            if multiprocessing_objects:
                assert sorted(shared["queue"].get(timeout=10) for _ in range(4)) == [0, 1, 2, 3]
                assert shared["value"].value == 4
        finally:
            venv.close()
        del venv
        gc.collect()
        sending.send("still the caller's")  # (the envs' copies of this end closed it as they went)
        assert receiving.recv() == "still the caller's"
        assert not log.closed
    finally:
        log.close()
        del shared
        gc.collect()
        block.close()
        block.unlink()


class Logging(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, log):
        self.log = log

    def reset(self, *, seed=None, options=None):
        self.log.write(b"reset\n")
        self.log.flush()
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_a_captured_named_temporary_file_stays_open_and_on_disk() -> None:
    """The envs' copies of a NamedTemporaryFile's wrapper, around the very file kept by reference, closed the
    caller's file and removed it from disk as they were dropped, before the envs' first reset."""
    import os

    with tempfile.NamedTemporaryFile() as log:
        with SubprocVecEnv([partial(Logging, log)] * 4, start_method="fork", num_workers=2) as venv:
            venv.reset()
        gc.collect()
        assert not log.closed and os.path.exists(log.name)
        log.seek(0)
        assert log.read().splitlines() == [b"reset"] * 4


def test_copies_keep_what_no_one_can_write_and_refuse_what_processes_share(tmp_path) -> None:
    readonly = np.arange(5.0)
    readonly.flags.writeable = False
    writable = np.zeros(3)
    captured = {"readonly": readonly, "view": readonly[1:], "writable": writable, "config": {"level": 1}, "out": sys.stdout}
    copy = private_copy(lambda: captured)()
    assert copy is not captured and copy["config"] is not captured["config"]
    assert copy["out"] is sys.stdout  # (the process's own streams: no reason to call a factory as it is)
    for name in ("readonly", "view"):  # (a dataset held once, not per env, in a view no env can make writable)
        assert np.shares_memory(copy[name], captured[name]) and copy[name] is not captured[name], name
        with pytest.raises(ValueError):
            copy[name].flags.writeable = True
    assert copy["writable"] is not writable and np.array_equal(copy["writable"], writable)
    class AttrDict(dict):  # (a common idiom: its attribute lookups raise KeyError, not AttributeError)
        __getattr__ = dict.__getitem__

    settings = AttrDict(level=1)
    assert private_copy(settings) is not settings and private_copy(settings) == settings
    objects = np.array([[1], [2]], dtype=object)
    objects.flags.writeable = False
    assert private_copy(objects) is not objects  # (its items are lists: an env could change them)
    memmap = np.memmap(tmp_path / "m", dtype=np.float32, mode="w+", shape=(3,))
    receiving, sending = multiprocessing.Pipe()
    try:
        for held in (memmap, memmap[1:], np.asarray(memmap), sending, multiprocessing.Lock()):
            with pytest.raises(AsItIs):  # under fork: what processes share, called as it is
                private_copy(lambda held=held: held)
        # under spawn and forkserver, copies as the workers' (a pipe's end, whose copy owns the caller's: as it is)
        copied = private_copy(memmap, fork=False)
        copied[0] = 7
        assert memmap[0] == 0  # (a detached copy, as a spawned worker's)
        with pytest.raises(AsItIs):
            private_copy(sending, fork=False)
        # a copy-on-write map is each process's own: copied
        cow = np.memmap(tmp_path / "m", dtype=np.float32, mode="c", shape=(3,))
        assert private_copy(cow) is not cow
    finally:
        receiving.close()
        sending.close()


class Counted(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config: dict, data: np.ndarray):
        self.level = config.pop("level", None)  # (an env that pops from its config: each must get its own)
        self.data = data

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}

    def data_id(self) -> int:  # (the array it views: a read-only one is held by reference, in a view of its own)
        return id(self.data.base if self.data.base is not None else self.data)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_each_env_has_its_own_copy_of_what_its_factory_captured(start_method: str) -> None:
    """A config an env pops from: each env's own, as in a process of its own; a read-only dataset: held once in
    the calling process, not copied per env; and the caller's objects left alone."""
    config, data = {"level": 3}, np.arange(4.0)
    data.flags.writeable = False
    fns = [partial(Counted, config, data)] * 4
    with SubprocVecEnv(fns, start_method=start_method, num_workers=2, step_in_parent=True) as venv:
        assert venv.get_attr("level") == [3, 3, 3, 3] and config == {"level": 3}
        assert venv.env_method("data_id", indices=[0, 1]) == [id(data)] * 2  # (the calling process's envs)


class Holding(gym.Env):
    """An env holding a thread lock: neither it nor a factory returning it can be pickled."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.lock = threading.Lock()
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(2, self.t / 100, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize("step_in_parent", [True, False], ids=["caller", "workers"])
def test_one_env_object_returned_for_two_envs_of_a_process_is_copied_or_refused(step_in_parent: bool) -> None:
    """``lambda: env`` (or wrappers around one env) gave the envs of one process one env, each step stepping it
    twice, silently: each gets a copy, as in a process of its own, or, where none can be made, the pool refuses
    it (SB3's DummyVecEnv refuses it too)."""
    env = Holding()
    with pytest.raises(EnvError, match=r"the factory of env 1 returned the env that env 0's did .* cannot be copied") as raised:
        SubprocVecEnv([lambda: env] * 4, start_method="fork", num_workers=2, step_in_parent=step_in_parent)
    assert isinstance(raised.value, ValueError)
    # one env per process: each is its process's own, as in SB3
    with SubprocVecEnv([lambda: env] * 2, start_method="fork", num_workers=2, step_in_parent=step_in_parent) as venv:
        venv.reset()
        obs = venv.step(np.zeros(2, np.int64))[0]
        assert np.array_equal(obs, np.full((2, 2), 0.01, np.float32))
    # copies of one env that can be copied, or of the env wrappers wrap: each env steps once
    cartpole = gym.make("CartPole-v1")
    counted = Holding.__new__(Holding)
    counted.__dict__.update(t=0)
    for fns in ([lambda: cartpole] * 4, [lambda: gym.wrappers.TimeLimit(counted, 50) for _ in range(4)]):
        with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=step_in_parent) as venv:
            venv.seed(3)
            venv.reset()
            if fns[0]() is cartpole:
                with SubprocVecEnv([partial(gym.make, "CartPole-v1")] * 4, start_method="fork", num_workers=2) as other:
                    other.seed(3)
                    other.reset()
                    assert np.array_equal(venv.step(np.zeros(4, np.int64))[0], other.step(np.zeros(4, np.int64))[0])
            else:
                assert np.array_equal(venv.step(np.zeros(4, np.int64))[0], np.full((4, 2), 0.01, np.float32))


class Leveled(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config: dict):
        self.level = config["level"]

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        if action == 1:
            raise RuntimeError("fails")
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_an_env_made_again_is_made_as_at_first_in_every_process() -> None:
    """on_error="restart": an env of the calling process was made again from the caller's objects as they were
    then (a worker's from its own, as when it started): the two differed."""
    config = {"level": 1}
    with SubprocVecEnv([partial(Leveled, config)] * 4, start_method="fork", num_workers=2, on_error="restart") as venv:
        venv.reset()
        config["level"] = 5
        venv.step(np.array([1, 0, 1, 0]))  # envs 0 (this process's) and 2 (a worker's) raise, and are made again
        assert venv.get_attr("level") == [1, 1, 1, 1]


def test_a_replacement_worker_under_forkserver_makes_its_envs_as_at_first() -> None:
    """on_error="restart", forkserver: a replaced worker's factories were pickled from the caller's objects as they
    were then, not as they were when the pool was made."""
    import os
    import signal

    config = {"level": 1}
    with SubprocVecEnv([partial(Leveled, config)] * 4, start_method="forkserver", num_workers=2, on_error="restart") as venv:
        venv.reset()
        config["level"] = 2
        (pid,) = venv.pool.worker_pids
        os.kill(pid, signal.SIGKILL)
        venv.step(np.zeros(4, np.int64))
        assert venv.pool.worker_pids != [pid] and venv.get_attr("level") == [1, 1, 1, 1]


class Unwrapping(Leveled):
    @property
    def unwrapped(self):
        raise NotImplementedError("no unwrapped env here")


def test_an_env_whose_unwrapped_raises_is_taken() -> None:
    """As by SB3's and gymnasium's vector envs (the check for an env returned twice read it, and its error was the
    env's constructor's)."""
    with SubprocVecEnv([partial(Unwrapping, {"level": 1})] * 4, start_method="fork", num_workers=2) as venv:
        venv.reset()
        venv.step(np.zeros(4, np.int64))


def test_an_env_holding_what_processes_share_does_not_move(tmp_path) -> None:
    """Its state travels pickled: it arrived with a detached copy of a memory map, or one of a pipe's end that closed
    the caller's."""
    memmap = np.memmap(tmp_path / "counts", dtype=np.int64, mode="w+", shape=(4,))
    with SubprocVecEnv([partial(Reporting, i, {"memmap": memmap}) for i in range(4)], start_method="fork", num_workers=2) as venv:
        venv.reset()
        assert venv.pool.request_move(1, 0) is None
    # a read-only one too (its copies hold it by reference; moving, it went by value, the whole mapped file)
    readonly = np.memmap(tmp_path / "counts", dtype=np.int64, mode="r", shape=(4,))
    with SubprocVecEnv([partial(Counted, {}, readonly)] * 4, start_method="fork", num_workers=2) as venv:
        venv.reset()
        assert venv.pool.request_move(1, 0) is None
    with SubprocVecEnv([partial(Reporting, i, {}) for i in range(4)], start_method="fork", num_workers=2) as venv:
        venv.reset()
        assert venv.pool.request_move(1, 0) == 2  # (one that holds none moves)


def test_the_pool_keeps_no_pickle_of_its_factories() -> None:
    """Each factory's pickle stayed in the caller for the pool's life: eight factories over one 16 MB array
    held 128 MB."""
    data = np.ones(2 * 1024 * 1024)  # 16 MB
    fns = [partial(lambda data: gym.make("CartPole-v1"), data) for _ in range(8)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with SubprocVecEnv(fns, start_method="fork", num_workers=2, step_in_parent=False) as venv:
            venv.reset()
            held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < data.nbytes, f"{held / 2**20:.0f} MiB held while the pool lives"


SCRIPT_CLASSES = textwrap.dedent(
    """
    import sys
    from functools import partial

    import gymnasium as gym
    import numpy as np

    import fastvec

    class MyBox(gym.spaces.Box):  # equal to spaces of its own class only
        def __eq__(self, other):
            return isinstance(other, MyBox) and super().__eq__(other)

        __hash__ = None

    def local_discrete():
        class LocalDiscrete(gym.spaces.Discrete):  # (made in a function: it pickles by value only)
            pass

        return LocalDiscrete(2)

    class E(gym.Env):
        def __init__(self, local=False):
            self.observation_space = MyBox(-1, 1, (2,), np.float32)
            self.action_space = local_discrete() if local else gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            return np.zeros(2, np.float32), {}

        def step(self, action):
            return np.zeros(2, np.float32), 0.0, False, False, {}

        def the_scripts_own(self):
            return type(self) is sys.modules["__main__"].E and type(self.observation_space) is MyBox

    if __name__ == "__main__":
        fns = [E, E, E, partial(E, True)]
        if sys.argv[2] == "sb3":
            venv = fastvec.SubprocVecEnv(fns, start_method=sys.argv[1], num_workers=2)
        else:
            venv = fastvec.VectorEnv(fns, context=sys.argv[1], num_workers=2)
        with venv:
            venv.reset()
            print(list(venv.env_method("the_scripts_own") if sys.argv[2] == "sb3" else venv.call("the_scripts_own")))
    """
)


def _run_script(path: Any, text: str, *args: str) -> subprocess.CompletedProcess:
    """``text`` written to ``path`` and run as a program (``python path args``), with this checkout importable."""
    path.write_text(text)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip


@pytest.mark.parametrize("front", ["sb3", "gym"])
def test_the_classes_of_the_main_script_stay_its_own_where_spaces_need_cloudpickle(tmp_path, front: str) -> None:
    """Every process's envs are of the script's own classes, and a space whose ``__eq__`` checks its class equals
    env 0's, also where another env's spaces need cloudpickle to travel: a worker sent them by value with it, the
    script's classes too, so that the parent held a second class (refused, though printed the same). gymnasium's
    AsyncVectorEnv accepts these envs under fork. (Under spawn the workers' envs are of copies of the script's
    classes, cloudpickle's, as SB3's and gymnasium's are.)"""
    out = _run_script(tmp_path / "main_classes.py", SCRIPT_CLASSES, "fork", front)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[True, True, True, True]"


SCRIPT_CLASS_STATE = textwrap.dedent(
    """
    import sys
    from functools import partial
    import numpy as np, gymnasium as gym
    import fastvec

    class FrameEnv(gym.Env):
        frame = np.zeros(1, np.float32)  # one frame per class (an emulator's screen)
        made = []  # a registry of the envs made
        observation_space = gym.spaces.Box(-1e9, 1e9, (1,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def __init__(self, index):
            self.index = index
            FrameEnv.made.append(index)

        def reset(self, *, seed=None, options=None):
            return np.full(1, -1.0, np.float32), {}

        def step(self, action):
            self.frame[0] = 10 * self.index + 1
            return self.frame, 0.0, False, False, {}

    if __name__ == "__main__":
        registry, frame = FrameEnv.made, FrameEnv.frame
        fns = [partial(FrameEnv, i) for i in range(3)]
        venv = fastvec.SubprocVecEnv(fns, start_method="fork", num_workers=1, step_in_parent=sys.argv[1] == "own")
        with venv:
            venv.reset()
            venv.step(np.zeros(3, np.int64))  # (where the sharing is found: this step's values are lost, README)
            obs = venv.step(np.zeros(3, np.int64))[0].ravel().tolist()
        print(obs, FrameEnv.made is registry, FrameEnv.frame is frame, registry if sys.argv[1] == "own" else [])
    """
)


@pytest.mark.parametrize("where", ["own", "worker"])
def test_a_script_s_env_class_keeps_its_class_attributes(tmp_path, where: str) -> None:
    """Each env is made from a private copy of its factory; a script's class went by value in that copy, and
    loading it set the class's attributes anew from copies, once per env made: the caller's registry was no longer
    the class's, and the envs over the class's frame held stale copies of it (observations [21, 21, 21] in a
    process of envs that share a frame gave stale values; hunt88 bug 7). As DummyVecEnv: [1, 11, 21]."""
    out = _run_script(tmp_path / "class_state.py", SCRIPT_CLASS_STATE, where)
    assert out.returncode == 0, out.stderr
    registry = "[0, 1, 2]" if where == "own" else "[]"
    assert out.stdout.strip() == f"[1.0, 11.0, 21.0] True True {registry}", out.stdout


NOTEBOOK_CLASSES = textwrap.dedent(
    """
    import sys
    from functools import partial
    import numpy as np, gymnasium as gym
    import fastvec
    from tests.envs import FailingEnv

    class Tag(gym.spaces.Discrete):  # a notebook's space class: a spawned worker's __main__ has none
        pass

    def make(index):
        class Local(Tag):  # made in a function (cloudpickle's only), its base the notebook's class
            pass
        env = FailingEnv("die" if index == 3 else None, after=1)  # (env 3's worker dies at its 2nd step)
        env.action_space = Local(2) if index % 2 else Tag(2)
        return env

    fns = [partial(make, i) for i in range(4)]
    with fastvec.SubprocVecEnv(fns, start_method=sys.argv[1], num_workers=2, on_error="restart") as venv:
        venv.reset()
        venv.step(np.zeros(4, np.int64))
        dones = venv.step(np.zeros(4, np.int64))[2]  # (a replacement worker, handed the pool's spaces)
        print(dones.tolist(), venv.step(np.zeros(4, np.int64))[2].tolist())
    """
)


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_a_notebook_s_space_classes_reach_spawned_and_forkserver_workers(start_method: str) -> None:
    """A notebook's (here a ``python -c`` program's) space classes are not in a spawned worker's ``__main__``:
    env 0's spaces, in the layout every worker is handed and in a replacement's copy of the pool's spaces, go to
    such a worker by value (as its factories do), not by reference, which every worker failed to load ("died
    during 'attach'"); a plain class of the notebook and one made in a function whose base is the notebook's."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-W", "ignore::RuntimeWarning", "-c", NOTEBOOK_CLASSES, start_method], capture_output=True,
        text=True, timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[False, False, True, True] [False, False, False, False]"


SCRIPT_LOCKED_SPACE = textwrap.dedent(
    """
    import sys, threading
    from functools import partial
    import numpy as np, gymnasium as gym
    import fastvec

    _LOCK = threading.Lock()

    class LockedBox(gym.spaces.Box):  # its methods' globals hold a lock: cloudpickle cannot send it by value
        def sample(self, mask=None, probability=None):
            with _LOCK:
                return super().sample()

    class E(gym.Env):
        def __init__(self, index=0):
            self.index = index
            self.observation_space = LockedBox(-100, 100, (3,), np.float32)
            self.action_space = gym.spaces.Discrete(3)
        def reset(self, *, seed=None, options=None):
            self.t = float(seed)
            return np.array([self.t, self.index, 0], np.float32), {}
        def step(self, a):
            self.t += 1
            return np.array([self.t, self.index, int(a)], np.float32), float(a), False, False, {}

    gym.register(id="LockedSpace-v0", entry_point=E)  # (made by id, as make_vec_env makes them)

    if __name__ == "__main__":
        fns = [partial(gym.make, "LockedSpace-v0", index=i, disable_env_checker=True) for i in range(4)]
        with fastvec.VectorEnv(fns, context=sys.argv[1], num_workers=2, step_in_parent=sys.argv[2] == "1") as venv:
            print(venv.reset(seed=7)[0].tolist(), venv.step(np.array([1, 2, 0, 1]))[0].tolist())
    """
)


@pytest.mark.parametrize("step_in_parent", ["0", "1"])
def test_a_script_s_space_class_that_cannot_go_by_value_reaches_spawned_workers_by_reference(tmp_path, step_in_parent) -> None:
    """A script's top-level space class whose by-value pickle holds a lock (its methods' globals), its envs made by
    id: spawned workers have it (multiprocessing runs the script as their __main__), where gymnasium's and SB3's
    workers find it; sent by value only (for a notebook's classes), the pool was refused ("cannot pickle
    '_thread.lock' object")."""
    out = _run_script(tmp_path / "locked_space.py", SCRIPT_LOCKED_SPACE, "spawn", step_in_parent)
    assert out.returncode == 0, out.stderr[-3000:]
    reset = [[7.0 + i, float(i), 0.0] for i in range(4)]
    stepped = [[8.0 + i, float(i), float(a)] for i, a in enumerate([1, 2, 0, 1])]
    assert out.stdout.strip() == f"{reset} {stepped}"


def _tagged_in_this_process_only(index: int) -> gym.Env:
    env = gym.make("CartPole-v1")
    module = sys.modules.get("fastvec_test_parent_only")  # (a module this process made: no spawned worker has it)
    if module is not None:
        env.action_space = module.Tag(2)
    return env


def test_a_layout_a_spawned_worker_cannot_load_is_said_with_its_cause() -> None:
    """Env 0, made in this process, has an action space of a class of a module only this process has: the workers
    cannot load the layout they are handed. Each said so only on its stderr and died ("died during 'attach' with
    exit code 1"); the error names the stage and the cause, as gymnasium's AsyncVectorEnv raises it."""
    import types

    module = types.ModuleType("fastvec_test_parent_only")
    exec("import gymnasium as gym\nclass Tag(gym.spaces.Discrete):\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        fns = [partial(_tagged_in_this_process_only, i) for i in range(4)]
        with pytest.raises(EnvError, match=r"(?s)attach \(loading the layout of env 0's spaces\).*fastvec_test_parent_only"):
            SubprocVecEnv(fns, start_method="spawn", num_workers=2, step_in_parent=True)
    finally:
        del sys.modules[module.__name__]


class _ClassEqualBox(gym.spaces.Box):
    def __eq__(self, other):
        return isinstance(other, type(self)) and super().__eq__(other)

    __hash__ = None


def _env_of_its_own_space_class() -> gym.Env:
    class OwnBox(_ClassEqualBox):  # (a new class per call, one name)
        pass

    env = gym.make("CartPole-v1")
    env.observation_space = OwnBox(-np.inf, np.inf, (4,), np.float32)
    return env


def test_spaces_of_two_classes_of_one_name_are_refused_saying_so() -> None:
    """gymnasium refuses them too (each env's space equals only its own class's); the message printed two
    identical spaces and nothing else."""
    from fastvec.errors import SpaceMismatchError

    with pytest.raises(RuntimeError, match="not equivalent"):
        gym.vector.SyncVectorEnv([_env_of_its_own_space_class] * 2)
    with pytest.raises(SpaceMismatchError, match="two different classes named tests.test_factories._env_of_its_own_space_class.<locals>.OwnBox"):
        VectorEnv([_env_of_its_own_space_class] * 2, context="fork", num_workers=2)


def _cartpole_with_a_local_action_space() -> gym.Env:
    class LocalDiscrete(gym.spaces.Discrete):  # (made in a function: it pickles by value only)
        pass

    env = gym.make("CartPole-v1")
    env.action_space = LocalDiscrete(2)
    return env


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_env_0_s_space_of_a_class_made_in_a_function_reaches_the_workers(start_method: str) -> None:
    """The pool hands its workers env 0's spaces (in the block's layout): a class the standard pickle cannot
    send (made in a function) failed there with a bare AttributeError from multiprocessing (SB3's and gymnasium's
    workers fail to send it too; fastvec, which made env 0 in this process, sends it with cloudpickle)."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    fns = [_cartpole_with_a_local_action_space] * 4
    reference = DummyVecEnv(fns)
    with SubprocVecEnv(fns, start_method=start_method, num_workers=2) as venv:
        venv.seed(3), reference.seed(3)
        np.testing.assert_array_equal(venv.reset(), reference.reset())
        for _ in range(20):
            actions = np.array([0, 1, 1, 0])
            np.testing.assert_array_equal(venv.step(actions)[0], reference.step(actions)[0])
    reference.close()


def _dying_with_a_local_action_space(index: int) -> gym.Env:
    class LocalDiscrete(gym.spaces.Discrete):
        pass

    from tests.envs import FailingEnv

    env = FailingEnv("die" if index >= 2 else None, after=1)  # (envs 2 and 3: their worker dies at their 2nd step)
    env.action_space = LocalDiscrete(2)
    return env


def test_a_replacement_worker_is_handed_env_0_s_space_of_a_class_made_in_a_function() -> None:
    """With on_error="restart" a spawned replacement gets the pool's spaces as an argument: the standard pickle
    of the process's start failed on such a class, and the restart with it."""
    with SubprocVecEnv([partial(_dying_with_a_local_action_space, i) for i in range(4)], start_method="forkserver",
                       num_workers=2, on_error="restart") as venv:  # fmt: skip
        venv.reset()
        venv.step(np.zeros(4, np.int64))
        with pytest.warns(RuntimeWarning, match="restarted it"):
            _, _, dones, infos = venv.step(np.zeros(4, np.int64))
        assert dones.tolist() == [False, False, True, True]
        assert ["fastvec.restarted" in info for info in infos] == [False, False, True, True]


class _KeepsTheRealStdout(gym.Wrapper):
    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.log = sys.__stdout__  # (as a logging.StreamHandler(sys.__stdout__) keeps it)


def test_an_env_the_move_cannot_pickle_does_not_move_while_stdout_is_redirected() -> None:
    """With sys.stdout redirected (pytest's capture, Jupyter), cloudpickle refuses sys.__stdout__: the check said
    such an env could move (its own pickler takes the process's streams by name), and the move, which could not
    pickle it, re-created it from its factory, its state lost."""
    import contextlib
    import io

    fns = [partial(gym.make, "CartPole-v1")] * 2 + [lambda: _KeepsTheRealStdout(gym.make("CartPole-v1"))] * 2
    with contextlib.redirect_stdout(io.StringIO()):
        with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
            venv.reset()
            assert venv.pool.request_move(1, 0) is None


class _KeepsStdout(gym.Wrapper):
    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.log = sys.stdout  # (the current one: cloudpickle sends it by name)


def test_an_env_holding_the_current_stdout_moves() -> None:
    """The fix of the one above refused every env holding a standard stream, though the move pickles the current
    sys.stdout and sys.stderr (by name) as it should."""
    import contextlib

    fns = [partial(gym.make, "CartPole-v1")] * 2 + [lambda: _KeepsStdout(gym.make("CartPole-v1"))] * 2
    with contextlib.redirect_stdout(sys.__stdout__):  # (the process's own stream, not pytest's capture)
        with SubprocVecEnv(fns, start_method="fork", num_workers=2) as venv:
            venv.reset()
            assert venv.pool.request_move(1, 0) == 2


class _WhereItsDataIs(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (1,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, data: np.ndarray):
        base = data
        while isinstance(base.base, np.ndarray):
            base = base.base
        self.where = (os.getpid(), base.__array_interface__["data"][0])

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_a_read_only_dataset_is_one_copy_per_worker_with_restarts_under_forkserver() -> None:
    """With on_error="restart" each factory keeps a copy of its own, taken at the start, and each held its own view
    of the dataset: a spawned worker's factories carried it once per env, and its envs held a copy each."""
    data = np.ones(1 << 16)
    data.flags.writeable = False
    fns = [partial(_WhereItsDataIs, data)] * 6
    with SubprocVecEnv(fns, start_method="forkserver", num_workers=2, on_error="restart") as venv:
        where = venv.get_attr("where")
    buffers: dict = {}
    for pid, address in where:
        buffers.setdefault(pid, set()).add(address)
    assert [len(addresses) for addresses in buffers.values()] == [1, 1], where


class _LockBox(gym.spaces.Box):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()


def _cartpole_whose_space_holds_a_lock() -> gym.Env:
    env = gym.make("CartPole-v1")
    env.observation_space = _LockBox(-np.inf, np.inf, (4,), np.float32)
    return env


@pytest.mark.parametrize("step_in_parent", [False, True])
def test_env_0_s_spaces_that_cannot_be_pickled_are_its_error_wherever_it_steps(step_in_parent: bool) -> None:
    """Made in this process (step_in_parent), its spaces failed as the pool handed them to its workers, with the
    pickler's bare TypeError, naming no env."""
    with pytest.raises(EnvError, match=r"env 0 raised TypeError during 'make \(reporting spaces\)': cannot pickle") as raised:
        SubprocVecEnv([_cartpole_whose_space_holds_a_lock] * 4, start_method="fork", num_workers=2, step_in_parent=step_in_parent)
    assert isinstance(raised.value, TypeError) and raised.value.env_index == 0


def _make_sharing(started, lock, made, index: int) -> gym.Env:
    with lock:
        started.set()
    made.release()
    return gym.make("CartPole-v1")


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_factories_holding_multiprocessing_locks_and_events_start_under_spawn(start_method: str) -> None:
    """multiprocessing lets its locks, events and semaphores be pickled only as it starts a process: SB3 pickles
    its factories there (and so, now, does fastvec), and its workers share them with the caller; fastvec pickled
    them beforehand and refused them."""
    ctx = multiprocessing.get_context(start_method)
    started, lock, made = ctx.Event(), ctx.Lock(), ctx.Semaphore(0)
    fns = [partial(_make_sharing, started, lock, made, i) for i in range(4)]
    with SubprocVecEnv(fns, start_method=start_method, num_workers=2) as venv:
        venv.reset()
        assert started.is_set()
        assert all(made.acquire(timeout=10) for _ in range(4))  # (every env's factory, the workers' too)


class _LoadsOnlyWhereMade:
    def __init__(self, pid: int | None = None):
        self.pid = os.getpid() if pid is None else pid

    def __reduce__(self):
        return _load_only_in, (self.pid,)


def _load_only_in(pid: int) -> _LoadsOnlyWhereMade:
    if os.getpid() != pid:
        raise RuntimeError("this config loads only in the process that made it")
    return _LoadsOnlyWhereMade(pid)


def _make_with(config: _LoadsOnlyWhereMade) -> gym.Env:
    return gym.make("CartPole-v1")


def test_a_factory_a_worker_cannot_load_is_that_worker_s_error() -> None:
    """It pickles, so it passed the check, and the worker died loading it: "WorkerDiedError ... exit code 1", the
    cause on the worker's stderr only."""
    fns = [partial(_make_with, _LoadsOnlyWhereMade()) for _ in range(4)]
    with pytest.raises(EnvError, match=r"env 2 raised RuntimeError during 'make \(loading the env factories\)': this config"):
        SubprocVecEnv(fns, start_method="forkserver", num_workers=2)


class _Reads(gym.Env):
    """Returns the array it was made with (another pool's result row, here) as its observation."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, row: np.ndarray):
        self.row = row

    def reset(self, *, seed=None, options=None):
        return np.array(self.row), {}

    def step(self, action):
        return np.array(self.row), 0.0, False, False, {}


def test_forked_envs_read_an_array_over_another_live_pool_s_block() -> None:
    """A factory capturing another pool's copy=False result row: under fork its envs read that pool's memory, as
    SB3's forked workers do. (A worker that let go of the blocks it inherited, for the memory of pools closed
    later, read zeros.)"""
    with SubprocVecEnv([partial(gym.make, "CartPole-v1")] * 2, start_method="fork", num_workers=2, copy=False) as first:
        first.seed(0)
        row = first.reset()[1]
        assert row.any()
        with SubprocVecEnv([partial(_Reads, row)] * 2, start_method="fork", num_workers=2, step_in_parent=False) as second:
            np.testing.assert_array_equal(second.reset(), np.stack([row, row]))


class _ReshapesItsData(gym.Env):
    """Sets its captured array's shape in place, as code that reshapes a dataset it owns does."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, data: np.ndarray):
        self.data = data
        self.data.shape = (len(data) // 2, 2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}

    def data_shape(self) -> tuple:
        return self.data.shape


@pytest.mark.parametrize("start_method,on_error", [("fork", "raise"), ("forkserver", "restart")])
def test_each_env_has_a_view_of_its_own_of_a_read_only_array_its_factory_captured(start_method, on_error) -> None:
    """Held once per process, the array was one view object for every env of the process: an env that set its shape
    in place set the next env's too, which then failed to make ("cannot reshape"). SB3 gives each env its own."""
    data = np.arange(8.0)
    data.flags.writeable = False
    fns = [partial(_ReshapesItsData, data)] * 4
    with SubprocVecEnv(fns, start_method=start_method, num_workers=2, on_error=on_error) as venv:
        assert venv.env_method("data_shape") == [(4, 2)] * 4
    assert data.shape == (8,)  # (the caller's own, untouched)


def test_a_class_made_in_a_function_keeps_its_class_attributes() -> None:
    """A class made in a function went by value in each env's private copy of its factory, and loading it set the
    class's attributes anew from copies: the caller's registry was left behind, empty (hunt91 bug 10)."""

    class Registered(envs.FreshResets):
        made: list = []

        def __init__(self, index: int = 0):
            super().__init__(index)
            Registered.made.append(index)

    registry = Registered.made
    with SubprocVecEnv([partial(Registered, i) for i in range(3)], start_method="fork", num_workers=1, step_in_parent=True) as venv:
        venv.reset()
    assert Registered.made is registry and registry == [0, 1, 2]
