"""Small Kimi Linear configurations for tests, demos and the CPU RL run."""
from .config import KimiLinearConfig


def tiny_config(vocab_size=128, hidden_size=64, num_layers=4, num_heads=4, kda_head_dim=16,
                mla_heads=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                intermediate_size=128, num_experts=None, num_experts_per_token=2, moe_intermediate_size=32,
                first_k_dense_replace=1, kda_every=4, conv_size=4, **overrides) -> KimiLinearConfig:
    """A hybrid config with layers 1..N; every `kda_every`-th layer (1-based) is MLA, the rest KDA
    (kda_every=4 is the paper's 3:1 ratio; kda_every=1 makes every layer MLA)."""
    mla_heads = mla_heads or num_heads
    layers = range(1, num_layers + 1)
    return KimiLinearConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, head_dim=hidden_size // mla_heads,
        intermediate_size=intermediate_size, num_hidden_layers=num_layers,
        num_attention_heads=mla_heads, num_key_value_heads=mla_heads,
        kv_lora_rank=kv_lora_rank, qk_nope_head_dim=qk_nope_head_dim, qk_rope_head_dim=qk_rope_head_dim,
        v_head_dim=v_head_dim, num_experts=num_experts, num_experts_per_token=num_experts_per_token,
        num_shared_experts=1, moe_intermediate_size=moe_intermediate_size,
        first_k_dense_replace=first_k_dense_replace, routed_scaling_factor=2.5,
        linear_attn_config={
            "kda_layers": [i for i in layers if i % kda_every != 0],
            "full_attn_layers": [i for i in layers if i % kda_every == 0],
            "num_heads": num_heads, "head_dim": kda_head_dim, "short_conv_kernel_size": conv_size,
        },
        **overrides,
    )
