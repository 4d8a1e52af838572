"""Constitution judges: rewards for RL straight from the feedback model, no reward model.

Two judges, both read through the reading core (critique/reading.py), so they work on every
backend (prefill, first-token log-probs or parsed letters) exactly as the labeler does:

- `ConstitutionJudge` (pointwise): each completion is read under a few principles; the reward is
  the mean probability that the feedback model answers "yes, the reply meets this principle".
- `PairwiseJudge` (for GRPO): each completion is ranked against the other completions of its
  group, or against a reference answer, under sampled principles in both orders; the reward is
  its mean probability of winning. RL then optimises exactly what the labeler prefers, and a
  group-relative algorithm needs nothing more than the order within the group.

The call signature is TRL's reward-function contract, so either plugs into `RLOOTrainer` or
`GRPOTrainer` as it is.
"""

from __future__ import annotations

import json
from typing import Literal

from cai.constitution import Constitution, weighted_sample
from cai.core.errors import UserError
from cai.core.ids import record_id
from cai.generators.records import Query
from cai.generators.templates import render

from .rank import pool_for, ranking_principles
from .reading import ANSWER_PREFIX, LetterQuestion, PairToRead, ReadingConfig, question, read_letters, read_pairs


def _conversation(prompt) -> list[dict]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def _text(completion) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else completion


class ConstitutionJudge:
    __name__ = "constitution_judge"  # TRL names the logged reward after this

    def __init__(self, backend, constitution: Constitution, principles: int = 2, seed: int = 0):
        self.backend, self.constitution, self.k, self.seed = backend, constitution, principles, seed
        self.calls = self.failures = 0

    def questions_for(self, conversation: list[dict], reply: str) -> list[LetterQuestion]:
        pool = ranking_principles(self.constitution)
        picked = weighted_sample(pool, self.k, f"{self.seed}/{conversation[-1]['content']}")
        msgs = conversation + [{"role": "assistant", "content": reply}]
        return [
            LetterQuestion(render("cai.critique", "judge.jinja", messages=msgs, question=question(p)), ANSWER_PREFIX)
            for p in picked
        ]

    def scores(self, prompts, completions) -> list[float | None]:
        """Mean P(yes) per completion over its principles; None where a reading failed (one failed
        reading fails the completion, as it fails a pair in the reading core)."""
        questions, owners = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            for q in self.questions_for(_conversation(prompt), _text(completion)):
                questions.append(q)
                owners.append(i)
        totals, counts = [0.0] * len(prompts), [0] * len(prompts)
        failed = [False] * len(prompts)
        for i, r in zip(owners, read_letters(self.backend, questions)):
            if r.error:
                failed[i] = True
            else:
                totals[i] += r.p_a
                counts[i] += 1
        self.failures += sum(failed)
        return [None if f or not c else t / c for t, c, f in zip(totals, counts, failed)]

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        self.calls += 1
        return [0.5 if s is None else s for s in self.scores(prompts, completions)]


class PairwiseJudge:
    """Reward = mean P(this completion beats another), read both ways by the labeler.

    `reference`: the name of a dataset column holding a reference answer (TRL passes dataset
    columns to reward functions); then each completion is ranked against it alone. Without it,
    completions are grouped by prompt and each is ranked against the rest of its group. Identical
    completions tie (1/2) without a reading; a pair that fails to read counts as a tie and is
    counted in `failures`.
    """

    __name__ = "pairwise_judge"

    def __init__(
        self,
        backend,
        constitution: Constitution,
        principles: int = 2,
        seed: int = 0,
        method: Literal["logprob", "cot"] = "logprob",
        reference: str | None = None,
    ):
        self.backend, self.constitution, self.seed, self.reference = backend, constitution, seed, reference
        self.cfg = ReadingConfig(method=method, principles=principles)
        self.calls = self.failures = 0

    def _pair(self, conv: list[dict], a: str, b: str, trait_ids: list[str]) -> PairToRead:
        q = Query(id="rl", messages=conv, origin="seed", trait_ids=trait_ids)
        return PairToRead(record_id("rl-pair", conv, a, b), conv, a, b, pool_for(self.constitution, q))

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        self.calls += 1
        convs = [_conversation(p) for p in prompts]
        replies = [_text(c) for c in completions]
        tags = kwargs.get("principle_ids") or [[] for _ in prompts]
        # (completion, opponent completion or None for the reference, pair) for every pair to read
        matches: list[tuple[int, int | None, PairToRead]] = []
        if self.reference is not None:
            refs = kwargs.get(self.reference)
            if refs is None:
                raise UserError(f"judge: the dataset has no {self.reference!r} column to rank against")
            for i, (conv, reply, ref) in enumerate(zip(convs, replies, refs)):
                matches.append((i, None, self._pair(conv, reply, _text(ref), tags[i] or [])))
        else:
            groups: dict[str, list[int]] = {}
            for i, conv in enumerate(convs):
                groups.setdefault(json.dumps(conv, sort_keys=True), []).append(i)
            for members in groups.values():
                for x, i in enumerate(members):
                    for j in members[x + 1 :]:
                        matches.append((i, j, self._pair(convs[i], replies[i], replies[j], tags[i] or [])))
        wins: list[list[float]] = [[] for _ in prompts]
        todo = [m for m in matches if m[2].first.strip() != m[2].second.strip()]
        for i, j, m in matches:
            if m.first.strip() == m.second.strip():
                wins[i].append(0.5)
                if j is not None:
                    wins[j].append(0.5)
        for (i, j, _), r in zip(todo, read_pairs(self.backend, [m[2] for m in todo], self.cfg, self.seed)):
            p = 0.5
            if r.error is not None:
                self.failures += 1
            else:
                p = r.p_first
            wins[i].append(p)
            if j is not None:
                wins[j].append(1.0 - p)
        return [sum(w) / len(w) if w else 0.5 for w in wins]


def make_judge(
    backend,
    constitution: Constitution,
    kind: Literal["pointwise", "pairwise"] = "pointwise",
    principles: int = 2,
    seed: int = 0,
    method: Literal["logprob", "cot"] = "logprob",
    reference: str | None = None,
):
    """The RL reward a judge config names: the pointwise yes/no judge or the pairwise one."""
    if kind == "pairwise":
        return PairwiseJudge(backend, constitution, principles, seed, method, reference)
    return ConstitutionJudge(backend, constitution, principles, seed)
