"""Do a model's critiques find real flaws, and only real ones?

SL-CAI rests on critiques: a revision can only fix what the critique names. So each critic model
critiques answers with one planted flaw and the same answers without it, through exactly the
prompts a run uses (critique/revise.py: the principle's critique request and its worked examples),
and the feedback model reads each critique with one yes/no question: does it say the reply has a
problem to fix? Per principle:

- detection: the share of flawed answers whose critique flags a flaw;
- nitpick: the share of clean answers whose critique flags one anyway;
- the gap between the pointwise judge (critique/judge.py: "does the reply meet this principle?",
  asked of the critic itself by default) and the critique on the same flawed answers: a model
  whose judge finds the flaw while its critique says nothing can tell but does not say.

Flaws come from a shipped set (evaluation/data/planted-flaws.yaml, or a user's file of its shape:
written flaws beside clean answers) and are also planted by the feedback model, which rewrites a
clean answer to break the item's principle; a plant that fails or changes nothing is counted and
left out. A critique that flags everything scores detection 1 and nitpick 1: the two rates are
read together. Every rate carries its n and 95% interval, failures are counted, never scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cai.constitution import Constitution, Principle
from cai.constitution.schema import Ident, Message, Text
from cai.core.errors import UserError
from cai.core.files import line_of, parse_text, read_structured, validate_model
from cai.core.ids import derive_seed
from cai.critique.judge import ConstitutionJudge
from cai.critique.reading import read_letters, reading_mode
from cai.critique.revise import clean_revision, critique_chat, examples_for
from cai.generators.backends.base import BackendConfig
from cai.generators.templates import render
from cai.generators.types import SamplingParams

from .behaviour import _Strict, _unique, answers, opened, read_yes
from .policy import Failures, Groups, Policy, Sampling, as_policy, feedback_config
from .stats import compare_paired, rate

PLANT_MAX_NEW_TOKENS = 160  # a plant rewrites a whole answer: as long as a run's revision


class FlawItem(_Strict):
    id: Ident
    principle: Ident = Field(description="The principle the flaw breaks: its critique request is asked.")
    prompt: Text | None = None
    messages: list[Message] | None = Field(None, min_length=1)
    clean: Text
    flawed: Text | None = Field(None, description="The answer with the flaw; without it, only a planted one.")
    flaw: Text | None = Field(None, description="What the flaw is, for readers: no model is shown it.")

    @model_validator(mode="after")
    def _one_conversation(self) -> FlawItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give the user's request as prompt or as messages (one of them)")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("messages must end with the user's turn")
        return self

    @property
    def conversation(self) -> list[dict]:
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.prompt}]


class FlawSet(_Strict):
    name: Text
    description: str = ""
    constitution: Text | None = Field(None, description="The constitution whose principles the items name.")
    items: list[FlawItem] = Field(min_length=1)
    _ids = field_validator("items")(_unique)


@dataclass(frozen=True)
class LoadedSet:
    flaws: FlawSet
    source: str
    node: object

    def principles(self, c: Constitution) -> list[Principle]:
        """Each item's principle in `c`, which must ask for critiques (UserError at the item's line)."""
        asks = {p.id: p for p in c.critique_principles}
        for k, it in enumerate(self.flaws.items):
            if it.principle not in asks:
                line = line_of(self.node, ("items", k, "principle"))
                raise UserError(
                    f"{self.source}:{line}: items[{k}].principle: {c.name} has no principle {it.principle!r} "
                    "with a critique request"
                )
        return [asks[it.principle] for it in self.flaws.items]


def load_flaws(path: str | Path | None = None) -> LoadedSet:
    """The shipped planted-flaw set, or a user's file of the same shape."""
    if path is None:
        source = "planted-flaws.yaml"
        text = (resources.files("cai.evaluation") / "data" / source).read_text(encoding="utf-8")
        data, node = parse_text(text, source)
    else:
        source = str(path)
        data, node = read_structured(path)
    return LoadedSet(validate_model(FlawSet, data, node, source), source, node)


# ---------------------------------------------------------------------------------------------
# The answers critiqued


@dataclass(frozen=True)
class Shown:
    """One answer a critic is shown: which item, whether it carries a flaw, and where the flaw came from."""

    key: str  # seeds its critique and names it in failures
    item: int
    source: Literal["clean", "shipped", "planted"]
    text: str

    @property
    def flawed(self) -> bool:
        return self.source != "clean"


