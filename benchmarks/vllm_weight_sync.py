"""The vLLM rollout engine on the GPU machine: in-place weight updates and the logprob mismatch.

1. `rollout.VLLMEngine` serves checkpoint A (a deltarl save, random weights).
2. `update_weights` pushes model B's tensors (checkpoint names, no reload); vLLM's greedy output must
   then match the project's model B, and no longer A.
3. Sampling at temperature 1 from vLLM; the project's model B recomputes the logprobs of the same
   tokens (bf16, as a learner would): the mean and max |difference| are what the RL loop's truncated
   importance sampling corrects for.
4. sleep() / wake_up() and generation again.
Writes benchmarks/results/vllm_weight_sync_<device>.md.

    PYTHONPATH=/tmp/site:. python3 benchmarks/vllm_weight_sync.py
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_results  # noqa: E402
from benchmarks.vllm_parity import NEW_TOKENS, PROMPTS, our_greedy, parity_config, save_checkpoint  # noqa: E402
from deltarl.model import KimiLinearForCausalLM, char_tokenizer  # noqa: E402
from deltarl.rollout import SamplingParams, VLLMEngine  # noqa: E402


def sharpened_model(seed):
    save_dir = Path(tempfile.mkdtemp()) / "b"
    save_checkpoint(False, save_dir, seed=seed)
    # the class itself, not AutoModel: importing vLLM re-registers "kimi_linear" with AutoConfig
    return KimiLinearForCausalLM.from_pretrained(save_dir, dtype=torch.bfloat16).cuda().eval()


@torch.no_grad()
def recomputed(model, prompt, tokens):
    ids = torch.tensor([prompt + tokens], device="cuda")
    logp = model(ids).logits[0, len(prompt) - 1: -1].float().log_softmax(-1)
    return logp.gather(-1, torch.tensor(tokens, device="cuda")[:, None])[:, 0]


def main():
    tok = char_tokenizer()
    prompts = [tok(p).input_ids for p in PROMPTS]
    greedy = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    lines = [f"# vLLM engine: weight sync and logprob mismatch ({torch.cuda.get_device_name()})", ""]
    with tempfile.TemporaryDirectory() as tmp:
        path_a = Path(tmp) / "a"
        save_checkpoint(False, path_a)
        engine = VLLMEngine(str(path_a), dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=1024,
                            enforce_eager=True)
        before = [c.token_ids for c in engine.generate(prompts, greedy)]
        model_b = sharpened_model(seed=99)
        start = time.perf_counter()
        engine.update_weights(model_b.state_dict().items())
        sync_s = time.perf_counter() - start
        after = [c.token_ids for c in engine.generate(prompts, greedy)]
        ours_b = [our_greedy(model_b, p) for p in prompts]
        equal_b = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), NEW_TOKENS) for a, b in zip(after, ours_b)]
        equal_a = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), NEW_TOKENS) for a, b in zip(before, ours_b)]
        n_params = sum(t.numel() for t in model_b.state_dict().values())
        lines += [f"update_weights: {n_params / 1e6:.1f}M parameters in {sync_s:.2f}s (CPU tensors through "
                  "collective_rpc, loaded by vLLM's own load_weights)", "",
                  "| prompt tokens | greedy tokens equal to model B, after update (of 32) | before update |",
                  "|---:|---:|---:|"]
        lines += [f"| {len(p)} | {b} | {a} |" for p, b, a in zip(prompts, equal_b, equal_a)]

        sampled = engine.generate(prompts, SamplingParams(n=8, temperature=1.0, max_tokens=NEW_TOKENS, seed=0,
                                                          ignore_eos=True))
        diffs = torch.cat([(torch.tensor(c.logprobs, device="cuda") - recomputed(model_b, prompts[c.prompt_index],
                                                                                 c.token_ids)).abs()
                           for c in sampled])
        lines += ["", f"Temperature-1 samples ({diffs.numel()} tokens): |vLLM logprob - deltarl bf16 recomputed "
                  f"logprob| mean {diffs.mean():.4f}, max {diffs.max():.4f}, "
                  f"token-level ratio exp(diff) in [{(-diffs.max()).exp():.3f}, {diffs.max().exp():.3f}]"]

        engine.sleep()
        engine.wake_up()
        again = [c.token_ids for c in engine.generate(prompts, greedy)]
        lines += ["", f"sleep() then wake_up(): greedy output unchanged: {again == after}"]
    text = "\n".join(lines) + "\n"
    print(text)
    slug = torch.cuda.get_device_name().replace(" ", "_")
    write_results(f"vllm_weight_sync_{slug}.md", text, [ROOT / "benchmarks" / "results"])


if __name__ == "__main__":
    main()
