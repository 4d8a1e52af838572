"""Reward model training on AI preference data, soft labels included.

TRL's `RewardTrainer` knows hard pairs, a margin and global label smoothing; our records carry a
per-pair probability. A collator passes `p_chosen` through to the batch, and `compute_loss`
lets TRL do the forward pass and its metrics, then replaces the loss with the soft one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from .losses import soft_preference_loss


@dataclass
class SoftLabelCollator(DataCollatorForPreference):
    def torch_call(self, examples):
        out = super().torch_call(examples)
        if "p_chosen" in examples[0]:
            out["p_chosen"] = torch.tensor([float(e["p_chosen"]) for e in examples])
        return out


class SoftLabelRewardTrainer(RewardTrainer):
    """`RewardTrainer` that trains on `p_chosen` when the dataset has it (and is TRL's otherwise)."""

    def __init__(self, *args, data_collator=None, **kwargs):
        if data_collator is None:
            tok = kwargs.get("processing_class")
            pad = getattr(tok, "pad_token_id", None)
            if pad is None and tok is not None:
                pad = tok.eos_token_id
            data_collator = SoftLabelCollator(pad_token_id=pad)
        super().__init__(*args, data_collator=data_collator, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "p_chosen" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "p_chosen"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        p_chosen = inputs.pop("p_chosen", None)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if p_chosen is not None:
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = soft_preference_loss(chosen, rejected, p_chosen.to(chosen.device))
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
        return (loss, outputs) if return_outputs else loss


def _render(tokenizer, conversation) -> str:
    return (
        tokenizer.apply_chat_template(conversation, tokenize=False) if isinstance(conversation, list) else conversation
    )


@torch.inference_mode()
def score_conversations(model, tokenizer, conversations: list, batch_size: int = 8) -> list[float]:
    """Reward-model scores of whole conversations (or plain strings), in input order."""
    model.eval()
    device = next(model.parameters()).device
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    scores: list[float] = []
    for s in range(0, len(conversations), batch_size):
        texts = [_render(tokenizer, c) for c in conversations[s : s + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        scores += model(**enc).logits.squeeze(-1).float().tolist()
    return scores


def pairwise_accuracy(model, tokenizer, rows: list[dict], batch_size: int = 8) -> dict[str, float]:
    """Held-out accuracy (chosen scored above rejected) and mean margin of a reward model."""
    convs = []
    for r in rows:
        for side in ("chosen", "rejected"):
            convs.append(r["prompt"] + r[side] if isinstance(r["prompt"], list) else r["prompt"] + r[side])
    scores = score_conversations(model, tokenizer, convs, batch_size)
    chosen, rejected = scores[0::2], scores[1::2]
    margins = [c - r for c, r in zip(chosen, rejected)]
    n = max(1, len(rows))
    return {"accuracy": sum(m > 0 for m in margins) / n, "mean_margin": sum(margins) / n, "pairs": len(rows)}


def load_reward_model(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return model, tok


def mean_policy_reward(
    policy: str, reward_model: str, prompts: list[list[dict]], max_new_tokens: int = 48, backend: str = "transformers"
) -> float:
    """Greedy answers of `policy` to `prompts` (on any generation backend), scored by
    `reward_model` (a classifier, so always on transformers): the number RL should raise."""
    from cai.generators import BackendConfig, SamplingParams, load_backend

    generator = load_backend(BackendConfig(backend=backend, model=policy))
    try:
        answers = generator.generate(prompts, SamplingParams(temperature=0, max_new_tokens=max_new_tokens))
    finally:
        generator.close()
    model, tok = load_reward_model(reward_model)
    convs = [p + [{"role": "assistant", "content": a[0].text}] for p, a in zip(prompts, answers) if not a[0].error]
    scores = score_conversations(model, tok, convs)
    return sum(scores) / max(1, len(scores))
