"""Importers for principle files users already have.

Two families are common in the wild. The Constitutional AI paper released three files: the
critique/revision instructions (`{"harmful0": {"prompt": [critique], "edit_request": revision}}`,
each text wrapped in its prompt labels such as `CritiqueRequest: ... Critique:`), the ranking
principles (a JSON list of multiple-choice questions ending in `Options:`) and the few-shot
prompts (worked examples: Human/Assistant turns, then `CritiqueRequest:`, `Critique:`,
`RevisionRequest:`, `Revision:` blocks, as a JSON list of strings or as plain text). Hugging
Face's open CAI recipe has its own JSON. Each maps onto our schema keeping the instruction texts
and dropping only the labels: our templates put the request in their own words around it, so a
kept `Critique:` would ask the model to continue a label that is no longer there.

Several files import into one constitution (`cai constitution import A.json B.json C.json`): a
few-shot example joins the principle whose critique text it uses, in any of the files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from cai.core.files import read_structured

from .errors import UserError
from .loader import validate
from .schema import Constitution

Format = Literal["auto", "cai", "cai-paper", "cai-paper-ranking", "cai-paper-few-shot", "hf-recipe"]
FORMAT_NAMES = {
    "cai": "cai principle file",
    "cai-paper": "CAI paper critique/revision instructions",
    "cai-paper-ranking": "CAI paper ranking principles",
    "cai-paper-few-shot": "CAI paper few-shot prompts",
    "hf-recipe": "open CAI recipe",
}

_LEAD_LABEL = re.compile(r"^\s*(?:critique|revision|edit|comparison)[ _-]?request\s*:\s*", re.I)
_TRAIL_LABEL = re.compile(r"\s*\n\s*(?:critique|revision|edit)\s*:\s*$", re.I)
_TRAIL_OPTIONS = re.compile(r"\s*options\s*:\s*$", re.I)
_FEW_SHOT_LABEL = re.compile(
    r"^[ \t]*(Human|Assistant|Critique ?Request|Critique|Revision ?Request|Revision)[ \t]*:[ \t]*", re.M
)
_DASHES = re.compile(r"^[ \t]*-{3,}[ \t]*$", re.M)
_BLOCK = ("critiquerequest", "critique", "revisionrequest", "revision")
_SHOWN = ("CritiqueRequest:", "Critique:", "RevisionRequest:", "Revision:")


def slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.strip()).strip("-._")
    return s or "principle"


def clean_request(text: object) -> object:
    """`\\n\\nCritiqueRequest: Identify ...\\n\\nCritique:` → `Identify ...` (non-text is left for validation)."""
    if not isinstance(text, str):
        return text
    return _TRAIL_LABEL.sub("", _LEAD_LABEL.sub("", text)).strip()


def text_id(text: str) -> str:
    """A readable id that stays the same for the same text, whatever order the file lists it in."""
    words = re.findall(r"[a-z0-9]+", text.lower())[:4]
    return f"{'-'.join(words) or 'principle'}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def _norm(text: str) -> str:
    return " ".join(text.split())


def from_cai_paper(data: object, source: str, known: dict[str, str]) -> dict:
    """`{"name": {"prompt": [critique, ...], "edit_request": revision}}` → principles."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object of critique/revision instructions")
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
            principles.append(
                {"id": pid, "critique": clean_request(critique), "revision": clean_request(entry["edit_request"])}
            )
    return {"principles": principles}


def from_cai_paper_ranking(data: object, source: str, known: dict[str, str]) -> dict:
    """`["\\nPlease choose the response that ... Options:", ...]` → comparison principles."""
    if not isinstance(data, list) or not data:
        raise UserError(f"{source}: expected a non-empty JSON list of ranking principle texts")
    principles = []
    for i, text in enumerate(data):
        if not isinstance(text, str):
            raise UserError(f"{source}: [{i}]: expected a principle text, got {type(text).__name__}")
        question = _TRAIL_OPTIONS.sub("", clean_request(text)).strip()
        principles.append({"id": text_id(question), "comparison": question})
    return {"principles": principles}


