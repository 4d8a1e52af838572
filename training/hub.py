"""Publishing an export: each config (sft, prefs, prompts) becomes a hub dataset config."""

from __future__ import annotations

from pathlib import Path

from cai.core.errors import UserError

from .export_files import split_files


def push_export(export_dir: Path, repo_id: str) -> None:
    from datasets import load_dataset

    for kind in ("sft", "prefs", "prompts"):
        if not any(split_files(Path(export_dir), split, kind) for split in ("train", "test")):
            continue
        try:
            load_dataset(str(export_dir), kind).push_to_hub(repo_id, config_name=kind)
        except Exception as e:  # network, auth: the user can act on the message
            raise UserError(f"push to {repo_id} failed: {e}") from None
