"""Greedy accuracy, pass@8, per-sample accuracy (T=1) and mixed-group share on the held-out set of warm-up snapshots
/tmp/wu/TASK/steps/step_N (the --save-every folders of the warm-up runs in docs/warmup.md); argv: TASK, comma-separated N,
then deltarl.rl.warmup arguments naming the task and the held-out set. Output: probes/snapshots.txt."""
import json, sys, time
import torch
from deltarl.model import KimiLinearForCausalLM, char_tokenizer
from deltarl.rl import warmup as W
task, steps, argv = sys.argv[1], sys.argv[2].split(','), sys.argv[3:]
args = W.parse_args(argv)
torch.set_num_threads(1)
tok = char_tokenizer()
evals = W.eval_rows(args)
rows = W.train_rows(args, 20_000, exclude={r["prompt"] for r in evals})
budget = W.answer_budget(args, tok, rows + evals)
for s in steps:
    t=time.time()
    net = KimiLinearForCausalLM.from_pretrained(f"/tmp/wu/{task}/steps/step_{s}")
    g = W.evaluate(net, tok, evals, budget, task=args.task)
    sm = W.evaluate(net, tok, evals, budget, n=8, temperature=1.0, seed=args.seed, task=args.task)
    print(s, "greedy", g["accuracy"], "pass@8", sm["pass@8"], "sample", sm["accuracy"], "mixed", sm["mixed"], f"{time.time()-t:.0f}s", flush=True)
