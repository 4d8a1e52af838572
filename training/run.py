"""Thin drivers over TRL's trainers: load data and model, build TRL's config, train, save.

Each returns a small summary dict (and writes it as `summary.json` beside the checkpoints) so
the CLI, the demo and the report read the same numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cai.constitution import load_constitution
from cai.core.errors import UserError
from cai.generators import load_backend, resolve_model

from .config import COMMON_DEFAULTS, GuardrailsConfig, JudgeConfig, TrainConfig, trl_args
from .guardrails import HELD_OUT, Guardrails
from .mixture import Kind, load_mixture
from .progress import use_rich_progress


def _tokenizer(model_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _peft(cfg: TrainConfig, task_type: str):
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear", task_type=task_type)


def _data(cfg: TrainConfig, kind: Kind, keep: list[str] | None = None, held_out: bool = True):
    """(train, held-out or None, make-up for summary.json) of the config's source or mixture."""
    seed = int(cfg.trl.get("seed", 42))
    soft = cfg.soft_labels
    train, makeup = load_mixture(cfg.sources, kind, seed, soft, keep)
    test = None
    if cfg.eval and held_out:
        test, held = load_mixture(cfg.sources, kind, seed, soft, keep, held_out=True)
        if test is not None:
            if soft and "p_chosen" in train.column_names and "p_chosen" not in test.column_names:
                test = test.add_column("p_chosen", [1.0] * len(test))
            elif "p_chosen" in test.column_names and "p_chosen" not in train.column_names:
                test = test.remove_columns(["p_chosen"])
            makeup["held_out"] = held
    return train, test, {"mixture": makeup}


