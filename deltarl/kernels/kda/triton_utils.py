"""Small helpers shared by the Triton KDA kernels: the chunk table for packed batches and an
interpreter fix.

Every Triton path flattens [B, T, ...] to a packed token axis and treats a dense batch as B
sequences of T tokens (cu_seqlens = 0, T, 2T, ...), so one set of kernels serves both layouts.
"""
import functools
import os

import torch
import triton

CHUNK = 64


def interpreting():
    """True under TRITON_INTERPRET=1 (the CPU tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _fix_interpreter_index():
    """Triton 3.6's interpreter turns a scalar into a Python int with int(array), which numpy >= 2.4
    refuses for the 1-element arrays it uses for scalars (so `for t in range(bos, eos)` with loaded
    bounds fails). Read the element with .item() instead. Only applied under TRITON_INTERPRET=1."""
    if not interpreting():
        return
    from triton.runtime import interpreter

    if getattr(interpreter, "_deltarl_index_fixed", False):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._deltarl_index_fixed = True


_fix_interpreter_index()


@functools.lru_cache(maxsize=64)
def default_cu_seqlens(B, T, device):
    """A dense [B, T] batch as packed sequences: [0, T, 2T, ..., BT] int32 (kept per shape; read only)."""
    return torch.arange(0, B * T + 1, T, device=device, dtype=torch.int32)


@functools.lru_cache(maxsize=64)
def dense_chunk_table(B, T, device, chunk_size=CHUNK):
    """`chunk_table` of a dense [B, T] batch, from the shape alone: no host sync (which would stall
    the launches of every call) and kept per shape (read only)."""
    n = -(-T // chunk_size)                                                    # chunks per sequence
    idx = torch.arange(B * n, device=device, dtype=torch.int32)
    return idx // n, idx % n, torch.arange(B, device=device, dtype=torch.int32) * n, B * n


def chunk_table(cu_seqlens, chunk_size=CHUNK):
    """For packed sequences, the global list of chunks.

    Returns (chunk_seq [NC] int32: the sequence of each chunk, chunk_pos [NC] int32: its index
    inside the sequence, chunk_offsets [N] int32: the global index of each sequence's first chunk,
    NC). One host sync (NC sizes the grids)."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    n_chunks = (lens + chunk_size - 1) // chunk_size                         # [N]
    chunk_offsets = torch.cumsum(n_chunks, 0) - n_chunks
    NC = int(n_chunks.sum())
    chunk_seq = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), n_chunks)
    chunk_pos = torch.arange(NC, device=lens.device) - chunk_offsets[chunk_seq]
    return chunk_seq.int(), chunk_pos.int(), chunk_offsets.int(), NC


def dot_precision(dtype):
    """fp32 inputs get full-precision dots (the 1e-4 contract); half inputs use tf32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def dot_dtype(dtype):
    """Operand dtype of the dots that may run in half precision (the key path of the forward, every
    backward dot but those of the intra and inter passes; benchmarks/kda_precision.py): the input's half
    type on the GPU.

    Under the interpreter they run in float32 on the same rounded values: Triton 3.6's interpreter
    miscomputes a dot whose operand was cast to bf16 inside the kernel (a 16 x 16 check gives errors
    of 1e10), so the CPU tests could not check that cast."""
    import triton.language as tl
    if dtype == torch.float32 or interpreting():
        return tl.float32
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


def state_dtype(dtype):
    """Storage dtype of the per-chunk states h and their gradients dh: the input's half type (every
    consumer reads them as dot operands in that type; benchmarks/kda_precision.py), else float32."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def next_pow2(x):
    return triton.next_power_of_2(x)


def config(num_warps, num_stages, **meta):
    """One launch configuration for `autotune`: meta-parameters (block sizes) plus warps and stages."""
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


# kernel name -> (its triton Autotuner, every candidate config), so tests can pin one candidate
TUNED = {}


def autotune(configs, key):
    """`triton.autotune` over `configs` (the fastest is kept per key and cached on disk). Under the
    interpreter only the first config runs: the CPU tests check arithmetic, not speed; `pin_config`
    picks another one, so every candidate can be checked.

    Tuning runs a kernel several times on the real arguments, so no tuned kernel updates one of them
    in place, and per-block partials are written whole on every launch (stale slots of a trial with
    another block size would otherwise survive).

    The candidates come from benchmarks/kda_static.py: on sm_90 the single configs used before spilled
    1-8 KB of registers per thread in every chunk kernel; the lists hold the ones that spill least.

    DELTARL_KDA_CONFIG="kernel=i,kernel=i" pins candidates from the environment (the GPU sweep runs
    each candidate in its own process, since a faulting kernel ends the CUDA context)."""
    def wrap(fn):
        tuner = triton.autotune(configs=list(configs), key=key, cache_results=True)(fn)
        TUNED[fn.__name__] = (tuner, list(configs))
        pin_config(fn.__name__, _env_pins().get(fn.__name__))
        return tuner
    return wrap


def _env_pins():
    """DELTARL_KDA_CONFIG as {kernel name: candidate index}."""
    pins = {}
    for item in filter(None, os.environ.get("DELTARL_KDA_CONFIG", "").split(",")):
        name, _, index = item.partition("=")
        if not index.strip().isdigit():
            raise ValueError(f"DELTARL_KDA_CONFIG: {item!r} is not kernel=index (e.g. _bwd_intra_kernel=1)")
        pins[name.strip()] = int(index)
    return pins


def check_env_pins():
    """Raise if DELTARL_KDA_CONFIG names a kernel that is not autotuned (call once all are defined)."""
    unknown = sorted(set(_env_pins()) - set(TUNED))
    if unknown:
        raise ValueError(f"DELTARL_KDA_CONFIG names no autotuned kernel: {unknown}; known: {sorted(TUNED)}")


def pin_config(name, index=None):
    """Make kernel `name` run only candidate `index` of its autotune list; None restores the default
    (every candidate on the GPU, the first under the interpreter)."""
    if name not in TUNED:
        raise KeyError(f"no autotuned kernel {name!r}; known: {sorted(TUNED)}")
    tuner, configs = TUNED[name]
    if index is None:
        tuner.configs = configs[:1] if interpreting() else list(configs)
    elif 0 <= index < len(configs):
        tuner.configs = [configs[index]]
    else:
        raise IndexError(f"{name} has candidates 0..{len(configs) - 1}, not {index}")
    tuner.cache.clear()


def size_bucket(n):
    """ceil(log2(n)): an autotune key for grids whose best block size depends on how many programs run."""
    return max(int(n) - 1, 0).bit_length()
