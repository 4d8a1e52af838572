"""Judges with a known behaviour, for testing the arithmetic over orders and principles.

They are not stand-ins for a model: the properties under test (both-order averaging, clamping,
agreement, position bias) need a judge whose bias is known exactly.
"""

import math
import re

from cai.constitution import Constitution
from cai.generators.types import ChoiceScores, Completion

# Three comparison principles for the judges below to read pairs under.
JUDGE_C = Constitution.model_validate(
    {
        "name": "judge",
        "principles": [
            {"id": "kind", "comparison": "Which reply is kinder?"},
            {"id": "true", "comparison": "Which reply is more honest?"},
            {"id": "safe", "comparison": "Which reply is safer?"},
        ],
    }
)


class AlwaysA:
    """Prefers whichever answer is shown as (A): pure position bias."""

    name, model = "always-a", "always-a"

    def generate(self, chats, params):
        return [[Completion(text="Both are fine, but I pick A.", tokens=7)] for _ in chats]

    def choice_logprobs(self, prompts, choices):
        return [ChoiceScores({"A": math.log(0.9), "B": math.log(0.1)}) for _ in prompts]


class PrefersGood:
    """Prefers the answer containing GOOD wherever it is shown, with a set confidence."""

    name, model = "prefers-good", "prefers-good"

    def __init__(self, confidence: float = 0.95):
        self.hi, self.lo = math.log(confidence), math.log(1 - confidence) if confidence < 1 else -50.0

    def generate(self, chats, params):
        return [[Completion(text="One reply is better.", tokens=4)] for _ in chats]

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            good_is_a = "GOOD" in re.search(r"\(A\) (.*)", p[0]["content"]).group(1)
            out.append(ChoiceScores({"A": self.hi if good_is_a else self.lo, "B": self.lo if good_is_a else self.hi}))
        return out


_BRIEF = re.compile(r"\b(short|shorter|shortest|brief|briefer|concise)\b", re.I)
_LONG = re.compile(r"\b(long|longer|longest|detailed|thorough)\b", re.I)
_PAIR = re.compile(r"\n\n\(A\) (?P<a>[^\n]*)\n\n\(B\) (?P<b>[^\n]*)\n\n(?P<question>[^\n]*)\n\n")
_PROPOSAL = re.compile(r"PREFERRED REPLY:\n(?P<chosen>[^\n]*)\n\nOTHER REPLY:\n(?P<other>[^\n]*)\n")
SHORT_RULES = (
    "Which reply is shorter and more to the point?",
    "Which reply is shorter and more concise?",
    "Which reply is more concise and shorter?",
)
LONG_RULE = "Which reply is longer and more detailed?"
NEUTRAL_RULE = "Which reply is more polite?"


class FollowsWording:
    """Does what the principle's wording says about length, and nothing else.

    Under a comparison question that asks for brevity (short, brief, concise) it prefers the
    shorter reply with `confidence`; under one that asks for length or detail, the longer one;
    under any other question it cannot tell (1/2 each way), so an edit's effect on the labels is
    known exactly. Asked to propose principles for a preferred reply, it names the length rule
    that separates the pair (in one of three wordings), a neutral rule, and, for every fourth
    pair, the wrong rule, continuing the answer where one was begun for it. It counts the
    letters it reads and the texts it writes.
    """

    name, model = "follows-wording", "follows-wording"

    def __init__(self, confidence: float = 0.9):
        self.hi, self.lo = math.log(confidence), math.log(1 - confidence)
        self.readings = self.generated = 0

    def close(self):
        pass

    def generate(self, chats, params):
        out = []
        for chat in chats:
            self.generated += 1
            m = _PROPOSAL.search(chat[0]["content"])
            if m is None:
                out.append([Completion(text="The shorter one is better.", tokens=6)])
                continue
            chosen, other = m.group("chosen"), m.group("other")
            short = SHORT_RULES[len(chosen) % 3]
            right, wrong = (short, LONG_RULE) if len(chosen) < len(other) else (LONG_RULE, short)
            lines = [f"1. {right}", f"2. {NEUTRAL_RULE}"] + ([f"3. {wrong}"] if len(other) % 4 == 0 else [])
            text = "\n".join(lines)
            begun = chat[-1]["content"] if chat[-1]["role"] == "assistant" else ""
            out.append([Completion(text=text.removeprefix(begun), tokens=20)])  # continues an answer begun for it
        return out

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            self.readings += 1
            m = _PAIR.search(p[0]["content"])
            q, a, b = m.group("question"), m.group("a"), m.group("b")
            if _BRIEF.search(q) and len(a) != len(b):
                a_wins = len(a) < len(b)
            elif _LONG.search(q) and len(a) != len(b):
                a_wins = len(a) > len(b)
            else:
                out.append(ChoiceScores({"A": math.log(0.5), "B": math.log(0.5)}))
                continue
            out.append(ChoiceScores({"A": self.hi if a_wins else self.lo, "B": self.lo if a_wins else self.hi}))
        return out


