"""rollout: generation engines behind one face (generate, update_weights, sleep, wake_up)."""
from .embedded import EmbeddedEngine
from .params import Completion, SamplingParams
from .sampling import filtered_logprobs, sample_tokens

__all__ = ["EmbeddedEngine", "Completion", "SamplingParams", "filtered_logprobs", "sample_tokens"]
