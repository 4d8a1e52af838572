"""The transformers backend on the real embedded model."""

import math

import pytest
import torch

from cai.constitution import load_constitution
from cai.core.errors import UserError
from cai.evaluation.labeler import label_pairs
from cai.evaluation.pairs import load_pairs
from cai.generators import SamplingParams, load_backend
from cai.generators.backends import BackendConfig
from tests.testing_utils import HH, require_hh

pytestmark = pytest.mark.slow


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colours of the rainbow."}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Is water wet?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
]


def test_greedy_batched_equals_one_by_one(hf_backend):
    params = SamplingParams(temperature=0, max_new_tokens=24)
    batched = hf_backend.generate(CHATS, params)
    single = [hf_backend.generate([c], params)[0] for c in CHATS]
    assert [b[0].text for b in batched] == [s[0].text for s in single]
    assert "Paris" in batched[0][0].text
    for (c,) in batched:
        assert c.error is None and 0 < c.tokens <= 24 and c.finish_reason in ("stop", "length")


def test_n_samples_seed_and_limits(hf_backend):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=7)
    a = hf_backend.generate(CHATS[:2], params)
    assert [len(x) for x in a] == [3, 3]
    assert a == hf_backend.generate(CHATS[:2], params)  # same seed, same samples
    assert all(c.tokens <= 12 for x in a for c in x)
    assert any(c.finish_reason == "length" for x in a for c in x)
    assert len({c.text for c in a[1]}) > 1  # sampling, not three copies


def test_stop_string_is_honoured_and_removed(hf_backend):
    free = hf_backend.generate(CHATS[1:2], SamplingParams(temperature=0, max_new_tokens=40))[0][0].text
    assert "," in free, free
    stopped = hf_backend.generate(CHATS[1:2], SamplingParams(temperature=0, max_new_tokens=40, stop=[","]))[0][0]
    assert stopped.text == free[: free.index(",")]
    assert stopped.finish_reason == "stop"


def test_overlong_prompt_fails_alone(hf_backend):
    long_chat = [{"role": "user", "content": "word " * (hf_backend.context_length + 10)}]
    out = hf_backend.generate([CHATS[0], long_chat, CHATS[1]], SamplingParams(temperature=0, max_new_tokens=8))
    assert out[1][0].finish_reason == "error" and "context" in out[1][0].error
    assert out[0][0].error is None and out[2][0].error is None
    scores = hf_backend.choice_logprobs([long_chat, CHATS[0]], ["A", "B"])
    assert scores[0].error and not scores[0]
    assert set(scores[1]) == {"A", "B"}


def test_empty_batch(hf_backend):
    assert hf_backend.generate([], SamplingParams()) == []
    assert hf_backend.choice_logprobs([], ["A", "B"]) == []


def _reference_logprobs(backend, chat, continuation_ids):
    """An independent computation: one unpadded forward pass of prompt + continuation."""
    tok, lm = backend.tokenizer, backend.lm
    cont = chat[-1]["role"] == "assistant"
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont)
    prompt = tok(text, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + continuation_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(lm(ids).logits[0].float(), -1)
    return sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(continuation_ids))


def test_choice_logprobs_match_a_full_forward_pass(hf_backend):
    prompts = [
        [
            {"role": "user", "content": "Which is a fruit? (A) apple (B) brick. Answer A or B."},
            {"role": "assistant", "content": "The answer is ("},
        ],
        [{"role": "user", "content": "Is the sky green? Answer Yes or No."}],
        [{"role": "user", "content": "Pick A or B, nothing else. Which number is larger: (A) 2 (B) 9000?"}],
    ]
    for choices in (["A", "B"], ["Yes", "No", "Perhaps not"]):
        got = hf_backend.choice_logprobs(prompts, choices)
        for chat, scores in zip(prompts, got):
            assert list(scores) == choices
            for c in choices:
                ids = hf_backend.tokenizer(c, add_special_tokens=False).input_ids
                want = _reference_logprobs(hf_backend, chat, ids)
                assert math.isfinite(scores[c]) and scores[c] <= 0
                assert scores[c] == pytest.approx(want, abs=2e-3)
    ab = hf_backend.choice_logprobs(prompts[:1], ["A", "B"])[0]
    assert math.exp(ab["A"]) + math.exp(ab["B"]) <= 1 + 1e-6


def test_unknown_option_and_backend_are_user_errors(default_model_dir):
    with pytest.raises(UserError, match="options.batchsize: unknown option"):
        load_backend(BackendConfig(backend="transformers", options={"batchsize": 4}))
    with pytest.raises(UserError, match="options.attn_implementation: .*not supported"):
        load_backend(BackendConfig(backend="transformers", options={"attn_implementation": "sdpaa"}))
    with pytest.raises(UserError, match="unknown backend 'tgi'"):
        load_backend(BackendConfig(backend="tgi"))


