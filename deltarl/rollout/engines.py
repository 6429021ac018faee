"""Build an engine by name from a checkpoint folder: what a rollout actor holds."""
import torch

ENGINES = ("embedded", "vllm")


def make_engine(kind: str, model_path: str, tokenizer_path: str | None = None, device: str | None = None,
                dtype: str = "float32", max_batch_size: int = 64, **vllm_kwargs):
    """`embedded` (the project's model and cache; CPU or CUDA) or `vllm` (GPU)."""
    if kind == "vllm":
        from .vllm_engine import VLLMEngine
        return VLLMEngine(model_path, dtype=dtype, **vllm_kwargs)
    if kind != "embedded":
        raise ValueError(f"rollout engine {kind!r}: allowed values are {list(ENGINES)}")
    from transformers import AutoModelForCausalLM

    import deltarl.model as _register_kimi_linear  # noqa: F401  (registers kimi_linear with the Auto classes)
    from deltarl.model import load_tokenizer

    from .embedded import EmbeddedEngine
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
    tokenizer = load_tokenizer(tokenizer_path or model_path)
    return EmbeddedEngine(policy, tokenizer, max_batch_size=max_batch_size)
