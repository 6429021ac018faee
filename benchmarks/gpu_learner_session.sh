#!/bin/sh
# One GPU session for the learner-correctness issue: configs/gpu_single.yaml from the committed vLLM-servable
# warm-up with several micro-batches per step (learner.micro_batch_tokens below a step's tokens), so gradient
# accumulation across micro-batches runs on the GPU path (vLLM rollouts, DeepSpeed ZeRO-2 bf16, Triton KDA).
# Needs the core+vllm gpu-kit in /tmp/site.   sh benchmarks/gpu_learner_session.sh STEPS MICRO_TOKENS
set -x
export PYTHONPATH=/tmp/site:.
STEPS=${1:-80}
MICRO=${2:-4096}
WARM=checkpoints/arithmetic-warmup-vllm
python3 run_rl.py --config configs/gpu_single.yaml model.path=$WARM tokenizer=$WARM run.steps=$STEPS \
  run.eval_every=${EVAL_EVERY:-20} run.save_every=0 run.output_dir=/tmp/runs rollout.enforce_eager=true \
  learner.micro_batch_tokens=$MICRO run.progress_bar=false > $OUT/rl.log 2>&1
echo "run_rl rc=$?"
RUN=$(ls -d /tmp/runs/* | head -1)
cp $RUN/metrics.jsonl $OUT/metrics.jsonl && cp $RUN/config.yaml $OUT/config.yaml
python3 run_rl.py summary $RUN 10 > $OUT/summary.md
cp $RUN/plots/curves.png $OUT/curves.png 2>/dev/null
grep -E "step [0-9]+:" $OUT/rl.log | tail -5
tail -5 $OUT/rl.log