def _labelled_turns(text: str, base_line: int) -> list[tuple[str, str, int]]:
    """(label, content, line) for each labelled turn; empty turns (a trailing `Human:`) dropped."""
    marks = list(_FEW_SHOT_LABEL.finditer(text))
    turns = []
    for m, nxt in zip(marks, [*marks[1:], None]):
        content = text[m.end() : nxt.start() if nxt else len(text)].strip()
        if content:
            line = base_line + text.count("\n", 0, m.start())
            turns.append((m.group(1).replace(" ", "").lower(), content, line))
    return turns


def _examples_of(text: str, where, base_line: int = 1) -> list[dict]:
    """Worked examples in one chunk of text; a conversation may go through several rounds."""
    if _FEW_SHOT_LABEL.search(text) and text[: _FEW_SHOT_LABEL.search(text).start()].strip():
        raise UserError(f"{where(base_line)}: text before the first labelled turn (Human:, Assistant:, ...)")
    out, conv, revised = [], [], False
    turns = _labelled_turns(text, base_line)
    i = 0
    while i < len(turns):
        label, content, line = turns[i]
        if label in ("human", "assistant"):
            if revised:  # the last example is complete: a new conversation starts
                conv, revised = [], False
            conv.append({"role": "user" if label == "human" else "assistant", "content": content})
            i += 1
            continue
        got = [t[0] for t in turns[i : i + 4]]
        if tuple(got) != _BLOCK:
            k = next(k for k, b in enumerate(_BLOCK) if k >= len(got) or got[k] != b)
            raise UserError(f"{where(line)}: {_SHOWN[k]} missing (a worked example ends with {', '.join(_SHOWN)})")
        if not conv or conv[-1]["role"] != "assistant":
            raise UserError(f"{where(line)}: a critique needs a conversation that ends with an Assistant turn")
        request, critique, revision_request, revision = (t[1] for t in turns[i : i + 4])
        out.append(
            {
                "messages": list(conv),
                "critique": critique,
                "revision": revision,
                "_requests": (clean_request(request), clean_request(revision_request)),
            }
        )
        conv = [*conv[:-1], {"role": "assistant", "content": revision}]  # a further round critiques the revision
        revised, i = True, i + 4
    if conv and not revised:
        raise UserError(
            f"{where(turns[-1][2])}: a conversation with no CritiqueRequest/Critique/RevisionRequest/Revision after it"
        )
    return out


def from_cai_paper_few_shot(data: object, source: str, known: dict[str, str]) -> dict:
    """Worked critique/revision examples (a JSON list of strings, or text) → few-shot examples.

    Each example joins the principle whose critique text matches its CritiqueRequest; when no
    imported principle has that text, the example's own two requests become a new principle.
    """
    if isinstance(data, list) and data and all(isinstance(s, str) for s in data):
        examples = [ex for i, s in enumerate(data) for ex in _examples_of(s, lambda _line, i=i: f"{source}: [{i}]")]
    elif isinstance(data, str):
        examples, line = [], 1
        for chunk in _DASHES.split(data):
            examples += _examples_of(chunk, lambda n: f"{source}:{n}", line)
            line += chunk.count("\n")
    else:
        raise UserError(f"{source}: expected few-shot prompts: a JSON list of strings, or text")
    if not examples:
        raise UserError(f"{source}: no worked examples (Human/Assistant turns, then CritiqueRequest: ... Revision:)")
    principles = []
    for ex in examples:
        critique_request, revision_request = ex.pop("_requests")
        pid = known.get(_norm(critique_request))
        if pid is None:
            pid = known[_norm(critique_request)] = text_id(critique_request)
            principles.append({"id": pid, "critique": critique_request, "revision": revision_request})
        ex["principle_id"] = pid
    return {"principles": principles, "few_shot": examples}


