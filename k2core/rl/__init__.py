"""Reinforcement learning: the verifiable-rewards gym, the K1.5 loss (the rl stage builds on them)."""
