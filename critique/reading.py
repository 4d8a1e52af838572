"""The pair-reading core: how a feedback model's letter answer becomes a probability.

Every ranking in cai goes through here: the comparisons stage, `cai eval labeler`, the policy and
character evals, and the RL judges. A pair is read under k sampled principles, each in both
orders (the first answer shown once as (A) and once as (B)), so a judge's position bias cancels;
the pair's probability is the mean over its 2k readings. One failed reading fails the pair: a
mean over the readings that happened to work would be a different labeler.

How a letter is read depends on what the backend declares it can do (`Capabilities`), decided
once per backend, never guessed per call:

- `prefill`: the prompt ends with an assistant turn that stops right before the letter ("The
  better reply is ("), and the backend scores the two letters as the next token;
- `first_token`: the backend cannot continue an assistant turn (hosted chat APIs refuse), so the
  judge is asked for a one-letter answer and the letters are read from the first generated
  token's top log-probs;
- `parsed`: the server gives no log-probs at all; the letter is parsed from a short greedy answer,
  so the reading is 0 or 1 and is marked `parsed`, for the metrics to keep apart.

With log-probs, P(A) is renormalised over the two letters; a letter outside the backend's top-k
carries a floor value (an upper bound, see `generators/backends/engine_utils.py`) and is listed in
the reading's `floored`. With `method: cot` the judge first argues in a few sentences, the letter
is read after the argument, and its probability is clamped (default 0.4-0.6): arguing makes the
final letter over-confident.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.constitution import Principle, weighted_sample
from cai.core.ids import derive_seed, digest, record_id
from cai.core.stage import Task
from cai.generators.backends.base import capabilities
from cai.generators.streaming import Request, drive
from cai.generators.templates import render
from cai.generators.types import SamplingParams

from .records import Judgement

if TYPE_CHECKING:
    from .cache import ReadingCache

LETTERS = ["A", "B"]
GENERIC_QUESTION = "Which of these assistant replies is better: more helpful, more honest and less harmful?"
COMPARISON_PREFIX = "The better reply is ("
ANSWER_PREFIX = "The answer is ("
PARSE_MAX_NEW_TOKENS = 16  # enough for "(B)" or "The answer is B."

Mode = Literal["prefill", "first_token", "parsed"]


def reading_mode(backend) -> Mode:
    """How this backend reads a letter, from what it declares it can do."""
    caps = capabilities(backend)
    if not caps.logprobs:
        return "parsed"
    return "prefill" if caps.prefill else "first_token"


# ---------------------------------------------------------------------------------------------
# One letter


@dataclass(frozen=True)
class LetterQuestion:
    """A question answered with (A) or (B): the user's message, the assistant's words right
    before the letter (used where the backend continues an assistant turn), and an argument the
    judge already wrote (CoT)."""

    user: str
    prefix: str
    reasoning: str | None = None


@dataclass(frozen=True)
class LetterReading:
    p_a: float = 0.5
    logp: dict[str, float] = field(default_factory=dict)
    floored: list[str] = field(default_factory=list)
    mode: Mode = "prefill"
    answer: str | None = None  # the text a parsed letter was read from
    tokens: int = 0
    error: str | None = None


def letter_chat(q: LetterQuestion, mode: Mode) -> list[dict]:
    """The chat that asks `q` of a backend that reads letters in `mode`."""
    if mode == "prefill":
        prefix = render("cai.critique", "choice_prefix.jinja", reasoning=q.reasoning, prefix=q.prefix)
        return [{"role": "user", "content": q.user}, {"role": "assistant", "content": prefix}]
    ask = render("cai.critique", "letter_only.jinja")
    if not q.reasoning:
        return [{"role": "user", "content": f"{q.user}\n\n{ask}"}]
    return [
        {"role": "user", "content": q.user},
        {"role": "assistant", "content": q.reasoning},
        {"role": "user", "content": ask},
    ]


def prob_a(logp: dict[str, float]) -> float:
    """P("A") renormalised over the two letters; 0.5 when neither is visible."""
    a, b = logp.get("A", -math.inf), logp.get("B", -math.inf)
    if a == -math.inf and b == -math.inf:
        return 0.5
    m = max(a, b)
    ea, eb = math.exp(a - m), math.exp(b - m)
    return ea / (ea + eb)


_LEADING = re.compile(r"^\W*([AB])\b")
_BRACKETED = re.compile(r"\(([AB])\)")
_NAMED = re.compile(r"\b(?:reply|answer|option|choice)\W{0,3}([AB])\b", re.IGNORECASE)


def parse_letter(text: str) -> str | None:
    """The letter a short answer gives: a leading A/B, else a bracketed (A)/(B), else one named
    as "reply B", "answer: A"; None when the answer names no letter."""
    for pattern in (_LEADING, _BRACKETED, _NAMED):
        m = pattern.search(text.strip())
        if m:
            return m.group(1).upper()
    return None


def letter_requests(questions: list[LetterQuestion], mode: Mode) -> list[Request]:
    """The model calls that read these questions' letters in `mode`."""
    chats = [letter_chat(q, mode) for q in questions]
    if mode == "parsed":
        params = SamplingParams(temperature=0, max_new_tokens=PARSE_MAX_NEW_TOKENS)
        return [Request(chat, params) for chat in chats]
    return [Request(chat, choices=tuple(LETTERS)) for chat in chats]


