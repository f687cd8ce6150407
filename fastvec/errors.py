"""Exceptions raised by fastvec.

Every error that comes from an environment names the env index and the command
that was running, and carries the remote traceback. The fastvec error is also an
instance of the type the env raised (a built-in such as AttributeError, or a class
of a module the caller has imported, such as gymnasium.error.ResetNeeded or the
user's own), so ``except AttributeError`` or ``except MyEnvError`` keeps working as
with gymnasium's AsyncVectorEnv, which re-raises the env's own type.
"""

from __future__ import annotations

import builtins
import os
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any

from gymnasium import error as gym_error

__all__ = [
    "EXIT_UNKNOWN",
    "FastvecError",
    "EnvError",
    "WorkerDiedError",
    "StepTimeoutError",
    "ClosedError",
    "AlreadyPendingCallError",
    "NoAsyncCallError",
    "UnsupportedSpaceError",
    "SpaceMismatchError",
    "SeedError",
    "BrokenPoolError",
    "env_error",
    "env_errors",
    "raise_unusable_info",
    "ShardError",
    "describe_exception",
    "safe_str",
    "exit_status",
]


EXIT_UNKNOWN = -(2**16)  # a worker's exit code when it was reaped by someone else (WorkerDiedError says so)


class FastvecError(Exception):
    """Base class of every error fastvec raises on purpose."""


class EnvError(FastvecError):
    """An environment raised an exception inside fastvec.

    Attributes:
        env_index: index of the env in the vector (0-based).
        command: what was running: "make", "reset", "step", "env_method", ...
        exc_type: qualified name of the exception the env raised.
        remote_traceback: the formatted traceback from the process that ran the env.
        env_ids: (raised by an asynchronous ``recv()``) the ids of the groups whose env raised, which
            are free to be sent their next actions; None otherwise.
    """

    def __init__(self, env_index: int, command: str, exc_type: str, message: str, remote_traceback: str):
        self.others: list[EnvError] = []  # the other envs that raised in the same command, by env index
        self.env_ids: Any = None  # (asynchronous recv(): the failed groups' env ids)
        self.env_index = env_index
        self.command = command
        self.exc_type = exc_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
        text = f"env {env_index} raised {exc_type} during {command!r}: {message}"
        if remote_traceback:
            text += f"\n\nRemote traceback (env {env_index}):\n{remote_traceback.rstrip()}"
        super().__init__(text)
        self.args = (text,)  # (an env's own exception class mixed in may keep its message elsewhere)

    def __str__(self) -> str:  # plain text even when mixed with KeyError (whose str() is a repr)
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return (
            env_error,
            (self.env_index, self.command, self.exc_type, self.remote_message, self.remote_traceback),
        )


class _ReducedByArguments:
    """An error whose constructor takes its arguments, not its message: ``__init__`` keeps them in ``_args``, and it
    pickles and copies by them (across processes too)."""

    _args: tuple

    def __reduce__(self) -> tuple:
        return type(self), self._args, self.__dict__


class WorkerDiedError(_ReducedByArguments, FastvecError):
    """A worker process exited while the pool still needed it."""

    def __init__(
        self, worker_index: int, env_indices: range, exitcode: int | None, command: str, replaced_later: bool = False,
        ended_after: float | None = None,
    ):
        self.worker_index = worker_index
        self.env_indices = env_indices
        self.exitcode = exitcode
        self.command = command
        self.replaced_later = replaced_later  # (on_error="restart": the next step or reset replaces it)
        self.ended_after = ended_after  # (on_error="restart": the pool ended it, hung past this step_timeout)
        how = f"exit code {exitcode}"
        if exitcode == EXIT_UNKNOWN:
            how = "an exit status this process could not read (it was reaped elsewhere: SIGCHLD ignored, or a handler's waitpid)"
        elif exitcode is not None and exitcode < 0:
            import signal

            try:
                how += f" (killed by {signal.Signals(-exitcode).name})"
            except ValueError:
                pass
        self._args = (worker_index, env_indices, exitcode, command, replaced_later, ended_after)
        later = "; with on_error='restart' it is replaced at the next step or reset" if replaced_later else ""
        if ended_after is not None:
            how = f"{how}: it was ended, still running after step_timeout={ended_after:g} s"
        super().__init__(
            f"worker {worker_index} (envs {env_indices.start}..{env_indices.stop - 1}) died during "
            f"{command!r} with {how}{later}"
        )