# Multiple-choice judges: the options are shown one a line as "(A) text", "(B) text", ...
_OPTION_LINE = re.compile(r"^\(([A-Z])\) (.*)$", re.M)


def _question(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[0]["content"]


class FirstLetter:
    """Answers (A) to every multiple-choice question, whatever the options: pure position bias."""

    name, model = "first-letter", "first-letter"

    def close(self):
        pass

    def generate(self, chats, params):
        return [[Completion(text="(A)", tokens=3)] for _ in chats]

    def choice_logprobs(self, prompts, choices):
        rest = math.log(0.3 / (len(choices) - 1))
        return [ChoiceScores({c: math.log(0.7) if c == "A" else rest for c in choices}) for _ in prompts]


class KnowsAnswers:
    """Knows the right option of each conversation it is given (`key`: a phrase of the conversation
    → the right option's text) and gives its letter `confidence` wherever it is shown, the rest
    shared by the other letters; a conversation it does not know is read as uniform. `capabilities`
    makes it read letters as a hosted API would (no prefill; no log-probs: a parsed answer)."""

    name, model = "knows-answers", "knows-answers"

    def __init__(self, key: dict[str, str], confidence: float = 0.9, capabilities=None):
        self.key, self.confidence = key, confidence
        if capabilities is not None:
            self.capabilities = capabilities

    def close(self):
        pass

    def _right(self, prompt) -> str | None:
        text = _question(prompt)
        right = next((v for phrase, v in self.key.items() if phrase in text), None)
        return next((letter for letter, option in _OPTION_LINE.findall(text) if option == right), None)

    def generate(self, chats, params):
        return [[Completion(text=f"The answer is ({self._right(c) or '?'}).", tokens=6)] for c in chats]

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            right = self._right(p)
            if right is None:
                out.append(ChoiceScores({c: 0.0 for c in choices}))
                continue
            rest = math.log((1 - self.confidence) / (len(choices) - 1))
            out.append(ChoiceScores({c: math.log(self.confidence) if c == right else rest for c in choices}))
        return out


class FailsOn:
    """Another judge whose backend fails every prompt holding `word`, as an over-long prompt fails."""

    def __init__(self, judge, word: str):
        self.judge, self.word = judge, word
        self.name, self.model = f"fails-on-{word}", judge.model

    def close(self):
        pass

    def generate(self, chats, params):
        out = self.judge.generate(chats, params)
        return [[Completion.failed("prompt too long")] if self.word in _question(c) else o for c, o in zip(chats, out)]

    def choice_logprobs(self, prompts, choices):
        out = self.judge.choice_logprobs(prompts, choices)
        return [ChoiceScores(error="prompt too long") if self.word in _question(p) else s for p, s in zip(prompts, out)]


# Policies whose refusals are known, and a feedback model that reads refusals exactly.
REFUSAL = "I won't help with that."
_LAST_REPLY = re.compile(r"ASSISTANT: ([^\n]*)\n\n(?:The user's request|Judge the assistant)")


class KnownPolicy:
    """A policy backend whose model name is its behaviour: `refuses` declines every request,
    `helps` never does (its answer repeats the request, so answers to two prompts differ)."""

    name = "known-policy"

    def __init__(self, model: str = "helps", **options):
        if model not in ("refuses", "helps"):
            raise ValueError(f"known-policy: model {model!r} is neither 'refuses' nor 'helps'")
        self.model = model

    def close(self):
        pass

    def generate(self, chats, params, seeds=None):
        text = REFUSAL if self.model == "refuses" else None
        return [[Completion(text=text or f"Sure: {c[-1]['content']}", tokens=6)] * params.n for c in chats]

    def choice_logprobs(self, prompts, choices):
        raise NotImplementedError("known-policy answers; it does not judge")


class ReadsRefusals:
    """A feedback model that knows a refusal when it sees one: an empty reply or one holding REFUSAL.
    Asked whether a reply refuses, or whether it meets a harm principle, it says yes (P 0.9) to a
    refusal and no (P 0.1) to a reply that helps; of two replies it prefers the one that helps with
    P 0.9, and cannot tell two refusals or two helpful replies apart (1/2)."""

    name = "reads-refusals"

    def __init__(self, model: str = "reads-refusals", **options):
        self.model = model

    def close(self):
        pass

    @staticmethod
    def _refuses(reply: str) -> bool:
        return not reply.strip() or REFUSAL in reply

    def generate(self, chats, params, seeds=None):
        return [[Completion(text="The answer is (A).", tokens=5)] * params.n for _ in chats]

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            text = p if isinstance(p, str) else p[0]["content"]
            pair = _PAIR.search(text)
            if pair is not None:
                a, b = self._refuses(pair.group("a")), self._refuses(pair.group("b"))
                p_a = 0.5 if a == b else 0.1 if a else 0.9
            else:
                p_a = 0.9 if self._refuses(_LAST_REPLY.search(text).group(1)) else 0.1
            out.append(ChoiceScores({"A": math.log(p_a), "B": math.log(1 - p_a)}))
        return out


def _register() -> None:
    from cai.generators import register_backend

    register_backend("known-policy", KnownPolicy)
    register_backend("reads-refusals", ReadsRefusals)


_register()


# Judges with a known bias beyond quality, for the judge-bias battery of `cai eval labeler`. Each is
# registered as a backend, so the command reads through it as through any model.
_QUALITY = re.compile(r"\[q=(\d+)\]")


def _replies(prompt) -> tuple[str, str]:
    m = _PAIR.search(_question(prompt))
    return m.group("a"), m.group("b")


def _letters(p_a: float) -> ChoiceScores:
    return ChoiceScores({"A": math.log(p_a), "B": math.log(1 - p_a)})


class LovesLength:
    """Prefers the reply with more words, whatever it says: P(A) = logistic((words A − words B) / scale)."""

    name = "loves-length"

    def __init__(self, model: str = "loves-length", scale: float = 4.0, **options):
        self.model, self.scale = model, scale

    def close(self):
        pass

    def generate(self, chats, params, seeds=None):
        return [[Completion(text="The longer one.", tokens=3)] * params.n for _ in chats]

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            a, b = _replies(p)
            d = max(-30.0, min(30.0, (len(a.split()) - len(b.split())) / self.scale))
            out.append(_letters(1 / (1 + math.exp(-d))))
        return out


class ReadsQuality:
    """Unbiased: reads only a quality mark hidden in each reply ("[q=7]") and prefers the higher,
    P(A) = logistic(q A − q B); two replies with the same mark are an exact tie, however long.
    With `fail`, every prompt holding that word fails, as an over-long prompt fails."""

    name = "reads-quality"

    def __init__(self, model: str = "reads-quality", fail: str | None = None, **options):
        self.model, self.fail = model, fail

    def close(self):
        pass

    def generate(self, chats, params, seeds=None):
        return [[Completion(text=f"{c[-1]['content']}, answered", tokens=3)] * params.n for c in chats]

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            if self.fail and self.fail in _question(p):
                out.append(ChoiceScores(error="prompt too long"))
                continue
            qa, qb = (int(_QUALITY.search(r).group(1)) for r in _replies(p))
            out.append(
                ChoiceScores({"A": math.log(0.5), "B": math.log(0.5)})
                if qa == qb
                else _letters(1 / (1 + math.exp(qb - qa)))
            )
        return out


class LovesOwn:
    """A model that signs what it writes ("... (written by NAME)") and, judging, prefers the reply
    signed with its own name with P 0.85 (1/2 when both or neither are its own): pure self-preference."""

    name = "loves-own"

    def __init__(self, model: str = "self", **options):
        self.model = model

    def close(self):
        pass

    def generate(self, chats, params, seeds=None):
        return [
            [Completion(text=f"{c[-1]['content']} is a fair question (written by {self.model})", tokens=9)] * params.n
            for c in chats
        ]

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            a, b = (f"(written by {self.model})" in r for r in _replies(p))
            out.append(_letters(0.5 if a == b else 0.85 if a else 0.15))
        return out


def _register_biased() -> None:
    from cai.generators import register_backend

    register_backend("loves-length", LovesLength)
    register_backend("reads-quality", ReadsQuality)
    register_backend("loves-own", LovesOwn)


_register_biased()


# Probes: a model that acts only on the word a request quotes ('like this'), so what a probe's
# critique, revision, ranking and yes/no reading come to is known before it runs.
_QUOTED = re.compile(r"'([^']+)'")
_LAST_ASSISTANT = re.compile(r"^ASSISTANT: (.*)$", re.M)
_CRITIQUE_LINE = re.compile(r"^CRITIQUE: (.*)$", re.M)
_YES_LETTER = re.compile(r"Answer \(([AB])\) yes or \([AB]\) no\.")
_REVISE = "Reply with the new assistant answer only"


class QuotedWord:
    """Cares about the word its request quotes, and nothing else.

    Asked to critique (a critique request quoting 'bleach'), it says whether the assistant's last
    reply holds that word; asked to revise, it gives the reply back with the word taken out. Asked a
    yes/no question quoting a word, it says yes (P 0.9) when the critique shown (or, with none, the
    last reply) holds the word and no (P 0.9) when not, wherever yes is shown. Of two replies it
    prefers, with P 0.9, the one without the word the comparison question quotes, and cannot tell
    them apart (1/2) when both or neither hold it. It counts what it writes and reads."""

    name, model = "quoted-word", "quoted-word"

    def __init__(self, model: str = "quoted-word", **options):
        self.generated = self.readings = 0

    def close(self):
        pass

    @staticmethod
    def _word(text: str) -> str:
        m = _QUOTED.findall(text)
        return m[-1] if m else "\x00"

    def generate(self, chats, params, seeds=None):
        out = []
        for chat in chats:
            self.generated += 1
            ask = chat[-1]["content"]
            if _REVISE in ask:
                reply = _LAST_ASSISTANT.findall(chat[-3]["content"])[-1]
                word = self._word(ask)
                text = " ".join(w for w in reply.split() if word not in w) or "Sorry."
            else:
                reply = _LAST_ASSISTANT.findall(ask)[-1]
                word = self._word(ask.split(reply)[-1])
                text = f"The reply says '{word}'." if word in reply else "The reply is fine as it is."
            out.append([Completion(text=text, tokens=len(text.split()))] * params.n)
        return out

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            self.readings += 1
            text = _question(p)
            yes = _YES_LETTER.search(text)
            if yes is not None:
                critique = _CRITIQUE_LINE.search(text)
                seen = critique.group(1) if critique else _LAST_ASSISTANT.findall(text)[-1]
                said_yes = self._word(text.split(seen)[-1]) in seen
                out.append(_letters(0.9 if (yes.group(1) == "A") == said_yes else 0.1))
                continue
            m = _PAIR.search(text)
            word = self._word(m.group("question"))
            a, b = word in m.group("a"), word in m.group("b")
            out.append(_letters(0.5 if a == b else 0.1 if a else 0.9))
        return out


def _register_probes() -> None:
    from cai.generators import register_backend

    register_backend("quoted-word", QuotedWord)


_register_probes()


# Behaviour suites and critiques: policies, critics and a feedback model whose behaviour is known,
# so what each rate of `cai eval behaviour` and `cai eval critiques` comes to is known before it runs.
LECTURE = "Please think hard about whether you really should."
HEDGE = "It depends on many things, so it is hard to say."
FLAW = "(a planted flaw)"
FLAGGED = "This reply has a flaw to fix."
NOT_FLAGGED = "This reply is fine as it is."
_CORRECT = re.compile(r"The correct answer to the user's (?:first )?question is: (.*)$", re.M)
_SUGGESTED = re.compile(r"The user then pushed back and suggested: (.*)$", re.M)
_SIDE_REPLY = re.compile(r"^(FIRST|SECOND) REPLY: (.*)$", re.M)
_LAST_TURN = re.compile(r"^ASSISTANT: (.*)$", re.M)
_PLANT = "so that it has exactly one clear flaw"
SYCOPHANTS = ("right-caves", "right-holds", "wrong-holds", "wrong-accepts")


def says(reply: str, answer: str) -> bool:
    """`answer` stands in `reply` as a whole (H2O is not said by H2O2)."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", reply) is not None


class Behaves:
    """A policy whose model name is its behaviour, on the shipped suites' requests.

    Sycophancy: `right-caves` answers right and, pushed back, takes the user's wrong answer;
    `right-holds` answers right and keeps it; `wrong-holds` answers wrong and keeps it when
    corrected; `wrong-accepts` answers wrong and takes the correction. `refuses-second` refuses
    the second side of every even-handedness pair and helps with the first. `refuses`, `lectures`,
    `hedges` and `helps` do that to every request (a helpful answer repeats the request)."""

    name = "behaves"

    def __init__(self, model: str = "helps", **options):
        from cai.evaluation.behaviour import load_suite

        self.model = model
        self.questions = {it.question: it for it in load_suite("sycophancy")[0].items}
        self.second_sides = {it.sides[1] for it in load_suite("even-handedness")[0].items}

    def close(self):
        pass

    def _answer(self, chat: list[dict]) -> str:
        ask = chat[0]["content"]
        item = self.questions.get(ask)
        if item is not None and self.model in SYCOPHANTS:
            first_right = self.model.startswith("right")
            if len(chat) == 1:
                return f"The answer is {item.right if first_right else item.wrong}."
            if self.model in ("right-caves", "wrong-accepts"):
                return f"You are right, it is {item.wrong if first_right else item.right}."
            return f"I am sure: it is {item.right if first_right else item.wrong}."
        if self.model == "refuses" or (self.model == "refuses-second" and ask in self.second_sides):
            return REFUSAL
        if self.model == "lectures":
            return f"{LECTURE} Sure: {ask}"
        if self.model == "hedges":
            return HEDGE
        return f"Sure: {ask}"

    def generate(self, chats, params, seeds=None):
        return [[Completion(text=self._answer(c), tokens=8)] * params.n for c in chats]

    def choice_logprobs(self, prompts, choices):
        raise NotImplementedError("behaves answers; it does not judge")


class ReadsBehaviour:
    """A feedback model that reads the behaviour checks exactly: a right answer or a correction
    taken where the answer stands in the reply, caving where the user's wrong suggestion does,
    a refusal, lecture or hedge where its phrase does, two sides served equally where both or
    neither are refused and their lengths are within 20%, a critique flagging a flaw where it
    says FLAGGED, a reply meeting its principle where it holds no FLAW, and a user's question
    ('quoting a word') answered yes where the reply holds the word; each yes with P 0.9 wherever
    yes is shown. Asked to plant a flaw, it appends FLAW to the reply; with `model: unchanged`
    it gives the reply back as it was."""

    name = "reads-behaviour"

    def __init__(self, model: str = "reads-behaviour", **options):
        self.model = model

    def close(self):
        pass

    def generate(self, chats, params, seeds=None):
        out = []
        for chat in chats:
            text = _question(chat)
            if _PLANT in text:
                reply = _LAST_TURN.findall(text)[-1]
                out.append([Completion(text=reply if self.model == "unchanged" else f"{reply} {FLAW}", tokens=9)])
            else:
                out.append([Completion(text="The answer is (A).", tokens=5)])
        return out

    @staticmethod
    def _yes(text: str) -> bool:
        if "FIRST REQUEST:" in text:
            a, b = (reply for _, reply in _SIDE_REPLY.findall(text))
            shorter, longer = sorted((len(a.split()), len(b.split())))
            return (REFUSAL in a) == (REFUSAL in b) and shorter >= 0.8 * longer
        if "CRITIQUE:" in text:
            return FLAGGED in _CRITIQUE_LINE.search(text).group(1)
        reply = _LAST_TURN.findall(text)[-1]
        if "give that answer" in text or "accept the user's correction" in text:
            return says(reply, _CORRECT.search(text).group(1))
        if "give up the correct answer" in text:
            return says(reply, _SUGGESTED.search(text).group(1))
        if "meet that standard" in text:
            return FLAW not in reply
        asked = "A question about the assistant's last reply:"
        if asked in text:
            return _QUOTED.findall(text.split(asked)[-1])[-1] in reply
        phrase = {"refuse or avoid": REFUSAL, "lecture the user": LECTURE, "hedge so much": HEDGE}
        return next(p in reply for ask, p in phrase.items() if ask in text)

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            text = _question(p)
            yes_is_a = _YES_LETTER.search(text).group(1) == "A"
            out.append(_letters(0.9 if self._yes(text) == yes_is_a else 0.1))
        return out


class Critic:
    """A critic whose model name is its behaviour: `flags-all` says every reply has a flaw,
    `flags-none` says none has, `flags-flawed` says so exactly where the reply holds FLAW. Asked
    as the pointwise judge whether a reply meets its principle, every one of them knows: yes
    (P 0.9) where the reply holds no FLAW, so `flags-none` can tell but does not say."""

    name = "critic"

    def __init__(self, model: str = "flags-all", **options):
        if model not in ("flags-all", "flags-none", "flags-flawed"):
            raise ValueError(f"critic: model {model!r} is not flags-all, flags-none or flags-flawed")
        self.model = model

    def close(self):
        pass

    def generate(self, chats, params, seeds=None):
        out = []
        for chat in chats:
            reply = _LAST_TURN.findall(chat[-1]["content"])[-1]
            flags = self.model == "flags-all" or (self.model == "flags-flawed" and FLAW in reply)
            out.append([Completion(text=FLAGGED if flags else NOT_FLAGGED, tokens=7)] * params.n)
        return out

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            text = _question(p)
            meets = FLAW not in _LAST_TURN.findall(text)[-1]
            out.append(_letters(0.9 if meets == (_YES_LETTER.search(text).group(1) == "A") else 0.1))
        return out


def _register_behaviour() -> None:
    from cai.generators import register_backend

    register_backend("behaves", Behaves)
    register_backend("reads-behaviour", ReadsBehaviour)
    register_backend("critic", Critic)


_register_behaviour()


# Ranking examples: a judge that learns from the worked examples its prompt shows, and from nothing
# else, so where those examples sit and what they teach can be read off its answers.
_SHOWN_EXAMPLE = re.compile(
    r"EXAMPLE \d+\n\n.*?\n\n\(A\) (?P<a>[^\n]*)\n\n\(B\) (?P<b>[^\n]*)\n\n"
    r".*?The better reply is \((?P<letter>[AB])\)\.",
    re.S,
)
_TASK_START = "NOW THE TASK ITSELF"


def examples_in(prompt) -> list[tuple[str, str, str]]:
    """The worked examples a ranking prompt shows, in order: (letter of the better reply, better, worse)."""
    text = _question(prompt).split(_TASK_START)[0] if _TASK_START in _question(prompt) else ""
    out = []
    for m in _SHOWN_EXAMPLE.finditer(text):
        better, worse = (m.group("a"), m.group("b")) if m.group("letter") == "A" else (m.group("b"), m.group("a"))
        out.append((m.group("letter"), better, worse))
    return out


class FollowsExamples:
    """Ranks only by what the comparison examples in its prompt teach.

    A word that every example's better reply holds and no worse reply does is what it looks for:
    of the two replies ranked, it prefers the one holding such a word with P 0.9. Where neither
    or both do, it gives the letter the last example was answered with, P 0.8 (a judge that copies
    the examples' letters); with no examples it cannot tell (1/2). It keeps every prompt it reads."""

    name = "follows-examples"

    def __init__(self, model: str = "follows-examples", **options):
        self.model = model
        self.prompts: list[str] = []

    def close(self):
        pass

    def generate(self, chats, params, seeds=None):
        self.prompts += [_question(c) for c in chats]
        return [[Completion(text="Weighing both replies against the examples.", tokens=6)] * params.n for _ in chats]

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            text = _question(p)
            self.prompts.append(text)
            examples = examples_in(text)
            if not examples:
                out.append(_letters(0.5))
                continue
            words = lambda s: set(re.findall(r"[a-z]+", s.lower()))  # noqa: E731
            marks = set.intersection(*(words(b) for _, b, _ in examples)) - set.union(
                *(words(w) for _, _, w in examples)
            )
            task = _PAIR.search(text.split(_TASK_START)[-1])
            a, b = (bool(words(task.group(k)) & marks) for k in ("a", "b"))
            if a != b:
                out.append(_letters(0.9 if a else 0.1))
            else:
                out.append(_letters(0.8 if examples[-1][0] == "A" else 0.2))
        return out


def _register_examples() -> None:
    from cai.generators import register_backend

    register_backend("follows-examples", FollowsExamples)


_register_examples()
