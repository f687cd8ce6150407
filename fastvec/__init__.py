"""fastvec: N gymnasium environments stepped in parallel processes through shared memory.

    from fastvec import SubprocVecEnv          # drop-in for SB3's SubprocVecEnv
    from fastvec import VectorEnv              # gymnasium 1.x VectorEnv API
"""

from fastvec import errors
from fastvec.errors import EnvError, FastvecError, StepTimeoutError, WorkerDiedError
from fastvec.kernels import IMPLEMENTATION as KERNELS
from fastvec.pool import Pool
from fastvec.vec_env import SubprocVecEnv
from fastvec.vector_env import VectorEnv

__version__ = "0.1.0"

__all__ = [
    "SubprocVecEnv",
    "VectorEnv",
    "Pool",
    "errors",
    "EnvError",
    "FastvecError",
    "WorkerDiedError",
    "StepTimeoutError",
    "KERNELS",
    "__version__",
]