def _finish(trainer, args, resume: bool, extra: dict[str, Any], after=None) -> dict[str, Any]:
    """Train (resuming if asked), save, and write `summary.json` once; `after(trainer)` adds
    numbers that need the trained model (held-out accuracy, the reward curve)."""
    out = Path(args.output_dir)
    has_ckpt = resume and any(out.glob("checkpoint-*"))
    use_rich_progress(trainer, f"train {extra.get('kind', '')}".strip())
    result = trainer.train(resume_from_checkpoint=True if has_ckpt else None)
    trainer.save_model(str(out))
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(str(out))
    summary = {"output_dir": str(out), "train_loss": result.training_loss, "steps": result.global_step, **extra}
    summary["log"] = [h for h in trainer.state.log_history if "loss" in h or any("reward" in k for k in h)]
    if after is not None:
        summary.update(after(trainer))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def train_sft(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    path = resolve_model(cfg.model)
    args = trl_args(SFTConfig, cfg, {**COMMON_DEFAULTS, "max_length": 512})
    train, test, makeup = _data(cfg, "sft")
    trainer = SFTTrainer(
        model=path,
        args=args,
        train_dataset=train,
        eval_dataset=test,
        processing_class=_tokenizer(path),
        peft_config=_peft(cfg, "CAUSAL_LM"),
    )
    return _finish(trainer, args, resume, {"kind": "sft", **makeup})


def train_reward(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from .reward import SoftLabelRewardTrainer, pairwise_accuracy

    path = resolve_model(cfg.model)
    tok = _tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = trl_args(RewardConfig, cfg, {**COMMON_DEFAULTS, "max_length": 1024})
    train, test, makeup = _data(cfg, "prefs")
    soft = cfg.soft_labels and "p_chosen" in train.column_names
    cls = SoftLabelRewardTrainer if soft else RewardTrainer
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=test,
        processing_class=tok,
        peft_config=_peft(cfg, "SEQ_CLS"),
    )
    heldout = (lambda t: {"heldout": pairwise_accuracy(t.model, tok, list(test))}) if test is not None else None
    return _finish(trainer, args, resume, {"kind": "reward", "soft_labels": soft, **makeup}, heldout)


def train_dpo(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    from trl import DPOConfig, DPOTrainer

    from .dpo import SoftLabelDPOTrainer

    path = resolve_model(cfg.model)
    args = trl_args(DPOConfig, cfg, {**COMMON_DEFAULTS, "max_length": 1024})
    train, test, makeup = _data(cfg, "prefs")
    soft = cfg.soft_labels and "p_chosen" in train.column_names  # else TRL ignores the column
    trainer = (SoftLabelDPOTrainer if soft else DPOTrainer)(
        model=path,
        args=args,
        train_dataset=train,
        eval_dataset=test,
        processing_class=_tokenizer(path),
        peft_config=_peft(cfg, "CAUSAL_LM"),
    )
    return _finish(trainer, args, resume, {"kind": "dpo", "soft_labels": soft, **makeup})


def _judge(j: JudgeConfig):
    from cai.critique.judge import make_judge

    constitution = load_constitution(j.constitution)
    return make_judge(load_backend(j.backend), constitution, j.kind, j.principles, j.seed, j.method, j.reference)


def make_reward(cfg: TrainConfig):
    """A reward model path (TRL loads it) or a constitution judge on a feedback backend."""
    if cfg.reward_model and cfg.judge:
        raise UserError("reward_model and judge: choose one reward")
    if cfg.reward_model:
        if not Path(cfg.reward_model, "config.json").exists():
            raise UserError(f"reward_model: {cfg.reward_model}: not a model folder (no config.json)")
        return cfg.reward_model
    if cfg.judge:
        return _judge(cfg.judge)
    raise UserError("rl needs a reward: set reward_model (a trained reward model) or judge (a constitution)")


def _held_out_judge(g: GuardrailsConfig | None, given=None) -> tuple[Any, str] | None:
    """The held-out judge (a function, or a reward model folder) and how summary.json names it."""
    if given is not None:
        name = given if isinstance(given, str) else getattr(given, "__name__", type(given).__name__)
        return given, f"reward model: {name}" if isinstance(given, str) else f"function: {name}"
    if g is None or (g.judge is None and g.reward_model is None):
        return None
    if g.reward_model is not None:
        if not Path(g.reward_model, "config.json").exists():
            raise UserError(f"guardrails.reward_model: {g.reward_model}: not a model folder (no config.json)")
        return g.reward_model, f"reward model: {g.reward_model}"
    j = g.judge
    return _judge(j), f"judge: {j.constitution} ({j.kind}, {j.principles} principles, {j.backend.model})"


def _watch(reward, held_out, args):
    """The reward functions with the held-out judge last, weight 0 (TRL scores and logs it, under
    the name `held_out`, and it moves nothing), and the tokenizers TRL needs for them."""
    rewards = list(reward) if isinstance(reward, list) else [reward]
    weights = list(args.reward_weights) if args.reward_weights is not None else [1.0] * len(rewards)
    if len(weights) != len(rewards):
        raise UserError(f"trl.reward_weights: {len(weights)} weights for {len(rewards)} reward functions")
    args.reward_weights = [*weights, 0.0]
    if isinstance(held_out, str):
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(held_out, num_labels=1)
        model.config.name_or_path = HELD_OUT  # the name TRL logs its reward under
        return [*rewards, model], [None] * len(rewards) + [_tokenizer(held_out)]

    def held_out_reward(prompts, completions, **kwargs):
        return held_out(prompts=prompts, completions=completions, **kwargs)

    held_out_reward.__name__ = HELD_OUT
    return [*rewards, held_out_reward], None


def train_rl(cfg: TrainConfig, resume: bool = False, reward=None, held_out=None) -> dict[str, Any]:
    """`reward`, when given, is any TRL reward (function, model or path) and replaces the config's;
    `held_out`, a reward function or a reward model folder, replaces the guardrails' held-out judge."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    g = cfg.guardrails
    judged = held_out is not None or (g is not None and (g.judge is not None or g.reward_model is not None))
    if g is not None and g.divergence_steps is not None and not judged:
        raise UserError("guardrails.divergence_steps: needs a held-out judge (guardrails.judge or reward_model)")
    config_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if cfg.algorithm == "rloo" else (GRPOConfig, GRPOTrainer)
    defaults = {**COMMON_DEFAULTS, "num_generations": 4, "max_completion_length": 64, "per_device_train_batch_size": 4}
    args = trl_args(config_cls, cfg, defaults)
    if g is not None and g.length_unit == "tokens" and (g.length_bound or 0) >= args.max_completion_length:
        raise UserError(
            f"guardrails.length_bound: {g.length_bound:g} tokens is never passed: "
            f"trl.max_completion_length is {args.max_completion_length}"
        )
    path = resolve_model(cfg.model)
    reward = reward if reward is not None else make_reward(cfg)
    watched = _held_out_judge(g, held_out)
    processing = None
    if watched is not None:
        reward, processing = _watch(reward, watched[0], args)
    judges = [j for j in (cfg.judge, g.judge if g is not None else None) if j is not None]
    keep = list(dict.fromkeys(j.reference for j in judges if j.reference))
    train, _, makeup = _data(cfg, "prompts", keep, held_out=False)
    trainer = trainer_cls(
        model=path,
        reward_funcs=reward,
        args=args,
        train_dataset=train,
        processing_class=_tokenizer(path),
        reward_processing_classes=processing,
        peft_config=_peft(cfg, "CAUSAL_LM"),
    )
    guard = None
    if g is not None:
        guard = Guardrails(g, watched[1] if watched is not None else None)
        trainer.add_callback(guard)

    def curve(t) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reward_curve": [h["reward"] for h in t.state.log_history if "reward" in h and math.isfinite(h["reward"])]
        }
        if guard is not None:
            out["guardrails"] = guard.summary()
            if guard.stopped is not None:
                a = guard.stopped
                out["stopped"] = f"guardrail {a.alarm} alarm at step {a.step}: {a.message}"
        return out

    return _finish(trainer, args, resume, {"kind": "rl", "algorithm": cfg.algorithm, **makeup}, curve)
