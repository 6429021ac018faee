"""MoBA's definition, one query and one head at a time: the reference the fast paths are tested against.

Written to be obviously right, not fast: for each query it lists the past blocks of its sequence,
scores each by the query's dot product with the block's mean key, keeps the top_k, and attends
with a plain softmax over the keys it may see (those blocks, and its own block up to itself).
"""
import torch


def naive_moba_attention(q, k, v, cu_seqlens, block_size: int, top_k: int, scale: float | None = None):
    """q, k [1, T, H, Dk]; v [1, T, H, Dv]; cu_seqlens [N + 1] bounds of the packed sequences.
    Returns o [1, T, H, Dv], differentiable in q, k, v (not through the block choice)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bounds = cu_seqlens.tolist()
    rows = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        for i in range(end - start):
            rows.append(torch.stack([_one_query(q[0, start + i, h], k[0, start:end, h], v[0, start:end, h],
                                                i, block_size, top_k, scale)
                                     for h in range(q.shape[2])]))
    return torch.stack(rows)[None]


def _one_query(q, k, v, i, block_size, top_k, scale):
    """Output of query i of a sequence (q [D]; k [L, D], v [L, Dv] the sequence's keys, values)."""
    keys = visible_keys(q, k, i, block_size, top_k)
    weights = torch.softmax(k[keys] @ q * scale, dim=0)
    return weights @ v[keys]


def visible_keys(q, k, i, block_size: int, top_k: int) -> list[int]:
    """The keys query i of a sequence sees (q [D] its query in one head; k [L, D] the sequence's keys):
    every earlier key of its own block and of the top_k past blocks best by q . mean key, and itself."""
    own = i // block_size
    chosen = []
    if own > 0:
        means = torch.stack([k[b * block_size:(b + 1) * block_size].mean(0) for b in range(own)])
        chosen = (means @ q).detach().topk(min(top_k, own)).indices.tolist()
    return [j for j in range(i + 1) if j // block_size == own or j // block_size in chosen]
