"""rollout: generation engines behind one face (generate, update_weights, sleep, wake_up).

`EmbeddedEngine` decodes with the project's own model and recurrent cache (the CPU default);
`VLLMEngine` serves the same checkpoint with vLLM (imported lazily). `RolloutWorker` holds either
inside a Ray actor.
"""
from .actor import RolloutWorker, rollout_actor_class
from .embedded import EmbeddedEngine
from .engines import ENGINES, make_engine
from .params import Completion, SamplingParams
from .sampling import filtered_logprobs, keep_mask, sample_tokens
from .vllm_engine import VLLMEngine

__all__ = ["EmbeddedEngine", "Completion", "SamplingParams", "RolloutWorker", "ENGINES", "make_engine",
           "rollout_actor_class", "filtered_logprobs", "keep_mask", "sample_tokens", "VLLMEngine"]
