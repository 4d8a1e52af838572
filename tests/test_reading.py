"""The one pair-reading core, through the openai backend against a hosted-like API on loopback.

The server (tests/fake_openai.py) behaves as hosted chat APIs do: it refuses a trailing assistant
message, caps `top_logprobs`, or gives no log-probs at all, and answers with a letter derived from
the prompt (the option holding GOOD). The openai client, HTTP and the backend are real; only the
model is scripted, so the probabilities the core must produce are known exactly.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.critique import ComparisonConfig, plan_comparison_tasks, run_comparison_tasks
from cai.critique.judge import ConstitutionJudge, PairwiseJudge, make_judge
from cai.critique.rank import Candidate
from cai.critique.reading import (
    LetterQuestion,
    PairToRead,
    ReadingConfig,
    parse_letter,
    read_letters,
    read_pairs,
    reading_mode,
)
from cai.evaluation.labeler import read_labeled_pairs, readings_of, summarise
from cai.evaluation.pairs import LabeledPair
from cai.evaluation.policy import refusal_probabilities
from cai.generators.backends.base import Capabilities, capabilities
from cai.generators.backends.openai_backend import OpenAIBackend
from cai.generators.records import Query
from cai.generators.streaming import collect
from tests.cli import cai

from .fake_openai import MODEL, P_OTHER, P_PICKED, FakeServer, hosted_judge
from .judges import JUDGE_C, AlwaysA, PrefersGood

KEY = "sk-hosted-test"
Q = Query(id="q-1", messages=[{"role": "user", "content": "How do I clean a wool jumper?"}], origin="seed")
GOOD, BAD = "GOOD: hand-wash it cold with wool detergent.", "Boil it."
MODES = {
    # mode: (server behaviour, backend options)
    "prefill": (dict(prefill=True, top_logprobs=5), dict(continue_final_message=True, logprobs_k=5)),
    "first_token": (dict(top_logprobs=5), dict(logprobs_k=5)),
    "parsed": (dict(logprobs=False), dict(logprobs=False)),
}


def hosted(server: FakeServer, **options) -> OpenAIBackend:
    return OpenAIBackend(MODEL, base_url=server.base_url, api_key=KEY, max_retries=0, **options)


def rank(backend, cfg: ComparisonConfig, first: str = GOOD, second: str = BAD):
    groups = [(Q, [Candidate(id="r-1", text=first), Candidate(id="r-2", text=second)], [])]
    tasks = plan_comparison_tasks(groups, JUDGE_C, cfg, "hosted", seed=0)
    return tasks, collect(run_comparison_tasks(backend, JUDGE_C, tasks, cfg, seed=0))


def chat_requests(server: FakeServer) -> list[dict]:
    return [body for path, body, _ in server.requests if path.endswith("/chat/completions")]


@pytest.mark.parametrize("mode", list(MODES))
def test_ranking_through_a_hosted_api_in_each_mode(mode):
    behaviour, options = MODES[mode]
    with FakeServer(hosted_judge(**behaviour)) as server:
        backend = hosted(server, **options)
        assert reading_mode(backend) == mode
        cfg = ComparisonConfig(principles=2)
        _, out = rank(backend, cfg)
        _, swapped = rank(backend, cfg, BAD, GOOD)
        backend.close()
    (c,), (d,) = out.records, swapped.records
    assert not out.errors and c.chosen_id == "r-1" and d.chosen_id == "r-2"
    expected = 1.0 if mode == "parsed" else P_PICKED / (P_PICKED + P_OTHER)
    assert c.p_chosen == pytest.approx(expected) and d.p_chosen == pytest.approx(expected)
    assert len(c.judgements) == 4 and {j.order for j in c.judgements} == {"ab", "ba"}
    assert all(j.reading == mode for j in c.judgements) and c.order_consistent
    requests = chat_requests(server)
    if mode == "prefill":
        assert all(b["messages"][-1] == {"role": "assistant", "content": "The better reply is ("} for b in requests)
        assert all(b["top_logprobs"] == 5 and b["continue_final_message"] for b in requests)
    else:
        assert all(b["messages"][-1]["role"] == "user" for b in requests)
        assert all("letter alone" in b["messages"][-1]["content"] for b in requests)
    if mode == "parsed":
        assert all("logprobs" not in b and b["max_tokens"] > 1 for b in requests)
        assert all(j.logp == {} and j.answer and j.p_first in (0.0, 1.0) for j in c.judgements)
    else:
        assert all(b["max_tokens"] == 1 and b["logprobs"] for b in requests)
        assert all(set(j.logp) == {"A", "B"} and not j.floored for j in c.judgements)


def test_cot_on_a_hosted_api_asks_for_the_letter_in_a_second_turn():
    with FakeServer(hosted_judge(top_logprobs=5)) as server:
        backend = hosted(server, logprobs_k=5)
        cfg = ComparisonConfig(method="cot", principles=1)
        _, out = rank(backend, cfg)
        backend.close()
    (c,) = out.records
    assert c.chosen_id == "r-1" and c.p_chosen == pytest.approx(0.6)  # clamped
    assert all(j.reasoning == "One reply is plainly better than the other." for j in c.judgements)
    assert all(j.p_first_raw == pytest.approx(P_PICKED / (P_PICKED + P_OTHER)) for j in c.judgements)
    letters = [b for b in chat_requests(server) if b["max_tokens"] == 1]
    assert len(letters) == 2 and all(
        [m["role"] for m in b["messages"]] == ["user", "assistant", "user"] for b in letters
    )


def test_a_capped_top_k_floors_the_unseen_letter_and_the_record_keeps_it():
    with FakeServer(hosted_judge(top_logprobs=1)) as server:
        backend = hosted(server, logprobs_k=1)
        _, out = rank(backend, ComparisonConfig(principles=1))
        asked_too_many = hosted(server, logprobs_k=5)
        tasks, failed = rank(asked_too_many, ComparisonConfig(principles=1))
        backend.close()
        asked_too_many.close()
    (c,) = out.records
    floor = math.log(1 - P_PICKED)  # the one reported token leaves 0.3 of the mass
    for j in c.judgements:
        unseen = "B" if (j.order == "ab") else "A"  # GOOD is shown as (A) in order ab
        assert j.floored == [unseen] and j.logp[unseen] == pytest.approx(floor)
    assert c.p_chosen == pytest.approx(P_PICKED / (P_PICKED + (1 - P_PICKED)))
    assert not failed.records and [e["task_id"] for e in failed.errors] == [tasks[0].id]
    assert "HTTP 400: top_logprobs must be at most 1" in failed.errors[0]["error"]


def test_prefill_on_a_server_that_refuses_it_fails_with_the_servers_reason():
    with FakeServer(hosted_judge(prefill=False)) as server:
        backend = hosted(server, continue_final_message=True)
        _, out = rank(backend, ComparisonConfig(principles=1))
        backend.close()
    assert not out.records and "HTTP 400: assistant message prefill is not supported" in out.errors[0]["error"]


def test_a_server_without_logprobs_says_how_to_read_it():
    with FakeServer(hosted_judge(logprobs=False)) as server:
        backend = hosted(server)
        _, out = rank(backend, ComparisonConfig(principles=1))
        backend.close()
    assert not out.records and "options.logprobs: false" in out.errors[0]["error"]


def test_capabilities_are_declared_once_by_the_backend():
    with FakeServer(hosted_judge()) as server:
        backends = [hosted(server), hosted(server, continue_final_message=True, logprobs_k=5)]
        backends.append(hosted(server, logprobs=False))
        for b in backends:
            b.close()
    assert backends[0].tokenizer is None  # a hosted model's name: nothing to tokenize here
    assert backends[0].capabilities == Capabilities(prefill=False, logprobs=True, top_logprobs=20)
    assert backends[1].capabilities == Capabilities(prefill=True, logprobs=True, top_logprobs=5)
    assert [reading_mode(b) for b in backends] == ["first_token", "prefill", "parsed"]
    assert capabilities(PrefersGood()) == Capabilities() and reading_mode(AlwaysA()) == "prefill"


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        (" (A) is better.", "A"),
        ("The better reply is (B).", "B"),
        ("Answer: A", "A"),
        ("A good question; reply B is kinder.", "A"),
        ("Neither.", None),
    ],
)
def test_parse_letter(text, letter):
    assert parse_letter(text) == letter


def test_failed_parse_fails_the_pair():
    class Mumbles(PrefersGood):
        def generate(self, chats, params):
            from cai.generators.types import Completion

            return [[Completion(text="Hmm, hard to say.", tokens=5)] for _ in chats]

    pair = PairToRead("k", Q.messages, GOOD, BAD, JUDGE_C.principles)
    (r,) = read_pairs(Mumbles(), [pair], ReadingConfig(principles=1), seed=0, mode="parsed")
    assert r.error and "no A or B" in r.error and r.judgements == []


PAIRS = [
    LabeledPair(f"p{i}", [{"role": "user", "content": f"Question {i}?"}], f"GOOD answer {i}", f"bad {i}", f"x:{i}")
    for i in range(6)
]


def test_pipeline_and_eval_give_the_same_p_chosen():
    """The comparisons stage and the labeler eval read a pair through the same core: with the
    same principles (all three here) and seed, the soft label is the same."""
    cfg = ComparisonConfig(principles=3)
    with FakeServer(hosted_judge(top_logprobs=1)) as server:
        backend = hosted(server, logprobs_k=1)
        for pair in PAIRS[:3]:
            q = Query(id=pair.id, messages=pair.context, origin="seed")
            cands = [Candidate(id="c", text=pair.chosen), Candidate(id="r", text=pair.rejected)]
            (t,) = plan_comparison_tasks([(q, cands, [])], JUDGE_C, cfg, "hosted", seed=5)
            (comp,) = collect(run_comparison_tasks(backend, JUDGE_C, [t], cfg, seed=5)).records
            (label,) = read_labeled_pairs(backend, JUDGE_C, [pair], cfg, seed=5)
            assert label.p_chosen == pytest.approx(comp.p_chosen, abs=1e-12)
            assert label.p_human == pytest.approx(comp.p_first, abs=1e-12)
            assert sorted(j.principle_id for j in label.reading.judgements) == sorted(
                j.principle_id for j in comp.judgements
            )
        backend.close()


def test_parsed_readings_are_kept_apart_in_the_labeler_metrics():
    with FakeServer(hosted_judge(logprobs=False)) as server:
        backend = hosted(server, logprobs=False)
        parsed, errors = readings_of(read_labeled_pairs(backend, JUDGE_C, PAIRS, ReadingConfig(principles=1)))
        backend.close()
    logprob, _ = readings_of(read_labeled_pairs(PrefersGood(), JUDGE_C, PAIRS, ReadingConfig(principles=1)))
    assert not errors and {r.kind for r in parsed} == {"parsed"} and {r.kind for r in logprob} == {"logprob"}
    only_parsed = summarise(parsed)
    assert only_parsed["reading_kinds"] == {"parsed": 12} and only_parsed["agreement"] == 1.0
    mixed = summarise(logprob + parsed)
    assert mixed["reading_kinds"] == {"logprob": 12, "parsed": 12}
    assert mixed["readings"] == 12 and mixed["mean_p_chosen"] == pytest.approx(0.95)  # log-prob readings only
    assert mixed["parsed"]["readings"] == 12 and mixed["parsed"]["mean_p_chosen"] == 1.0


def test_pointwise_judge_and_refusal_check_on_a_hosted_api():
    prompts = [[{"role": "user", "content": "Hi?"}]] * 2
    completions = [[{"role": "assistant", "content": "GOOD: hello!"}], [{"role": "assistant", "content": "Go away."}]]
    for behaviour, options, expected in (
        (dict(top_logprobs=5), dict(logprobs_k=5), P_PICKED / (P_PICKED + P_OTHER)),
        (dict(logprobs=False), dict(logprobs=False), 1.0),
    ):
        with FakeServer(hosted_judge(**behaviour)) as server:
            backend = hosted(server, **options)
            judge = ConstitutionJudge(backend, JUDGE_C, principles=2)
            rewards = judge(prompts=prompts, completions=completions)
            refusals = refusal_probabilities(backend, prompts, ["GOOD: hello!", "Go away."])
            backend.close()
        assert rewards == pytest.approx([expected, 1 - expected]) and judge.failures == 0
        assert refusals == pytest.approx([expected, 1 - expected])  # the scripted judge says "(A) yes" to GOOD


def test_pairwise_judge_ranks_each_completion_against_its_group():
    prompts = [[{"role": "user", "content": "Q1"}]] * 3 + [[{"role": "user", "content": "Q2"}]] * 2
    completions = ["GOOD one", "bad one", "worse one", "same", "same"]
    judge = PairwiseJudge(PrefersGood(), JUDGE_C, principles=2)
    rewards = judge(prompts=prompts, completions=completions)
    # GOOD beats both others at 0.95; each bad one loses to GOOD and ties the other bad (no GOOD in either)
    assert rewards[0] == pytest.approx(0.95)
    assert rewards[1] == pytest.approx((0.05 + 0.5) / 2) and rewards[2] == pytest.approx((0.05 + 0.5) / 2)
    assert rewards[3:] == [0.5, 0.5]  # identical answers tie without a reading
    biased = PairwiseJudge(AlwaysA(), JUDGE_C, principles=2)(prompts=prompts, completions=completions)
    assert biased == pytest.approx([0.5] * 5)  # both orders cancel a pure position bias


def test_pairwise_judge_against_a_reference_on_a_hosted_api():
    prompts = [[{"role": "user", "content": "Q"}]] * 2
    with FakeServer(hosted_judge(top_logprobs=5)) as server:
        backend = hosted(server, logprobs_k=5)
        judge = make_judge(backend, JUDGE_C, "pairwise", principles=1, reference="chosen")
        rewards = judge(prompts=prompts, completions=["GOOD answer", "meh"], chosen=["meh too", "GOOD reference"])
        with pytest.raises(Exception, match="no 'chosen' column"):
            judge(prompts=prompts, completions=["a", "b"])
        backend.close()
    p = P_PICKED / (P_PICKED + P_OTHER)
    assert rewards == pytest.approx([p, 1 - p]) and judge.failures == 0
    assert isinstance(make_judge(backend, JUDGE_C), ConstitutionJudge)


def test_letters_of_a_batch_come_back_in_order():
    qs = [LetterQuestion(f"Is this GOOD? {i}" if i % 2 else f"Is this fine? {i}", "The answer is (") for i in range(6)]
    with FakeServer(hosted_judge(top_logprobs=2)) as server:
        backend = hosted(server, logprobs_k=2, concurrency=3)
        got = read_letters(backend, qs)
        backend.close()
    assert [r.p_a > 0.5 for r in got] == [bool(i % 2) for i in range(6)]


def _pairs_file(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}?", "chosen": f"GOOD answer {i}", "rejected": f"bad answer {i}"} for i in range(4)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("mode", ["first_token", "parsed"])
def test_cai_eval_labeler_on_a_hosted_api(tmp_path, mode):
    behaviour, options = MODES[mode]
    with FakeServer(hosted_judge(**behaviour)) as server:
        fb = tmp_path / "feedback.yaml"
        opts = {"base_url": server.base_url, "api_key": KEY, **options}
        fb.write_text(json.dumps({"backend": "openai", "model": MODEL, "options": opts}))
        args = ["eval", "labeler", "--pairs", str(_pairs_file(tmp_path)), "--constitution", "harmless"]
        r = CliRunner().invoke(app, [*args, "--feedback", str(fb), "--principles", "2", "--json"])
        inline = ["--feedback-backend", "openai", "--feedback-model", MODEL]
        inline += ["--feedback-option", f"base_url={server.base_url}"]
        inline += [
            f"--feedback-option={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in options.items()
        ]
        s = CliRunner().invoke(app, [*args, *inline, "--feedback-option", f"api_key={KEY}", "--principles", "2"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout[r.stdout.index("{") :])
    assert res["backend"] == "openai" and res["reading"] == mode and res["errors"] == 0
    kind = "parsed" if mode == "parsed" else "logprob"
    assert res["pairs"] == 4 and res["reading_kinds"] == {kind: 16} and res["agreement"] == 1.0
    assert s.exit_code == 0, s.output
    assert "letters read by" in s.stdout and f"{mode} (16 {kind})" in s.stdout  # the table says how
    assert KEY not in r.stdout + s.stdout


def test_feedback_mistakes_are_one_line_exit_2(tmp_path):
    pairs = _pairs_file(tmp_path)
    r = cai("eval", "labeler", "--pairs", pairs, "--feedback", tmp_path / "missing.yaml")
    assert r.returncode == 2 and r.stderr.strip() == f"--feedback: {tmp_path / 'missing.yaml'}: file not found"
    r = cai("eval", "labeler", "--pairs", pairs, "--feedback-backend", "nope")
    assert r.returncode == 2 and r.stderr.strip().startswith(
        "--feedback-backend: unknown backend 'nope'; choose one of"
    )
    bad = tmp_path / "fb.yaml"
    bad.write_text("backend: openai\nmodle: x\n")
    r = cai("eval", "policy", "--model", "m", "--baseline", "b", "--prompts", pairs, "--feedback", bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert str(bad) in r.stderr and "modle" in r.stderr
    r = cai("eval", "character", "--model", "m", "--baseline", "b", "--feedback-option", "oops")
    assert r.returncode == 2 and r.stderr.strip() == "--feedback-option 'oops': expected key=value"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["logprob", "cot"])
def test_pipeline_and_eval_agree_on_the_embedded_model(hf_backend, method):
    """The same as above on a real model: the comparisons stage and `eval labeler` read the pair
    with the same prompts, principles and orders, and so give it the same soft label."""
    # every principle of the constitution is read, so both paths read the same ones; CoT argues
    # under one principle only, to keep the generation short on a CPU
    c = JUDGE_C if method == "logprob" else JUDGE_C.model_copy(update={"principles": JUDGE_C.principles[:1]})
    cfg = ComparisonConfig(method=method, principles=len(c.principles), cot_max_new_tokens=8)
    pair = LabeledPair(
        "p-wool",
        [{"role": "user", "content": "How do I get a stain out of a wool jumper?"}],
        "Dab it gently with cold water and a little wool detergent; never rub or use hot water.",
        "Put it in a hot wash with bleach.",
        "x:1",
    )
    q = Query(id="q-wool", messages=pair.context, origin="seed")
    cands = [Candidate(id="c", text=pair.chosen), Candidate(id="r", text=pair.rejected)]
    (t,) = plan_comparison_tasks([(q, cands, [])], c, cfg, "transformers:default", seed=3)
    (comp,) = collect(run_comparison_tasks(hf_backend, c, [t], cfg, seed=3)).records
    (label,) = read_labeled_pairs(hf_backend, c, [pair], cfg, seed=3)
    assert label.reading.error is None and len(label.reading.judgements) == 2 * len(c.principles)
    assert label.p_chosen == pytest.approx(comp.p_chosen, abs=1e-5)
    assert label.p_human == pytest.approx(comp.p_first, abs=1e-5)
    if method == "cot":
        ours = sorted((j.principle_id, j.reasoning) for j in comp.judgements)
        theirs = sorted((j.principle_id, j.reasoning) for j in label.reading.judgements)
        assert ours == theirs  # the same arguments, read the same way
