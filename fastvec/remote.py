"""A worker process seen from the pool: start it, hand it the shared block, talk to it,
notice its death, pin it, stop it.

Waiting on a pipe never blocks for ever: every receive polls in slices and checks that
the worker is alive (and, when given, a deadline), so a dead or hung worker becomes a
``WorkerDiedError`` or ``StepTimeoutError`` naming it instead of a hang.
"""

from __future__ import annotations

import contextlib
import functools
import io
import multiprocessing as mp
import os
import pickle
import select
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import connection as mp_connection
from multiprocessing import reduction
from typing import Any

from fastvec import kernels, placement
from fastvec.errors import EXIT_UNKNOWN, ShardError, StepTimeoutError, WorkerDiedError
from fastvec.protocol import POLL_NS, Extra, dumps_by_reference_where_possible, named_envs

__all__ = ["Factories", "Remote", "kill_all", "pickle_factories", "preload_forkserver"]

# what the forkserver imports once for every worker it forks: the worker's modules, and a hook that gives each
# child a global numpy generator of its own (fastvec._forkserver); only where the forkserver finds the very copies
# of them the program runs: CPython before 3.13.1 starts it with the interpreter's default sys.path, not the
# program's, and a program that put another copy first on its path (of fastvec, of gymnasium) ran its workers on
# the default one. Elsewhere each worker imports them itself, with the program's path.
_PRELOAD = ("numpy", "gymnasium", "fastvec._forkserver")
_SAME_COPIES: bool | None = None  # whether the forkserver finds the program's copies (found once per process)


def preload_forkserver() -> None:
    """Have the forkserver import the worker's modules once, so each worker forked from it starts with them (and
    with nothing else: not a front-end, SB3 or torch), where it finds the program's own copies of them. Takes
    effect when the forkserver starts; one already running keeps what it has."""
    from multiprocessing import forkserver

    server = forkserver._forkserver  # the process-wide server that set_forkserver_preload configures
    if getattr(server, "_forkserver_pid", None) is not None:  # (running: its modules are imported already)
        return
    modules = list(getattr(server, "_preload_modules", ["__main__"]))
    missing = [name for name in _PRELOAD if name not in modules]
    if missing and _forkserver_finds_the_program_s_copies():
        forkserver.set_forkserver_preload(modules + missing)


