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

The paper also released few-shot prompts for its ranking: pairs with the better and the worse
reply (`RLMadisonFewShotPrompts.json`: `[{"prompt": "\\n\\nHuman: ...\\n\\nAssistant:", "corrects":
[...], "incorrects": [...]}]`) and the same with the argument written out before the letter
(`RLMadisonPrecogFewShotPrompts.json`: `[{"prompt": "Human: Consider the following conversation
...\\n\\nH: ...\\n\\n{}\\n (A) [[[...]]]\\n (B) [[[...]]]\\n\\nAssistant: Let's think step by step:
...\\n\\nHuman:\\nSo the answer is: (B)"}]`, `{}` standing where the principle goes). Both become
comparison examples for every principle; the argument is kept, its letters written as `(better)`
and `(worse)` so it reads right wherever the better reply is shown.

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

Format = Literal[
    "auto",
    "cai",
    "cai-paper",
    "cai-paper-ranking",
    "cai-paper-few-shot",
    "cai-paper-ranking-examples",
    "cai-paper-ranking-cot-examples",
    "hf-recipe",
]
FORMAT_NAMES = {
    "cai": "cai principle file",
    "cai-paper": "CAI paper critique/revision instructions",
    "cai-paper-ranking": "CAI paper ranking principles",
    "cai-paper-few-shot": "CAI paper few-shot prompts",
    "cai-paper-ranking-examples": "CAI paper ranking few-shot prompts",
    "cai-paper-ranking-cot-examples": "CAI paper ranking few-shot prompts with reasoning",
    "hf-recipe": "open CAI recipe",
}
# The one principle a file of examples alone is given, so that it stands as a constitution.
EXAMPLES_ONLY = {
    "id": "helpful-honest-harmless",
    "comparison": "Which of these assistant replies is more helpful, more honest and less harmful?",
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


_CHAT_LABEL = re.compile(r"^[ \t]*(Human|Assistant|H|A)[ \t]*:[ \t]*", re.M)
_OPTIONS = re.compile(r"\(A\)\s*\[\[\[(?P<a>.*?)\]\]\]\s*\(B\)\s*\[\[\[(?P<b>.*?)\]\]\]", re.S)
_ARGUED = re.compile(
    r"^\s*Assistant:\s*(?P<reasoning>.*?)\n\s*Human:\s*So the answer is:\s*\((?P<letter>[AB])\)\s*$", re.S
)
_STEP_BY_STEP = re.compile(r"^let'?s think step by step\s*:?\s*", re.I)
_NAMED_LETTER = re.compile(r"\(([AB])\)|\b((?i:option|reply|response|answer|choice))\s+([AB])\b")


def _turns(text: str, where: str, human: str, assistant: str) -> list[dict]:
    """A conversation written with turn labels (`Human:`/`Assistant:` or `H:`/`A:`) as chat
    messages; an empty last turn (the `Assistant:` a prompt ends on) is dropped."""
    text = text.strip()
    marks = [m for m in _CHAT_LABEL.finditer(text) if m.group(1) in (human, assistant)]
    if not marks or text[: marks[0].start()].strip():
        raise UserError(f"{where}: expected a conversation of {human}: and {assistant}: turns")
    turns = []
    for m, nxt in zip(marks, [*marks[1:], None]):
        content = text[m.end() : nxt.start() if nxt else len(text)].strip()
        if content:
            turns.append({"role": "user" if m.group(1) == human else "assistant", "content": content})
    if not turns or turns[-1]["role"] != "user":
        raise UserError(f"{where}: the conversation must end with the human's message")
    return turns


def _conversation(turns: list[dict]) -> dict:
    return {"prompt": turns[0]["content"]} if len(turns) == 1 else {"messages": turns}


def from_cai_paper_ranking_examples(data: object, source: str, known: dict[str, str]) -> dict:
    """`[{"prompt": "Human: ... Assistant:", "corrects": [...], "incorrects": [...]}]` → comparison
    examples, one per (correct, incorrect) pair of each prompt."""
    if not isinstance(data, list) or not data:
        raise UserError(f"{source}: expected a non-empty JSON list of ranking examples")
    examples = []
    for i, entry in enumerate(data):
        where = f"{source}: [{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise UserError(f"{where}: expected an object with 'prompt', 'corrects' and 'incorrects'")
        replies = [entry.get(k) for k in ("corrects", "incorrects")]
        for key, got in zip(("corrects", "incorrects"), replies):
            if not isinstance(got, list) or not got or not all(isinstance(r, str) and r.strip() for r in got):
                raise UserError(f"{where}.{key}: expected a non-empty list of replies")
        conversation = _conversation(_turns(entry["prompt"], f"{where}.prompt", "Human", "Assistant"))
        for better in replies[0]:
            for worse in replies[1]:
                examples.append({**conversation, "better": better.strip(), "worse": worse.strip()})
    return {"comparison_examples": examples}


def letters_as_marks(reasoning: str, better: str) -> str:
    """A written argument's letters as `(better)` and `(worse)`: "option B" → "option (better)"."""

    def mark(m: re.Match) -> str:
        letter = m.group(1) or m.group(3)
        word = "(better)" if letter == better else "(worse)"
        return word if m.group(1) else f"{m.group(2)} {word}"

    return _NAMED_LETTER.sub(mark, reasoning)


def from_cai_paper_ranking_cot_examples(data: object, source: str, known: dict[str, str]) -> dict:
    """`[{"prompt": "Human: Consider ... H: ... {} (A) [[[...]]] (B) [[[...]]] Assistant: Let's think
    step by step: ... Human: So the answer is: (B)"}]` → comparison examples with their reasoning."""
    if not isinstance(data, list) or not data:
        raise UserError(f"{source}: expected a non-empty JSON list of ranking examples")
    examples = []
    for i, entry in enumerate(data):
        where = f"{source}: [{i}].prompt"
        text = entry.get("prompt") if isinstance(entry, dict) else None
        if not isinstance(text, str):
            raise UserError(f"{source}: [{i}]: expected an object with 'prompt'")
        head, sep, tail = text.partition("{}")
        if not sep:
            raise UserError(f"{where}: no {{}} where the principle goes, after the conversation")
        body = head.strip()
        if not body.startswith("Human:") or "\n\n" not in body:
            raise UserError(f"{where}: expected 'Human:', a line introducing the conversation, then the conversation")
        turns = _turns(body.split("\n\n", 1)[1], where, "H", "A")
        options = _OPTIONS.search(tail)
        if options is None or tail[: options.start()].strip():
            raise UserError(f"{where}: expected the two replies after {{}}, as (A) [[[...]]] and (B) [[[...]]]")
        argued = _ARGUED.match(tail[options.end() :])
        if argued is None:
            raise UserError(
                f"{where}: expected 'Assistant:' with the reasoning, then 'Human:' and 'So the answer is: (A)'"
            )
        letter = argued.group("letter")
        better, worse = (
            (options.group("a"), options.group("b")) if letter == "A" else (options.group("b"), options.group("a"))
        )
        reasoning = letters_as_marks(_STEP_BY_STEP.sub("", argued.group("reasoning").strip()), letter).strip()
        reasoning = reasoning[:1].upper() + reasoning[1:]  # the cue it continued is gone
        example = {**_conversation(turns), "better": better.strip(), "worse": worse.strip()}
        examples.append(example | ({"reasoning": reasoning} if reasoning else {}))
    return {"comparison_examples": examples}


def _from_cai(data: object, source: str, known: dict[str, str]) -> dict:
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping with name and principles")
    return dict(data)


CONVERTERS = {
    "cai": _from_cai,
    "cai-paper": from_cai_paper,
    "cai-paper-ranking": from_cai_paper_ranking,
    "cai-paper-few-shot": from_cai_paper_few_shot,
    "cai-paper-ranking-examples": from_cai_paper_ranking_examples,
    "cai-paper-ranking-cot-examples": from_cai_paper_ranking_cot_examples,
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
    if isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
        if all({"corrects", "incorrects"} <= x.keys() for x in data):
            return "cai-paper-ranking-examples"
        if all(isinstance(x.get("prompt"), str) and "[[[" in x["prompt"] for x in data):
            return "cai-paper-ranking-cot-examples"
    if isinstance(data, list) and data and all(isinstance(s, str) for s in data):
        return "cai-paper-few-shot" if any(_is_few_shot(s) for s in data) else "cai-paper-ranking"
    if isinstance(data, str) and _is_few_shot(data):
        return "cai-paper-few-shot"
    raise UserError(
        "unrecognised layout: expected a cai principle file, one of the CAI paper's prompt files "
        "(critique/revision instructions, ranking principles, few-shot prompts, ranking few-shot prompts) "
        "or the open CAI recipe's JSON"
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
        if "extends" in data:  # a layer: its merged constitution
            from .layers import resolve_layers

            return resolve_layers(Path(source), data, node).constitution
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
    if merged.get("comparison_examples") and not merged.get("principles") and not merged.get("traits"):
        merged["principles"] = [dict(EXAMPLES_ONLY)]  # examples alone: one question for them to sit under
    merged["name"] = name or merged.get("name") or Path(paths[0]).stem
    merged.setdefault(
        "description",
        "Imported from " + ", ".join(f"{Path(s).name} ({FORMAT_NAMES[k]})" for s, k, _, _ in parts) + ".",
    )
    # The converted dict has no lines of its own; problems then name the field and the source file(s).
    return validate(merged, None, ", ".join(s for s, _, _, _ in parts))
