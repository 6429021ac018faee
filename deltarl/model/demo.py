"""The model demo: build a small hybrid Kimi Linear, save it as a transformers checkpoint, load it back,
decode a batch of prompts with the recurrent cache, and show how much cache the hybrid saves."""
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from .cache import KimiLinearCache, cache_bytes_per_sequence
from .config import KimiLinearConfig
from .modeling import KimiLinearForCausalLM
from .tiny import tiny_config
from .tokenizer import load_tokenizer

# The released Kimi-Linear-48B-A3B dimensions that decide its cache size.
KIMI_LINEAR_48B = dict(hidden_size=2304, head_dim=72, num_hidden_layers=27, num_attention_heads=32,
                       kv_lora_rank=512, qk_rope_head_dim=64, vocab_size=163840)


KIMI_LINEAR_48B_FULL_ATTN = [4, 8, 12, 16, 20, 24, 27]


def released_config(all_mla: bool = False) -> KimiLinearConfig:
    full = list(range(1, 28)) if all_mla else KIMI_LINEAR_48B_FULL_ATTN
    return KimiLinearConfig(**KIMI_LINEAR_48B, linear_attn_config={
        "kda_layers": [i for i in range(1, 28) if i not in full], "full_attn_layers": full,
        "num_heads": 32, "head_dim": 128, "short_conv_kernel_size": 4})


@torch.no_grad()
def greedy_decode(model, tokenizer, prompts, max_new_tokens):
    """Left-pad the prompts, prefill them together, then decode one token per step with the cache."""
    encoded = [tokenizer(p).input_ids for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    cache = KimiLinearCache(model.config)
    logits = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, -1]
    generated = []
    for _ in tqdm(range(max_new_tokens), desc="decode", unit="tok"):
        token = logits.argmax(-1, keepdim=True)
        generated.append(token)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        logits = model(token, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, -1]
    return ids, mask, torch.cat(generated, dim=1), cache


def cache_table(hybrid, all_mla, lengths, dtype):
    rows = ["| context | hybrid (KDA:MLA 3:1) | all-MLA | saving |", "|---:|---:|---:|---:|"]
    for n in lengths:
        h = cache_bytes_per_sequence(hybrid, n, dtype)["total"]
        a = cache_bytes_per_sequence(all_mla, n, dtype)["total"]
        rows.append(f"| {n:,} | {h / 2**20:,.2f} MiB | {a / 2**20:,.2f} MiB | {1 - h / a:.1%} |")
    return "\n".join(rows)


def main(config_path: str = "configs/demo_model.yaml"):
    settings = yaml.safe_load(Path(config_path).read_text())
    demo = settings["demo"]
    torch.manual_seed(0)
    tokenizer = load_tokenizer(settings["tokenizer"])
    vocab = -(-len(tokenizer) // 64) * 64
    config = tiny_config(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **settings["model"])
    model = KimiLinearForCausalLM(config).eval()
    print(f"Kimi Linear: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"layers {['KDA' if config.is_kda_layer(i) else 'MLA' for i in range(config.num_hidden_layers)]}")

    checkpoint = Path(demo["output_dir"]) / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    print(f"saved and reloaded a transformers checkpoint: {checkpoint} ({type(model).__name__})")

    start = time.perf_counter()
    ids, mask, generated, cache = greedy_decode(model, tokenizer, demo["prompts"], demo["max_new_tokens"])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        reference = model.generate(ids, attention_mask=mask[:, : ids.shape[1]], do_sample=False,
                                   max_new_tokens=demo["max_new_tokens"], eos_token_id=None)
    agree = torch.equal(reference[:, ids.shape[1]:], generated)
    print(f"decoded {generated.numel()} tokens in {seconds:.2f}s ({generated.numel() / seconds:.0f} tok/s); "
          f"cached decoding {'matches' if agree else 'DIFFERS FROM'} transformers generate()")
    for prompt, row in zip(demo["prompts"], generated):
        print(f"  {prompt!r} -> {tokenizer.decode(row)!r}  (random weights)")
    print(f"cache per sequence now: {cache.nbytes_per_sequence():,} bytes at {cache.get_seq_length()} tokens")

    lengths = demo["context_lengths"]
    print("\nCache per sequence, this demo model (float32):")
    print(cache_table(config, tiny_config(vocab_size=vocab, kda_every=1, **settings["model"]), lengths, torch.float32))
    print("\nCache per sequence, Kimi-Linear-48B-A3B dimensions (bf16):")
    print(cache_table(released_config(), released_config(all_mla=True), lengths, torch.bfloat16))
    return 0 if agree else 1
