"""The row layouts other people publish, read in one place.

Seed queries, evaluation pairs, training mixtures and red-team prompts all arrive in layouts
someone else chose:

- HH-RLHF transcripts: `{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}`; the two
  share every turn but the last Assistant turn, the answer being compared;
- TRL's conversational formats: `messages`; `prompt`/`completion`; `prompt`/`chosen`/`rejected`
  as message lists (or strings), or the implicit-prompt form with whole `chosen`/`rejected`
  conversations; and the plain string forms;
- the Constitutional AI paper's multiple-choice evaluations: a `prompt` holding a conversation, a
  question and options `(A) ...`, `(B) ...`, `corrects`/`incorrects` naming option letters, and in
  the pairwise files `text_correct`/`text_incorrect` transcripts ending in the right and wrong answer;
  in its classification files the options rate the conversation (harmful or ethical, which harm);
- the open CAI recipe's rows, which are TRL's conversational ones.

Every reader here raises `Skip` for a well-formed row that holds nothing usable (its reason is
counted and shown) and `Malformed` for one whose fields have the wrong shape; the caller adds the
file and line, and decides whether a malformed row stops the load (an eval file) or is skipped
(one row among millions of a training mixture).
"""

from __future__ import annotations

import re
from typing import Any

Triple = tuple[list[dict], str, str]  # (conversation ending with the user's turn, chosen, rejected)

_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_OPTION = re.compile(r"^[ \t]*\(([A-Z])\)[ \t]*", re.M)
_BRACKETED = re.compile(r"^[ \t]*\(([A-Z])\)[ \t]*\[\[\[(.*?)\]\]\]", re.M | re.S)
_ANSWER_CUE = re.compile(r"\n\s*The answer is:?\s*$")
_LETTER = re.compile(r"^\s*\(?([A-Z])\)?\s*$")


