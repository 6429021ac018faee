"""rl.algorithms.entropy: entropy from logits (chunked) and the entropy bonus."""
import math

import pytest
import torch

from deltarl.rl.algorithms import entropy_bonus, entropy_from_logits


def test_hand_computed_entropies():
    # uniform over 7: ln 7; p = (1/4, 3/4) from logits (0, ln 3): -(ln(1/4)/4 + 3 ln(3/4)/4) = 0.5623351
    # (0, 0, -inf): uniform over 2 -> ln 2; (1000, 0): ~0 and finite
    torch.testing.assert_close(entropy_from_logits(torch.zeros(1, 1, 7)), torch.tensor([[math.log(7)]]))
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    got = entropy_from_logits(torch.tensor([[[0.0, math.log(3.0)]]]))
    assert got.item() == pytest.approx(h, abs=1e-6) and h == pytest.approx(0.5623351, abs=1e-7)
    assert entropy_from_logits(torch.tensor([[[0.0, 0.0, -math.inf]]])).item() == pytest.approx(math.log(2))
    assert entropy_from_logits(torch.tensor([[[1000.0, 0.0]]])).item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_is_log_v_and_shapes_and_dtype():
    h = entropy_from_logits(torch.full((2, 3, 50), 4.2, dtype=torch.bfloat16), chunk_size=4)
    assert h.shape == (2, 3) and h.dtype == torch.float32
    torch.testing.assert_close(h, torch.full((2, 3), math.log(50)))


def test_chunking_changes_nothing_forward_or_backward():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, 11, generator=g) * 3
    a, b = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    ha, hb = entropy_from_logits(a, chunk_size=2), entropy_from_logits(b, chunk_size=10_000)
    p = torch.softmax(base, -1)
    torch.testing.assert_close(ha, -(p * torch.log_softmax(base, -1)).sum(-1))
    torch.testing.assert_close(ha, hb)
    weights = torch.randn(3, 5, generator=g)
    (ha * weights).sum().backward()
    (hb * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_gradient_matches_the_closed_form():
    # dH/dz_v = -p_v (log p_v + H)
    z = torch.tensor([[[0.3, -1.2, 2.0, 0.0]]], requires_grad=True)
    h = entropy_from_logits(z, chunk_size=1)
    h.sum().backward()
    p, logp = torch.softmax(z.detach(), -1), torch.log_softmax(z.detach(), -1)
    torch.testing.assert_close(z.grad, -p * (logp + h.detach()[..., None]))


def test_entropy_bonus_aggregates():
    # token mean of valid entries 1, 2, 3 -> 2; sequence: mean(1.5, 3) = 2.25
    ent = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert entropy_bonus(ent, mask).item() == pytest.approx(2.0)
    assert entropy_bonus(ent, mask, "sequence").item() == pytest.approx(2.25)
    assert entropy_bonus(ent, torch.zeros(2, 3)).item() == 0.0
    # Dr.GRPO: (1 + 2 + 3) / (2 rows x budget 5); the bonus weighs tokens as that loss does
    assert entropy_bonus(ent, mask, "seq-mean-token-sum-norm", max_len=5).item() == pytest.approx(0.6)
    # one micro-batch (row 1) of a step whose denominator is 2 sequences: its part is 3 / 2
    assert entropy_bonus(ent[1:], mask[1:], "sequence", denominator=torch.tensor(2.0)).item() == pytest.approx(1.5)


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        entropy_from_logits(torch.zeros(1, 1, 3), chunk_size=0)
