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
