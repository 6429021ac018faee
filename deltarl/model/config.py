"""KimiLinearConfig: the released checkpoints' fields (and vLLM's), checked when the config is built."""
from transformers import PretrainedConfig

SUPPORTED_ACTIVATIONS = ("silu",)
ROUTER_ACTIVATIONS = ("sigmoid", "softmax")


class KimiLinearConfig(PretrainedConfig):
    """Configuration of a Kimi Linear hybrid model.

    Layers listed (1-based) in `linear_attn_config["kda_layers"]` are Kimi Delta Attention layers; those in
    `linear_attn_config["full_attn_layers"]` are Multi-Head Latent Attention layers without positional
    encoding. `moba_config = {"block_size", "top_k", "moba_layers"}` makes the MLA layers in `moba_layers`
    (1-based, a subset of full_attn_layers) use MoBA block-sparse attention (`deltarl.kernels.moba`);
    None (the default) keeps every layer dense and writes no key. `num_experts=None` gives dense FFNs
    everywhere; otherwise layers from `first_k_dense_replace` on (every `moe_layer_freq`-th) are
    mixture-of-experts blocks, as in vLLM's implementation.
    """

    model_type = "kimi_linear"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=163840,
        hidden_size=2304,
        head_dim=72,
        intermediate_size=9216,
        num_hidden_layers=27,
        num_attention_heads=32,
        num_key_value_heads=32,
        hidden_act="silu",
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        use_cache=True,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=False,
        model_max_length=1048576,
        q_lora_rank=None,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        mla_use_nope=True,
        num_experts=None,
        num_experts_per_token=8,
        num_shared_experts=1,
        moe_intermediate_size=1024,
        moe_renormalize=True,
        moe_router_activation_func="sigmoid",
        routed_scaling_factor=1.0,
        first_k_dense_replace=1,
        moe_layer_freq=1,
        use_grouped_topk=False,
        num_expert_group=1,
        topk_group=1,
        linear_attn_config=None,
        moba_config=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.model_max_length = model_max_length
        self.q_lora_rank = q_lora_rank
        self.kv_lora_rank = kv_lora_rank
        self.qk_nope_head_dim = qk_nope_head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.mla_use_nope = mla_use_nope
        self.num_experts = num_experts
        self.num_experts_per_token = num_experts_per_token
        self.num_shared_experts = num_shared_experts
        self.moe_intermediate_size = moe_intermediate_size
        self.moe_renormalize = moe_renormalize
        self.moe_router_activation_func = moe_router_activation_func
        self.routed_scaling_factor = routed_scaling_factor
        self.first_k_dense_replace = first_k_dense_replace
        self.moe_layer_freq = moe_layer_freq
        self.use_grouped_topk = use_grouped_topk
        self.num_expert_group = num_expert_group
        self.topk_group = topk_group
        if linear_attn_config is None:  # 3 KDA layers per MLA layer, the paper's ratio
            linear_attn_config = {
                "kda_layers": [i for i in range(1, num_hidden_layers + 1) if i % 4 != 0],
                "full_attn_layers": [i for i in range(1, num_hidden_layers + 1) if i % 4 == 0],
                "num_heads": num_attention_heads,
                "head_dim": 128,
                "short_conv_kernel_size": 4,
            }
        self.linear_attn_config = dict(linear_attn_config)
        self.moba_config = None if moba_config is None else dict(moba_config)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_fields()

    # --- layer kinds (0-based layer_idx; the lists are 1-based as in the released checkpoints) ---
    def is_kda_layer(self, layer_idx: int) -> bool:
        return (layer_idx + 1) in self.linear_attn_config["kda_layers"]

    def is_moe_layer(self, layer_idx: int) -> bool:
        return (self.num_experts is not None and layer_idx >= self.first_k_dense_replace
                and layer_idx % self.moe_layer_freq == 0)

    def moba_block(self, layer_idx: int) -> tuple[int, int] | None:
        """(block_size, top_k) if layer `layer_idx` (0-based) attends with MoBA, else None."""
        moba = self.moba_config
        if moba is None or (layer_idx + 1) not in moba["moba_layers"]:
            return None
        return moba["block_size"], moba["top_k"]

    def to_dict(self) -> dict:
        """The saved fields; `moba_config` only when set, so a dense model's config.json is byte for byte
        what it was before MoBA existed (what vLLM loads)."""
        out = super().to_dict()
        if out.get("moba_config", 0) is None:
            del out["moba_config"]
        return out

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    @property
    def is_linear_attn(self) -> bool:
        return len(self.linear_attn_config["kda_layers"]) > 0

    def validate_fields(self):
        """Raise ValueError naming the first field whose value cannot build a model."""
        def fail(field, message):
            raise ValueError(f"KimiLinearConfig.{field}: {message}")

        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            fail("hidden_act", f"unknown activation {self.hidden_act!r}; allowed: {list(SUPPORTED_ACTIVATIONS)}")
        if self.moe_router_activation_func not in ROUTER_ACTIVATIONS:
            fail("moe_router_activation_func", f"{self.moe_router_activation_func!r} is not one of "
                 f"{list(ROUTER_ACTIVATIONS)}")
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                      "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                fail(field, f"must be a positive integer, got {value!r}")
        if not isinstance(self.qk_rope_head_dim, int) or self.qk_rope_head_dim < 0:
            fail("qk_rope_head_dim", f"must be a non-negative integer, got {self.qk_rope_head_dim!r}")
        if self.head_dim is not None and self.head_dim * self.num_attention_heads != self.hidden_size:
            fail("head_dim", f"hidden_size {self.hidden_size} is not num_attention_heads "
                 f"{self.num_attention_heads} x head_dim {self.head_dim}")
        if self.num_key_value_heads is not None and self.num_attention_heads % self.num_key_value_heads:
            fail("num_key_value_heads", f"{self.num_key_value_heads} does not divide num_attention_heads "
                 f"{self.num_attention_heads}")
        if self.q_lora_rank is not None:
            fail("q_lora_rank", "must be null: Kimi Linear's MLA projects q directly (as vLLM requires)")
        if self.mla_use_nope is not True:
            fail("mla_use_nope", "must be true: Kimi Linear's MLA layers use no positional encoding")
        self._validate_linear_attn_config(fail)
        if self.moba_config is not None:
            self._validate_moba(fail)
        if self.num_experts is not None:
            self._validate_moe(fail)

    def _validate_linear_attn_config(self, fail):
        lac = self.linear_attn_config
        required = ("kda_layers", "full_attn_layers", "num_heads", "head_dim", "short_conv_kernel_size")
        for key in required:
            if key not in lac:
                fail(f"linear_attn_config.{key}", f"missing; linear_attn_config needs {list(required)}")
        for key in ("num_heads", "head_dim", "short_conv_kernel_size"):
            if not isinstance(lac[key], int) or lac[key] <= 0:
                fail(f"linear_attn_config.{key}", f"must be a positive integer, got {lac[key]!r}")
        kda, full = set(lac["kda_layers"]), set(lac["full_attn_layers"])
        every_layer = set(range(1, self.num_hidden_layers + 1))
        if kda & full:
            fail("linear_attn_config.kda_layers", f"layers {sorted(kda & full)} are also in full_attn_layers")
        if (kda | full) - every_layer:
            fail("linear_attn_config.kda_layers", f"layers {sorted((kda | full) - every_layer)} are outside "
                 f"1..num_hidden_layers={self.num_hidden_layers} (the lists are 1-based)")
        if every_layer - kda - full:
            fail("linear_attn_config.kda_layers", f"layers {sorted(every_layer - kda - full)} are in neither "
                 "kda_layers nor full_attn_layers")

    def _validate_moba(self, fail):
        moba, full = self.moba_config, self.linear_attn_config["full_attn_layers"]
        required = ("block_size", "top_k", "moba_layers")
        for key in required:
            if key not in moba:
                fail(f"moba_config.{key}", f"missing; moba_config needs {list(required)}")
        if set(moba) - set(required):
            fail("moba_config", f"unknown keys {sorted(set(moba) - set(required))}; allowed: {list(required)}")
        for key in ("block_size", "top_k"):
            if not isinstance(moba[key], int) or isinstance(moba[key], bool) or moba[key] <= 0:
                fail(f"moba_config.{key}", f"must be a positive integer, got {moba[key]!r}")
        layers = moba["moba_layers"]
        if not isinstance(layers, (list, tuple)) or not all(isinstance(i, int) for i in layers):
            fail("moba_config.moba_layers", f"must be a list of 1-based layer indices, got {layers!r}")
        outside = sorted(set(layers) - set(full))
        if outside:
            fail("moba_config.moba_layers", f"layers {outside} are not in linear_attn_config.full_attn_layers "
                 f"{sorted(full)} (MoBA replaces full attention; the lists are 1-based)")

    def _validate_moe(self, fail):
        if not isinstance(self.num_experts, int) or self.num_experts <= 0:
            fail("num_experts", f"must be a positive integer or null (dense), got {self.num_experts!r}")
        if not 0 < self.num_experts_per_token <= self.num_experts:
            fail("num_experts_per_token", f"{self.num_experts_per_token} must be in 1..num_experts={self.num_experts}")
        if self.num_shared_experts is None or self.num_shared_experts < 1:
            fail("num_shared_experts", "must be >= 1 (vLLM's Kimi MoE block always adds shared experts)")
        if self.moe_layer_freq < 1:
            fail("moe_layer_freq", f"must be >= 1, got {self.moe_layer_freq}")
        if self.use_grouped_topk:
            if self.num_experts % self.num_expert_group:
                fail("num_expert_group", f"{self.num_expert_group} does not divide num_experts {self.num_experts}")
            if not 0 < self.topk_group <= self.num_expert_group:
                fail("topk_group", f"{self.topk_group} must be in 1..num_expert_group={self.num_expert_group}")
