import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def default_model_dir():
    from cai.generators.default_model import prepare_default_model

    return prepare_default_model()


@pytest.fixture(scope="session")
def hf_backend(default_model_dir):
    """The embedded model on the transformers backend, loaded once for the whole session."""
    from cai.generators import load_backend

    backend = load_backend("transformers")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, default_model_dir):
    """A two-layer Llama on the embedded model's tokenizer: trains and answers in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