def letter_from(result, mode: Mode) -> LetterReading:
    """A letter reading from what its request gave back."""
    if mode == "parsed":
        (comp,) = result
        if comp.error:
            return LetterReading(mode=mode, error=comp.error)
        letter = parse_letter(comp.text)
        if letter is None:
            return LetterReading(mode=mode, answer=comp.text, tokens=comp.tokens, error=f"no A or B in {comp.text!r}")
        return LetterReading(p_a=1.0 if letter == "A" else 0.0, mode=mode, answer=comp.text, tokens=comp.tokens)
    if result.error:
        return LetterReading(mode=mode, error=result.error)
    floored = [c for c in LETTERS if c in getattr(result, "floored", [])]
    return LetterReading(p_a=prob_a(result), logp=dict(result), floored=floored, mode=mode)


def read_letters(backend, questions: list[LetterQuestion], mode: Mode | None = None) -> list[LetterReading]:
    """Read each question's letter the way the backend can: next-token or first-token log-probs,
    or a parsed greedy answer. One call for all of them."""
    if not questions:
        return []
    mode = mode or reading_mode(backend)
    requests = letter_requests(questions, mode)
    if mode == "parsed":
        results = backend.generate([r.prompt for r in requests], requests[0].params)
    else:
        results = backend.choice_logprobs([r.prompt for r in requests], LETTERS)
    return [letter_from(r, mode) for r in results]


# ---------------------------------------------------------------------------------------------
# One letter of k: multiple-choice options (A, B, C, ...)

OPTION_LETTERS = [chr(ord("A") + i) for i in range(26)]


@dataclass(frozen=True)
class OptionQuestion:
    """A question answered with one of `k` letters, A first: the user's message, the assistant's
    words right before the letter (prefill), and an argument the judge already wrote."""

    user: str
    prefix: str
    k: int
    reasoning: str | None = None

    @property
    def letters(self) -> list[str]:
        return OPTION_LETTERS[: self.k]


@dataclass(frozen=True)
class OptionsReading:
    """Each letter's probability, renormalised over the question's k letters."""

    probs: dict[str, float] = field(default_factory=dict)
    logp: dict[str, float] = field(default_factory=dict)
    floored: list[str] = field(default_factory=list)
    mode: Mode = "prefill"
    answer: str | None = None
    tokens: int = 0
    error: str | None = None


def options_text(messages: list[dict], question: str | None, options: list[str]) -> str:
    """A conversation, a question about it and its options lettered (A), (B), ... in this order."""
    return render(
        "cai.critique", "options.jinja", messages=messages, question=question, options=options, letters=OPTION_LETTERS
    )


