"""Peak device memory and time of the learner's logprob + entropy pass at Kimi Linear's vocabulary.

The learner needs, for every response token, log p(token) and the entropy of the sampling distribution,
and their gradients. Done naively the [N, V] logits exist whole in float32 (N = 16384 tokens, V = 163,840:
10.7 GB, plus the softmax and the gradient of each). `deltarl.rl.logprobs.token_stats` projects
`CHUNK_TOKENS` rows at a time and recomputes each chunk in backward. Both are timed here, forward and
backward, from the same inputs (seed printed), and their outputs and gradients compared.

Columns: the peak allocated during forward+backward above what the inputs already hold; the floor is
what any method must add: the gradients of the hidden rows and of the head's weight (the same sizes as
the inputs), and the two [N] outputs.

    PYTHONPATH=. python3 benchmarks/logprob_memory.py --out $OUT                # GPU
    python benchmarks/logprob_memory.py --cpu-smoke                              # tiny shapes, CPU
Writes benchmarks/results/logprob_memory_<device>.md on the GPU.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_results  # noqa: E402
from deltarl.rl.logprobs import CHUNK_TOKENS, token_stats  # noqa: E402


def naive_stats(head, hidden, targets):
    """The whole [N, V] float32 logits at once: the obvious way, and the reference."""
    z = head(hidden).float()                                                      # [N, V]
    logp_all = z.log_softmax(-1)
    logp = logp_all.gather(-1, targets[:, None])[:, 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def chunked_stats(head, hidden, targets):
    return token_stats(head, hidden, targets, 1.0, with_entropy=True)


def run_once(fn, head, hidden, targets, device):
    """(peak bytes above the inputs, seconds, logp, entropy, hidden grad, weight grad)."""
    head.weight.grad, hidden.grad = None, None
    sync(device)
    base = allocated(device)
    reset_peak(device)
    start = time.perf_counter()
    logp, entropy = fn(head, hidden, targets)
    (logp.sum() + 0.1 * entropy.sum()).backward()     # the loss's two uses: the policy term and the bonus
    sync(device)
    seconds = time.perf_counter() - start
    return peak(device) - base, seconds, logp.detach(), entropy.detach(), hidden.grad, head.weight.grad


def measure(tokens, vocab, hidden_size, dtype, device, seed, reps):
    torch.manual_seed(seed)
    head = torch.nn.Linear(hidden_size, vocab, bias=False, device=device, dtype=dtype)
    hidden = (torch.randn(tokens, hidden_size, device=device, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device=device)
    floor = (hidden.numel() + head.weight.numel()) * hidden.element_size() + 2 * tokens * 4
    rows, outputs = {}, {}
    for name, fn in (("chunked", chunked_stats), ("naive", naive_stats)):
        try:
            run_once(fn, head, hidden, targets, device)                     # warm-up
            best = None
            for _ in range(reps):
                mem, seconds, *out = run_once(fn, head, hidden, targets, device)
                best = (mem, seconds) if best is None or seconds < best[1] else best
            rows[name] = best
            outputs[name] = [t.float().clone() for t in out]
        except torch.OutOfMemoryError:
            rows[name] = None
            torch.cuda.empty_cache()
        head.weight.grad, hidden.grad = None, None
    diffs = None
    if outputs.get("naive") and outputs.get("chunked"):
        diffs = [relative(a, b) for a, b in zip(outputs["chunked"], outputs["naive"])]
    return rows, floor, diffs


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def allocated(device):
    return torch.cuda.memory_allocated() if device.type == "cuda" else 0


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak(device):
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else 0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (no memory figures)")
    parser.add_argument("--out", help="also write the results file here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.cpu_smoke:
        device, dtype, vocab, hidden_size, token_counts = torch.device("cpu"), torch.float32, 5000, 64, [3000]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU here: run with --cpu-smoke")
        device, dtype, vocab, hidden_size, token_counts = (torch.device("cuda"), torch.bfloat16, 163840, 2304,
                                                           [4096, 16384, 32768])
    print(f"seed {args.seed}, vocab {vocab}, hidden {hidden_size}, {dtype}, chunk {CHUNK_TOKENS} tokens", flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu-smoke"
    lines = [f"# Logprobs + entropy, forward and backward, vocabulary {vocab:,} ({name})", "",
             "| tokens | path | peak added GB | floor GB | x floor | ms | max rel. diff vs naive (logp, entropy, "
             "grad hidden, grad head) |", "|---:|---|---:|---:|---:|---:|---|"]
    for tokens in token_counts:
        rows, floor, diffs = measure(tokens, vocab, hidden_size, dtype, device, args.seed, args.reps)
        for path, row in rows.items():
            if row is None:
                lines.append(f"| {tokens} | {path} | out of memory | {floor / 1e9:.2f} | - | - | - |")
                continue
            mem, seconds = row
            diff = ", ".join(f"{d:.1e}" for d in diffs) if diffs and path == "chunked" else "-"
            lines.append(f"| {tokens} | {path} | {mem / 1e9:.2f} | {floor / 1e9:.2f} | {mem / floor:.2f} | "
                         f"{seconds * 1e3:.1f} | {diff} |")
        print(lines[-2] if len(rows) > 1 else "", lines[-1], sep="\n", flush=True)
    lines += ["", f"Head: `torch.nn.Linear({hidden_size}, {vocab})` in {dtype}; hidden rows random (seed {args.seed}); "
              "loss = sum(logp) + 0.1 sum(entropy), so both outputs are differentiated. Peak added = "
              "`max_memory_allocated` during forward+backward minus what was allocated before (inputs). Floor = "
              "the gradients of the hidden rows and the head (their sizes) plus the two float32 outputs. ms: the "
              f"fastest of {args.reps} runs after a warm-up. Chunked: `deltarl.rl.logprobs.token_stats`, "
              f"{CHUNK_TOKENS} rows a chunk, each recomputed in backward."]
    text = "\n".join(lines) + "\n"
    print(text)
    if device.type == "cuda":
        slug = name.replace(" ", "_")
        write_results(f"logprob_memory_{slug}.md", text,
                      ([Path(args.out)] if args.out else []) + [ROOT / "benchmarks" / "results"])
    elif args.cpu_smoke:
        worst = max(diffs) if diffs else None
        if worst is None or worst > 1e-4:
            raise SystemExit(f"FAIL: chunked differs from naive by {worst}")
        print(f"CPU smoke: chunked equals naive (max relative difference {worst:.1e})")


if __name__ == "__main__":
    main()
