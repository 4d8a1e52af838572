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
