"""The soft-label loss against hand computation and against TRL's hard-label loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from cai.training.losses import soft_preference_loss


def test_matches_hand_computation():
    rc, rr, p = torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.5]), torch.tensor([0.8, 0.6])

    def sig(x):
        return 1 / (1 + math.exp(-x))

    want = (
        -(
            (0.8 * math.log(sig(1.0)) + 0.2 * math.log(sig(-1.0)))
            + (0.6 * math.log(sig(-1.0)) + 0.4 * math.log(sig(1.0)))
        )
        / 2
    )
    assert soft_preference_loss(rc, rr, p).item() == pytest.approx(want, rel=1e-6)


def test_p_one_is_trl_hard_loss():
    torch.manual_seed(0)
    rc, rr = torch.randn(16), torch.randn(16)
    trl_hard = -F.logsigmoid(rc - rr).mean()  # the expression in TRL's RewardTrainer.compute_loss
    torch.testing.assert_close(soft_preference_loss(rc, rr, torch.ones(16)), trl_hard)


def test_half_is_minimised_at_equal_rewards():
    d = torch.linspace(-3, 3, 61)
    losses = [soft_preference_loss(x.view(1), torch.zeros(1), torch.tensor([0.5])).item() for x in d]
    assert min(range(61), key=losses.__getitem__) == 30
