"""Imported by the forkserver alone, among the modules it preloads (``fastvec.remote.preload_forkserver``).

numpy seeds its global generator (``np.random.rand`` and the like) from the OS when it is first imported. A
forkserver that preloads numpy imports it once, so every process forked from it, each of a pool's workers and
those of any other library's forkserver pool in the program (SB3's), would start with the same state and draw
the same numbers. Each child the forkserver forks gets a fresh one, as a process that imported numpy itself
would. (Never imported in the program itself: there a fork keeps the parent's state, as SB3's forked
workers do.)
"""

from __future__ import annotations

import os

import numpy as np

_SERVER = os.getpid()  # (the forkserver, which imports this module)


def _fresh_global_generator() -> None:
    # (the forkserver's own children only: the handler stays registered in them, and a process an env of theirs
    # forks keeps its parent's state, as a fork does, np.random.seed(123) included)
    if os.getppid() == _SERVER:
        np.random.seed()  # (from the OS's entropy)


os.register_at_fork(after_in_child=_fresh_global_generator)
