"""GPU correctness of MoBA's FlexAttention path (compiled kernels, forward and backward) against the
masked path (`padded_moba_attention`, SDPA with MoBA's boolean mask) on the same GPU and inputs.

The CPU tests check both ways through `dense_attend`, never the compiled kernels; this does. Error is
max |flex - masked| / max |masked| of o, dq, dk, dv: < 2e-3 in float32, < 5e-2 in bf16 (both paths
round; a wrong tile or pick is an O(1) error). Fresh random inputs each run. Skipped without CUDA.
"""
import pytest
import torch

from deltarl.kernels.moba import flex_moba_attention, padded_moba_attention

TOL = {torch.float32: 2e-3, torch.bfloat16: 5e-2}


pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.usefixtures("moba_seed")]      # tests/conftest.py: a printed seed per test


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["gathered", "tiled"])
@pytest.mark.parametrize("lengths, block_size, top_k", [([700, 1300, 257], 128, 3), ([5000], 512, 2),
                                                        ([300] * 12 + [77], 64, 4)])
def test_compiled_flex_equals_the_masked_path(dtype, impl, lengths, block_size, top_k):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    T, H = int(cu[-1]), 4
    inputs = [torch.randn(1, T, H, d, device="cuda", dtype=dtype, requires_grad=True) for d in (192, 192, 128)]
    cotangent = torch.randn(1, T, H, 128, device="cuda", dtype=dtype)
    scale = 192 ** -0.5

    def run(fn):
        o = fn(*inputs)
        return [t.detach().double() for t in (o, *torch.autograd.grad((o * cotangent).sum(), inputs))]

    reference = run(lambda q, k, v: padded_moba_attention(q, k, v, cu, block_size, top_k, scale))
    flex = run(lambda q, k, v: flex_moba_attention(q, k, v, cu, block_size, top_k, scale, impl=impl))
    for name, a, b in zip(("o", "dq", "dk", "dv"), flex, reference):
        error = float((a - b).abs().max() / b.abs().max())
        assert error < TOL[dtype], (name, error)
