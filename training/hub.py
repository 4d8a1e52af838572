"""Publishing an export: each config (sft, prefs, prompts) becomes a hub dataset config."""

from __future__ import annotations

from pathlib import Path

from cai.constitution import UserError


def push_export(export_dir: Path, repo_id: str) -> None:
    from datasets import load_dataset

    for kind in ("sft", "prefs", "prompts"):
        files = {p.stem.split("_")[0]: str(p) for p in sorted(Path(export_dir).glob(f"*_{kind}.jsonl"))}
        if not files:
            continue
        try:
            load_dataset("json", data_files=files).push_to_hub(repo_id, config_name=kind)
        except Exception as e:  # network, auth: the user can act on the message
            raise UserError(f"push to {repo_id} failed: {e}") from None
