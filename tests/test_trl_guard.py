"""The soft-label DPO trainer's check of the TRL internals it hooks into: silent on the TRL that is
installed, one clear line naming the versions on classes shaped as a later TRL might shape them."""

import tomllib
from pathlib import Path

import pytest
import trl
from packaging.requirements import Requirement
from transformers import Trainer
from transformers.modeling_outputs import CausalLMOutput
from trl import DPOTrainer

from cai.core.errors import UserError
from cai.training.dpo import SUPPORTED_TRL, check_trl_internals


def test_installed_trl_passes_and_is_the_pinned_range():
    check_trl_internals()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    [pin] = [Requirement(r) for r in pyproject["project"]["dependencies"] if Requirement(r).name == "trl"]
    assert str(pin.specifier) == str(Requirement(f"trl{SUPPORTED_TRL}").specifier)
    assert pin.specifier.contains(trl.__version__)


class LossInComputeLoss(Trainer):
    """A DPO trainer that computes its loss in `compute_loss` itself, with no `_compute_loss`."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return model(**inputs).loss

    def compute_ref_log_probs(self, model, inputs):
        return model(**inputs).loss


class ExtraArgument(DPOTrainer):
    def _compute_loss(self, model, inputs, return_outputs, num_items_in_batch):
        return super()._compute_loss(model, inputs, return_outputs)


class LossElsewhere(DPOTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return self._preference_loss(model, inputs, return_outputs)

    def _preference_loss(self, model, inputs, return_outputs):
        return super()._compute_loss(model, inputs, return_outputs)


@pytest.mark.parametrize(
    "trainer, output, says",
    [
        (LossInComputeLoss, None, "has no LossInComputeLoss._compute_loss"),
        (
            ExtraArgument,
            None,
            "changed ExtraArgument._compute_loss(self, model, inputs, return_outputs, num_items_in_batch), "
            "expected (self, model, inputs, return_outputs)",
        ),
        (LossElsewhere, None, "no longer computes LossElsewhere's loss in _compute_loss"),
        (DPOTrainer, CausalLMOutput, "has no log_probs field in CausalLMOutput"),
    ],
)
def test_moved_internals_are_one_clear_line(trainer, output, says):
    with pytest.raises(UserError) as err:
        check_trl_internals(trainer, *([output] if output else []))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"soft-label DPO supports trl {SUPPORTED_TRL}, but the installed trl {trl.__version__} ")
    assert says in message and "soft_labels: false" in message
