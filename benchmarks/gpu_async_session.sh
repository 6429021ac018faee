#!/bin/sh
# One GPU session for asynchronous RL (issue 20); needs the core+vllm gpu-kit in /tmp/site.
#   sh benchmarks/gpu_async_session.sh warmup     # the Countdown search-trace warm-up -> /tmp/countdown-warmup (3 min)
#   sh benchmarks/gpu_async_session.sh async STALENESS...   # benchmarks/async_rl.py on configs/countdown_gpu.yaml from it
set -x
export PYTHONPATH=/tmp/site:.
WARM=/tmp/countdown-warmup
NAME=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
case "$1" in
warmup)
  mkdir -p $OUT/warmup
  timeout 300 python3 -m deltarl.rl.warmup --task countdown --trace 24 --difficulty 1 --mla-dims released \
    --device cuda --threads 8 --hidden 512 --layers 8 --heads 8 --ffn 1408 --batch-size 128 --lr 1e-3 \
    --minutes ${WARMUP_MINUTES:-3} --steps 4000 --eval-every 0 --eval-size 200 --samples 4 --out $WARM \
    > $OUT/warmup/warmup.log 2>&1
  echo "warmup rc=$?"
  cp $WARM/warmup_report.json $WARM/config.json $OUT/warmup/ 2>/dev/null
  tail -4 $OUT/warmup/warmup.log
  ;;
async)
  shift
  timeout ${ASYNC_TIMEOUT:-570} python3 benchmarks/async_rl.py --config configs/countdown_gpu.yaml --staleness "$@" \
    --steps ${STEPS:-20} --name $NAME --budget-s ${BUDGET_S:-540} model.path=$WARM tokenizer=$WARM \
    rollout.enforce_eager=true run.eval_every=${EVAL_EVERY:-10} > $OUT/async.log 2>&1
  echo "async rc=$?"
  mkdir -p $OUT/results && cp -r benchmarks/results/async_$NAME* $OUT/results/ 2>/dev/null
  cp /tmp/async_runs/*.log $OUT/ 2>/dev/null
  tail -20 $OUT/async.log
  ;;
esac