def plant(fb, items: list, principles: list[Principle], seed: int) -> tuple[dict[int, str], dict]:
    """The feedback model rewrites each clean answer to break its item's principle. (planted text
    by item, tallies); a plant that failed or changed nothing is left out and counted."""
    chats = [
        [
            {
                "role": "user",
                "content": render(
                    "cai.critique",
                    "plant_flaw.jinja",
                    messages=it.conversation + [{"role": "assistant", "content": it.clean}],
                    request=p.critique,
                ),
            }
        ]
        for it, p in zip(items, principles)
    ]
    params = SamplingParams(temperature=0.0, max_new_tokens=PLANT_MAX_NEW_TOKENS)
    seeds = [derive_seed(seed, it.id, "plant") for it in items]
    planted, failed, unchanged, first = {}, 0, 0, None
    for i, (it, (comp,)) in enumerate(zip(items, fb.generate(chats, params, seeds=seeds) if chats else [])):
        text = "" if comp.error else clean_revision(comp.text)
        if comp.error:
            failed += 1
            first = first or f"{it.id}: {comp.error}"
        elif " ".join(text.split()) == " ".join(it.clean.split()) or not text:
            unchanged += 1
        else:
            planted[i] = text
    tallies = {"asked": len(items), "planted": len(planted), "failed": failed, "unchanged": unchanged}
    return planted, tallies | ({"first_error": first} if first else {})


def _judge_questions(c: Constitution, p: Principle, conversation: list[dict], text: str, seed: int):
    """The pointwise judge's question for one answer under one principle (critique/judge.py)."""
    judge = ConstitutionJudge(None, Constitution(name=f"{c.name}:{p.id}", principles=[p]), principles=1, seed=seed)
    return judge.questions_for(conversation, text)


def judged(backend, c, shown: list[Shown], items, principles, seed, failures, who) -> list[float | None]:
    """Per answer, 1 where the pointwise judge's verdict is right (a flawed answer fails its
    principle, a clean one meets it: P(yes) against 1/2), 0 where wrong, None where it failed."""
    questions = [_judge_questions(c, principles[s.item], items[s.item].conversation, s.text, seed)[0] for s in shown]
    out: list[float | None] = []
    for s, r in zip(shown, read_letters(backend, questions)):
        if r.error:
            failures.add(who, "readings", f"{s.key} (pointwise judge)", r.error)
            out.append(None)
        else:
            out.append(float((r.p_a > 0.5) != s.flawed))
    return out


# ---------------------------------------------------------------------------------------------
# Rates


MEASURES = {
    "detection": "detection (flawed answer flagged)",
    "nitpick": "nitpick (clean answer flagged)",
    "judge_detection": "pointwise judge detection",
    "judge_accuracy": "pointwise judge accuracy",
}


def _rates(shown: list[Shown], flags: Groups, right: list[float | None], keep: Callable[[Shown], bool], seed: int):
    """The rates over the answers `keep` selects, and the gap (judge detection minus critique
    detection, paired on the same flawed answers)."""
    idx = [k for k, s in enumerate(shown) if keep(s)]
    flawed = [k for k in idx if shown[k].flawed]
    clean = [k for k in idx if not shown[k].flawed]
    detect = [flags[k] for k in flawed]
    judge_fails = [[right[k]] for k in flawed]
    rates = {
        "detection": rate(detect, seed),
        "nitpick": rate([flags[k] for k in clean], seed),
        "judge_detection": rate(judge_fails, seed),
        "judge_accuracy": rate([[right[k]] for k in idx], seed),
    }
    gap = compare_paired(judge_fails, detect, seed)
    return {
        "flawed": len(flawed),
        "clean": len(clean),
        "rates": {k: r.to_json() for k, r in rates.items()},
        "gap": gap.to_json(),
    }, rates


