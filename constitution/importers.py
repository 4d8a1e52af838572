"""Importers for principle files users already have.

Two layouts are common in the wild: the Constitutional AI paper's released critique/revision
instructions, and the JSON used by Hugging Face's open CAI recipe. Both map onto our schema
without loss of the instruction texts; the recipe's worked conversations become few-shot examples.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from .errors import UserError
from .loader import read_structured, validate
from .schema import Constitution

Format = Literal["auto", "cai-paper", "hf-recipe", "cai"]


def slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.strip()).strip("-._")
    return s or "principle"


def from_cai_paper(data: dict, source: str, name: str) -> dict:
    """`{"name": {"prompt": [critique, ...], "edit_request": revision}}` → our layout."""
    principles = []
    for key, entry in data.items():
        where = f"{source}: {key}"
        if not isinstance(entry, dict) or "prompt" not in entry or "edit_request" not in entry:
            raise UserError(f"{where}: expected an object with 'prompt' and 'edit_request'")
        prompts = entry["prompt"] if isinstance(entry["prompt"], list) else [entry["prompt"]]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise UserError(f"{where}.prompt: expected a list of critique texts")
        for i, critique in enumerate(prompts):
            pid = slug(key) if len(prompts) == 1 else f"{slug(key)}-{i}"
            principles.append({"id": pid, "critique": critique, "revision": entry["edit_request"]})
    return {
        "name": name,
        "description": f"Imported from {Path(source).name} (CAI paper layout).",
        "principles": principles,
    }


def from_hf_recipe(data: dict, source: str, name: str) -> dict:
    """`{"constitutions": [{"critic", "revision"}], "system_chat": [[messages]]}` → our layout.

    Each `system_chat` conversation is user, assistant, critique request, critique, revision
    request, revision; it becomes a few-shot example tied to the principle whose critique
    request it uses (when one matches).
    """
    entries = data.get("constitutions")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{source}: constitutions: expected a non-empty list")
    principles, by_text = [], {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"critic", "revision"} <= entry.keys():
            raise UserError(f"{source}: constitutions[{i}]: expected an object with 'critic' and 'revision'")
        pid = f"principle-{i:02d}"
        principles.append({"id": pid, "critique": entry["critic"], "revision": entry["revision"]})
        by_text.setdefault(str(entry["critic"]).strip(), pid)
    few_shot = []
    for j, chat in enumerate(data.get("system_chat") or []):
        roles = (
            [m.get("role") for m in chat] if isinstance(chat, list) and all(isinstance(m, dict) for m in chat) else []
        )
        if len(roles) < 6 or roles[:6] != ["user", "assistant"] * 3:
            raise UserError(
                f"{source}: system_chat[{j}]: expected user/assistant turns: question, answer, "
                "critique request, critique, revision request, revision"
            )
        example = {
            "messages": [{"role": m["role"], "content": m["content"]} for m in chat[:2]],
            "critique": chat[3]["content"],
            "revision": chat[5]["content"],
        }
        pid = by_text.get(str(chat[2]["content"]).strip())
        if pid:
            example["principle_id"] = pid
        few_shot.append(example)
    return {
        "name": name,
        "description": f"Imported from {Path(source).name} (open CAI recipe layout).",
        "principles": principles,
        "few_shot": few_shot,
    }


def detect_format(data: object) -> Format:
    if isinstance(data, dict):
        if "principles" in data or "traits" in data:
            return "cai"
        if "constitutions" in data:
            return "hf-recipe"
        if data and all(isinstance(v, dict) and "edit_request" in v for v in data.values()):
            return "cai-paper"
    raise UserError(
        "unrecognised layout: expected a cai principle file, the CAI paper's JSON or the open CAI recipe's JSON"
    )


def import_constitution(path: str | Path, fmt: Format = "auto", name: str | None = None) -> Constitution:
    source = str(path)
    data, node = read_structured(path)
    try:
        kind = detect_format(data) if fmt == "auto" else fmt
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    if kind == "cai":
        return validate(data, node, source)
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object at the top level")
    name = name or Path(source).stem
    converted = from_cai_paper(data, source, name) if kind == "cai-paper" else from_hf_recipe(data, source, name)
    # The converted dict has no lines of its own; problems then name the field and the source file.
    return validate(converted, None, source)
