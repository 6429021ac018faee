"""rl: the RL loop, the only part that knows all the others."""
