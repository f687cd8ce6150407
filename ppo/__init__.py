"""PPO trainer on fastvec's shared-memory buffers (``python -m ppo.train``)."""
