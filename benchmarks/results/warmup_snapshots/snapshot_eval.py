"""Held-out greedy accuracy, pass@8 / per-sample accuracy at T=1 and the share of prompts with mixed groups of 8,
for warm-up snapshots FOLDER/steps/step_N (FOLDER/ itself for N = final), with per-kind counts for math_word.
argv: FOLDER, comma-separated N, then the deltarl.rl.warmup arguments of the run (task, held-out set, --extra-train)."""
import sys
import time

import torch

from deltarl.model import KimiLinearForCausalLM, char_tokenizer
from deltarl.rl import warmup as W

folder, steps, argv = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
args = W.parse_args(argv)
torch.set_num_threads(1)
tok = char_tokenizer()
evals = W.eval_rows(args)
rows = W.train_rows(args, 20_000, exclude={r["prompt"] for r in evals})
budget = W.answer_budget(args, tok, rows + evals)
kinds = sorted({r["kind"] for r in evals}) if "kind" in evals[0] else []
for s in steps:
    t = time.time()
    net = KimiLinearForCausalLM.from_pretrained(folder if s == "final" else f"{folder}/steps/step_{s}")
    g = W.evaluate(net, tok, evals, budget, task=args.task)
    sm = W.evaluate(net, tok, evals, budget, n=8, temperature=1.0, seed=args.seed, task=args.task)
    line = (f"{s} greedy {g['accuracy']:.3f} pass@8 {sm['pass@8']:.3f} sample {sm['accuracy']:.3f} "
            f"mixed {sm['mixed']:.3f}")
    for k in kinds:
        sub = [r for r in evals if r["kind"] == k]
        gk = W.evaluate(net, tok, sub, budget, task=args.task)["accuracy"]
        sk = W.evaluate(net, tok, sub, budget, n=8, temperature=1.0, seed=args.seed, task=args.task)
        line += f" | {k} {round(gk * len(sub))}/{len(sub)} p8 {sk['pass@8']:.2f}"
    print(line, f"{time.time() - t:.0f}s", flush=True)
