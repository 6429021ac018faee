"""rewards: verifiable rewards (math, code in a sandbox, format, synthetic tasks) and plug-ins.

Knows nothing of the model or the trainer. The RL loop uses:

    from deltarl.rewards import RewardSpec, compute_rewards
    specs = [RewardSpec("math"), RewardSpec("format", weight=0.1, kwargs={"style": "boxed"})]
    totals, parts, failures = compute_rewards(prompts, responses, rows, specs)

See docs/rewards.md.
"""
from .api import (BUILTINS, RewardBatch, RewardSpec, RewardTimeout, batched, compute_rewards,
                  load_reward_fn)
from .code import code_reward, extract_code, run_tests
from .format import format_reward
from .math import MathVerifier, extract_answer, math_reward
from .sandbox import Sandbox, SandboxLimits, SandboxResult, SandboxUnavailable, default_sandbox
from .synthetic import arithmetic_reward, countdown_reward

__all__ = [
    "BUILTINS", "RewardBatch", "RewardSpec", "RewardTimeout", "batched", "compute_rewards",
    "load_reward_fn", "code_reward", "extract_code", "run_tests", "format_reward", "MathVerifier",
    "extract_answer", "math_reward", "Sandbox", "SandboxLimits", "SandboxResult",
    "SandboxUnavailable", "default_sandbox", "arithmetic_reward", "countdown_reward",
]
