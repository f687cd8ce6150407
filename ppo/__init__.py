"""PPO trainer on fastvec's shared-memory buffers (``python -m ppo.train``)."""

try:
    import torch  # noqa: F401  (every module of the trainer needs it; the engine, fastvec, does not)
except ImportError as exc:
    raise ImportError(
        "the ppo trainer needs torch, which the engine alone does not install: pip install '.[train]' in fastvec's "
        "folder (the train extra), or torch itself, then run it again"
    ) from exc
