"""rollout: generation engines behind one face (generate, update_weights, receive_weights, sleep, wake_up).

`EmbeddedEngine` decodes with the project's own model and recurrent cache (the CPU default);
`VLLMEngine` serves the same checkpoint with vLLM (imported lazily). `RolloutWorker` holds either
inside a Ray actor. `weight_transfer` is the bucketed broadcast of new weights from the learner
(`WeightSender`, rank 0) to every engine worker (`WeightReceiver`) over a group of their own.
"""
from .actor import RolloutWorker, rollout_actor_class
from .embedded import EmbeddedEngine
from .engines import ENGINES, make_engine
from .params import Completion, SamplingParams
from .sampling import filtered_logprobs, keep_mask, sample_tokens
from .vllm_engine import VLLMEngine
from .weight_transfer import (BucketPlan, GroupAddress, WeightReceiver, WeightSender, host_store, plan_buckets,
                              receive_buckets, send_buckets)

__all__ = ["EmbeddedEngine", "Completion", "SamplingParams", "RolloutWorker", "ENGINES", "make_engine",
           "rollout_actor_class", "filtered_logprobs", "keep_mask", "sample_tokens", "VLLMEngine",
           "BucketPlan", "GroupAddress", "WeightReceiver", "WeightSender", "host_store", "plan_buckets",
           "receive_buckets", "send_buckets"]
