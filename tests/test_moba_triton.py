"""The Triton row-attention MoBA (`deltarl.kernels.moba.triton_rows`) against the float64 reference, outputs
and gradients, on packed sequences whose lengths are not multiples of the block size; on the CPU through
the Triton interpreter (TRITON_INTERPRET=1, set in conftest.py)."""
import os

import pytest
import torch

from deltarl.kernels.moba import naive_moba_attention

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from deltarl.kernels.moba.triton_rows import triton_moba_attention  # noqa: E402

pytestmark = pytest.mark.usefixtures("moba_seed")      # tests/conftest.py: a printed seed per test


@pytest.mark.parametrize("lengths, block_size, top_k", [([37, 150, 5, 93], 16, 2), ([70, 9], 8, 100),
                                                        ([130], 32, 1)])
def test_row_attention_equals_the_reference_with_gradients(lengths, block_size, top_k):
    H, Dk, Dv = 2, 12, 8
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    T = int(cu[-1])
    q, k = (torch.randn(1, T, H, Dk) for _ in range(2))
    v = torch.randn(1, T, H, Dv)
    cot = torch.randn(1, T, H, Dv, dtype=torch.float64)
    scale = Dk ** -0.5
    got, want = [], []
    for fn, dtype, out in ((triton_moba_attention, torch.float32, got), (naive_moba_attention, torch.float64, want)):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        o = fn(*leaves, cu, block_size, top_k, scale)
        out += [o, *torch.autograd.grad((o * cot.to(dtype)).sum(), leaves)]
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        err = float((a.double() - b).abs().max() / b.abs().max())
        print(f"{name}: max error / max |ref| = {err:.1e}")
        assert err < 1e-4, name
