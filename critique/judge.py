"""A constitution judge: a reward for RL straight from the feedback model, no reward model.

Each completion is read under a few principles; the reward is the mean probability that the
feedback model answers "yes, the reply meets this principle". The signature is TRL's reward
function contract, so it plugs into `RLOOTrainer`/`GRPOTrainer` as it is.
"""

from __future__ import annotations

from cai.constitution import Constitution, weighted_sample
from cai.generators.templates import render

from .rank import CHOICES, prob_first_letter, question, ranking_principles


class ConstitutionJudge:
    __name__ = "constitution_judge"  # TRL names the logged reward after this

    def __init__(self, backend, constitution: Constitution, principles: int = 2, seed: int = 0):
        self.backend, self.constitution, self.k, self.seed = backend, constitution, principles, seed
        self.calls = 0

    def prompts_for(self, conversation: list[dict], reply: str) -> list[list[dict]]:
        pool = ranking_principles(self.constitution)
        picked = weighted_sample(pool, self.k, f"{self.seed}/{conversation[-1]['content']}")
        msgs = conversation + [{"role": "assistant", "content": reply}]
        return [
            [
                {"role": "user", "content": render("cai.critique", "judge.jinja", messages=msgs, question=question(p))},
                {"role": "assistant", "content": "The answer is ("},
            ]
            for p in picked
        ]

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        self.calls += 1
        readings, owners = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            conv = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            reply = completion[-1]["content"] if isinstance(completion, list) else completion
            for p in self.prompts_for(conv, reply):
                readings.append(p)
                owners.append(i)
        scores = self.backend.choice_logprobs(readings, CHOICES)
        totals, counts = [0.0] * len(prompts), [0] * len(prompts)
        for i, s in zip(owners, scores):
            if not s.error:
                totals[i] += prob_first_letter(s)
                counts[i] += 1
        return [t / c if c else 0.5 for t, c in zip(totals, counts)]