@pytest.fixture(scope="module")
def unshared(default_model_dir):
    """The reference path: every row in full, logits at every position, transformers' own sdpa
    (which copies grouped key/value heads out under a padding mask)."""
    backend = load_backend("transformers", prefix_sharing=False, attn_implementation="sdpa")
    yield backend
    backend.close()


@require_hh
def test_labeler_p_chosen_is_the_same_with_and_without_prefix_sharing(hf_backend, unshared):
    """Real HH-RLHF pairs through the labeler: 2k readings per pair share the conversation."""
    pairs, _ = load_pairs(HH, 3)
    c = load_constitution("harmless")
    new, new_errors = label_pairs(hf_backend, c, pairs, principles=2)
    old, old_errors = label_pairs(unshared, c, pairs, principles=2)
    assert not new_errors and not old_errors and len(new) == len(old) == 3 * 2 * 2
    for a, b in zip(new, old):
        assert (a.pair, a.principle, a.chosen_is_a) == (b.pair, b.principle, b.chosen_is_a)
        assert a.p_chosen == pytest.approx(b.p_chosen, abs=1e-4)


SHARED = "You are judging answers. Read the conversation carefully; the user asked about cooking pasta. "
MIXED = [
    [{"role": "user", "content": SHARED + "Which is better? (A) boil it (B) fry it. Answer A or B."}],
    [{"role": "user", "content": SHARED + "Which is better? (A) salt the water (B) sugar the water."}],
    [
        {"role": "user", "content": SHARED + "Which is better? (A) boil it (B) fry it. Answer A or B."},
        {"role": "assistant", "content": "The answer is ("},
    ],
    [{"role": "user", "content": SHARED + "Which is better? (A) salt the water (B) sugar the water."}],  # repeated
    "A raw string sharing nothing with the chats",
    "A raw string sharing nothing with the chats, but longer than the one before it",
    [{"role": "user", "content": "Short."}],
]


@pytest.mark.parametrize("choices", [["A", "B"], ["Yes", "No", "Perhaps not"]])
def test_prefix_sharing_scores_mixed_batches_like_the_reference(hf_backend, unshared, choices):
    """Shared prefixes, a prompt that starts another one, repeats, raw strings, mixed lengths and
    many batches (a budget of 64 tokens puts every row in a batch of its own) all score as the
    reference does."""
    want = unshared.choice_logprobs(MIXED, choices)
    default = hf_backend.options.batch_tokens
    for budget in (default, 64):
        hf_backend.options.batch_tokens = budget
        try:
            got = hf_backend.choice_logprobs(MIXED, choices)
        finally:
            hf_backend.options.batch_tokens = default
        for g, w in zip(got, want):
            assert list(g) == choices and g.error is None
            for c in choices:
                assert g[c] == pytest.approx(w[c], abs=1e-4)


FEW_SHOT = [
    {"role": "user", "content": "Here is an example. USER: How do I boil an egg? Critique the last answer."},
    {"role": "assistant", "content": "The answer forgot to say how long to boil it."},
]


def test_generation_with_a_shared_prefix_matches_the_reference(hf_backend, unshared):
    chats = [FEW_SHOT + [{"role": "user", "content": q}] for q in ("Name a fruit.", "Name a colour.", "Say hi.")]
    chats.append([{"role": "user", "content": "Name a country."}])  # shares only the system prompt
    params = SamplingParams(temperature=0, max_new_tokens=16)
    want = [c[0].text for c in unshared.generate(chats, params)]
    for batch_size in (16, 2):  # 2: the group of three is cut, each piece runs the prefix again
        hf_backend.options.batch_size = batch_size
        try:
            assert [c[0].text for c in hf_backend.generate(chats, params)] == want
        finally:
            hf_backend.options.batch_size = 16
    sampled = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    a = hf_backend.generate(chats, sampled)
    assert a == hf_backend.generate(chats, sampled) and [len(x) for x in a] == [2] * 4
    assert all(c.error is None and 0 < c.tokens <= 8 for x in a for c in x)


@pytest.mark.slow
def test_a_streamed_answer_is_the_answer_generate_gives(hf_backend):
    """What an editor shows piece by piece adds up to the text `generate` writes for that prompt
    (greedy, and sampled from the same seed)."""
    chat = [{"role": "user", "content": "Give me two tips for sleeping better."}]
    for params, seed in (
        (SamplingParams(temperature=0, max_new_tokens=24), None),
        (SamplingParams(temperature=1.0, max_new_tokens=24), 5),
    ):
        pieces = list(hf_backend.generate_stream(chat, params, seed=seed))
        final = pieces[-1]
        assert len(pieces) > 2 and final.error is None
        assert "".join(pieces[:-1]) == final.text
        seeds = None if seed is None else [seed]
        assert final.text == hf_backend.generate([chat], params, seeds=seeds)[0][0].text
        assert final.tokens == hf_backend.generate([chat], params, seeds=seeds)[0][0].tokens
