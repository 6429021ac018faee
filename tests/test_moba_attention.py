"""MoBA attention (deltarl.kernels.moba) against its definition: the float64 reference that lists each
query's visible keys, dense causal attention when top_k covers every block, the FlexAttention path."""

import pytest
import torch
import torch.nn.functional as F

from deltarl.kernels.moba import (dense_attend, flex_moba_attention, moba_attention, moba_block_mask,
                                  naive_moba_attention, visible_keys)
from deltarl.kernels.moba.flex import TILE


pytestmark = pytest.mark.usefixtures("moba_seed")      # tests/conftest.py: a printed seed per test


def packed_inputs(lengths, H=2, Dk=12, Dv=8, dtype=torch.float64):
    """q, k [1, T, H, Dk], v [1, T, H, Dv] leaves and cu_seqlens of sequences of `lengths`."""
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    T = int(cu[-1])
    q, k = (torch.randn(1, T, H, Dk, dtype=dtype, requires_grad=True) for _ in range(2))
    v = torch.randn(1, T, H, Dv, dtype=dtype, requires_grad=True)
    return q, k, v, cu


def output_and_grads(fn, q, k, v, cotangent, *args):
    o = fn(q, k, v, *args)
    return (o, *torch.autograd.grad((o * cotangent).sum(), (q, k, v)))


def dense_causal_per_sequence(q, k, v, cu_seqlens, block_size=None, top_k=None):
    """Plain causal SDPA over each packed sequence alone."""
    bounds = cu_seqlens.tolist()
    outs = [F.scaled_dot_product_attention(*(t[:, a:b].transpose(1, 2) for t in (q, k, v)), is_causal=True)
            for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outs, dim=2).transpose(1, 2)


LENGTHS = [37, 150, 5, 93]          # no length is a multiple of a block size below


@pytest.mark.parametrize("block_size", [8, 16, 50])
def test_top_k_covering_every_block_equals_dense_attention(block_size):
    """With top_k >= the number of blocks every past block is chosen: MoBA is causal attention, for the
    masked path and the reference, outputs and the gradients of q, k and v (float64, packed varlen)."""
    q, k, v, cu = packed_inputs(LENGTHS)
    cotangent = torch.randn(1, q.shape[1], q.shape[2], v.shape[3], dtype=torch.float64)
    dense = output_and_grads(dense_causal_per_sequence, q, k, v, cotangent, cu)
    every_block = max(LENGTHS) // block_size + 1
    for fn in (moba_attention, naive_moba_attention):
        moba = output_and_grads(fn, q, k, v, cotangent, cu, block_size, every_block)
        for name, a, b in zip(("o", "dq", "dk", "dv"), moba, dense):
            assert (a - b).abs().max() < 1e-12, (fn.__name__, name)


@pytest.mark.parametrize("block_size, top_k", [(8, 1), (8, 3), (16, 2), (32, 1)])
def test_fewer_blocks_equal_the_reference(block_size, top_k):
    """The masked path (the CPU path of training) equals the reference in outputs and gradients, and
    with so few blocks the result is not dense attention's (the choice matters)."""
    q, k, v, cu = packed_inputs(LENGTHS)
    cotangent = torch.randn(1, q.shape[1], q.shape[2], v.shape[3], dtype=torch.float64)
    reference = output_and_grads(naive_moba_attention, q, k, v, cotangent, cu, block_size, top_k)
    moba = output_and_grads(moba_attention, q, k, v, cotangent, cu, block_size, top_k)
    for name, a, b in zip(("o", "dq", "dk", "dv"), moba, reference):
        assert (a - b).abs().max() < 1e-12, name
    assert (reference[0] - dense_causal_per_sequence(q, k, v, cu)).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["gathered", "tiled"])
@pytest.mark.parametrize("lengths, block_size, top_k", [(LENGTHS, 8, 2), (LENGTHS, 32, 1), (LENGTHS, 200, 1),
                                                        ([700, 300], 64, 3), ([90] * 9, 16, 2)])
def test_flex_ways_equal_the_reference_with_gradients(impl, lengths, block_size, top_k):
    """Both FlexAttention ways, each attention run by `dense_attend` (FlexAttention's contract in plain
    PyTorch, which also fails if a visible pair lies outside the tiles FlexAttention would visit):
    outputs and the gradients of q, k, v, through the log-sum-exp merge of the gathered way."""
    q, k, v, cu = packed_inputs(lengths)
    cotangent = torch.randn(1, q.shape[1], q.shape[2], v.shape[3], dtype=torch.float64)
    reference = output_and_grads(naive_moba_attention, q, k, v, cotangent, cu, block_size, top_k)
    flex = output_and_grads(lambda *a: flex_moba_attention(*a, q.shape[-1] ** -0.5, impl=impl, attend=dense_attend),
                            q, k, v, cotangent, cu, block_size, top_k)
    for name, a, b in zip(("o", "dq", "dk", "dv"), flex, reference):
        assert (a - b).abs().max() < 1e-12, name