class StepTimeoutError(_ReducedByArguments, FastvecError):
    """A command took longer than the pool's ``step_timeout``."""

    def __init__(self, worker_index: int, env_indices: range, command: str, timeout: float, made: bool = True):
        self.worker_index = worker_index
        self.env_indices = env_indices
        self.command = command
        self.timeout = timeout
        self.made = made  # (the pool exists, and is broken; else its constructor raised this, its workers stopped)
        self._args = (worker_index, env_indices, command, timeout, made)
        after = "the pool must be closed" if made else "the pool was not made (its workers were stopped)"
        super().__init__(
            f"{command!r} did not finish within {float(timeout):g} s in worker {worker_index} "
            f"(envs {env_indices.start}..{env_indices.stop - 1}); {after}"
        )


class ClosedError(FastvecError, gym_error.ClosedEnvironmentError):
    """The pool was used after close() (also gymnasium's ClosedEnvironmentError)."""


class BrokenPoolError(ClosedError):
    """A command was interrupted or a worker was lost: the pool cannot go on and must be closed.

    Its ``__cause__`` is what broke the pool (an interrupt, WorkerDiedError, StepTimeoutError...).
    """


class AlreadyPendingCallError(FastvecError, gym_error.AlreadyPendingCallError):
    """A command was started while another was pending (also gymnasium's AlreadyPendingCallError).

    ``name``: the pending command, as gymnasium names it ("step", "reset", "call").
    """

    def __init__(self, message: str, name: str = ""):
        super().__init__(message, name)


class NoAsyncCallError(FastvecError, gym_error.NoAsyncCallError):
    """A *_wait() was called with no matching *_async() pending (also gymnasium's NoAsyncCallError)."""

    def __init__(self, message: str, name: str = ""):
        super().__init__(message, name)


class SeedError(FastvecError, gym_error.Error, TypeError):
    """A reset seed that is not an int (gymnasium's envs refuse it with gymnasium.error.Error, and its message)."""


class UnsupportedSpaceError(FastvecError, TypeError):
    """A space that a shared-memory-only configuration cannot hold (gymnasium's shared_memory=True
    with a Text, Sequence, Graph or OneOf space raises a TypeError too)."""


class SpaceMismatchError(FastvecError, ValueError, RuntimeError):
    """Envs of one pool disagree on their observation or action space (a RuntimeError, as in
    gymnasium's AsyncVectorEnv, and a ValueError)."""


_MIXED_TYPES: dict[type, type] = {}


def env_errors(payloads: list[tuple]) -> EnvError:
    """The EnvError of the lowest env index among ``payloads``, with the others in its ``others``."""
    ordered = sorted(payloads, key=lambda payload: payload[0])
    first = env_error(*ordered[0])
    first.others = [env_error(*payload) for payload in ordered[1:]]
    return first


def env_error(env_index: int, command: str, exc_type: str, message: str, remote_traceback: str) -> EnvError:
    """Build the EnvError for a remote exception, also an instance of the env's own exception type
    where the caller can name it (a built-in, or a class of a module the caller has imported, such as
    gymnasium.error.ResetNeeded), as gymnasium's AsyncVectorEnv re-raises the env's own type."""
    original = _exception_class(exc_type)
    if original is None:
        return EnvError(env_index, command, exc_type, message, remote_traceback)
    cls = _MIXED_TYPES.get(original)
    if cls is None:
        try:
            cls = type(
                f"Env{original.__name__}",
                (EnvError, original),
                {"__module__": __name__, "__qualname__": f"Env{original.__name__}"},
            )
        except Exception:  # incompatible layouts or metaclasses: keep the plain EnvError
            cls = EnvError
        _MIXED_TYPES[original] = cls
    try:
        return cls(env_index, command, exc_type, message, remote_traceback)
    except Exception:  # the env's type wants other constructor arguments than a message
        _MIXED_TYPES[original] = EnvError
        return EnvError(env_index, command, exc_type, message, remote_traceback)


