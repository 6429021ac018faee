#!/bin/sh
# One GPU session for the learner-workers issue (needs the core+vllm gpu-kit installed in /tmp/site).
#   sh benchmarks/gpu_workers_session.sh bench        # logprob memory at 160k vocabulary, weight sync 106M and 1B
#   sh benchmarks/gpu_workers_session.sh zero3 STEPS  # configs/gpu_single.yaml with ZeRO-3 (model built under zero.Init)
# Results go to $OUT (and benchmarks/results/ on the machine).
set -x
export PYTHONPATH=/tmp/site:.
case "$1" in
bench)
  timeout 150 python3 benchmarks/logprob_memory.py --out $OUT > $OUT/logprob_memory.log 2>&1
  echo "logprob_memory rc=$?"
  timeout 400 python3 benchmarks/weight_sync.py --out $OUT > $OUT/weight_sync.log 2>&1
  echo "weight_sync rc=$?"
  tail -25 $OUT/weight_sync.log
  ;;
zero3)
  WARM=checkpoints/arithmetic-warmup-vllm
  timeout 560 python3 run_rl.py --config configs/gpu_single.yaml model.path=$WARM tokenizer=$WARM run.steps=${2:-40} \
    run.eval_every=${EVAL_EVERY:-20} run.save_every=0 run.output_dir=/tmp/runs rollout.enforce_eager=true \
    learner.zero_stage=3 run.progress_bar=false > $OUT/rl.log 2>&1
  echo "run_rl rc=$?"
  RUN=$(ls -d /tmp/runs/* | head -1)
  cp $RUN/metrics.jsonl $OUT/metrics.jsonl && cp $RUN/config.yaml $OUT/config.yaml
  python3 run_rl.py summary $RUN 10 > $OUT/summary.md
  cp $RUN/plots/curves.png $OUT/curves.png 2>/dev/null
  grep -iE "zero|partition" $OUT/rl.log | head -5
  grep -E "step [0-9]+:" $OUT/rl.log | tail -5
  tail -5 $OUT/rl.log
  ;;
esac
