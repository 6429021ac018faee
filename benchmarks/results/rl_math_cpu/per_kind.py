"""Held-out greedy answers right per kind of the math_word task for each model folder in argv[2] (comma-separated);
argv[3:] are deltarl.rl.warmup arguments naming the task and the held-out set. Output: rl_math_cpu/per_kind.txt (attempt3/per_kind.txt for the second round)."""
import sys
import torch
from deltarl.model import KimiLinearForCausalLM, char_tokenizer
from deltarl.rl import warmup as W
task, paths, argv = sys.argv[1], sys.argv[2].split(','), sys.argv[3:]
args = W.parse_args(argv); torch.set_num_threads(1); tok = char_tokenizer()
evals = W.eval_rows(args)
rows = W.train_rows(args, 20_000, exclude={r["prompt"] for r in evals})
budget = W.answer_budget(args, tok, rows + evals)
kinds = sorted(set(r.get("kind","all") for r in evals))
for p in paths:
    net = KimiLinearForCausalLM.from_pretrained(p)
    out=[]
    for k in kinds:
        sub=[r for r in evals if r.get("kind","all")==k]
        g=W.evaluate(net, tok, sub, budget, task=args.task)
        out.append(f"{k} {round(g['accuracy']*len(sub))}/{len(sub)}")
        if len(sys.argv)>0 and k in ("units","fraction","decimal"): print("   ", k, [e['response'] for e in g['examples'][:3]])
    print(p, ' '.join(out), flush=True)
