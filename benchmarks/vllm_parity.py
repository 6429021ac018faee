"""vLLM loads a deltarl checkpoint natively and decodes it like deltarl's own model (GPU machine).

For a dense and a MoE hybrid config (3 KDA + 1 MLA layers, MLA dims vLLM's kernels accept), this
script saves a random-weight checkpoint with `save_pretrained`, serves it with `vllm.LLM` (no
trust_remote_code), and compares greedy tokens and sampled-token logprobs with the project's model
(bf16; float32 for the logprob reference too). Writes benchmarks/results/vllm_parity_<device>.md.

    PYTHONPATH=/tmp/site:. python3 benchmarks/vllm_parity.py [--out DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_results  # noqa: E402
from deltarl.model import KimiLinearCache, KimiLinearForCausalLM, char_tokenizer, tiny_config  # noqa: E402

PROMPTS = ["12+34=", "The quick brown fox", "def add(a, b):\n    return", "Kimi Linear", "x" * 150]
NEW_TOKENS = 32


def parity_config(moe: bool):
    tok = char_tokenizer()
    return tiny_config(
        vocab_size=128, hidden_size=1024, num_layers=4, num_heads=8, kda_head_dim=128, mla_heads=8,
        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, intermediate_size=2816,
        num_experts=8 if moe else None, num_experts_per_token=2, moe_intermediate_size=512,
        first_k_dense_replace=1, use_grouped_topk=True, num_expert_group=1, topk_group=1,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, rms_norm_eps=1e-5)


def save_checkpoint(moe: bool, path: Path, seed: int = 1234):
    torch.manual_seed(seed + moe)
    model = KimiLinearForCausalLM(parity_config(moe))
    with torch.no_grad():   # sharper logits and routing: choices far from ties, so bf16 noise can't flip them
        model.lm_head.weight.mul_(8)
        model.model.embed_tokens.weight.mul_(8)
        for layer in model.model.layers:
            if hasattr(layer, "block_sparse_moe"):
                layer.block_sparse_moe.gate.weight.mul_(20)
                layer.block_sparse_moe.gate.e_score_correction_bias.normal_(0, 1)
    model.to(torch.bfloat16).save_pretrained(path)
    char_tokenizer().save_pretrained(path)


def vllm_worker(path: str, result_file: str):
    """Runs in its own process: vLLM sets up torch.distributed and holds GPU memory until exit."""
    from vllm import LLM, SamplingParams

    tok = char_tokenizer()
    prompts = [{"prompt_token_ids": tok(p).input_ids} for p in PROMPTS]
    llm = LLM(model=path, dtype="bfloat16", gpu_memory_utilization=0.35, max_model_len=1024, enforce_eager=True,
              enable_prefix_caching=False, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=0, detokenize=False)
    llm.generate(prompts, params, use_tqdm=False)            # first call autotunes vLLM's Triton kernels
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    results = []
    for out in outs:
        c = out.outputs[0]
        results.append({"tokens": list(c.token_ids),
                        "logprobs": [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)]})
    Path(result_file).write_text(json.dumps({"outputs": results, "seconds": seconds}))


@torch.no_grad()
def our_greedy(model, prompt_ids):
    cache = KimiLinearCache(model.config)
    ids = torch.tensor([prompt_ids], device="cuda")
    logits = model(ids, past_key_values=cache, use_cache=True).logits[:, -1]
    tokens = []
    for _ in range(NEW_TOKENS):
        token = logits.argmax(-1, keepdim=True)
        tokens.append(int(token))
        logits = model(token, past_key_values=cache, use_cache=True).logits[:, -1]
    return tokens


@torch.no_grad()
def recomputed_logprobs(model, prompt_ids, tokens):
    """Teacher-forced logprobs of `tokens` after the prompt: what a learner computes."""
    ids = torch.tensor([prompt_ids + tokens], device="cuda")
    logp = model(ids).logits[0, len(prompt_ids) - 1: -1].float().log_softmax(-1)
    return logp.gather(-1, torch.tensor(tokens, device="cuda")[:, None])[:, 0].tolist()


def compare(moe: bool, workdir: Path):
    path = workdir / ("moe" if moe else "dense")
    save_checkpoint(moe, path)
    result_file = workdir / f"vllm_{path.name}.json"
    code = f"import benchmarks.vllm_parity as p; p.vllm_worker({str(path)!r}, {str(result_file)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=540)
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    vllm = json.loads(result_file.read_text())

    ours = {dtype: KimiLinearForCausalLM.from_pretrained(path, dtype=dtype).cuda().eval()
            for dtype in (torch.bfloat16, torch.float32)}
    tok = char_tokenizer()
    rows, diffs = [], {torch.bfloat16: [], torch.float32: []}
    for prompt, out in zip(PROMPTS, vllm["outputs"]):
        prompt_ids = tok(prompt).input_ids
        mine = our_greedy(ours[torch.bfloat16], prompt_ids)
        agree = next((i for i, (a, b) in enumerate(zip(mine, out["tokens"])) if a != b), NEW_TOKENS)
        gap = None
        if agree < NEW_TOKENS:     # how close to a tie was the first differing choice?
            logp = recomputed_logprobs(ours[torch.float32], prompt_ids, mine[:agree + 1])[-1]
            theirs = recomputed_logprobs(ours[torch.float32], prompt_ids, mine[:agree] + [out["tokens"][agree]])[-1]
            gap = logp - theirs
        for dtype, model in ours.items():
            ref = recomputed_logprobs(model, prompt_ids, out["tokens"])
            diffs[dtype] += [abs(a - b) for a, b in zip(ref, out["logprobs"])]
        rows.append((prompt, len(prompt_ids), agree, gap))
    return rows, diffs, vllm["seconds"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", ""))
    args = parser.parse_args()
    import vllm
    device = torch.cuda.get_device_name()
    lines = [f"# vLLM parity: deltarl checkpoint served by vLLM {vllm.__version__}", "",
             f"Device: {device}; torch {torch.__version__}. Random-weight 4-layer hybrids (KDA, KDA, KDA, MLA),"
             f" hidden 1024, KDA 8x128, MLA 8 heads kv_lora_rank 512 rope 64; bf16; greedy, {NEW_TOKENS} new tokens.",
             "", "At a first difference, 'logprob gap' is log p(deltarl's token) - log p(vLLM's token) under the",
             "float32 model: a gap below the bf16 logprob noise (table below) means the two sat on a near-tie.",
             "", "| model | prompt tokens | greedy tokens equal (of 32) | logprob gap at first difference |",
             "|---|---:|---:|---:|"]
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for moe in (False, True):
            name = "MoE (8 experts, top-2, sigmoid router with bias)" if moe else "dense"
            try:
                rows, diffs, seconds = compare(moe, Path(tmp))
            except Exception as error:     # keep the other model's figures
                lines.append(f"| {name} | failed: {type(error).__name__}: {str(error)[-300:]!r} | |")
                continue
            lines += [f"| {name} | {n} | {agree} | {'' if gap is None else f'{gap:.4f}'} |" for _, n, agree, gap in rows]
            for dtype, d in diffs.items():
                t = torch.tensor(d)
                summary.append(f"| {name} | {str(dtype).split('.')[-1]} | {t.mean():.4f} | {t.max():.4f} |")
            write_report(lines, summary, device, args.out)
    write_report(lines, summary, device, args.out)


def write_report(lines, summary, device, out):
    lines = lines + ["", "Sampled-token logprob difference, vLLM vs deltarl recomputing the same tokens:", "",
                     "| model | deltarl dtype | mean abs diff | max abs diff |", "|---|---|---:|---:|"] + summary
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    slug = device.replace(" ", "_").replace("/", "_")
    write_results(f"vllm_parity_{slug}.md", text, filter(None, [ROOT / "benchmarks" / "results", out and Path(out)]))


if __name__ == "__main__":
    main()
