"""Sampling in which each row draws from its own seed, whatever else is in its batch.

`transformers` samples a batch's next tokens from one global random stream, so the text of a
row depends on which rows were decoded beside it: a different batch size, a resume or a shard
gives the same id another text. Here each row's draw uses a generator seeded by the row's seed
and the step, through the Gumbel-max trick: the argmax of the (temperature-scaled, top-p-filtered)
logits plus Gumbel noise is an exact draw from the softmax of those logits. So decoding is greedy
over noised logits, and the noise of a row depends on its seed and position alone.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from cai.core.ids import derive_seed

from ..types import SamplingParams


class GumbelNoise(LogitsProcessor):
    """Adds Gumbel noise drawn from each row's own generator (`seeds[row]`, and the step)."""

    def __init__(self, seeds: list[int], prompt_width: int):
        self.seeds = seeds
        self.width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.width
        noise = torch.empty(scores.shape, dtype=torch.float32)
        for row, seed in enumerate(self.seeds):
            g = torch.Generator().manual_seed(derive_seed(seed, step))
            u = torch.rand(scores.shape[1], generator=g, dtype=torch.float32).clamp_(1e-20, 1.0)
            noise[row] = -torch.log(-torch.log(u))
        return scores + noise.to(scores.device, scores.dtype)


def seeded_sampling(params: SamplingParams, seeds: list[int], prompt_width: int) -> LogitsProcessorList:
    """Temperature, top-p, then each row's own Gumbel noise: `generate(do_sample=False)` then samples."""
    steps: list[LogitsProcessor] = [TemperatureLogitsWarper(params.temperature)]
    if params.top_p < 1.0:
        steps.append(TopPLogitsWarper(params.top_p))
    steps.append(GumbelNoise(seeds, prompt_width))
    return LogitsProcessorList(steps)
