#!/bin/sh
# Compile and autotune caches carried between device machines, so a fresh machine's first vLLM start and
# first generate do not redo Triton autotuning and torch.compile (issue 21: start-up time).
#   sh benchmarks/gpu_cache.sh restore  # at a call's start: unpack .gpucache/compile-caches.tar.xz (if carried)
#   sh benchmarks/gpu_cache.sh save     # at its end: pack the caches into $OUT (one file, at most 16 MiB)
# Between calls: copy the returned compile-caches.tar.xz into .gpucache/ here and pass carry [".gpucache"].
# Triton keeps autotune results on disk only with TRITON_CACHE_AUTOTUNING=1: export it in the calling script.
CACHES=".triton/cache .cache/vllm/torch_compile_cache"
case "$1" in
restore)
  if [ -f .gpucache/compile-caches.tar.xz ]; then
    tar -xJf .gpucache/compile-caches.tar.xz -C "$HOME" && echo "gpu_cache: restored $(du -sh .gpucache/compile-caches.tar.xz | cut -f1)"
  else
    echo "gpu_cache: nothing to restore"
  fi
  ;;
save)
  present=""
  for d in $CACHES; do [ -d "$HOME/$d" ] && present="$present $d"; done
  [ -n "$present" ] || { echo "gpu_cache: no cache to save"; exit 0; }
  tar -cJf /tmp/compile-caches.tar.xz -C "$HOME" $present
  size=$(stat -c %s /tmp/compile-caches.tar.xz)
  if [ "$size" -le 16777216 ]; then
    cp /tmp/compile-caches.tar.xz "$OUT/" && echo "gpu_cache: saved $size bytes ($present)"
  else
    echo "gpu_cache: $size bytes is over the 16 MiB a returned file may have; not saved"
  fi
  ;;
*)
  echo "usage: gpu_cache.sh restore|save" >&2
  ;;
esac
