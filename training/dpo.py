"""DPO on soft labels.

TRL's DPO loss, −log σ(β·h) with h the policy's log-ratio margin of chosen over rejected
(h = [log π(c) − log π_ref(c)] − [log π(r) − log π_ref(r)]), is a hard target: chosen is better,
for certain. Our pairs carry `p_chosen`, the feedback model's probability that it is, and DPO
should aim at that instead: −[p·log σ(βh) + (1 − p)·log σ(−βh)]. At p = 1 this is TRL's loss;
at p = 0.5 it is lowest at h = 0, so a pair the judge could not separate leaves the policy's
preference where the reference had it rather than teaching a coin flip as fact.

TRL computes h inside one long loss method with no hook for the target. Since
−log σ(−x) = −log σ(x) + x, the soft loss is TRL's plus (1 − p)·β·h. So TRL does all of its own
work (forward passes, reference, metrics) and this trainer adds that one term, with h rebuilt
from the per-token log-probs of the very forward passes TRL runs, caught with forward hooks.

That leans on TRL's internals: the private `_compute_loss` that `compute_loss` delegates to, and
the `log_probs` field of its fused LM head's output. A TRL release that moves them would fail
mid-training, or worse train on hard labels without a word, so `check_trl_internals` looks for
them before a trainer is built and names the supported TRL range when they are gone.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
import trl
from trl import DPOTrainer

from cai.core.errors import UserError

# The TRL releases whose internals this module was written against; pyproject.toml pins the same.
SUPPORTED_TRL = ">=1.16,<1.17"


def _moved(what: str) -> UserError:
    return UserError(
        f"soft-label DPO supports trl {SUPPORTED_TRL}, but the installed trl {trl.__version__} {what}; "
        f"install a supported trl (pip install 'trl{SUPPORTED_TRL}') or set soft_labels: false"
    )


try:
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import FusedCausalLMOutput
except ImportError as e:
    raise _moved(f"lacks what it imports ({e})") from None

# What this module calls and reads, as TRL defines them.
_HOOKS = {
    "_compute_loss": ["self", "model", "inputs", "return_outputs"],
    "compute_ref_log_probs": ["self", "model", "inputs"],
}
_STATE = ("beta", "loss_types", "loss_weights", "precompute_ref_logps", "ref_model", "accelerator")


def check_trl_internals(trainer: type = DPOTrainer, output: type = FusedCausalLMOutput) -> None:
    """Raise one clear line unless `trainer` and its fused LM head `output` are as this module expects."""
    name = trainer.__name__
    for method, params in _HOOKS.items():
        found = getattr(trainer, method, None)
        if not callable(found):
            raise _moved(f"has no {name}.{method}")
        got = list(inspect.signature(found).parameters)
        if got != params:
            raise _moved(f"changed {name}.{method}({', '.join(got)}), expected ({', '.join(params)})")
    outer = getattr(trainer, "compute_loss", None)
    if "_compute_loss" not in getattr(getattr(outer, "__code__", None), "co_names", ()):
        raise _moved(f"no longer computes {name}'s loss in _compute_loss")
    if not dataclasses.is_dataclass(output) or "log_probs" not in {f.name for f in dataclasses.fields(output)}:
        raise _moved(f"has no log_probs field in {output.__name__}")


@dataclass
class SoftLabelDPOCollator(DataCollatorForPreference):
    """TRL's preference collator, passing `p_chosen` through as a tensor when the rows have it."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        if "p_chosen" in examples[0]:
            out["p_chosen"] = torch.tensor([float(e["p_chosen"]) for e in examples])
        return out


def check_soft_dpo_args(args) -> None:
    """The added term is exact only where TRL's loss is the plain sigmoid of β·h; refuse the rest."""
    if "sigmoid" not in args.loss_type:
        raise UserError(f"trl.loss_type: soft labels need the 'sigmoid' DPO loss (got {args.loss_type})")
    if args.f_divergence_type != "reverse_kl":
        raise UserError(f"trl.f_divergence_type: soft labels need 'reverse_kl' (got {args.f_divergence_type!r})")
    if args.ld_alpha is not None:
        raise UserError("trl.ld_alpha: not supported with soft labels (set soft_labels: false to use it)")
    if args.use_weighting:
        raise UserError("trl.use_weighting: not supported with soft labels (set soft_labels: false to use it)")


class SoftLabelDPOTrainer(DPOTrainer):
    """`DPOTrainer` that trains towards `p_chosen` when the batch has it (and is TRL's otherwise)."""

    def __init__(self, *args, **kwargs):
        check_trl_internals()
        if kwargs.get("args") is not None:
            check_soft_dpo_args(kwargs["args"])
        super().__init__(*args, **kwargs)
        missing = [a for a in _STATE if not hasattr(self, a)]
        if missing:
            raise _moved(f"does not set DPOTrainer.{missing[0]}")
        collator = self.data_collator
        if type(collator) is DataCollatorForPreference:  # TRL built it from the tokenizer; keep its settings
            fields = {f.name: getattr(collator, f.name) for f in dataclasses.fields(collator)}
            self.data_collator = SoftLabelDPOCollator(**fields)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "p_chosen" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "p_chosen"]

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != "p_chosen"})

    def _compute_loss(self, model, inputs, return_outputs):
        p_chosen = inputs.pop("p_chosen", None)
        if p_chosen is None:
            return super()._compute_loss(model, inputs, return_outputs)
        seen: list[torch.Tensor] = []

        def keep(_module, _args, output):
            log_probs = getattr(output, "log_probs", None)
            if log_probs is not None:
                seen.append(log_probs)

        # The policy's forward comes first, then (unless precomputed) the reference's: TRL's order.
        modules = [self.accelerator.unwrap_model(model)]
        if self.ref_model is not None:
            modules.append(self.accelerator.unwrap_model(self.ref_model))
        handles = [m.register_forward_hook(keep) for m in modules]
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            for h in handles:
                h.remove()
        loss, outputs = result if return_outputs else (result, None)
        margin = self._margin(seen, inputs)
        weight = sum(w for t, w in zip(self.loss_types, self.loss_weights) if t == "sigmoid")
        loss = loss + weight * ((1 - p_chosen.to(margin)) * self.beta * margin).mean()
        return (loss, outputs) if return_outputs else loss

    def _margin(self, seen: list[torch.Tensor], inputs) -> torch.Tensor:
        """h per pair, summed over completion tokens as TRL sums them (masked positions are zero)."""
        wanted = 1 if self.precompute_ref_logps else 2
        if len(seen) < wanted:
            raise RuntimeError(f"expected {wanted} log-prob forward passes from DPOTrainer, saw {len(seen)}")
        seq_len = inputs["completion_mask"].size(1) - 1
        chosen, rejected = seen[0][:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = seen[1][:, -seq_len:].sum(dim=1).detach().chunk(2, dim=0)
        return (chosen - ref_chosen.to(chosen)) - (rejected - ref_rejected.to(chosen))
