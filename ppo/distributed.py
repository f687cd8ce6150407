"""Data-parallel PPO over torch.distributed: every rank steps its own envs, the update is DDP.

    torchrun --nproc-per-node=2 -m ppo.train --distributed          # 2 ranks on this machine
    torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \\
        -m ppo.train --distributed                                  # on each of 2 machines

Any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (and LOCAL_RANK,
LOCAL_WORLD_SIZE for GPU choice and core shares) works with ``python -m ppo.train --distributed``.

What the ranks share, and why:

- gradients: DistributedDataParallel averages them. Each rank's loss is a mean over its
  own minibatch of equal size, so the average is the gradient of the mean over the
  concatenated minibatches: one step of P ranks equals one step of a single process on
  the whole batch (up to float rounding).
- advantage normalization and the observation / reward normalization statistics: reduced
  over every rank's samples, so that equality holds for them too and all ranks normalize
  identically (their parameters stay bitwise equal, ``--check-replicas`` verifies it).
- finished episodes: gathered on every rank once per rollout, so every rank logs and
  decides "solved" from the same episodes, and all stop at the same iteration (a rank
  that stopped alone would leave the others waiting in a collective).

Nothing else crosses the network: each rank's rollout stays in its own fastvec ring.
Every collective has a timeout (``--collective-timeout-s``): a rank that dies or hangs
makes the others raise instead of waiting forever, and torchrun then stops the rest.

The gloo backend runs on CPU; nccl is chosen on CUDA (written, not tested on a GPU here).
Collectives carry tensors only (no pickles between ranks); checkpoints travel as bytes
and are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import inspect
import io
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ppo.checkpoint import find_checkpoint
from ppo.errors import SetupError, first_line

# torch's words for a rendezvous that waited out its timeout ("timed out", "wait timeout after 3000ms", "Socket Timeout")
_TIMEOUT_WORDS = re.compile(r"time(d)?[ _-]?out", re.IGNORECASE)

__all__ = [
    "Distributed",
    "ReplicaMismatchError",
    "core_share",
    "pin_to_core_share",
    "rank_seed",
    "state_digest",
]


class ReplicaMismatchError(RuntimeError):
    """Ranks that should hold identical parameters do not (``--check-replicas``)."""


def rank_seed(seed: int, rank: int) -> int:
    """The seed of torch and numpy on ``rank``: ``seed`` itself on rank 0 (so a 1-rank run is the plain
    run), an independent stream elsewhere. Not ``seed + rank``: that would make rank 1 of seed 1
    replay rank 0 of seed 2 (the overlap of SB3#2268)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(1)[0])


def core_share(cores: Sequence[int], index: int, count: int) -> list[int]:
    """The cores of process ``index`` of ``count`` processes that split ``cores`` between them.

    A contiguous block of the sorted cores (neighbouring cores tend to share caches); the
    first processes get the smaller blocks. With fewer cores than processes, process i
    gets core i mod len(cores), shared with others.
    """
    cores = sorted(cores)
    if not 0 <= index < count:
        raise ValueError(f"index must be in 0..{count - 1}, got {index}")
    n = len(cores)
    if n < count:
        return [cores[index % n]]
    return cores[index * n // count : (index + 1) * n // count]


def pin_to_core_share(local_rank: int, local_world_size: int) -> list[int] | None:
    """Restrict this process to its share of the cores it may run on, before it starts its env
    workers: they inherit the affinity, and fastvec sizes its default worker count by it.

    Returns the share, or None when there is nothing to split (one rank on this node).
    """
    if local_world_size <= 1 or not hasattr(os, "sched_setaffinity"):
        return None
    share = core_share(sorted(os.sched_getaffinity(0)), local_rank, local_world_size)
    os.sched_setaffinity(0, share)
    return share


def state_digest(*modules: nn.Module | None) -> str:
    """SHA-256 (hex) of the state dicts of ``modules`` (parameters and buffers, in key order)."""
    digest = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _environment_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise SetupError(
                f"--distributed needs {name} in the environment (and RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): "
                f"launch with `torchrun --nproc-per-node=N -m ppo.train --distributed` or a launcher that sets them"
            )
        return default
    try:
        return int(value)
    except ValueError:  # (it said "invalid literal for int() with base 10: 'x'", naming no variable)
        raise SetupError(f"--distributed: {name}={value!r} in the environment is not an integer (the launcher sets it)") from None


class Distributed:
    """This process's place among the ranks, and the few collectives the trainer needs.

    ``Distributed()`` is the single-process case (rank 0 of 1): every method is then a
    no-op or the plain local computation, so the trainer has one code path. With
    ``world_size == 1`` under torchrun the local computations are used as well, so a
    1-rank run trains exactly as the plain run does.
    """

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        local_world_size: int = 1,
        launched: bool = False,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.local_world_size = local_world_size
        self.launched = launched  # started by a launcher as one of world_size ranks
        # whether local_world_size is known (a launcher that sets no LOCAL_WORLD_SIZE says nothing of machines)
        self.local_world_known = launched
        self.enabled = False  # a process group is up (connect())
        self._comm_device = torch.device("cpu")  # where collective tensors must live (the GPU for nccl)

    @classmethod
    def from_environment(cls) -> Distributed:
        """Rank and world size from the variables torchrun (or another launcher) sets; no communication yet."""
        rank, world_size = _environment_int("RANK"), _environment_int("WORLD_SIZE")
        local_rank, local_world_size = _environment_int("LOCAL_RANK", 0), _environment_int("LOCAL_WORLD_SIZE", 1)
        # named as the launcher set them (they were refused as the API's "rank 4 is not in 0..3", or as core_share's
        # "index must be in 0..1")
        where = "in the environment (the launcher sets them)"
        if world_size < 1:
            raise SetupError(f"--distributed: WORLD_SIZE={world_size} {where} must be at least 1")
        if not 0 <= rank < world_size:
            raise SetupError(f"--distributed: RANK={rank} {where} must be in 0..WORLD_SIZE-1 = 0..{world_size - 1}")
        if local_world_size < 1:
            raise SetupError(f"--distributed: LOCAL_WORLD_SIZE={local_world_size} {where} must be at least 1")
        if local_rank < 0:
            raise SetupError(f"--distributed: LOCAL_RANK={local_rank} {where} must be at least 0")
        if "LOCAL_WORLD_SIZE" in os.environ and local_rank >= local_world_size:
            raise SetupError(
                f"--distributed: LOCAL_RANK={local_rank} {where} must be in 0..LOCAL_WORLD_SIZE-1 = 0..{local_world_size - 1}"
            )
        ranks = cls(rank, world_size, local_rank, local_world_size, launched=True)
        ranks.local_world_known = "LOCAL_WORLD_SIZE" in os.environ
        return ranks

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes logs, checkpoints and the progress bar."""
        return self.rank == 0

    def device(self, device: torch.device, chosen: bool = True) -> torch.device:
        """The device of this rank: ``cuda:<local rank>`` when training on CUDA, else ``device``.

        Each rank on a machine needs a GPU of its own (nccl refuses two ranks on one), ``cuda:<local
        rank>``. With fewer CUDA devices than ranks on this machine, a device the user did not choose
        (``chosen=False``: ``--device auto``) becomes the CPU, on every rank of the machine alike;
        ``--device cuda`` is refused, naming the counts. A job over several machines needs the device
        named: each machine would decide ``auto`` by its own GPUs, and nccl ranks and gloo ranks never
        meet. (A launcher that shows each rank one GPU of its own is not told apart from torchrun's
        ranks all seeing the same one: both are one visible device for several local ranks.)"""
        if not self.launched:
            return device
        if not chosen and self.local_world_known and self.world_size > self.local_world_size:
            raise ValueError(
                f"--device auto in a job over several machines ({self.world_size} ranks, {self.local_world_size} on "
                "this one): each machine would pick by its own GPUs, and all ranks must train on one kind of device "
                "(nccl and gloo ranks never meet); pass --device cuda or --device cpu"
            )
        if device.type != "cuda":
            return device
        gpus = torch.cuda.device_count()
        if gpus >= self.local_world_size:
            index = self.local_rank
        else:
            counts = f"{self.local_world_size} ranks on this machine, but torch sees {gpus} CUDA device(s)"
            if chosen:
                raise ValueError(
                    f"--device cuda with {counts}: each rank needs a GPU of its own (nccl); start at most {gpus} "
                    "ranks per machine (torchrun --nproc-per-node), or train on the CPU (--device cpu)"
                )
            if self.local_rank == 0:
                print(f"note: {counts}: each rank needs a GPU of its own, so this run trains on the CPU (gloo)",
                      file=sys.stderr)  # fmt: skip
            return torch.device("cpu")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        return device

    def connect(self, device: torch.device, timeout_s: float) -> None:
        """Join the process group: gloo on CPU, nccl on CUDA; every collective then raises after
        ``timeout_s`` instead of waiting forever for a rank that died or hangs."""
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            # untested here (no GPU): abort the communicators on a timeout rather than hang in a CUDA kernel
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
            self._comm_device = device
        began = time.monotonic()
        try:
            dist.init_process_group(
                backend,
                rank=self.rank,
                world_size=self.world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        # (the other ranks never joined: said in one line, as a launcher's other faults; torch before 2.2 has no
        # DistError and raises a RuntimeError there)
        except getattr(dist, "DistError", RuntimeError) as exc:
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            reason = first_line(exc)
            # (a timeout is the other ranks not joining; another fault, a port in use, is said as itself. torch words
            # its timeouts several ways, "timed out", "wait timeout after 3000ms", "Socket Timeout": the time it
            # waited decides too)
            timed_out = _TIMEOUT_WORDS.search(reason) is not None or time.monotonic() - began >= 0.9 * timeout_s
            within = f" within --collective-timeout-s {timeout_s:g}" if timed_out else ""
            raise SetupError(
                f"rank {self.rank} could not join the process group at {where}{within} (WORLD_SIZE={self.world_size}): "
                f"{reason}"
            ) from None
        self.enabled = True

    def close(self) -> None:
        """Leave the process group. The caller drops its DDP wrapper first: DDP sits in reference cycles and
        holds the group, and a gloo group freed only at interpreter shutdown can abort the process
        (SIGABRT, "terminate called without an active exception"; pytorch#179291), hence the collection."""
        if self.enabled and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()
        self.enabled = False

    # -- seeds -------------------------------------------------------------------------------------
    def seed(self, seed: int) -> int:
        return rank_seed(seed, self.rank)

    def env_seeds(self, seed: int, num_envs: int, steps: int) -> list[int]:
        """Reset seeds of this rank's ``num_envs`` envs in a run that has taken ``steps`` env steps (over all
        ranks; 0, or a resumed run's count): env i of rank r is global env ``r * num_envs + i``, seeded
        ``seed + steps + global index``: distinct over all ranks and envs, ``seed + i`` for a single process, and
        fresh after a resume whatever the envs were before (each env seeded at a start, or at an earlier resume,
        stepped at least once before the checkpoint: those seeds are below ``seed + steps``). (Seeds from the
        iteration, ``seed + envs * iteration``, repeated earlier ones after a resume with fewer envs.)"""
        first = seed + steps + self.rank * num_envs
        return list(range(first, first + num_envs))

    # -- the update --------------------------------------------------------------------------------
    def wrap(self, agent: nn.Module) -> nn.Module:
        """The module whose forward the update calls: DDP over ``agent`` when distributed.

        DDP broadcasts rank 0's parameters at construction, so every rank starts equal.
        ``forward_sync_buffers=False``: the normalization buffers are kept equal by
        ``update_running_stats``, and a broadcast before every forward would cost a collective.
        """
        if not self.enabled:
            return agent
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self._comm_device.index] if self._comm_device.type == "cuda" else None
        # torch >= 2.12 renamed broadcast_buffers (and warns about the old name)
        renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers": False} if renamed else {"broadcast_buffers": False}
        return DistributedDataParallel(agent, device_ids=device_ids, **no_sync)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a new tensor, on ``tensor``'s device)."""
        reduced = tensor.to(self._comm_device, copy=True)
        dist.all_reduce(reduced)
        return reduced.to(tensor.device)

    def average(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean of ``tensor`` over ranks (for logged statistics and the target-KL early stop)."""
        if self.world_size == 1:
            return tensor
        return self._all_reduce(tensor) / self.world_size

    def mean_var(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(mean, population variance, count) over dim 0 of every rank's ``x`` taken together.

        In float64 and in two passes (the mean, then the squared deviations from it), as
        torch.var does, so that a large mean does not swallow a small variance.
        """
        if self.world_size == 1:
            return x.mean(0), x.var(0, unbiased=False), x.shape[0]
        x = x.double()
        sums = self._all_reduce(torch.cat([x.new_tensor([x.shape[0]]), x.sum(0).reshape(-1)]))
        count = sums[0]
        mean = (sums[1:] / count).reshape(x.shape[1:])
        squares = self._all_reduce((x - mean).square().sum(0))
        return mean, squares / count, int(count)

    def normalize_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        """``(A - mean) / (std + 1e-8)`` with the mean and (unbiased) std of every rank's advantages.
        A minibatch of one advantage (in all) is left as it is, as SB3 does: its unbiased std is NaN,
        which would turn every weight into NaN."""
        if self.world_size == 1:
            if advantages.numel() < 2:
                return advantages
            return (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        mean, var, count = self.mean_var(advantages.reshape(-1))
        if count < 2:
            return advantages
        std = (var * count / (count - 1)).sqrt()
        return ((advantages.double() - mean) / (std + 1e-8)).to(advantages.dtype)

    def update_running_stats(self, stats: nn.Module, batch: torch.Tensor) -> None:
        """Fold ``batch`` of every rank into ``stats`` (a ``ppo.normalize.RunningMeanStd``): each rank
        adds the same moments, so the statistics stay identical on all ranks."""
        if self.world_size == 1:
            stats.update(batch)
            return
        batch = batch.to(stats.mean.device, torch.float64).reshape(-1, *stats.mean.shape)
        stats.update_from_moments(*self.mean_var(batch))

    # -- episodes, checkpoints, checks -------------------------------------------------------------
    def gather_episodes(
        self, steps: np.ndarray, returns: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every rank's finished episodes (global step at the end, return, length), on every rank.

        Ordered by end step, then rank, then env: the order in which one process stepping
        all ranks' envs (global env index ``rank * num_envs + i``) would have seen them.
        """
        if self.world_size == 1:
            return steps, returns, lengths
        counts = [torch.zeros(1, dtype=torch.int64, device=self._comm_device) for _ in range(self.world_size)]
        dist.all_gather(counts, torch.tensor([len(returns)], dtype=torch.int64, device=self._comm_device))
        sizes = [int(c) for c in counts]
        width = max(sizes)
        if width == 0:
            return steps, returns, lengths
        # fixed-size rows (padded to the largest count): float64 holds steps and lengths exactly up to 2**53
        rows = torch.zeros(width, 3, dtype=torch.float64)
        rows[: len(returns)] = torch.from_numpy(np.stack([steps, returns, lengths], axis=1).astype(np.float64))
        gathered = [torch.empty_like(rows, device=self._comm_device) for _ in range(self.world_size)]
        dist.all_gather(gathered, rows.to(self._comm_device))
        table = torch.cat([g[:n].cpu() for g, n in zip(gathered, sizes)]).numpy()
        table = table[np.argsort(table[:, 0], kind="stable")]  # stable: rank order within a step
        return table[:, 0].astype(np.int64), table[:, 1].copy(), table[:, 2].astype(np.int64)

    def gather_rng_states(self, state: torch.Tensor | None = None) -> torch.Tensor | None:
        """``[world_size, n]`` uint8: every rank's torch CPU generator state (or every rank's ``state``: their
        CUDA generators'), for the checkpoint (None when not distributed: the checkpoint's own
        ``torch_rng_state`` is enough then)."""
        if not self.enabled:
            return None
        state = torch.get_rng_state() if state is None else state.cpu()
        if self.world_size == 1:
            return state.unsqueeze(0)
        states = [torch.empty_like(state, device=self._comm_device) for _ in range(self.world_size)]
        dist.all_gather(states, state.to(self._comm_device))
        return torch.stack([s.cpu() for s in states])

    def restore_rng_state(
        self,
        states: torch.Tensor | None,
        main_state: torch.Tensor | None = None,
        set_state: Callable[[torch.Tensor], None] = torch.set_rng_state,
        warn: bool = True,
    ) -> bool:
        """Set this rank's generator from a checkpoint's ``torch_rng_states``; False when the checkpoint has
        none, or came from another number of ranks. Then rank 0 takes ``main_state`` (the checkpoint's
        ``torch_rng_state``: its rank 0's generator, or a single process's, whose seed is rank 0's), as a plain
        resume of that checkpoint does, and the other ranks keep their fresh seeds. ``set_state``: what sets
        the generator (the CUDA one's, for ``cuda_rng_states``)."""
        if states is not None and states.shape[0] == self.world_size:
            # clone: set_rng_state crashes (SIGSEGV, torch 2.13) on a row view, whose storage starts elsewhere
            set_state(states[self.rank].clone().cpu())
            return True
        if states is not None and self.is_main and warn:
            warnings.warn(
                f"the checkpoint holds the generator states of {states.shape[0]} ranks and this run has "
                f"{self.world_size}: rank 0 takes the checkpoint's rank 0 generator, the other ranks keep their "
                "fresh seeds",
                stacklevel=2,
            )
        if self.is_main and main_state is not None:
            set_state(main_state.clone().cpu())
        return False

    def broadcast_checkpoint(self, path: str | os.PathLike) -> io.BytesIO:
        """The bytes of the checkpoint at ``path`` (a file or a run folder, see ``find_checkpoint``), read by
        rank 0 and sent to every rank: resuming needs the checkpoint on rank 0's machine only. If rank 0
        cannot read it, every rank raises."""
        data = b""
        error: Exception | None = None
        if self.is_main:
            try:
                data = find_checkpoint(path).read_bytes()
            except OSError as exc:  # FileNotFoundError included
                error = exc
        if self.world_size == 1:
            if error is not None:
                raise error
            return io.BytesIO(data)
        size = torch.tensor([-1 if error is not None else len(data)], dtype=torch.int64, device=self._comm_device)
        dist.broadcast(size, src=0)
        if error is not None:
            raise error
        if int(size) < 0:
            raise SetupError(f"rank 0 could not read the checkpoint to resume from ({path})")
        if self.is_main:
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self._comm_device)
        else:
            buffer = torch.empty(int(size), dtype=torch.uint8, device=self._comm_device)
        dist.broadcast(buffer, src=0)
        return io.BytesIO(buffer.cpu().numpy().tobytes())

    def agree(self, error: BaseException | None, what: str, flag: bool = False) -> bool:
        """Rank 0's outcome of a step only it takes (``what``, e.g. making the run folder), told to every rank:
        rank 0 raises its ``error``, the others a SetupError saying rank 0 could not, so that no rank trains on
        into a collective rank 0 never joins. Returns rank 0's ``flag``."""
        if self.world_size == 1:
            if error is not None:
                raise error
            return flag
        outcome = torch.tensor([int(error is not None), int(flag)], dtype=torch.int64, device=self._comm_device)
        dist.broadcast(outcome, src=0)
        if error is not None:
            raise error
        if int(outcome[0]):
            raise SetupError(f"rank 0 could not {what} (its message says why)")
        return bool(int(outcome[1]))

    def check_replicas(self, digest: str) -> None:
        """Raise ReplicaMismatchError naming the ranks whose ``state_digest`` differs from rank 0's."""
        if self.world_size == 1:
            return
        mine = torch.frombuffer(bytearray(bytes.fromhex(digest)), dtype=torch.uint8).to(self._comm_device)
        digests = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(digests, mine)
        differing = [rank for rank, d in enumerate(digests) if not torch.equal(d, digests[0])]
        if differing:
            raise ReplicaMismatchError(
                f"ranks {differing} hold other parameters or normalization statistics than rank 0 after the "
                f"same update (rank 0: {digests[0].cpu().numpy().tobytes().hex()[:16]}...)"
            )