def evaluate_critiques(
    models: list[Policy | BackendConfig | str],
    loaded: LoadedSet,
    c: Constitution,
    feedback: BackendConfig | str = "default",
    planting: bool = True,
    judge: Literal["self", "feedback"] = "self",
    few_shot: int = 2,
    max_new_tokens: int = 96,
    seed: int = 0,
    samples: int = 1,
    temperature: float = 0.0,
    max_failures: float | None = None,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Each critic's detection and nitpick rates, its pointwise judge's, and the gap, overall, per
    principle and per source of flaws; critics after the first compared with it on the same answers."""
    if not models:
        raise UserError("--models: give at least one model")
    step = progress or (lambda _: None)
    policies = [as_policy(m) for m in models]
    if len({p.name for p in policies}) < len(policies):
        raise UserError("--models: a model is named twice")
    principles = loaded.principles(c)[:limit]
    items = loaded.flaws.items[:limit]
    sampling = Sampling(samples, temperature, max_new_tokens, seed)
    fb = feedback_config(feedback)
    shown = [Shown(f"{it.id}/clean", i, "clean", it.clean) for i, it in enumerate(items)]
    shown += [Shown(f"{it.id}/shipped", i, "shipped", it.flawed) for i, it in enumerate(items) if it.flawed]
    to_plant = [i for i, it in enumerate(items) if planting or it.flawed is None]
    tallies = None
    if to_plant:
        with opened(fb) as b:
            made, tallies = plant(b, [items[i] for i in to_plant], [principles[i] for i in to_plant], seed)
        shown += [Shown(f"{items[to_plant[k]].id}/planted", to_plant[k], "planted", t) for k, t in made.items()]
        step("flaws planted")
    if not any(s.flawed for s in shown):
        raise UserError(f"{loaded.source}: no flawed answer to critique (none written, none planted)")
    failures = Failures()
    conversations = [items[s.item].conversation + [{"role": "assistant", "content": s.text}] for s in shown]
    chats = [
        critique_chat(c, principles[s.item], conv, examples_for(c, principles[s.item], few_shot, f"{seed}/{s.key}/0"))
        for s, conv in zip(shown, conversations)
    ]
    critiques, right = {}, {}
    for p in policies:
        with opened(p.config) as b:
            critiques[p.name] = answers(p, chats, [s.key for s in shown], sampling, failures, backend=b)
            if judge == "self":
                right[p.name] = judged(b, c, shown, items, principles, seed, failures, p.name)
        step(f"critiques of {p.name}")
    flags: dict[str, Groups] = {}
    with opened(fb) as b:
        mode = reading_mode(b)
        for p in policies:
            asks = {
                (k, j): ("critique_flags.jinja", {"messages": conversations[k], "critique": text})
                for k, g in enumerate(critiques[p.name])
                for j, text in enumerate(g)
                if text is not None
            }
            keys = list(asks)
            flags[p.name] = [[None] * len(g) for g in critiques[p.name]]
            for (k, j), (prob, error) in zip(keys, read_yes(b, [asks[x] for x in keys])):
                if error:
                    failures.add(p.name, "readings", f"{shown[k].key} (critique read)", error)
                else:
                    flags[p.name][k][j] = float(prob > 0.5)
            if judge == "feedback":
                right[p.name] = judged(b, c, shown, items, principles, seed, failures, p.name)
    step("critiques read")
    groups: dict[str, Callable[[Shown], bool]] = {"all": lambda s: True}
    for pid in dict.fromkeys(it.principle for it in items):
        groups[f"principle {pid}"] = lambda s, pid=pid: principles[s.item].id == pid
    sources = sorted({s.source for s in shown if s.flawed})
    for src in sources if len(sources) > 1 else []:
        has = {s.item for s in shown if s.source == src}
        groups[f"source {src}"] = lambda s, src=src, has=has: s.source in (src, "clean") and s.item in has
    rows, checked, reference = [], {}, policies[0].name
    for p in policies:
        table = {}
        for name, keep in groups.items():
            table[name], own = _rates(shown, flags[p.name], right[p.name], keep, seed)
            if name == "all":
                checked |= {f"{p.name}: {MEASURES[k]}": r for k, r in own.items()}
        vs = None
        if p.name != reference:
            vs = {
                what: compare_paired(
                    [g for g, s in zip(flags[p.name], shown) if s.flawed == want],
                    [g for g, s in zip(flags[reference], shown) if s.flawed == want],
                    seed,
                ).to_json()
                for what, want in (("detection", True), ("nitpick", False))
            }
        rows.append({"model": p.name, **p.to_json(), "groups": table, "vs_first": vs, "failures": failures.of(p.name)})
    failures.check(checked, max_failures)
    return {
        "kind": "critiques",
        "set": loaded.flaws.name,
        "set_file": loaded.source,
        "constitution": c.name,
        "few_shot": few_shot,
        "critique_max_new_tokens": max_new_tokens,
        "judge": judge,
        "planting": tallies,
        "items": len(items),
        "answers": {"flawed": sum(s.flawed for s in shown), "clean": sum(not s.flawed for s in shown)},
        "reference": reference,
        "measures": MEASURES,
        "feedback": {"backend": fb.backend, "model": fb.model, "reading": mode},
        **sampling.to_json(),
        "models": rows,
        "first_error": failures.first,
        "examples": [
            {"answer": shown[k].key, "text": shown[k].text, **{p.name: critiques[p.name][k][0] for p in policies}}
            for k in range(min(3, len(shown)))
        ],
    }