@pytest.mark.parametrize("impl", ["gathered", "tiled"])
def test_flex_attention_itself_equals_the_reference(impl):
    """The same through PyTorch's own flex_attention, uncompiled (forward only: no backward on the CPU)."""
    q, k, v, cu = (t.detach() for t in packed_inputs(LENGTHS))
    flex = flex_moba_attention(q, k, v, cu, 8, 2, q.shape[-1] ** -0.5, impl=impl)
    assert (flex - naive_moba_attention(q, k, v, cu, 8, 2)).abs().max() < 1e-12


def reference_visibility(q, k, cu_seqlens, block_size, top_k):
    """[H, T, T] True where the reference lets packed query i see key j."""
    T, H = q.shape[1], q.shape[2]
    seen = torch.zeros(H, T, T, dtype=torch.bool)
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        for h in range(H):
            for i in range(b - a):
                seen[h, a + i, [a + j for j in visible_keys(q[0, a + i, h], k[0, a:b, h], i, block_size, top_k)]] = True
    return seen


def tiles_visited(mask) -> torch.Tensor:
    """[H, nq, nk] the (query tile, key tile) pairs a BlockMask visits."""
    return mask.to_dense()[0].bool()


@pytest.mark.parametrize("lengths, block_size, top_k", [([300, 21, 450], 64, 2), ([700], 128, 1), ([90] * 9, 16, 3)])
def test_block_mask_visits_every_allowed_pair(lengths, block_size, top_k):
    """The tiled way's BlockMask, read back with BlockMask.to_dense, covers every (query, key) pair the
    reference allows, and no key tile after its query tile."""
    q, k, v, cu = packed_inputs(lengths, H=3)
    with torch.no_grad():
        visited = tiles_visited(moba_block_mask(q, k, cu, block_size, top_k))
        seen = reference_visibility(q, k, cu, block_size, top_k)
    tile = torch.arange(q.shape[1]) // TILE
    h, i, j = seen.nonzero(as_tuple=True)
    assert visited[h, tile[i], tile[j]].all()
    assert not visited.triu(1).any()                         # never a key tile after the query tile


def test_block_mask_skips_blocks_no_query_chose():
    """Tiled way: when every query of a sequence agrees on its choice, a query tile visits its own block
    and the one chosen block only: the visited tiles are few, not the causal triangle."""
    T, H, block_size = 1024, 2, 128
    q = torch.randn(1, 1, H, 16, dtype=torch.float64).expand(1, T, H, 16)      # one query for all
    k = torch.randn(1, T, H, 16, dtype=torch.float64)
    cu = torch.tensor([0, T], dtype=torch.int32)
    visited = tiles_visited(moba_block_mask(q, k, cu, block_size, top_k=1))
    per_query_tile = visited.sum(-1)                                             # [H, nq]
    assert per_query_tile.max() <= 2                            # own block + the chosen one (128 = TILE)
    assert visited.sum() < torch.ones(T // TILE, T // TILE).tril().sum() * H / 2


def test_dense_attend_refuses_a_visible_pair_outside_the_tiles():
    """The check that gives the tile tests above their teeth: drop one visited tile and it fails."""
    from deltarl.kernels.moba.flex import Tiles
    q, k, v = (torch.randn(1, 1, 2 * TILE, 4, dtype=torch.float64) for _ in range(3))

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    full = torch.ones(2, 2, dtype=torch.bool).tril()
    dense_attend(q, k, v, causal, Tiles([full], TILE), 1.0)
    with pytest.raises(AssertionError, match="outside the visited tiles"):
        dense_attend(q, k, v, causal, Tiles([full & ~torch.eye(2, dtype=torch.bool)], TILE), 1.0)


@pytest.mark.parametrize("copies", [1, 3])
def test_permute_rows_equals_gather_with_gradients(copies):
    """The gathered way moves q copies and o rows with PermuteRows (backward: a gather, no scatter-add)."""
    from deltarl.kernels.moba.flex import PermuteRows
    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    perm = torch.stack([torch.randperm(7 * copies) for _ in range(2)])                   # [H, R]
    inverse = torch.argsort(perm, dim=1)
    by_gather = x.gather(1, (perm // copies)[..., None].expand(2, 7 * copies, 5))
    assert torch.equal(PermuteRows.apply(x, perm, inverse, copies), by_gather)
    assert torch.autograd.gradcheck(lambda t: PermuteRows.apply(t, perm, inverse, copies), (x,))


def test_an_unknown_impl_is_refused_naming_the_choices():
    q, k, v, cu = packed_inputs([20])
    with pytest.raises(ValueError, match="'gathered', 'tiled', 'triton'"):
        moba_attention(q, k, v, cu, 8, 2, impl="flash")
