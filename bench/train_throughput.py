"""Reward-model training speed: our soft-label trainer against plain TRL `RewardTrainer`.

Same model, same data, same steps, in one process, alternating so machine drift hits both.
Prints samples/s of each and the ratio (soft / TRL; the soft loss should cost nothing).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time


def pairs(n: int) -> list[dict]:
    rng = random.Random(0)
    topics = ["the garden", "my car", "a recipe", "the weather", "my exam", "a movie", "the rent", "a trip"]
    return [
        {
            "prompt": [{"role": "user", "content": f"Can you help with {t}?"}],
            "chosen": [{"role": "assistant", "content": f"Gladly. Here is careful help with {t}, step by step."}],
            "rejected": [{"role": "assistant", "content": f"No. {t} is not my problem."}],
            "p_chosen": rng.uniform(0.55, 1.0),
        }
        for t in (rng.choice(topics) for _ in range(n))
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from cai.generators import prepare_default_model
    from cai.training.config import device_defaults
    from cai.training.reward import SoftLabelRewardTrainer

    path = prepare_default_model()
    tok = AutoTokenizer.from_pretrained(path)
    data = Dataset.from_list(pairs(args.steps * args.batch_size))
    hard = data.remove_columns(["p_chosen"])

    def measure(cls, ds) -> float:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        cfg = RewardConfig(
            output_dir=tempfile.mkdtemp(),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            report_to=[],
            save_strategy="no",
            logging_steps=args.steps,
            disable_tqdm=True,
            **device_defaults(),
        )
        trainer = cls(model=model, args=cfg, train_dataset=ds, processing_class=tok)
        t0 = time.perf_counter()
        trainer.train()
        return args.steps * args.batch_size / (time.perf_counter() - t0)

    ours, theirs = [], []
    for _ in range(args.repeats):
        theirs.append(measure(RewardTrainer, hard))
        ours.append(measure(SoftLabelRewardTrainer, data))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"model: embedded default  pairs/step: {args.batch_size}  steps: {args.steps}  repeats: {args.repeats}")
    print(f"TRL RewardTrainer        {b:6.2f} samples/s  (runs: {', '.join(f'{x:.2f}' for x in theirs)})")
    print(f"SoftLabelRewardTrainer   {a:6.2f} samples/s  (runs: {', '.join(f'{x:.2f}' for x in ours)})")
    print(f"ratio soft/TRL: {a / b:.3f}")


if __name__ == "__main__":
    main()
