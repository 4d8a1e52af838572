"""How well does a trained reward model order human-labelled pairs?

The reward model is a classifier, so it is read through transformers directly rather than
through a generation backend.
"""

from __future__ import annotations

from .pairs import LabeledPair


def evaluate_reward_model(model_dir: str, pairs: list[LabeledPair], batch_size: int = 8) -> dict:
    """Pairwise accuracy and mean margin (chosen minus rejected score) of a trained reward model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai.training.reward import pairwise_accuracy

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = [
        {
            "prompt": p.context,
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]
    return pairwise_accuracy(model, tok, rows, batch_size)
