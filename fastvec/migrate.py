"""Moving an env from one shard to a neighbouring one, at an episode boundary.

Shards own contiguous ranges of env indices; a move shifts the boundary between two
neighbours by one env, so every shard's envs stay one slice of every buffer and an env
keeps its index and its rows. The env leaves its shard when its episode ends (the pool
flags it in the block's ``migrate`` field): its old shard writes the final observation
as usual and, instead of resetting it, packs it; the new shard unpacks it and does the
reset (SAME_STEP: in the same step, before the caller sees it; NEXT_STEP: in the next).

Packing prefers the env itself, pickled (with cloudpickle): it goes on exactly as it
would have, wrappers' state and random generator included, so a pool that moved envs
gives the same results as one that did not. An env that cannot be pickled (a simulator
handle) is re-created from its factory in the new shard, its random generator carried
over, so its episodes still follow the same seed sequence.
"""

from __future__ import annotations

from typing import Any

__all__ = ["pack", "unpack"]


def pack(env: Any, env_fn: Any, objects: list | None, to_bytes: bool) -> Any:
    """What travels for one env: a dict (or its cloudpickled bytes, with ``to_bytes``)."""
    import cloudpickle

    package: dict[str, Any] = {"objects": objects, "fn": env_fn}
    try:
        package["env"] = cloudpickle.dumps(env)
    except Exception:
        unwrapped = getattr(env, "unwrapped", env)
        package["rng"] = getattr(unwrapped, "_np_random", None)
        try:
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
    if "env" in package:
        return cloudpickle.loads(package["env"]), package.get("fn"), package["objects"]
    env = package["fn"]()
    if package.get("rng") is not None:
        env.unwrapped._np_random = package["rng"]  # the seed sequence goes on where it was
    return env, package["fn"], package["objects"]
