"""Moving an env from one shard to a neighbouring one, at an episode boundary.

Shards own contiguous ranges of env indices; a move shifts the boundary between two
neighbours by one env, so every shard's envs stay one slice of every buffer and an env
keeps its index and its rows. The env leaves its shard when its episode ends (the pool
flags it in the block's ``migrate`` field): its old shard writes the final observation
as usual and, instead of resetting it, packs it; the new shard unpacks it and does the
reset (SAME_STEP: in the same step, before the caller sees it; NEXT_STEP: in the next).

The env itself travels, pickled (with cloudpickle): it goes on exactly as it would have,
wrappers' state and random generator included, so a pool that moved envs gives the same
results as one that did not. The pool moves only envs that pickle, with their factories
(``movable``, asked once per env, and by the shard again when the env is due to leave: one that
stopped pickling stays, and the pool calls the moves from its shard off). One whose pickle only records how to make it again
(gymnasium's ``EzPickle``: Box2D, MuJoCo, the toy-text envs, ALE) arrives as a new env and
gets the old one's generator. One that pickled when it left but cannot be unpickled where it
arrives (or no longer pickled) is re-created from its factory there, its generator carried over.
"""

from __future__ import annotations

from typing import Any

from fastvec.factories import travels

__all__ = ["ADOPT", "movable", "pack", "unpack"]

ADOPT = "adopt (moving an env)"  # the command an env that could not arrive in its new shard names


def _generator(env: Any) -> tuple[Any, Any]:
    """gymnasium's generator of the env and its seed (``np_random_seed`` makes a new generator without it)."""
    unwrapped = getattr(env, "unwrapped", env)
    return getattr(unwrapped, "_np_random", None), getattr(unwrapped, "_np_random_seed", None)


def movable(env: Any, env_fn: Any) -> bool:
    """Whether the env can move keeping its state: it pickles, and so does its factory (for a restart
    where it arrives). An env that cannot is re-created there, and keeps only its generator: a
    wrapper's running statistics, a curriculum's level would start again, so the pool does not move
    it (``Pool.request_move``). Nor does one that holds what a pickle cannot stand for (a memory map,
    a file, a pipe's end: ``factories.travels``): it would arrive with a detached copy, or one
    owning the caller's descriptor."""
    return travels((env, env_fn))


def pack(env: Any, env_fn: Any, objects: list | None, to_bytes: bool) -> Any:
    """What travels for one env: a dict (or its cloudpickled bytes, with ``to_bytes``)."""
    import cloudpickle

    package: dict[str, Any] = {"objects": objects, "fn": env_fn}
    generator = package["generator"] = _generator(env)  # (also alone: for re-creating it, if it cannot be unpickled)
    try:
        # pickled together, so that an env whose pickle keeps its generator keeps the same object
        package["env"] = cloudpickle.dumps((env, generator))
    except Exception:  # (no longer pickles: re-created where it arrives)
        pass
    try:  # the copy left behind is closed either way: a helper process it runs must not outlive it
        env.close()
    except Exception:
        pass
    if not to_bytes:
        return package
    try:
        return cloudpickle.dumps(package)
    except Exception:  # a factory that cannot travel: the env moves, its restarts cannot follow
        package["fn"] = None
        return cloudpickle.dumps(package)


def unpack(package: Any) -> tuple[Any, Any, list | None]:
    """(env, its factory or None, its latest object parts) from what ``pack`` made."""
    import cloudpickle

    if isinstance(package, (bytes, bytearray)):
        package = cloudpickle.loads(package)
    env = None
    if "env" in package:
        try:
            env, (rng, seed) = cloudpickle.loads(package["env"])
        except Exception:  # (a handle that cannot be re-attached here, a module missing here): re-created
            if package.get("fn") is None:
                raise
    if env is None:
        env = package["fn"]()
        rng, seed = package["generator"]
    unwrapped = getattr(env, "unwrapped", env)
    if rng is not None and getattr(unwrapped, "_np_random", None) is not rng:
        # a new env (re-created, or rebuilt by its pickle): the seed sequence goes on where it was
        unwrapped._np_random, unwrapped._np_random_seed = rng, seed
    return env, package["fn"], package["objects"]
