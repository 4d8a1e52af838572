"""What the backends share: request seeds, turning next-token log-probs into choice scores, and
finding the prompt prefixes a batch shares.

Neither engine hands back a full next-token distribution; both report the log-probs of the top K
tokens (vLLM can also report exactly the tokens asked for). So both need the same two rules, kept
here so that the two backends score a prompt the same way:

* a choice that spans several tokens is scored as a *chain* of next-token requests: one per
  token of the choice, each prompt being the prompt plus the choice's earlier tokens. Every
  request is a plain continuation of the same prompt, so the prefix cache serves them (vLLM's
  `prompt_logprobs` would bypass it); requests with the same prefix are merged, so `"A"` and
  `"AB"` share one;
* a token the engine did not report gets a *floor*: see `floor_logprob`.

The transformers backend scores choices by the same chains (it sees every token, so it needs no
floor), and runs a prefix shared by several prompts once (`prefix_groups`), which is what vLLM's
prefix cache does for the engine backends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..types import ChoiceScores

# Prompt i of a batch samples with seed + SEED_STRIDE * i. Engines give the j-th of n samples of a
# seeded request the seed + j, so with n below the stride no two samples of a batch share a seed;
# the vLLM and OpenAI backends use the same rule, so a seeded batch samples alike through both.
SEED_STRIDE = 1_000_003

# The least probability mass a floor may stand for: keeps the floor finite when the reported
# tokens already hold (up to rounding) all the mass.
MIN_MASS = 1e-12


def request_seed(seed: int | None, index: int) -> int | None:
    return None if seed is None else seed + SEED_STRIDE * index


def floor_logprob(reported: Iterable[float]) -> float:
    """The log-prob given to a token missing from the engine's top-K report.

    Such a token is no likelier than the least likely reported token, and no likelier than all
    the mass the reported tokens leave over; the floor is the smaller of the two. It is thus an
    upper bound on the true value (a floored choice is never made to look less likely than it
    is), and the floored and reported choices together still sum to at most probability 1.
    """
    values = list(reported)
    if not values:
        raise ValueError("the engine reported no log-probs")
    left_over = 1.0 - sum(math.exp(v) for v in values)
    return min(min(values), math.log(max(left_over, MIN_MASS)))


@dataclass
class StepResult:
    """What one next-token request reported: log-probs of the tokens it saw, and the floor for
    the rest (None when the engine reported exactly the wanted tokens, so nothing needs one)."""

    found: dict[int, float]
    floor: float | None


class ChoicePlan:
    """The next-token requests that score a set of tokenized choices, merged by shared prefix."""

    def __init__(self, choice_ids: list[list[int]]):
        self.choice_ids = choice_ids
        wanted: dict[tuple[int, ...], list[int]] = {}
        for ids in choice_ids:
            for j, tok in enumerate(ids):
                step = wanted.setdefault(tuple(ids[:j]), [])
                if tok not in step:
                    step.append(tok)
        self.steps: list[tuple[tuple[int, ...], list[int]]] = list(wanted.items())
        self._index = {prefix: k for k, (prefix, _) in enumerate(self.steps)}

    @property
    def single_token(self) -> bool:
        return len(self.steps) == 1

    def combine(self, choices: list[str], results: list[StepResult]) -> ChoiceScores:
        """Sum each choice's token log-probs; a token not reported takes its step's floor."""
        scores: dict[str, float] = {}
        floored: list[str] = []
        for label, ids in zip(choices, self.choice_ids):
            total, missing = 0.0, False
            for j, tok in enumerate(ids):
                step = results[self._index[tuple(ids[:j])]]
                if tok in step.found:
                    total += step.found[tok]
                elif step.floor is not None:
                    total += step.floor
                    missing = True
                else:
                    return ChoiceScores(error=f"the engine did not report the log-prob of choice {label!r}")
            scores[label] = total if math.isfinite(total) else -math.inf
            if missing:
                floored.append(label)
        return ChoiceScores(scores, floored=floored)


def finish_reason(reason: str | None) -> str:
    """Engine finish reasons → ours: running out of tokens is `length`, any other end is `stop`."""
    return "length" if reason == "length" else "stop"


@dataclass
class PrefixGroup:
    """Rows (indices into the caller's list) that start with the same `shared` tokens."""

    shared: int
    rows: list[int]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def prefix_groups(rows: list[list[int]], overhead: int = 16) -> list[PrefixGroup]:
    """Split token rows into groups whose members share a prefix worth computing once.

    Rows are sorted by their tokens, so rows that start alike become neighbours and a group is a
    run of neighbours; its shared length is the shortest common prefix of neighbouring rows in the
    run (capped so that every row keeps at least its last token outside it, since that token's
    logits are the ones read). A run is kept whole when sharing its prefix saves more tokens than
    splitting it at its weakest links would, less `overhead` tokens for each extra prefix pass.
    Nothing about the prompt layout is assumed: a conversation shared by every reading of a pair,
    a few-shot block shared by every critique, or a system prompt alone is found the same way.
    Rows sharing nothing worth it come back in groups with `shared == 0`.
    """
    if not rows:
        return []
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    lcp = [0] + [common_prefix_length(rows[order[k - 1]], rows[order[k]]) for k in range(1, len(order))]
    groups: list[PrefixGroup] = []

    def best(lo: int, hi: int, depth: int) -> tuple[int, list[PrefixGroup]]:
        if lo == hi:
            return 0, [PrefixGroup(0, [order[lo]])]
        weakest = min(lcp[lo + 1 : hi + 1])
        shared = min(weakest, min(len(rows[order[k]]) for k in range(lo, hi + 1)) - 1)
        whole = (hi - lo) * shared - overhead if shared > 0 else 0
        members = [order[k] for k in range(lo, hi + 1)]
        if depth > 200:  # pathological nesting: stop refining
            return whole, [PrefixGroup(max(shared, 0) if whole > 0 else 0, members)]
        saved, parts, start = 0, [], lo
        for k in range(lo + 1, hi + 2):
            if k > hi or lcp[k] == weakest:
                s, g = best(start, k - 1, depth + 1)
                saved, parts, start = saved + s, parts + g, k
        if whole > saved or (whole == saved and whole > 0 and len(parts) > 1):
            return whole, [PrefixGroup(shared, members)]
        return saved, parts

    _, groups = best(0, len(order) - 1, 0)
    return groups