def raise_unusable_info(exc: BaseException, *sources: tuple[dict, str], writable: bool = False) -> None:
    """Where a front-end's building of its infos raised ``exc``: raise the EnvError of the first env whose info is no
    mapping (a list, say; ``writable``: no mutable one, for SB3's front-end, which writes its keys into each info as
    SB3's workers do), naming it, as a malformed step result is (the references fail on one too: gymnasium's with a
    bare AttributeError, SB3's worker dies); return where every info is one. ``sources``: (env index -> info, the
    command that returned them: "step", or "reset" for the resets' infos)."""
    kind = MutableMapping if writable else Mapping
    for infos, command in sources:
        for i in sorted(infos):
            info = infos[i]
            if not isinstance(info, kind):
                message = (
                    f"an env's info must be a {'mutable ' if writable else ''}dict, as gymnasium's Env.{command} returns "
                    f"it; got {type(info).__name__}"
                )
                error = env_error(i, command, "TypeError", message, "")
                try:
                    raise error from exc
                finally:
                    error = None  # (this frame stays in the error's traceback: a reference cycle otherwise)


def _exception_class(exc_type: str) -> type | None:
    """The Exception subclass named ``exc_type`` ("ValueError", "package.module.Outer.Error"), looked
    up without importing anything: a built-in, or a class of a module already imported here (a
    worker's ``__mp_main__`` is this process's ``__main__``). None when there is no such class."""
    parts = exc_type.split(".")
    found: object = builtins if len(parts) == 1 else None
    # the qualified name may be nested (module.Outer.Inner): the longest prefix naming an imported module
    for cut in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:cut])
        found = sys.modules.get("__main__" if name == "__mp_main__" else name)
        if found is not None:
            parts = parts[cut:]
            break
    if found is None or "<locals>" in parts:
        return None
    for attribute in parts:
        found = getattr(found, attribute, None)
    if isinstance(found, type) and issubclass(found, Exception) and not issubclass(found, FastvecError):
        return found
    return None


def describe_exception(exc: BaseException) -> tuple[str, str, str]:
    """(qualified type name, message, formatted traceback) of an exception, all picklable."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return name, safe_str(exc), "".join(traceback.format_exception(cls, exc, exc.__traceback__))


def safe_str(exc: BaseException) -> str:
    """``str(exc)``, or where its ``__str__`` raises, a text saying so (an env's error that cannot be printed was
    reported as that second error, blaming another env or none)."""
    try:
        return str(exc)
    except Exception as err:
        return f"<its message could not be made: str() raised {type(err).__name__}>"


class ShardError(Exception):
    """An exception inside a shard (from an env, or from writing its row), as the parent needs it
    to raise an EnvError: env index, command, type, message and traceback, all picklable."""

    def __init__(self, env_index: int, command: str, exc: BaseException):
        self.env_index = env_index
        self.command = command
        self.exc_type, self.message, self.remote_traceback = describe_exception(exc)
        self.others: list[ShardError] = []  # more envs of the shard that raised in the same command
        super().__init__(f"env {env_index}: {self.exc_type}: {self.message}")

    def payload(self) -> tuple[int, str, str, str, str]:
        return (self.env_index, self.command, self.exc_type, self.message, self.remote_traceback)

    def payloads(self) -> list[tuple]:
        """This error's payload and those of the other envs that raised in the same command."""
        return [self.payload()] + [other.payload() for other in self.others]

    @staticmethod
    def combine(errors: list[ShardError]) -> ShardError:
        """The first of ``errors``, carrying the rest; ``errors`` is emptied. (The usual caller raises the result
        from the frame whose local ``errors`` is: that frame stays in the error's traceback, and the list, holding
        the error, would make a reference cycle that keeps the frame's objects, a pool among them, until the
        cyclic garbage collector runs.)"""
        first = errors[0]
        first.others = errors[1:]
        errors.clear()
        return first


