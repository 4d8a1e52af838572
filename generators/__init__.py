"""Model backends behind one interface, the embedded default model, and generation stages."""

# Installed as cai.generators: a bare `import generators` must not shadow a user's own module.
if __name__ != "cai.generators":
    raise ImportError(f"import cai.generators, not {__name__}")

from .backends import Backend, BackendConfig, backend_names, load_backend, register_backend
from .default_model import prepare_default_model, resolve_model
from .types import Chat, ChoiceScores, Completion, Prompt, SamplingParams

__all__ = [
    "Backend",
    "BackendConfig",
    "Chat",
    "ChoiceScores",
    "Completion",
    "Prompt",
    "SamplingParams",
    "backend_names",
    "load_backend",
    "prepare_default_model",
    "register_backend",
    "resolve_model",
]
