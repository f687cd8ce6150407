"""fastvec: N gymnasium environments stepped in parallel processes through shared memory.

    from fastvec import SubprocVecEnv          # drop-in for SB3's SubprocVecEnv
    from fastvec import VectorEnv              # gymnasium 1.x VectorEnv API (AsyncVectorEnv's constructor)

Importing fastvec is light: the front-ends are imported when first used (neither imports
Stable-Baselines3 or torch), and worker processes import only the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastvec import errors
from fastvec.errors import (
    AlreadyPendingCallError,
    BrokenPoolError,
    ClosedError,
    EnvError,
    FastvecError,
    NoAsyncCallError,
    StepTimeoutError,
    WorkerDiedError,
)
from fastvec.kernels import IMPLEMENTATION as KERNELS

if TYPE_CHECKING:
    from fastvec.batch import Batch
    from fastvec.gym_vector_env import VectorEnv
    from fastvec.options import PoolOptions
    from fastvec.pool import Pool, PoolState
    from fastvec.sb3_vec_env import SubprocVecEnv

__version__ = "0.2.0"

_LAZY = {
    "SubprocVecEnv": "fastvec.sb3_vec_env",
    "VectorEnv": "fastvec.gym_vector_env",
    "Pool": "fastvec.pool",
    "PoolState": "fastvec.pool",
    "PoolOptions": "fastvec.options",
    "Batch": "fastvec.batch",
}

__all__ = [
    "SubprocVecEnv",
    "VectorEnv",
    "Pool",
    "PoolState",
    "PoolOptions",
    "Batch",
    "errors",
    "EnvError",
    "FastvecError",
    "WorkerDiedError",
    "StepTimeoutError",
    "BrokenPoolError",
    "ClosedError",
    "NoAsyncCallError",
    "AlreadyPendingCallError",
    "KERNELS",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastvec' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
