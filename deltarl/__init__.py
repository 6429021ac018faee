"""deltarl: RL post-training for hybrid linear-attention language models (Kimi Linear: KDA + MLA).

The design's parts are subpackages, each with a small public face in its `__init__.py`:
`model` (the policy as a transformers model), `kernels` (chunkwise KDA), `rollout` (engines that
sample), `rewards` (verifiable scoring) and `rl` (the driver, the only part that knows the others).
"""

__version__ = "0.1.0"
