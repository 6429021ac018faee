"""The vLLM engine: `vllm.LLM` serving the native KimiLinearForCausalLM from a deltarl checkpoint.

vLLM is imported only when this engine is built, so CPU installs never need it. Weight updates go
through a worker extension (`rollout.vllm_worker.WeightSyncExtension`) called with `collective_rpc`,
so the engine keeps its compiled kernels and cache pool across RL steps.
"""
import torch

from .params import Completion, SamplingParams

WORKER_EXTENSION = "deltarl.rollout.vllm_worker.WeightSyncExtension"


class VLLMEngine:
    """generate / update_weights / sleep / wake_up around `vllm.LLM`.

    Logprobs are vLLM's `processed_logprobs`: those of the distribution actually sampled (after
    temperature, top-k, top-p), the same quantity the embedded engine returns.
    """

    def __init__(self, model_path: str, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.5,
                 max_model_len: int = 4096, enforce_eager: bool = False, enable_sleep_mode: bool = True,
                 seed: int = 0, max_num_seqs: int = 256, **llm_kwargs):
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, enforce_eager=enforce_eager, seed=seed,
                       enable_prefix_caching=False,           # the hybrid's recurrent state cannot be shared
                       enable_sleep_mode=enable_sleep_mode, max_num_seqs=max_num_seqs,
                       logprobs_mode="processed_logprobs", worker_extension_cls=WORKER_EXTENSION,
                       **llm_kwargs)
        self.asleep = False

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> list[Completion]:
        from vllm import SamplingParams as VLLMSamplingParams

        vllm_params = VLLMSamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else 0, max_tokens=params.max_tokens,
            stop_token_ids=list(params.stop_token_ids), stop=list(params.stop), seed=params.seed,
            ignore_eos=params.ignore_eos, logprobs=0, detokenize=bool(params.stop))
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, vllm_params, use_tqdm=False)
        completions = []
        for i, out in enumerate(outputs):
            for j, c in enumerate(out.outputs):
                logprobs = [step[token].logprob for step, token in zip(c.logprobs, c.token_ids)]
                reason = "length" if c.finish_reason == "length" else "stop"
                completions.append(Completion(i, j, list(c.token_ids), logprobs, reason, c.text or None))
        return completions

    def update_weights(self, named_tensors):
        """Load new values for the named tensors into every vLLM worker, in place."""
        from safetensors.torch import save
        # one safetensors blob: bytes cross vLLM's RPC serialisation unchanged, tensors might not
        pairs = named_tensors.items() if hasattr(named_tensors, "items") else named_tensors
        blob = save({name: t.detach().to("cpu").contiguous() for name, t in pairs})
        self.llm.collective_rpc("load_safetensors_blob", args=(blob,))

    def update_weights_from_ipc(self, payload: bytes):
        """Load weights from CUDA IPC handles (see `WeightSyncExtension.load_ipc_handles`): the path for a
        learner colocated on the same GPU."""
        self.llm.collective_rpc("load_ipc_handles", args=(payload,))

    def receive_weights(self, address, base_rank: int) -> dict:
        """One bucketed broadcast sync: every vLLM worker joins the weight group (at the first call) as
        base_rank + its worker rank, receives the buckets and loads them (`WeightSyncExtension`)."""
        from dataclasses import asdict, is_dataclass
        plain = asdict(address) if is_dataclass(address) else dict(address)     # primitives cross vLLM's RPC
        return self.llm.collective_rpc("receive_weights", args=(plain, base_rank))[0]

    def weight_ranks(self) -> int:
        """Worker processes of this engine (tensor x pipeline parallel), each a rank of the weight group."""
        return self.llm.llm_engine.vllm_config.parallel_config.world_size

    def weights_digest(self) -> str:
        """The served weights' digest (`weight_transfer.weights_digest`), from the first worker."""
        return self.llm.collective_rpc("weights_digest")[0]

    def sleep(self):
        """Free the GPU for the learner: weights offloaded to host memory, KV cache dropped."""
        self.llm.sleep(level=1)
        self.asleep = True

    def wake_up(self):
        self.llm.wake_up()
        self.asleep = False