def option_chat(q: OptionQuestion, mode: Mode) -> list[dict]:
    """The chat that asks `q` of a backend that reads letters in `mode` (see `letter_chat`)."""
    if mode == "prefill":
        prefix = render("cai.critique", "choice_prefix.jinja", reasoning=q.reasoning, prefix=q.prefix)
        return [{"role": "user", "content": q.user}, {"role": "assistant", "content": prefix}]
    ask = render("cai.critique", "letter_of.jinja", letters=q.letters)
    if not q.reasoning:
        return [{"role": "user", "content": f"{q.user}\n\n{ask}"}]
    return [
        {"role": "user", "content": q.user},
        {"role": "assistant", "content": q.reasoning},
        {"role": "user", "content": ask},
    ]


def letter_probs(logp: dict[str, float], letters: list[str]) -> dict[str, float]:
    """Each letter's probability renormalised over `letters`; uniform when none is visible."""
    values = [logp.get(c, -math.inf) for c in letters]
    top = max(values)
    if top == -math.inf:
        return {c: 1.0 / len(letters) for c in letters}
    weights = [math.exp(v - top) for v in values]
    total = sum(weights)
    return {c: w / total for c, w in zip(letters, weights)}


def parse_option(text: str, letters: list[str]) -> str | None:
    """The letter of `letters` a short answer gives: a bare one ("C", "C.", "(C) Theft"), else a
    bracketed (C) anywhere, else one named as "option C" or "the answer is C"; None otherwise.
    A capital that starts a word ("A clear case", "I think") is not taken for a letter."""
    span = f"[A-{letters[-1]}]"
    patterns = (
        rf"^\W*({span})(?:[^\w\s]|\s*$)",
        rf"\(({span})\)",
        rf"\b(?i:reply|answer|option|choice)(?:\s+is)?\W{{0,3}}({span})\b",
    )
    for pattern in patterns:
        m = re.search(pattern, text.strip())
        if m:
            return m.group(1)
    return None


def read_options(backend, questions: list[OptionQuestion], mode: Mode | None = None) -> list[OptionsReading]:
    """Read each question's letter out of its k the way the backend can (as `read_letters` reads
    A or B): next-token or first-token log-probs of every letter, or a parsed greedy answer."""
    mode = mode or reading_mode(backend)
    out: list[OptionsReading | None] = [None] * len(questions)
    if mode == "parsed":
        params = SamplingParams(temperature=0, max_new_tokens=PARSE_MAX_NEW_TOKENS)
        chats = [option_chat(q, mode) for q in questions]
        for i, (q, (comp,)) in enumerate(zip(questions, backend.generate(chats, params) if chats else [])):
            letter = None if comp.error else parse_option(comp.text, q.letters)
            if comp.error or letter is None:
                error = comp.error or f"no letter {q.letters[0]}-{q.letters[-1]} in {comp.text!r}"
                out[i] = OptionsReading(mode=mode, answer=comp.text or None, tokens=comp.tokens, error=error)
            else:
                probs = {c: float(c == letter) for c in q.letters}
                out[i] = OptionsReading(probs=probs, mode=mode, answer=comp.text, tokens=comp.tokens)
        return out  # type: ignore[return-value]
    for k in sorted({q.k for q in questions}):  # one call per letter set: a backend scores one set at a time
        idx = [i for i, q in enumerate(questions) if q.k == k]
        letters = OPTION_LETTERS[:k]
        for i, s in zip(idx, backend.choice_logprobs([option_chat(questions[i], mode) for i in idx], letters)):
            if s.error:
                out[i] = OptionsReading(mode=mode, error=s.error)
            else:
                floored = [c for c in letters if c in getattr(s, "floored", [])]
                out[i] = OptionsReading(probs=letter_probs(s, letters), logp=dict(s), floored=floored, mode=mode)
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Pairs: k principles × both orders