def detached(exc: BaseException) -> BaseException:
    """A copy of ``exc`` without its traceback, cause or context (the same type, arguments and attributes), to be
    kept after the call that raised it: a traceback's frames hold their locals (a pool's ``self`` among them), so
    a pool that kept the error itself would be in a reference cycle, freed only by the cyclic garbage collector.

    Made by its nearest built-in base's ``__new__`` and ``__init__`` from its ``args``, not by its own (fastvec's
    errors, and many others, take other arguments than the ``args`` they keep): they fill the C-level fields (as
    UnicodeError's); the built-in types' other fields (OSError's file names, ImportError's and AttributeError's
    ``name``), ``__dict__`` and ``__slots__`` values are copied. An exception that
    cannot be made so is described under RuntimeError (the caller keeps its own description of it)."""
    cls = type(exc)
    try:
        base = next(klass for klass in cls.__mro__ if klass.__module__ == "builtins")
        clone = base.__new__(cls, *exc.args)
        base.__init__(clone, *exc.args)
        clone.args = exc.args
        clone.__dict__.update(getattr(exc, "__dict__", {}))
        for klass in cls.__mro__:
            if klass.__module__ == "builtins":  # its own fields (OSError's file names, ImportError's name, ...)
                for name, field in vars(klass).items():
                    if name.startswith("__") or type(field).__name__ not in ("member_descriptor", "getset_descriptor"):
                        continue
                    try:
                        value = getattr(exc, name)
                        if value is not None:  # (unset: a None set would show in OSError's message)
                            setattr(clone, name, value)
                    except Exception:  # (read-only, or not set on this one: OSError's characters_written)
                        pass
            slots = klass.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name not in ("__dict__", "__weakref__") and hasattr(exc, name):
                    setattr(clone, name, getattr(exc, name))
    except Exception:
        try:
            text = f"{cls.__name__}: {exc}"
        except Exception:
            text = cls.__name__
        clone = RuntimeError(text)
    clone.__traceback__ = clone.__cause__ = clone.__context__ = None
    return clone


def exit_status(exitcode: int | None) -> str:
    """A worker's end in words: its exit code, and the signal that ended it."""
    if exitcode == EXIT_UNKNOWN:
        return "an unread exit status"
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            return f"exit code {exitcode} (killed by {signal.Signals(-exitcode).name})"
        except ValueError:
            pass
    return f"exit code {exitcode}"


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# the packages that stand between the program and fastvec: SB3 (its VecEnv and wrappers, and its algorithms, whose
# learn() steps the envs; a program's callbacks are its own files), the SB3 team's sb3_contrib (algorithms) and
# rl_zoo3 (its ExperimentManager takes the program's VecEnv class), and gymnasium's VectorEnv and vector wrappers
_BASES = ("stable_baselines3", "sb3_contrib", "rl_zoo3", "gymnasium.vector", "gymnasium.wrappers.vector")


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning, issued by the function calling this one, at the first frame outside
    fastvec, SB3 and gymnasium's vector-env packages: the program's line that led to it (a fixed level
    pointed into fastvec where the call came another way). 1 where every frame is theirs (a monitor's thread)."""
    folders = [_PACKAGE]
    for name in _BASES:
        module = sys.modules.get(name)
        if getattr(module, "__file__", None):
            folders.append(os.path.dirname(os.path.abspath(module.__file__)) + os.sep)
    skipped = tuple(folders)
    frame = sys._getframe(1)  # (the function that warns: level 1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(skipped):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1
