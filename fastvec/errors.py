"""Exceptions raised by fastvec.

Every error that comes from an environment names the env index and the command
that was running, and carries the remote traceback. When the env raised a
built-in exception type (AttributeError, ValueError, ...), the fastvec error is
also an instance of that type, so ``except AttributeError`` keeps working as it
did with Stable-Baselines3's SubprocVecEnv.
"""

from __future__ import annotations

import builtins
import traceback

__all__ = [
    "FastvecError",
    "EnvError",
    "WorkerDiedError",
    "StepTimeoutError",
    "ClosedError",
    "AlreadyPendingCallError",
    "NoAsyncCallError",
    "UnsupportedSpaceError",
    "SpaceMismatchError",
    "BrokenPoolError",
    "env_error",
    "ShardError",
    "describe_exception",
]


class FastvecError(Exception):
    """Base class of every error fastvec raises on purpose."""


class EnvError(FastvecError):
    """An environment raised an exception inside fastvec.

    Attributes:
        env_index: index of the env in the vector (0-based).
        command: what was running: "make", "reset", "step", "env_method", ...
        exc_type: qualified name of the exception the env raised.
        remote_traceback: the formatted traceback from the process that ran the env.
    """

    def __init__(self, env_index: int, command: str, exc_type: str, message: str, remote_traceback: str):
        self.env_index = env_index
        self.command = command
        self.exc_type = exc_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
        text = f"env {env_index} raised {exc_type} during {command!r}: {message}"
        if remote_traceback:
            text += f"\n\nRemote traceback (env {env_index}):\n{remote_traceback.rstrip()}"
        super().__init__(text)

    def __str__(self) -> str:  # plain text even when mixed with KeyError (whose str() is a repr)
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return (
            env_error,
            (self.env_index, self.command, self.exc_type, self.remote_message, self.remote_traceback),
        )


class WorkerDiedError(FastvecError):
    """A worker process exited while the pool still needed it."""

    def __init__(self, worker_index: int, env_indices: range, exitcode: int | None, command: str):
        self.worker_index = worker_index
        self.env_indices = env_indices
        self.exitcode = exitcode
        self.command = command
        how = f"exit code {exitcode}"
        if exitcode is not None and exitcode < 0:
            import signal

            try:
                how += f" (killed by {signal.Signals(-exitcode).name})"
            except ValueError:
                pass
        super().__init__(
            f"worker {worker_index} (envs {env_indices.start}..{env_indices.stop - 1}) died during "
            f"{command!r} with {how}"
        )


class StepTimeoutError(FastvecError):
    """A command took longer than the pool's ``step_timeout``."""

    def __init__(self, worker_index: int, env_indices: range, command: str, timeout: float):
        self.worker_index = worker_index
        self.env_indices = env_indices
        self.command = command
        self.timeout = timeout
        super().__init__(
            f"{command!r} did not finish within {timeout:g} s in worker {worker_index} "
            f"(envs {env_indices.start}..{env_indices.stop - 1}); the pool must be closed"
        )


class ClosedError(FastvecError):
    """The pool was used after close()."""


class BrokenPoolError(ClosedError):
    """A command was interrupted or a worker was lost: the pool cannot go on and must be closed.

    Its ``__cause__`` is what broke the pool (an interrupt, WorkerDiedError, StepTimeoutError...).
    """


class AlreadyPendingCallError(FastvecError):
    """step_async() (or another call) was made while a step was still pending."""


class NoAsyncCallError(FastvecError):
    """step_wait() was called without a step_async() before it."""


class UnsupportedSpaceError(FastvecError, TypeError):
    """A gymnasium space that fastvec cannot lay out in shared memory."""


class SpaceMismatchError(FastvecError, ValueError):
    """Envs of one pool disagree on their observation or action space."""


_MIXED_TYPES: dict[type, type] = {}


def env_error(env_index: int, command: str, exc_type: str, message: str, remote_traceback: str) -> EnvError:
    """Build the EnvError for a remote exception, mixing in its built-in type when it has one."""
    cls: type = EnvError
    name = exc_type.rsplit(".", 1)[-1]
    builtin_type = getattr(builtins, name, None)
    if exc_type == name and isinstance(builtin_type, type) and issubclass(builtin_type, Exception):
        cls = _MIXED_TYPES.get(builtin_type)
        if cls is None:
            try:
                cls = type(f"Env{name}", (EnvError, builtin_type), {"__module__": __name__})
            except TypeError:  # incompatible layouts: keep the plain EnvError
                cls = EnvError
            _MIXED_TYPES[builtin_type] = cls
    return cls(env_index, command, exc_type, message, remote_traceback)


def describe_exception(exc: BaseException) -> tuple[str, str, str]:
    """(qualified type name, message, formatted traceback) of an exception, all picklable."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return name, str(exc), "".join(traceback.format_exception(cls, exc, exc.__traceback__))


class ShardError(Exception):
    """An exception inside a shard (from an env, or from writing its row), as the parent needs it
    to raise an EnvError: env index, command, type, message and traceback, all picklable."""

    def __init__(self, env_index: int, command: str, exc: BaseException):
        self.env_index = env_index
        self.command = command
        self.exc_type, self.message, self.remote_traceback = describe_exception(exc)
        super().__init__(f"env {env_index}: {self.exc_type}: {self.message}")

    def payload(self) -> tuple[int, str, str, str, str]:
        return (self.env_index, self.command, self.exc_type, self.message, self.remote_traceback)
