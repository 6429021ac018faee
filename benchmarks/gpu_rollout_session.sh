#!/bin/sh
# device run: the rollout decode benchmark (benchmarks/rollout.py) in parts that fit device calls.
#   sh benchmarks/gpu_rollout_session.sh embedded [CELLS] [MODELS]   # embedded engine (default: cells
#                                                          # 64x4096,256x4096,64x32768, both models); no kit
#   sh benchmarks/gpu_rollout_session.sh vllm [MODELS]     # vLLM cells (default hybrid,mla); needs the
#                                                          # gpu-kit's vllm bundle in /tmp/site
#   sh benchmarks/gpu_rollout_session.sh profile MODEL [CELLS]  # benchmarks/vllm_decode_profile.py for hybrid
#                                                          # or mla (issue 21: counters, engine choices, trace);
#                                                          # after CELLS: --vllm-arg K=V ... --tag NAME (a variant)
# ROLLOUT_SECONDS bounds the whole call, ROLLOUT_BUDGET (s) the cells one model may start.
# Values merge into benchmarks/results/rollout_<device>.json (tracked, so it travels with the tree);
# the json and the .md made from it come back in $OUT even when the call runs out of time: copy them
# into benchmarks/results/ here before the next call.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
PART=${1:?usage: gpu_rollout_session.sh embedded|vllm [MODELS]}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
trap 'cp benchmarks/results/rollout_*.json benchmarks/results/rollout_*.md $OUT/ 2>/dev/null; ls $OUT' EXIT
LIMIT=${ROLLOUT_SECONDS:-540}
BUDGET=${ROLLOUT_BUDGET:-200}     # seconds per engine and model after which later cells are skipped
case "$PART" in
  embedded)      # expandable segments: the cache's MLA buffers are regrown and regrouped at ever larger sizes
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout $LIMIT python3 benchmarks/rollout.py \
        --engines embedded --models ${3:-hybrid,mla} --budget-s $BUDGET \
        --embedded-cells ${2:-64x4096,256x4096,64x32768} 2>&1 | tee $OUT/rollout_embedded.log ;;
  vllm)
    timeout $LIMIT python3 benchmarks/rollout.py --engines vllm --models ${2:-hybrid,mla} --budget-s ${ROLLOUT_BUDGET:-120} \
        2>&1 | grep -v "it/s\]$" | tee $OUT/rollout_vllm.log ;;
  profile)
    export TRITON_CACHE_AUTOTUNING=1
    sh benchmarks/gpu_cache.sh restore
    MODEL=${2:-hybrid}; CELLS=${3:-64x4096,256x32768,64x131072}
    if [ $# -ge 3 ]; then shift 3; else shift $#; fi     # the rest: --vllm-arg KEY=VALUE ... --tag NAME
    timeout $LIMIT python3 benchmarks/vllm_decode_profile.py --out $OUT --model $MODEL --cells $CELLS "$@" \
        > $OUT/vllm_profile_$MODEL.log 2>&1
    echo "profile rc=$?"
    grep -E "Maximum concurrency|KV cache|block size|CUDA graph|Capturing" $OUT/vllm_profile_$MODEL.log | head -20
    sh benchmarks/gpu_cache.sh save ;;
  *)
    echo "unknown part $PART: embedded, vllm or profile" >&2; exit 2 ;;
esac
