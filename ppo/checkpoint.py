"""Checkpoints: plain state dicts saved with torch.save, loaded with ``weights_only=True``.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so loading one
never runs code from the file (a run directory from elsewhere is data, not code).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

__all__ = [
    "cuda_rng_state", "save_checkpoint", "load_checkpoint", "find_checkpoint", "checkpoint_step", "write_atomically",
    "CHECKPOINT_NAMES",
]

# what find_checkpoint looks for in a run folder (best.pt only where neither of the others is there)
CHECKPOINT_NAMES = ("latest.pt", "final.pt", "best.pt")


def save_checkpoint(
    path: str | os.PathLike,
    agent: nn.Module | dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    config: dict[str, Any] | None = None,
    reward_rms: nn.Module | None = None,
    global_step: int = 0,
    iteration: int = 0,
    **extra: Any,
) -> Path:
    """Write a checkpoint atomically (a reader never sees half a file). ``agent`` may be a state dict."""
    path = Path(path)
    state: dict[str, Any] = {
        "agent": agent.state_dict() if isinstance(agent, nn.Module) else agent,
        "global_step": int(global_step),
        "iteration": int(iteration),
        "config": config or {},
        # restores sampling exactly on resume
        "torch_rng_state": torch.get_rng_state(),
        **extra,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if reward_rms is not None:
        state["reward_rms"] = reward_rms.state_dict()
    write_atomically(path, lambda tmp: torch.save(state, tmp))
    return path


def cuda_rng_state(device: torch.device) -> torch.Tensor | None:
    """The CUDA generator's state of ``device`` where the run draws there (actions sampled on the GPU, its
    minibatch permutations), for a checkpoint beside the CPU one (``torch_rng_state``); None on CPU."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` beside ``path``, then renamed onto it: a reader sees the old file or the new, never half
    of one; an interrupt or a full disk leaves no half-written ``<name>.tmp`` beside the run's files."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def find_checkpoint(path: str | os.PathLike, prefer: str | None = None) -> Path:
    """``path`` itself if it is a file; in a run folder, ``prefer``, or the newest state: of latest.pt
    and final.pt the one trained furthest (a finished run's final.pt is past its last latest.pt, and a
    resumed run's latest.pt past the final.pt it resumed from; on a tie, the one written last), else
    best.pt."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint file or run folder at {path}")
    names = (prefer,) if prefer else CHECKPOINT_NAMES
    found = [path / name for name in names if (path / name).is_file()]
    if not found:
        raise FileNotFoundError(f"{path} holds none of {list(names)}")
    states = [candidate for candidate in found if candidate.name != "best.pt"] or found
    if len(states) == 1:
        return states[0]
    # the furthest trained (a copied folder's times need not say which was written last), then the newest
    return max(states, key=lambda candidate: (checkpoint_step(candidate), candidate.stat().st_mtime_ns))


def checkpoint_step(path: Path) -> int:
    """The step count a checkpoint was written at (-1 when it cannot be read)."""
    try:
        # (mapped, not read: only the step count is looked at)
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
    except Exception:
        return -1


def load_checkpoint(
    path: str | os.PathLike | IO[bytes],
    agent: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    reward_rms: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = False,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint (``weights_only=True``) into the given modules; return the whole dict.

    ``path``: a checkpoint file, a run folder (see find_checkpoint), or an open binary file
    (a distributed run's ranks load the bytes rank 0 read). ``config``: the loading run's (a dict of
    Config's fields), named beside the checkpoint's in the error when its network does not fit.
    """
    source = path if hasattr(path, "read") else find_checkpoint(path)  # type: ignore[arg-type]
    where = f"{source}" if isinstance(source, (str, os.PathLike)) else "this file"  # (a rank's bytes of --resume's)
    try:
        state = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as exc:  # not a checkpoint (a config.json, an empty or cut-short file): said in one line
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        if isinstance(exc, pickle.UnpicklingError):  # (torch's text advises weights_only=False: not for a non-checkpoint)
            first = "it is no torch checkpoint of tensors"
        why = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise ValueError(f"{where} is not a checkpoint this trainer can read ({why})") from exc
    if not isinstance(state, dict) or "agent" not in state:
        raise ValueError(f"{where} is not a checkpoint of this trainer (it holds no agent's weights)")
    if agent is not None:
        try:
            agent.load_state_dict(state["agent"])
        except RuntimeError as exc:  # torch's error lists every tensor; say first which settings differ
            raise ValueError(_misfit(source, state.get("config") or {}, config or {}, exc)) from exc
    if optimizer is not None:
        if "optimizer" not in state:
            where = f"checkpoint {source}" if isinstance(source, (str, os.PathLike)) else "the checkpoint"
            raise ValueError(
                f"{where} has no optimizer state (best.pt holds weights only): resume from latest.pt or final.pt"
            )
        optimizer.load_state_dict(state["optimizer"])
    if reward_rms is not None and "reward_rms" in state:
        reward_rms.load_state_dict(state["reward_rms"])
    if restore_rng and "torch_rng_state" in state:
        torch.set_rng_state(state["torch_rng_state"].cpu())
    device = torch.device(map_location)
    if restore_rng and "cuda_rng_state" in state and device.type == "cuda":  # (a CPU run's has none: fresh)
        torch.cuda.set_rng_state(state["cuda_rng_state"].cpu(), device)
    return state


# the settings that shape the network: a checkpoint trained with other values cannot be loaded
NETWORK_FIELDS = ("env_id", "hidden_sizes", "norm_obs")


def _misfit(source: Any, saved: dict[str, Any], current: dict[str, Any], exc: RuntimeError) -> str:
    """The error for a checkpoint whose tensors do not fit the agent: the network settings that differ
    (as saved in the checkpoint, and this run's), then torch's first line."""
    name = source if isinstance(source, (str, os.PathLike)) else None  # (not an open file's bytes)
    differ = [
        f"{key}={saved[key]!r} (this run: {current[key]!r})"
        for key in NETWORK_FIELDS
        if key in saved and key in current and _plain(saved[key]) != _plain(current[key])
    ]
    said = f"it was trained with {', '.join(differ)}" if differ else "its tensors differ in shape or name"
    # torch's first line says only "Error(s) in loading state_dict"; the next one names a tensor
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
    where = f"checkpoint {name}" if name is not None else "the checkpoint"
    return f"{where} does not fit this run's network: {said} ({first})"


def _plain(value: Any) -> Any:
    """Lists and tuples compare alike (a config read back from JSON holds lists)."""
    return list(value) if isinstance(value, (list, tuple)) else value