def _forkserver_finds_the_program_s_copies() -> bool:
    """Whether a process started as the forkserver is (the same interpreter, flags, environment and working
    directory; ``-c``, so its path starts with that directory) finds the copies of numpy, gymnasium and fastvec
    this process runs. (Asked once: about 50 ms.)"""
    global _SAME_COPIES
    if _SAME_COPIES is None:
        import importlib.util
        import subprocess
        from multiprocessing import spawn, util

        names = ("numpy", "gymnasium", "fastvec")
        here = []
        for name in names:
            spec = importlib.util.find_spec(name)
            here.append(os.path.realpath(spec.origin) if spec is not None and spec.origin else None)
        code = (
            "import importlib.util as u, os, sys\n"
            "print(repr([os.path.realpath(s.origin) if (s := u.find_spec(n)) is not None and s.origin else None"
            " for n in sys.argv[1:]]))"
        )
        try:
            found = subprocess.run(
                [spawn.get_executable(), *util._args_from_interpreter_flags(), "-c", code, *names],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            there = found.stdout.strip().splitlines()[-1] if found.returncode == 0 and found.stdout.strip() else ""
        except (OSError, subprocess.SubprocessError):
            there = ""
        _SAME_COPIES = None not in here and there == repr(here)
    return _SAME_COPIES


def _import_what_a_forked_worker_imports() -> None:
    """Import, in this process, what a forked worker imports as it starts (lazily imported elsewhere): a module that
    another thread of this process is importing as it forks stays locked in the child for good, and the worker
    waited on it for ever (pools made from several threads at once)."""
    import cloudpickle  # noqa: F401  (worker_main)

    from fastvec import factories, migrate, restart  # noqa: F401

    factories._multiprocessing_types()  # (multiprocessing's modules whose objects processes share)


def pickle_factories(fns: list, start: int, start_method: str) -> Factories:
    """The env factories of one worker, for a spawned/forkserver child, each checked to pickle (a clear error if
    one cannot). What multiprocessing lets through only as it starts a process (its locks, events and queues,
    which the child then shares with this process, as SB3's workers do) is taken: those go when the child starts."""
    import cloudpickle

    for j, fn in enumerate(fns):
        try:
            cloudpickle.dumps(fn)
        except Exception as exc:
            if not _shared_as_a_process_starts(exc):
                raise _unpicklable_factory(start + j, start_method, exc) from exc
    return Factories(fns, start, start_method)


class Factories:
    """A worker's env factories on their way to a spawned or forkserver child: pickled with cloudpickle as the
    child's process object is (multiprocessing then lets its locks, events and queues through, as into SB3's
    workers), and loaded by the worker itself (``load``), which reports a factory it cannot load as its error."""

    def __init__(self, fns: list, start: int = 0, start_method: str = "spawn"):
        self.fns: list | None = fns
        self.start, self.start_method = start, start_method
        self.data: bytes | None = None

    def __getstate__(self) -> tuple:
        import cloudpickle

        try:
            return (cloudpickle.dumps(self.fns), self.start)
        except Exception as exc:  # (what the check let through, refused by the start after all)
            j = next((j for j, fn in enumerate(self.fns or []) if not _pickles(fn)), 0)
            raise _unpicklable_factory(self.start + j, self.start_method, exc) from exc

    def __setstate__(self, state: tuple) -> None:
        self.data, self.start = state
        self.fns, self.start_method = None, ""

    def load(self) -> list:
        if self.fns is None:
            import cloudpickle

            self.fns, self.data = cloudpickle.loads(self.data), None  # type: ignore[arg-type]
        return self.fns


def _pickles(obj: Any) -> bool:
    import cloudpickle

    try:
        cloudpickle.dumps(obj)
    except Exception:
        return False
    return True


def _shared_as_a_process_starts(exc: BaseException) -> bool:
    """Whether ``exc`` is multiprocessing's refusal of one of its objects pickled other than as a process starts."""
    return isinstance(exc, RuntimeError) and "shared between processes through inheritance" in str(exc)


def _unpicklable_factory(index: int, start_method: str, exc: BaseException) -> TypeError:
    return TypeError(
        f"env factory {index} cannot be pickled for start_method={start_method!r}: {exc!r}. "
        "Workers started with 'spawn' or 'forkserver' receive their factories by pickle (cloudpickle: "
        "lambdas and closures travel too); something this factory holds or captures cannot: create it "
        "inside the factory, or use start_method='fork'."
    )


class SpacesNotPickled(Exception):
    """The pool's spaces (env 0's, made in the calling process) cannot be pickled for its workers: ``args[0]``, why."""


class ReplyNotLoaded(Exception):
    """A worker's reply (its envs' infos, object observations, call results), read whole, that cannot be
    unpickled in this process: ``data``, the message; ``exc``, what loading it raised."""

    def __init__(self, envs: range, command: str, data: bytes, exc: BaseException):
        super().__init__(command)
        self.envs, self.data, self.exc = envs, data, exc

    def reply(self) -> tuple:
        """The error reply standing for it, as for envs that raised in the command: an error for each env whose
        values cannot be loaded (found by loading the message again, leniently), or, where they cannot be told
        apart (a call's results), for the worker's first env, naming all of its envs. An error reply keeps its
        envs' own errors. Either carries the object parts of observations that did load (the rows hold them)."""
        command = self.args[0]
        envs, objects, own_errors = _lenient_parts(self.data)
        if own_errors is not None:
            return ("error", own_errors, objects)
        errors = []
        for i in envs or [self.envs.start]:
            named = named_envs(range(i, i + 1) if envs else self.envs)
            error = TypeError(
                f"the {command!r} results of {named} cannot be unpickled in this process (a worker's values come "
                f"through a pickle, as through SB3's pipes): {self.exc!r}"
            )
            errors.append(ShardError(i, f"{command} (reading the result)", error).payload())
        return ("error", errors, objects)


class _NotLoaded:
    """Stands for a value that could not be loaded (``_Lenient``)."""

    def __setstate__(self, state: Any) -> None:
        pass


class _Missing:
    """Found in place of a class that cannot be: making it, by any route, gives a _NotLoaded."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _NotLoaded:  # type: ignore[misc]
        return _NotLoaded()


class _Lenient(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """The pure-Python unpickler, where what cannot be found, made or restored becomes a _NotLoaded."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception:
            return _Missing

    def load_reduce(self) -> None:
        args = self.stack.pop()
        try:
            self.stack[-1] = self.stack[-1](*args)
        except Exception:
            self.stack[-1] = _NotLoaded()

    def load_build(self) -> None:
        try:
            super().load_build()
        except Exception:
            self.stack[-1] = _NotLoaded()

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build


def _lenient_parts(data: bytes) -> tuple[list[int], list | None, list | None]:
    """A step's or reset's reply loaded leniently: the envs whose values cannot be loaded ([] where that cannot be
    told: a call's reply, or the lenient load fails too), the OBJECTS entries that did load, and an error reply's
    own errors (None for another reply)."""
    try:
        message = lenient_loads(data)
        kind = message[0]
        if kind == "extras":
            entries, errors = message[1] or [], None
        elif kind == "error":
            entries, errors = (message[2] if len(message) > 2 else None) or [], message[1]
            if holds_not_loaded(errors):
                return [], None, None
        else:
            return [], None, None
        bad = sorted({entry[0] for entry in entries if holds_not_loaded(entry[2])})
        objects = [entry for entry in entries if entry[1] == Extra.OBJECTS and not holds_not_loaded(entry[2])]
        return bad, objects or None, errors
    except Exception:  # (a message that would not load even so, None, or not of a reply's form)
        return [], None, None


def lenient_loads(data: bytes) -> Any:
    """``data`` loaded with stand-ins for what cannot be found, made or restored here (None where even that fails)."""
    try:
        return _Lenient(io.BytesIO(data)).load()
    except Exception:
        return None


def holds_not_loaded(value: Any) -> bool:
    """Whether ``value`` (from ``lenient_loads``) holds a stand-in, in its dicts, lists and tuples."""
    return _holds_not_loaded(value, 0, set())


def _holds_not_loaded(value: Any, depth: int, seen: set[int]) -> bool:
    """Whether ``value`` holds a _NotLoaded in its dicts, lists and tuples (each visited once: a list that holds
    itself twice took 2**depth calls)."""
    if isinstance(value, _NotLoaded):
        return True
    if depth > 32 or not isinstance(value, (dict, list, tuple)) or id(value) in seen:
        return False
    seen.add(id(value))
    return any(_holds_not_loaded(v, depth + 1, seen) for v in (value.values() if isinstance(value, dict) else value))


class Remote:
    """The handle of worker process ``index``, which owns envs ``envs``."""

    def __init__(self, index: int, envs: range, process: Any, conn: Any):
        self.index = index
        self.envs = envs
        self.process = process
        # (kept: the Process object refuses its pid once released, and stats() in another thread may read it then)
        self._pid: int | None = process.pid
        self._released_exitcode: int | None = EXIT_UNKNOWN  # (its exit code once released)
        self.conn = conn
        self.base = 0  # its control block's offset in the control words
        # a pidfd tells that the worker exited even when its sentinel pipe does not: reaped by someone
        # else (SIGCHLD ignored) while a process its env started still holds the pipe's other end. Not for a
        # forkserver's child: the forkserver reaps it and sends its status over the sentinel, which no process
        # of its env holds, a moment after it exited (a pidfd would say so before its status can be read)
        self.pidfd = -1
        self.hung = False  # ended by the pool, still running past step_timeout (on_error="restart")
        self.released = False  # its pipe and Process object closed (release)
        self.start_method = "fork"  # (how it was started: Remote.spawn)
        self.unmade: list | None = None  # a replacement's envs it could not make: their errors' payloads, to raise
        try:
            if type(getattr(process, "_popen", None)).__module__ != "multiprocessing.popen_forkserver":
                self.pidfd = os.pidfd_open(process.pid)
        except ProcessLookupError:  # (already exited and reaped elsewhere: the sentinel says so)
            pass
        except (AttributeError, OSError):  # no pidfds (Linux before 5.3, other systems)
            pass

    @classmethod
    def spawn(
        cls,
        index: int,
        envs: range,
        env_fns: list,
        *,
        start_method: str,
        daemon: bool,
        autoreset_mode: int,
        spin_ns: int | None,
        restart_on_error: bool,
        check: str | None,
        siblings: list[Remote],
        replacing: tuple | None = None,
        place: Callable[[Remote], None] | None = None,
    ) -> Remote:
        """Start the worker; it makes its envs and reports their spaces (read with ``handshake``). ``place``
        records it (in the pool's list) before this returns: a worker this call raised after starting (a
        Ctrl-C) is ended here, one it returned is the pool's to stop."""
        from fastvec.worker import worker_main

        ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            preload_forkserver()
        if start_method == "fork":
            _import_what_a_forked_worker_imports()
        fns: Any = env_fns if start_method == "fork" else pickle_factories(env_fns, envs.start, start_method)
        if replacing is not None and start_method != "fork":
            # (the pool's spaces, env 0's: of a class made in a function where env 0 was made in this process)
            replacing = dumps_by_reference_where_possible(replacing, main_by_value=True)  # type: ignore[assignment]
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        # with fork, the child inherits the parent's ends of its siblings' pipes: it closes them
        inherited = [r.conn.fileno() for r in siblings if r.index != index] + [parent_conn.fileno()]
        inherited += [r.pidfd for r in siblings if r.index != index and r.pidfd >= 0]
        process = ctx.Process(
            target=worker_main,
            args=(
                child_conn,
                index,
                os.getpid(),
                fns,
                envs.start,
                autoreset_mode,
                spin_ns,
                inherited if start_method == "fork" else [],
                threading.current_thread() is threading.main_thread(),
                restart_on_error,
                check,
                replacing,
                kernels.IMPLEMENTATION,  # (the pool's: a spawned worker would read FASTVEC_PURE_PYTHON anew)
            ),
            daemon=daemon,
            name=f"fastvec-worker-{index}",
        )
        remote = None
        # a Ctrl-C (or a SIGTERM to a Python handler, as ppo.train's) during the start is held until the worker is
        # recorded, then handed to its handler (inside Process.start, after the fork, it left a worker nobody knew;
        # between the pidfd's opening and `remote`, a pidfd nobody closed)
        held: list = []
        previous: dict = {}
        try:
            try:
                if threading.current_thread() is threading.main_thread():
                    for signum in (signal.SIGINT, signal.SIGTERM):
                        try:
                            handler = signal.getsignal(signum)
                            if callable(handler):
                                previous[signum] = handler
                                signal.signal(signum, _holder(held, os.getpid()))
                        except (ValueError, OSError):
                            previous.pop(signum, None)
                # (os.fork's hooks block them around this thread's fork itself: see _before_fork)
                _FORKING[:] = [(threading.get_ident(), tuple(previous))]
                # (only the main thread runs signal handlers, so only its starts can meet one in the fork's hook; a
                # hook swapped by several threads at once was left installed)
                main = threading.current_thread() is threading.main_thread()
                unraisable = sys.unraisablehook
                if main:
                    catching = sys.unraisablehook = _catching_fork_hook(unraisable, threading.get_ident())
                try:
                    process.start()
                finally:
                    _FORKING[:] = []
                    if main and sys.unraisablehook is catching:  # (not if another thread set its own meanwhile)
                        sys.unraisablehook = unraisable
                    mask = _own_mask() if main else None  # (the fork's hook was cut short before it unblocked them:
                    if mask is not None:  # SIGINT stayed blocked; only the main thread holds signals, and only it may take
                        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # the mask it saved)
                if _FORK_INTERRUPTS:  # (a handler's exception inside the fork's hook: raised here, the worker ended)
                    interrupt = _FORK_INTERRUPTS.pop()
                    _FORK_INTERRUPTS.clear()
                    try:
                        raise interrupt
                    finally:
                        interrupt = None
                child_conn.close()
                remote = cls(index, envs, process, parent_conn)
                remote.start_method = start_method
                if place is not None:
                    place(remote)
            finally:
                _restore(list(previous.items()))
                first = None
                for signum, frame in held:
                    try:
                        previous[signum](signum, frame)
                    except BaseException as exc:  # (every held signal reaches its handler; the first error is raised)
                        first = first or exc
                # (the frames held: their chain, through this one, held them again, and the pool: a reference cycle)
                held.clear()
                frame = None
                if first is not None:
                    raise first
            return remote
        except BaseException:
            # (a Ctrl-C once the worker exists, before the pool recorded it: no one else holds it, and a worker
            # left running kept the program from exiting, workers not being daemonic. Ended here: SIGTERM, so
            # that it closes the envs it made, then SIGKILL)
            if getattr(process, "_popen", None) is not None:
                try:
                    process.terminate()
                    process.join(1.0)
                    if process.exitcode is None:
                        process.kill()
                        process.join(1.0)
                except (OSError, ValueError):
                    pass
            child_conn.close()
            parent_conn.close()
            if remote is not None:
                remote.close_pidfd()
            raise

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def exitcode(self) -> int | None:
        """None while the worker runs; its exit code, or EXIT_UNKNOWN when it has exited but was reaped by
        someone else (SIGCHLD ignored, or a handler's waitpid): its sentinel pipe still says it is gone."""
        try:
            code = self.process.exitcode
        except ValueError:  # released (the pool was closed meanwhile, as by a signal handler's close())
            return self._released_exitcode
        try:
            if code is None and (mp_connection.wait([self.process.sentinel], 0) or self._pidfd_says_exited()):
                self.process.join(0.05)  # (it may be exiting: its status comes a moment after its pipe closes)
                code = self.process.exitcode
                if code is None:
                    # recorded as its status, so that join() and close() (which frees its pipes) see it gone too
                    popen = getattr(self.process, "_popen", None)
                    if popen is not None and getattr(popen, "returncode", 0) is None:
                        popen.returncode = EXIT_UNKNOWN
                    return EXIT_UNKNOWN
        except ValueError:  # (released in between: "process object is closed")
            return self._released_exitcode
        return code

    def _pidfd_says_exited(self) -> bool:
        if self.pidfd < 0:
            return False
        poller = select.poll()  # (not select.select: it refuses descriptors past 1023)
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def close_pidfd(self) -> None:
        fd, self.pidfd = self.pidfd, -1  # (forgotten first: an interrupt just after os.close left it to close twice)
        if fd >= 0:
            os.close(fd)

    def attach(self, layout: Any, fd: int, first_seq: int, restart: tuple | None) -> None:
        """Send the layout and the shared block's file descriptor (SCM_RIGHTS). (The layout holds env 0's spaces:
        one of a class made in a function, env 0 made in this process, travels with cloudpickle:
        protocol.dumps_by_reference_where_possible.)"""
        try:
            payload = dumps_by_reference_where_possible(
                ("attach", layout, first_seq, restart), main_by_value=self.start_method != "fork"
            )
        except Exception as exc:  # (env 0's spaces, made in this process, hold what cannot be pickled)
            raise SpacesNotPickled(exc) from exc
        self.conn.send_bytes(payload)
        reduction.send_handle(self.conn, fd, self.process.pid)

    def send_bytes(self, payload: bytes) -> None:
        """Send an already pickled message; a dead worker's broken pipe is noticed when waiting on it."""
        try:
            self.conn.send_bytes(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def recv(self, command: str, timeout: float | None = None) -> Any:
        """One message, noticing the worker's death (WorkerDiedError) or ``timeout`` (StepTimeoutError). A
        message read whole that cannot be unpickled here raises ``ReplyNotLoaded`` (the pipe stays in step)."""
        began = time.monotonic()
        conn = self.conn
        while True:
            try:
                data = conn.recv_bytes() if conn.poll(POLL_NS / 1e9) else None
                gone = data is None and self.exitcode is not None and not conn.poll(0)
            except (EOFError, OSError) as exc:  # (OSError too where close(), in another thread or a signal handler, released it)
                # the pipe's own errors (EOFError, ConnectionError, "got end of file during message") are raised in
                # multiprocessing.connection; one raised elsewhere is a signal handler's own, whatever its type (a
                # handler's BrokenPipeError, print() to a closed pipe, was taken for the worker's death): at once
                if not conn.closed and self.exitcode is None and not _raised_in(exc, _PIPE_FILES):
                    raise
                try:
                    self.process.join(1.0)  # (a worker that died mid-message: its status comes a moment later)
                except ValueError:  # (released meanwhile: the callers see the pool closed)
                    pass
                raise WorkerDiedError(self.index, self.envs, self.exitcode, command) from None
            if data is not None:
                try:
                    return reduction.ForkingPickler.loads(data)
                except Exception as exc:  # (an env's value whose class, or its loading, exists in the worker only)
                    if _raised_by_a_signal_handler(exc):  # (the loading runs Python code, where a handler runs: its own
                        raise  # exception, a timeout alarm's, is no env's)
                    raise ReplyNotLoaded(self.envs, command, data, exc) from exc
            if gone:
                raise WorkerDiedError(self.index, self.envs, self.exitcode, command)
            if timeout is not None and time.monotonic() - began > timeout:
                raise StepTimeoutError(self.index, self.envs, command, timeout)

    def pin(self, cores: list[int]) -> None:
        import psutil

        psutil.Process(self.process.pid).cpu_affinity(cores)

    def end(self) -> None:
        """SIGTERM (the worker closes its envs as it exits), then SIGKILL if it still runs 1 s later."""
        if self.exitcode is None:
            self.process.terminate()
        self.reap()

    def reap(self) -> None:
        """After SIGTERM: give the worker 1 s to close its envs and exit, then SIGKILL it."""
        self.process.join(1.0)
        if self.exitcode is None:
            self.process.kill()
            self.process.join(1.0)

    def release(self) -> None:
        """Close the pipe and the Process object (the process must have exited); once (a pool's replacement of a dead
        worker and a close() from another thread may both come to it)."""
        if self.released:
            return
        self.released = True
        self._released_exitcode = self.exitcode
        self.conn.close()
        self.close_pidfd()
        try:
            self.process.close()
        except ValueError:
            pass


def _restore(items: list) -> None:
    """Restore each (signum, handler), even when a restored handler raises meanwhile."""
    if items:
        try:
            signal.signal(*items[0])
        finally:
            _restore(items[1:])


def _holder(held: list, owner: int) -> Callable:
    """The handler that holds a signal while a worker starts; in a forked worker that has not yet installed its own
    handlers (it inherited this one), SIGTERM ends it at once and SIGINT is ignored (the parent's)."""

    def hold(signum: int, frame: Any) -> None:
        if os.getpid() == owner:
            held.append((signum, frame))
        elif signum == signal.SIGTERM:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return hold


_PIPE_FILES = (mp_connection.__file__, selectors.__file__)  # (Connection.poll waits in a selector)


def _raised_in(exc: BaseException, filenames: tuple[str, ...]) -> bool:
    """Whether ``exc`` was raised by code of ``filenames`` alone: every frame of its traceback below the one that caught
    it (a signal handler's exception has the handler's frame among them, whichever frame it interrupted, even where
    the handler itself then called into those files)."""
    tb = exc.__traceback__
    tb = tb.tb_next if tb is not None else None  # (the first is the catching frame's)
    if tb is None:
        return False
    while tb is not None:
        if tb.tb_frame.f_code.co_filename not in filenames:
            return False
        tb = tb.tb_next
    return True


def _raised_by_a_signal_handler(exc: BaseException) -> bool:
    """Whether a frame of ``exc``'s traceback runs one of this process's Python signal handlers."""
    handlers = set()
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (ValueError, OSError):
            continue
        while isinstance(handler, functools.partial):  # (a handler made with partial, a bound method, an object)
            handler = handler.func
        handler = getattr(handler, "__func__", handler)
        if not hasattr(handler, "__code__") and callable(handler):
            call = type(handler).__call__  # (an object's: its class's method)
            handler = getattr(call, "__func__", call)
        code = getattr(handler, "__code__", None)
        if code is not None:
            handlers.add(code)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in handlers:
            return True
        tb = tb.tb_next
    return False


_FORKING: list = []  # while Remote.spawn is in Process.start: (its thread, the signals it holds)
_MASK: list = []  # (the thread, the signal mask before _before_fork blocked them)
_FORK_INTERRUPTS: list = []  # what a signal handler raised inside the fork's hooks in the parent, for Remote.spawn to raise


def _before_fork() -> None:
    # blocked for the fork itself: a SIGTERM sent to the child before its hook stays pending (another thread's fork
    # meanwhile is none of this)
    if _FORKING and _FORKING[0][1] and _FORKING[0][0] == threading.get_ident():
        # the mask saved before any signal is blocked: a signal handler's exception right after the block (handlers run
        # as a call returns) left the mask unsaved, SIGINT blocked for the process's life
        _MASK[:] = [(threading.get_ident(), signal.pthread_sigmask(signal.SIG_BLOCK, ()))]
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORKING[0][1])


def _own_mask() -> Any:
    """The mask this thread saved in ``_before_fork``, taken (None: none saved, or another thread's: a fork from another
    thread, between the main thread's hooks, took the main thread's mask and left SIGINT blocked there for good)."""
    try:
        thread, mask = _MASK[0]
    except IndexError:
        return None
    if thread != threading.get_ident():
        return None
    _MASK.clear()
    return mask


def _after_fork_in_parent() -> None:
    mask = _own_mask()
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _catching_fork_hook(previous: Callable, thread: int) -> Callable:
    """A ``sys.unraisablehook`` for a worker's start: what a signal handler raised inside the fork's hooks above in the parent (a
    SIGALRM's KeyboardInterrupt, which can run at the hook's first line), which CPython only prints, is kept for
    ``Remote.spawn`` to raise after the start; anything else goes to ``previous``."""

    def hook(unraisable: Any) -> None:
        if unraisable.object in _PARENT_HOOKS and threading.get_ident() == thread:
            _FORK_INTERRUPTS.append(unraisable.exc_value)
        else:
            previous(unraisable)

    return hook


# (fastvec's fork hooks that run in the parent: placement's saves the caller's cores)
_PARENT_HOOKS = (_before_fork, _after_fork_in_parent, placement._before_fork)


def _after_fork_in_child() -> None:
    # (its own forks are none of this: the flag came with the parent's memory, and its env's subprocesses, forked
    # later, would have had their signals reset)
    # (the fork's thread is the child's one thread, of the same ident: a fork from another thread is no worker)
    forking, _FORKING[:] = bool(_FORKING), []
    mask = _own_mask()
    if mask is not None and forking:  # the worker: SIGTERM ends it until worker_main installs its handler; SIGINT is its
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # parent's
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def stop(remotes: list[Remote], grace: float) -> None:
    """Give every worker ``grace`` seconds to exit, then terminate, then kill; release them all."""
    deadline = time.monotonic() + grace
    # (one released already: a dead worker whose replacement an interrupt cut short is still listed)
    remotes = [remote for remote in remotes if not remote.released]
    # (each step skips a worker another thread's stop released meanwhile, close() and terminate() at once: the
    # Process object it closed said "process object is closed")
    for remote in remotes:
        with _released_meanwhile():
            remote.process.join(max(0.0, deadline - time.monotonic()))
    for remote in remotes:
        with _released_meanwhile():
            if remote.exitcode is None:
                remote.process.terminate()
    for remote in remotes:  # (all signalled first: they close their envs side by side)
        with _released_meanwhile():
            remote.reap()
    for remote in remotes:
        remote.release()


@contextlib.contextmanager
def _released_meanwhile() -> Any:
    """A worker's Process closed by another thread's stop() (ValueError: "process object is closed") is done with."""
    try:
        yield
    except ValueError:
        pass


def kill_all(remotes: list[Remote]) -> None:
    """``stop`` was cut short (an interrupt in its waits): SIGTERM every worker still running, so that it
    closes its envs as it exits, and SIGKILL any still running 1 s later, from a timer thread (this
    call does not wait). multiprocessing reaps them at its next ``active_children()`` or at exit."""
    running = []
    for remote in remotes:
        try:
            if remote.exitcode is None:
                remote.process.terminate()
                running.append(remote.process)
            remote.conn.close()  # (the Process object is closed when multiprocessing reaps it)
            remote.close_pidfd()
        except (ValueError, OSError):  # (already released)
            pass

    def kill() -> None:
        for process in running:
            try:
                if process.exitcode is None:
                    process.kill()
            except (ValueError, OSError):
                pass

    if running:
        timer = threading.Timer(1.0, kill)
        timer.daemon = True
        timer.start()