def from_hf_recipe(data: object, source: str, known: dict[str, str]) -> dict:
    """`{"constitutions": [{"critic", "revision"}], "system_chat": [[messages]]}` → our layout.

    Each `system_chat` conversation is user, assistant, critique request, critique, revision
    request, revision; it becomes a few-shot example tied to the principle whose critique
    request it uses (when one matches).
    """
    entries = data.get("constitutions") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{source}: constitutions: expected a non-empty list")
    principles, by_text = [], {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"critic", "revision"} <= entry.keys():
            raise UserError(f"{source}: constitutions[{i}]: expected an object with 'critic' and 'revision'")
        pid = f"principle-{i:02d}"
        principles.append(
            {"id": pid, "critique": clean_request(entry["critic"]), "revision": clean_request(entry["revision"])}
        )
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
    return {"principles": principles, "few_shot": few_shot}


def _from_cai(data: object, source: str, known: dict[str, str]) -> dict:
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping with name and principles")
    return dict(data)


CONVERTERS = {
    "cai": _from_cai,
    "cai-paper": from_cai_paper,
    "cai-paper-ranking": from_cai_paper_ranking,
    "cai-paper-few-shot": from_cai_paper_few_shot,
    "hf-recipe": from_hf_recipe,
}


def detect_format(data: object) -> str:
    if isinstance(data, dict):
        if "principles" in data or "traits" in data:
            return "cai"
        if "constitutions" in data:
            return "hf-recipe"
        if data and all(isinstance(v, dict) and "edit_request" in v for v in data.values()):
            return "cai-paper"
    if isinstance(data, list) and data and all(isinstance(s, str) for s in data):
        return "cai-paper-few-shot" if any(_is_few_shot(s) for s in data) else "cai-paper-ranking"
    if isinstance(data, str) and _is_few_shot(data):
        return "cai-paper-few-shot"
    raise UserError(
        "unrecognised layout: expected a cai principle file, one of the CAI paper's prompt files "
        "(critique/revision instructions, ranking principles, few-shot prompts) or the open CAI recipe's JSON"
    )


def _is_few_shot(text: str) -> bool:
    return any(m.group(1).replace(" ", "").lower() == "critiquerequest" for m in _FEW_SHOT_LABEL.finditer(text))


def _read(path: str | Path) -> tuple[object, object]:
    """Structured files parse as YAML/JSON; anything else (a `.txt` of few-shot prompts) is text."""
    p = Path(path)
    if p.suffix.lower() in (".json", ".yaml", ".yml"):
        return read_structured(p)
    try:
        return p.read_text(encoding="utf-8"), None
    except FileNotFoundError:
        raise UserError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, expected a file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def import_constitution(
    path: str | Path | Sequence[str | Path], fmt: Format = "auto", name: str | None = None
) -> Constitution:
    """Convert one file, or several into one constitution (their principles and examples together)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        raise UserError("no file to import")
    parts = []
    for p in paths:
        data, node = _read(p)
        try:
            kind = detect_format(data) if fmt == "auto" else fmt
        except UserError as e:
            raise UserError(f"{p}: {e}") from None
        parts.append((str(p), kind, data, node))
    if len(parts) == 1 and parts[0][1] == "cai":
        source, _, data, node = parts[0]
        return validate(data, node, source)
    merged: dict = {}
    known: dict[str, str] = {}  # critique text → principle id, across files
    # Principle files first, so few-shot examples find their principle whatever the argument order.
    for source, kind, data, _ in sorted(parts, key=lambda part: part[1] == "cai-paper-few-shot"):
        converted = CONVERTERS[kind](data, source, known)
        for key, value in converted.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged.setdefault(key, value)
        for principle in converted.get("principles") or []:
            if isinstance(principle, dict) and isinstance(principle.get("critique"), str):
                known.setdefault(_norm(principle["critique"]), principle.get("id"))
    merged["name"] = name or merged.get("name") or Path(paths[0]).stem
    merged.setdefault(
        "description",
        "Imported from " + ", ".join(f"{Path(s).name} ({FORMAT_NAMES[k]})" for s, k, _, _ in parts) + ".",
    )
    # The converted dict has no lines of its own; problems then name the field and the source file(s).
    return validate(merged, None, ", ".join(s for s, _, _, _ in parts))