class ReadingConfig(BaseModel):
    """How a pair is read: the settings the comparisons stage, the evals and the RL judge share."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["logprob", "cot"] = "logprob"
    principles: int = Field(4, ge=1, description="Principles sampled per pair (each read in both orders).")
    cot_clamp: tuple[float, float] = Field((0.4, 0.6), description="CoT probabilities are clamped into this range.")
    cot_max_new_tokens: int = Field(96, ge=8)
    few_shot: int = Field(
        2,
        ge=0,
        description="Comparison examples shown before each pair: its principle's own first, then those for all.",
    )

    @model_validator(mode="after")
    def _clamp_ok(self) -> ReadingConfig:
        lo, hi = self.cot_clamp
        if not 0 <= lo <= 0.5 <= hi <= 1:
            raise ValueError("cot_clamp must satisfy 0 <= low <= 0.5 <= high <= 1")
        return self


@dataclass(frozen=True)
class PairToRead:
    """Two replies to one conversation. `key` seeds the principle draw: the same key, pool and
    seed always draw the same principles.

    `known` holds readings made before (by reading key, see `reading_key`), such as those of an
    earlier record of the same pair in a run: a reading found there is taken as it is and never
    asked of the model again. `model` names the model for those keys."""

    key: str
    messages: list[dict]
    first: str
    second: str
    pool: list[Principle]
    known: dict[str, Judgement] | None = None
    model: str | None = None


def draw_principles(pool: list[Principle], k: int, seed: int, key: str) -> list[Principle]:
    """The principles a pair is read under: seeded by the pair's key, never by anything that
    changes when a principle's wording does, so an edit moves no other pair's draw."""
    return weighted_sample(pool, k, f"{seed}/{key}/principles")


def reading_settings(cfg: ReadingConfig, seed: int) -> dict:
    """What of the settings shapes one reading: the method, and for CoT its length, clamp and
    seed; and how many comparison examples a prompt may show (see `reading_key`)."""
    if cfg.method == "logprob":
        return {"method": "logprob", "few_shot": cfg.few_shot}
    return {
        "method": "cot",
        "cot_max_new_tokens": cfg.cot_max_new_tokens,
        "cot_clamp": list(cfg.cot_clamp),
        "seed": seed,
        "few_shot": cfg.few_shot,
    }


def reading_key(model: str, settings: dict, pair_key: str, order: str, p: Principle) -> str:
    """A reading of a run: which model, how, which pair (its key stands for its texts: answer ids
    hash their inputs), which order and which question, and the comparison examples shown, where
    there are any. A principle's id is no part of it: a renamed principle reads the same."""
    settings = dict(settings)
    k = settings.pop("few_shot", 0)
    shown = examples_read(p, k, settings["method"] == "cot")
    return record_id("reading", model, settings, pair_key, order, question(p), *([shown] if shown else []))


# ---------------------------------------------------------------------------------------------
# Comparison examples: ranked pairs shown before the pair being read


def examples_read(p: Principle, k: int, cot: bool) -> list[dict]:
    """What of its examples a reading under `p` shows (their texts; the reasoning only to a judge
    that argues first): the part of a reading's identity the examples make."""
    return [ex.read(cot) for ex in p.ranking_examples[:k]]


def examples_first_letter(pair_key: str) -> str:
    """The letter of the better reply in a pair's first example; the next alternate. The same in
    both orders of the pair, so a judge that copies the examples' letters leans the same letter
    both ways, and that cancels as any position bias does; it varies from pair to pair, so over
    a dataset every example is shown with its better reply under (A) and under (B)."""
    return LETTERS[int(digest(pair_key), 16) % 2]


def shown_examples(p: Principle, k: int, pair_key: str, cot: bool) -> list[dict]:
    """The first `k` examples of `p` (its own, then those for every principle) as its prompts
    for this pair show them: the better reply's letter alternating from one to the next."""
    first = LETTERS.index(examples_first_letter(pair_key))
    return [ex.shown(LETTERS[(first + i) % 2], cot) for i, ex in enumerate(p.ranking_examples[:k])]


