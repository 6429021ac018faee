"""kernels: the compute kernels the model runs on (chunkwise and recurrent KDA)."""
from .kda import chunk_kda, fused_recurrent_kda, naive_recurrent_kda

__all__ = ["chunk_kda", "fused_recurrent_kda", "naive_recurrent_kda"]