class Skip(Exception):
    """A well-formed row with nothing usable in it; left out and reported with `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Malformed(ValueError):
    """A row whose fields do not have the shape of any layout; the message names the field."""


# ---------------------------------------------------------------------------------------------
# HH-RLHF transcripts


def is_transcript(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    padded = "\n\n" + value.lstrip("\n")
    return padded.startswith(_HUMAN) and _ASSISTANT in padded


def parse_transcript(text: str) -> list[dict]:
    """`\\n\\nHuman: ...\\n\\nAssistant: ...` → messages."""
    parts = re.split(r"\n\n(Human|Assistant): ", "\n\n" + text.lstrip("\n"))
    msgs = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return msgs


def last_turn(text: str) -> tuple[str, str]:
    """(everything before the last Assistant turn, that turn's text)."""
    text = "\n\n" + text.lstrip("\n")
    cut = text.rfind(_ASSISTANT)
    if cut < 0:
        raise Skip("a transcript has no Assistant turn")
    return text[:cut], text[cut + len(_ASSISTANT) :].strip()


def split_transcripts(chosen: str, rejected: str) -> Triple:
    """Two transcripts that share the conversation and differ in their last Assistant turn."""
    head_c, answer_c = last_turn(chosen)
    head_r, answer_r = last_turn(rejected)
    if head_c.strip() != head_r.strip():
        raise Skip("the two transcripts differ before their last Assistant turn")
    ctx = parse_transcript(head_c)
    if not ctx or ctx[-1]["role"] != "user":
        raise Skip("the conversation before the answers does not end with a Human turn")
    return ctx, answer_c, answer_r


def first_human_turn(row: Any) -> list[dict] | None:
    """The first Human turn of an HH-RLHF row (its `chosen` transcript), or None for another layout."""
    text = row.get("chosen") if isinstance(row, dict) else None
    if not isinstance(text, str) or not text.lstrip("\n").startswith("Human:"):
        return None
    turns = parse_transcript(text)
    return turns[:1] if turns and turns[0]["role"] == "user" and turns[0]["content"] else []


# ---------------------------------------------------------------------------------------------
# Messages (TRL's conversational layout)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)


def messages(value: Any, field: str) -> list[dict]:
    """A conversation given as messages, a transcript, or one user message as a string."""
    if isinstance(value, str):
        if value.lstrip("\n").startswith("Human:"):
            return parse_transcript(value)
        return [{"role": "user", "content": value.strip()}]
    if _is_messages(value):
        return [{"role": str(m.get("role") or "user"), "content": m["content"].strip()} for m in value]
    raise Malformed(f"'{field}' must be a string or a list of {{role, content}} messages")


def reply(value: Any, field: str) -> list[dict]:
    """An answer given as a string, or as messages ending with the assistant's."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value.strip()}]
    if not _is_messages(value) or not value:
        raise Malformed(f"'{field}' must be a string or a non-empty list of {{role, content}} messages")
    msgs = messages(value, field)
    if msgs[-1]["role"] != "assistant":
        raise Malformed(f"'{field}' must end with an assistant message")
    return msgs


def until_last_user(msgs: list[dict]) -> list[dict]:
    """A conversation cut after its last user turn (what a model would be prompted with)."""
    msgs = list(msgs)
    while msgs and msgs[-1]["role"] != "user":
        msgs.pop()
    if not msgs or not msgs[-1]["content"]:
        raise Skip("no user turn to prompt with")
    return msgs


def _prompt(value: Any) -> list[dict]:
    """A preference row's prompt: messages, a plain string, or a transcript left open for the answer."""
    if isinstance(value, str):
        text = value.rstrip()
        if text.endswith("Assistant:"):
            text = text[: -len("Assistant:")].rstrip()
        value = text
    msgs = messages(value, "prompt")
    if not msgs or msgs[-1]["role"] != "user" or not msgs[-1]["content"]:
        raise Malformed("the prompt must end with a non-empty user message")
    return msgs


def preference(row: dict) -> Triple:
    """(conversation, chosen, rejected) from an HH-RLHF or TRL preference row."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    whole = _is_messages(chosen) and any(m.get("role") == "user" for m in chosen)
    if row.get("prompt") is not None and not whole:  # TRL's explicit prompt: the replies hold the answer only
        c, r = reply(chosen, "chosen"), reply(rejected, "rejected")
        return _prompt(row["prompt"]) + c[:-1], c[-1]["content"], r[-1]["content"]
    if is_transcript(chosen):
        if not isinstance(rejected, str):
            raise Malformed("'rejected' must be a transcript string like 'chosen'")
        return split_transcripts(chosen, rejected)
    if _is_messages(chosen) and _is_messages(rejected):  # implicit prompt: two whole conversations
        c, r = reply(chosen, "chosen"), reply(rejected, "rejected")
        if c[:-1] != r[:-1]:
            raise Skip("the two conversations differ before their last answer")
        if not c[:-1] or c[-2]["role"] != "user":
            raise Malformed("'chosen' has no user turn before its answer and there is no 'prompt'")
        given = row.get("prompt")  # the open CAI recipe keeps the last user turn beside them as a string
        if isinstance(given, str) and given.strip() and given.strip() != c[-2]["content"]:
            raise Skip("'prompt' is not the user turn the conversations in 'chosen' answer")
        return c[:-1], c[-1]["content"], r[-1]["content"]
    raise Malformed("no 'prompt', and 'chosen'/'rejected' are not conversations to take one from")


# ---------------------------------------------------------------------------------------------
# The CAI paper's multiple-choice evaluations


def _strings(value: Any, field: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) for i in items):
        raise Malformed(f"'{field}' must be a string or a list of strings")
    return items


def letters(value: Any, field: str) -> list[str]:
    out = []
    for item in _strings(value, field):
        m = _LETTER.match(item)
        if not m:
            raise Skip(f"'{field}' holds {item.strip()[:30]!r}, not an option letter such as ' (A)'")
        out.append(m.group(1))
    return out


def prompt_options(prompt: str) -> tuple[list[dict], str, dict[str, str]]:
    """(conversation, question, {letter: option text}) from a multiple-choice prompt.

    The options are the last run of lines `(A) ...`, `(B) ...`, ... (each optionally wrapped in
    `[[[ ]]]`, as in the paper's files); the question is the paragraph just before them; the
    conversation is the HH-style transcript before that, from its first `Human:` turn.
    """
    bracketed = list(_BRACKETED.finditer(prompt))
    if len(bracketed) >= 2:  # the paper's pairwise files: options fenced, so an answer may hold "(A)" itself
        options = {m.group(1): m.group(2).strip() for m in bracketed}
        head = prompt[: bracketed[0].start()].rstrip()
    else:
        marks = list(_OPTION.finditer(prompt))
        found = [m.group(1) for m in marks]
        start = next((j for j in range(len(marks)) if found[j:] == [chr(65 + k) for k in range(len(marks) - j)]), None)
        if start is None or len(marks) - start < 2:
            raise Skip("no options (A), (B), ... found in the prompt")
        marks = marks[start:]
        options = {}
        for m, nxt in zip(marks, [*marks[1:], None]):
            text = prompt[m.end() : nxt.start() if nxt else len(prompt)]
            options[m.group(1)] = _ANSWER_CUE.sub("", text.rstrip()).strip()
        head = prompt[: marks[0].start()].rstrip()
    cut = head.rfind("\n\n")
    question = head[cut:].strip() if cut >= 0 else head.strip()
    head = head[:cut] if cut >= 0 else ""
    human = re.search(r"(?:^|\n)Human:", head)
    if human is None:
        raise Skip("no Human/Assistant conversation before the options")
    return parse_transcript(head[human.start() :]), question, options


def is_multiple_choice(row: dict) -> bool:
    return any(k in row for k in ("corrects", "text_correct", "text_incorrect"))


def multiple_choice(row: dict) -> list[Triple]:
    """The (conversation, right answer, wrong answer) pairs of a multiple-choice row."""
    if "text_correct" in row or "text_incorrect" in row:
        if not ("text_correct" in row and "text_incorrect" in row):
            raise Malformed("'text_correct' and 'text_incorrect' come together")
        goods = _strings(row["text_correct"], "text_correct")
        bads = _strings(row["text_incorrect"], "text_incorrect")
        return [split_transcripts(g, b) for g in goods for b in bads]
    if "prompt" not in row:
        raise Malformed("'corrects' needs a 'prompt' with the options, or 'text_correct'/'text_incorrect'")
    if not isinstance(row["prompt"], str):
        raise Malformed("'prompt' must be a string holding the conversation and the options")
    correct = letters(row["corrects"], "corrects")
    conversation, _, options = prompt_options(row["prompt"])
    if not conversation or conversation[-1]["role"] != "user":
        raise Skip("the options rate the conversation instead of answering it")
    incorrect = letters(row["incorrects"], "incorrects") if "incorrects" in row else None
    if incorrect is None:
        incorrect = [k for k in options if k not in correct]
    missing = [k for k in correct + incorrect if k not in options]
    if missing:
        raise Skip(f"the prompt has no option ({missing[0]})")
    return [(conversation, options[g], options[b]) for g in correct for b in incorrect]


def classification(row: dict) -> tuple[list[dict], str, list[str], list[int]]:
    """(conversation, question, options in letter order, indices of the right ones) from a row of
    the paper's classification files (harmful or ethical; which kind of harm).

    There the options rate the whole conversation, which ends with the assistant's turn; a row
    whose options answer the conversation instead (it ends with the human's turn) is a pair of
    answers for the labeler eval, and is skipped here.
    """
    if "prompt" not in row:
        if "text_correct" in row or "text_incorrect" in row:
            raise Skip("a pairwise row without options (its answers are transcripts)")
        raise Malformed("'corrects' needs a 'prompt' with the conversation, the question and the options")
    if not isinstance(row["prompt"], str):
        raise Malformed("'prompt' must be a string holding the conversation and the options")
    if "corrects" not in row:
        raise Malformed("'prompt' needs 'corrects': the letters of the right options, such as [\" (B)\"]")
    correct = letters(row["corrects"], "corrects")
    incorrect = letters(row["incorrects"], "incorrects") if "incorrects" in row else []
    conversation, question, options = prompt_options(row["prompt"])
    if conversation[-1]["role"] != "assistant":
        raise Skip("the options answer the conversation instead of rating it")
    keys = list(options)
    if keys != [chr(65 + k) for k in range(len(keys))]:
        raise Skip("the options are not lettered (A), (B), ... in order")
    missing = [k for k in correct + incorrect if k not in options]
    if missing:
        raise Skip(f"the prompt has no option ({missing[0]})")
    if set(correct) & set(incorrect):
        raise Skip(f"option ({sorted(set(correct) & set(incorrect))[0]}) is both correct and incorrect")
    return conversation, question, [options[k] for k in keys], sorted({keys.index(k) for k in correct})


def labelled_pairs(row: Any) -> list[Triple]:
    """(conversation, chosen, rejected) triples from one row of any preference layout above."""
    if not isinstance(row, dict):
        raise Malformed("expected a JSON object")
    if is_multiple_choice(row):
        return multiple_choice(row)
    if "chosen" in row and "rejected" in row:
        return [preference(row)]
    raise Malformed(
        "expected HH-RLHF ('chosen'/'rejected' transcripts), TRL ('prompt'/'chosen'/'rejected') "
        "or multiple-choice ('prompt' with 'corrects', or 'text_correct'/'text_incorrect') fields"
    )


# ---------------------------------------------------------------------------------------------
# Conversations and prompts


def conversation(row: dict) -> list[dict]:
    """A whole conversation ending with the assistant's answer (SFT): `messages`, `prompt` and
    `completion`, or a transcript (`chosen`, the preferred one, or `text`)."""
    if row.get("messages") is not None:
        msgs = messages(row["messages"], "messages")
    elif row.get("prompt") is not None and row.get("completion") is not None:
        msgs = messages(row["prompt"], "prompt") + reply(row["completion"], "completion")
    elif is_transcript(row.get("chosen")):
        msgs = parse_transcript(row["chosen"])
    elif is_transcript(row.get("text")):
        msgs = parse_transcript(row["text"])
    else:
        raise Skip("no 'messages', 'prompt'/'completion' or transcript")
    if not msgs or msgs[-1]["role"] != "assistant" or not msgs[-1]["content"]:
        raise Skip("the conversation does not end with an assistant answer")
    return msgs


def prompt(row: dict) -> list[dict]:
    """What a model is prompted with: `prompt`, `messages`, or a transcript cut after its last Human turn."""
    for key in ("prompt", "messages", "chosen", "text"):
        if row.get(key) is not None:
            return until_last_user(messages(row[key], key))
    raise Skip("no 'prompt', 'messages' or transcript")


def query(row: Any) -> list[dict]:
    """A user's query: a string, or `text`, `messages`, `prompt`, or an HH transcript (`chosen`,
    up to its last Human turn); the last message must be a non-empty user message."""
    if isinstance(row, str):
        return [{"role": "user", "content": row.strip()}]
    if not isinstance(row, dict):
        raise Malformed("expected a JSON object")
    if "messages" in row or "prompt" in row:
        msgs = row.get("messages", row.get("prompt"))
        if isinstance(msgs, str):
            msgs = [{"role": "user", "content": msgs}]
    elif "text" in row:
        msgs = [{"role": "user", "content": row["text"]}]
    elif "chosen" in row and isinstance(row["chosen"], str):
        msgs = parse_transcript(row["chosen"])
        while msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()  # the query is the conversation up to the last human turn
    else:
        raise Malformed("expected a 'text', 'messages', 'prompt' or 'chosen' field")
    if not (isinstance(msgs, list) and msgs and _is_messages(msgs)):
        raise Malformed("messages must be a non-empty list of {role, content} objects")
    msgs = [{"role": m.get("role", "user"), "content": m["content"].strip()} for m in msgs]
    if msgs[-1]["role"] != "user" or not msgs[-1]["content"]:
        raise Malformed("the last message must be a non-empty user message")
    return msgs