@dataclass
class PairReading:
    judgements: list[Judgement] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None
    reused: int = 0  # readings taken from `PairToRead.known`, not asked of the model

    @property
    def p_first(self) -> float:
        """The soft label seen from the first reply: mean over principles and both orders."""
        return sum(j.p_first for j in self.judgements) / len(self.judgements)

    @property
    def order_consistent(self) -> bool:
        return orders_agree(self.judgements)


def question(p: Principle) -> str:
    return p.comparison or GENERIC_QUESTION


def comparison_text(
    messages: list[dict], p: Principle, a: str, b: str, cot: bool = False, examples: list[dict] | None = None
) -> str:
    """The comparison prompt: conversation, the two answers, then the principle's question.

    The question comes after the answers so that the k principles a pair is read under share one
    prefix in each order (conversation and both answers), which a backend computes once (prefix
    sharing in transformers, prefix caching in vLLM): on the HH-RLHF labeler bench that computes
    a third fewer prompt tokens than the question placed before the answers. The letters and what
    they mean are the same either way. `examples` (see `shown_examples`) come first, each under
    the same question, its letter given.
    """
    return render(
        "cai.critique",
        "comparison.jinja",
        messages=messages,
        question=question(p),
        a=a,
        b=b,
        reasoning=cot,
        examples=examples or [],
    )


def orders_agree(judgements: list[Judgement]) -> bool:
    """Both orders favour the same reply, on average over principles."""
    ab = [j.p_first for j in judgements if j.order == "ab"]
    ba = [j.p_first for j in judgements if j.order == "ba"]
    if not ab or not ba:
        return False
    return (sum(ab) / len(ab) - 0.5) * (sum(ba) / len(ba) - 0.5) > 0


def seats(j: Judgement, first_is_x: bool) -> tuple[float, bool]:
    """(P that the reply shown as (A) is better, whether reply X was shown as (A)), for the reply
    X that sits first in the pair when `first_is_x`."""
    p_a = j.p_first if j.order == "ab" else 1.0 - j.p_first
    return p_a, first_is_x == (j.order == "ab")


def _reading_key(cache: ReadingCache, q: LetterQuestion, mode: Mode, cfg: ReadingConfig, seed: int) -> str:
    """A reading's cache key: the exact chat the letter is read from (for CoT, the argument's
    prompt and the template it is read through), the mode, and CoT's length and seed."""
    if cfg.method == "cot":
        return cache.key(
            mode,
            "cot",
            q.user,
            letter_chat(LetterQuestion("", q.prefix, "-"), mode),
            cfg.cot_max_new_tokens,
            derive_seed(seed, "cot"),
        )
    return cache.key(mode, "logprob", letter_chat(q, mode))


def _known_letter(j: Judgement) -> LetterReading:
    """A reading kept in an earlier record, as the letter it was read from."""
    p_first = j.p_first_raw if j.p_first_raw is not None else j.p_first
    p_a = p_first if j.order == "ab" else 1.0 - p_first
    return LetterReading(p_a=p_a, logp=dict(j.logp), floored=list(j.floored), mode=j.reading, answer=j.answer)


def _cached_letter(v: dict) -> tuple[str | None, LetterReading]:
    letter = LetterReading(
        p_a=v["p_a"], logp=v.get("logp", {}), floored=v.get("floored", []), mode=v["mode"], answer=v.get("answer")
    )
    return v.get("reasoning"), letter


