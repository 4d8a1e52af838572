"""The soft-label pairwise loss.

With the AI label p = P(chosen is better), the reward model should match it rather than a hard
0/1 target: loss = -[p·log σ(r_c - r_r) + (1-p)·log σ(r_r - r_c)]. At p = 1 this is exactly the
Bradley-Terry loss TRL uses; at p = 0.5 the model is pushed only towards equal rewards, so an
undecided judge teaches nothing false.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_preference_loss(
    rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, p_chosen: torch.Tensor
) -> torch.Tensor:
    diff = rewards_chosen - rewards_rejected
    p = p_chosen.to(diff.dtype)
    return -(p * F.logsigmoid(diff) + (1 - p) * F.logsigmoid(-diff)).mean()