def read_pair(pair: PairToRead, cfg: ReadingConfig, seed: int, mode: Mode, cache: ReadingCache | None = None):
    """One pair's readings as task steps (`generators/streaming.py`): the arguments first (CoT),
    then every letter, each batch of requests at once. Readings found in the cache or in the
    pair's `known` readings are not asked again; the new ones that work go to the cache."""
    result = PairReading()
    plan = []  # (principle, order, reply shown as A, reply shown as B)
    for p in draw_principles(pair.pool, cfg.principles, seed, pair.key):
        plan += [(p, "ab", pair.first, pair.second), (p, "ba", pair.second, pair.first)]
    settings = reading_settings(cfg, seed)
    run_keys = [reading_key(pair.model, settings, pair.key, o, p) if pair.model else None for p, o, _, _ in plan]
    reused = [(pair.known or {}).get(rk) if rk else None for rk in run_keys]
    cot = cfg.method == "cot"
    questions = [
        LetterQuestion(
            comparison_text(pair.messages, p, a, b, cot, shown_examples(p, cfg.few_shot, pair.key, cot)),
            COMPARISON_PREFIX,
        )
        for p, _, a, b in plan
    ]
    reasons: list[str | None] = [None] * len(plan)
    letters: list[LetterReading | None] = [None] * len(plan)
    keys = [_reading_key(cache, q, mode, cfg, seed) for q in questions] if cache is not None else []
    found = cache.lookup(keys) if cache is not None else {}
    for k, key in enumerate(keys):
        if key in found:
            reasons[k], letters[k] = _cached_letter(found[key])
    for k, j in enumerate(reused):
        if j is not None:
            reasons[k], letters[k] = j.reasoning, _known_letter(j)
    fresh = [k for k in range(len(plan)) if letters[k] is None]
    if cot and fresh:
        params = SamplingParams(temperature=0, max_new_tokens=cfg.cot_max_new_tokens)
        chats = [[{"role": "user", "content": questions[k].user}] for k in fresh]
        answers = yield [Request(chat, params, seed=derive_seed(seed, "cot")) for chat in chats]
        for k, (comp,) in zip(fresh, answers):
            if comp.error:
                result.error = result.error or comp.error
            else:
                result.tokens += comp.tokens
                reasons[k] = comp.text.strip()
    if result.error is None and fresh:
        asked = [LetterQuestion(questions[k].user, COMPARISON_PREFIX, reasons[k]) for k in fresh]
        for k, got in zip(fresh, (yield letter_requests(asked, mode))):
            letters[k] = letter_from(got, mode)
    lo, hi = cfg.cot_clamp
    new: list[tuple[str, dict]] = []
    for k, letter in enumerate(letters):
        p, order, _, _ = plan[k]
        if letter is None:  # the pair failed before the letter was asked for
            continue
        result.tokens += letter.tokens
        if letter.error:
            result.error = result.error or letter.error
            continue
        if cache is not None and k in fresh:
            stored = {"p_a": letter.p_a, "logp": letter.logp, "floored": letter.floored, "mode": letter.mode}
            new.append((keys[k], {**stored, "answer": letter.answer, "reasoning": reasons[k]}))
        raw = letter.p_a if order == "ab" else 1.0 - letter.p_a  # P(the pair's first reply is better)
        result.reused += reused[k] is not None
        result.judgements.append(
            Judgement(
                key=run_keys[k],
                principle_id=p.id,
                order=order,
                logp=letter.logp,
                p_first=min(hi, max(lo, raw)) if cot else raw,
                p_first_raw=raw if cot else None,
                reasoning=reasons[k],
                reading=letter.mode,
                floored=letter.floored,
                answer=letter.answer,
            )
        )
    if cache is not None:
        cache.store(new)
    if result.error is not None:
        result.judgements = []
    return result


def read_pairs(
    backend,
    pairs: list[PairToRead],
    cfg: ReadingConfig,
    seed: int,
    mode: Mode | None = None,
    cache: ReadingCache | None = None,
) -> list[PairReading]:
    """Read every pair under `cfg.principles` sampled principles in both orders, all of them
    streamed through the backend at once; results in the order of `pairs`.

    With a `ReadingCache` (critique/cache.py), readings already on disk are taken from it and only
    the others reach the backend; those that work are stored."""
    mode = mode or reading_mode(backend)
    tasks = [Task(str(i), pair, []) for i, pair in enumerate(pairs)]
    out: list[PairReading | None] = [None] * len(pairs)
    for task, reading in drive(backend, tasks, lambda t: read_pair(t.data, cfg, seed, mode, cache)):
        out[int(task.id)] = reading
    return out  # type: ignore[return-value]
