"""The openai backend against a server that misbehaves on purpose (tests/fake_openai.py): it fails
the way hosted APIs and overloaded servers do. Everything else in these tests is real: the openai
client, tenacity, sockets and timeouts.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai.core.errors import UserError
from cai.generators.backends.engine_utils import request_seed
from cai.generators.backends.openai_backend import OpenAIBackend
from cai.generators.types import SamplingParams

from .fake_openai import MODEL, FakeServer, Streamed, drip_answer, error_answer, ok_answer

KEY = "sk-test-SECRET-7f3a9c"
CHAT = [{"role": "user", "content": "hello"}]


def backend_for(server: FakeServer, **options) -> OpenAIBackend:
    options = {"api_key": KEY, "backoff": 0.01, "max_backoff": 0.05, **options}
    return OpenAIBackend(MODEL, base_url=server.base_url, **options)


def test_survives_429_and_5xx_then_answers():
    failures = {1: error_answer(429, headers={"Retry-After": "0.3"}), 2: error_answer(500), 3: error_answer(503)}
    with FakeServer(lambda path, body, attempt: failures.get(attempt) or ok_answer(path, body)) as server:
        backend = backend_for(server, max_retries=3, max_backoff=1.0)
        start = time.monotonic()
        [[done]] = backend.generate([CHAT], SamplingParams(max_new_tokens=4))
        took = time.monotonic() - start
        backend.close()
    assert done.error is None and done.text == "echo: hello"
    assert len(server.requests) == 4
    assert took >= 0.3, "the 429's Retry-After should be waited out"
    assert server.requests[0][2]["authorization"] == f"Bearer {KEY}"


def test_item_fails_alone_after_the_last_retry():
    def script(path, body, attempt):
        doomed = "doomed" in json.dumps(body)
        return error_answer(502, "bad gateway") if doomed else ok_answer(path, body)

    with FakeServer(script) as server:
        backend = backend_for(server, max_retries=2)
        prompts = [CHAT, [{"role": "user", "content": "doomed"}], "raw prompt"]
        out = backend.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=4))
        scores = backend.choice_logprobs([CHAT, [{"role": "user", "content": "doomed"}]], ["A", "B"])
        backend.close()
    assert [c.error is None for samples in out for c in samples] == [True, True, False, False, True, True]
    assert all("HTTP 502" in c.error and "after 3 attempts" in c.error for c in out[1])
    assert out[2][0].text == " done" and out[2][0].finish_reason == "length"
    doomed_calls = [r for r in server.requests if "doomed" in json.dumps(r[1])]
    assert len(doomed_calls) == 3 * 2  # generate and score: 1 try + 2 retries each
    assert scores[0].error is None and scores[1].error and "HTTP 502" in scores[1].error


def test_bad_request_is_not_retried():
    with FakeServer(lambda path, body, attempt: error_answer(400, "prompt too long")) as server:
        backend = backend_for(server, max_retries=4)
        [[failed]] = backend.generate(["x"], SamplingParams(max_new_tokens=4))
        backend.close()
    assert failed.finish_reason == "error" and "HTTP 400: prompt too long" in failed.error
    assert len(server.requests) == 1


def test_timeout_is_retried():
    def script(path, body, attempt):
        return ok_answer(path, body, delay=2.0 if attempt == 1 else 0.0)

    with FakeServer(script) as server:
        backend = backend_for(server, timeout=0.5, max_retries=1)
        [[done]] = backend.generate([CHAT], SamplingParams(max_new_tokens=4))
        backend.close()
    assert done.error is None and len(server.requests) == 2


def test_concurrency_is_capped():
    with FakeServer(lambda path, body, attempt: ok_answer(path, body, delay=0.2)) as server:
        backend = backend_for(server, concurrency=3)
        out = backend.generate(
            [[{"role": "user", "content": f"q{i}"}] for i in range(10)], SamplingParams(max_new_tokens=4)
        )
        backend.close()
    assert all(c.error is None for [c] in out)
    assert [c.text for [c] in out] == [f"echo: q{i}" for i in range(10)]  # input order kept
    assert server.max_in_flight == 3


def test_floor_for_a_choice_outside_the_top_k():
    with FakeServer() as server:
        backend = backend_for(server)
        [scores] = backend.choice_logprobs([CHAT], ["A", "B", "C"])
        backend.close()
    floor = min(-1.5, math.log(1 - math.exp(-0.5) - math.exp(-1.5)))
    assert scores == {"A": -0.5, "B": -1.5, "C": pytest.approx(floor)}
    assert scores.floored == ["C"]


def test_dead_server_is_one_clear_error_quickly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the backend connects
    url = f"http://127.0.0.1:{port}/v1"
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        OpenAIBackend(MODEL, base_url=url, api_key=KEY)
    assert time.monotonic() - start < 3
    message = str(err.value)
    assert url in message and "\n" not in message and KEY not in message


def test_silent_server_times_out_at_start():
    with socket.socket() as s:  # accepts connections, never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        start = time.monotonic()
        with pytest.raises(UserError, match="cannot reach"):
            OpenAIBackend(MODEL, base_url=url, api_key=KEY, connect_timeout=1.0)
        assert time.monotonic() - start < 4


def test_rejected_key_and_unknown_model_are_user_errors():
    with FakeServer(models_status=401) as server, pytest.raises(UserError, match="refused the API key") as err:
        backend_for(server)
    assert KEY not in str(err.value)
    with FakeServer() as server:
        with pytest.raises(UserError, match="does not serve 'other'; it serves: fake-model"):
            OpenAIBackend("other", base_url=server.base_url, api_key=KEY)
        backend = OpenAIBackend("default", base_url=server.base_url, api_key=KEY)
        assert backend.served_model == MODEL and backend.tokenizer is None and backend.context_length == 4096
        backend.close()


def test_api_key_never_shown(monkeypatch):
    echo = lambda path, body, attempt: error_answer(500, f"upstream rejected Bearer {KEY}")  # noqa: E731
    with FakeServer(echo) as server:
        backend = backend_for(server, max_retries=0)
        [[failed]] = backend.generate([CHAT], SamplingParams(max_new_tokens=4))
        [scored] = backend.choice_logprobs(["x"], ["A"])
        shown = [
            repr(backend),
            str(backend),
            repr(backend.options),
            str(backend.options),
            backend.options.model_dump_json(),
            failed.error,
            scored.error,
        ]
        backend.close()
        assert "HTTP 500" in failed.error
        assert all(KEY not in text for text in shown), shown
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        from_env = OpenAIBackend(MODEL, base_url=server.base_url, max_retries=0)
        assert KEY not in repr(from_env)
        [[again]] = from_env.generate([CHAT], SamplingParams(max_new_tokens=4))
        from_env.close()
    assert server.requests[-1][2]["authorization"] == f"Bearer {KEY}" and KEY not in again.error


def _by_word(word: str, answer):
    """A script that answers the prompts holding `word` with `answer(path, body)`, the rest normally."""
    return lambda path, body, attempt: answer(path, body) if word in json.dumps(body) else ok_answer(path, body)


@pytest.mark.timeout(90)  # the dripping answer takes minutes whole; only a deadline ends it sooner
def test_dripping_server_fails_its_item_at_the_deadline():
    slow = [{"role": "user", "content": "slow " + "x" * 200}]
    with FakeServer(_by_word("slow", drip_answer)) as server:
        backend = backend_for(server, timeout=2, max_retries=0)
        out = backend.generate([CHAT, slow, "raw prompt"], SamplingParams(max_new_tokens=4))
        [fine, dripped] = backend.choice_logprobs([CHAT, slow], ["A", "B"])
        backend.close()
    assert [c.error is None for [c] in out] == [True, False, True]
    assert out[0].pop().text == "echo: hello" and out[2].pop().text == " done"
    [failed] = out[1]
    assert failed.finish_reason == "error" and failed.error.startswith("timed out after 2 s waiting for")
    assert fine.error is None and dripped.error.startswith("timed out after 2 s")
    assert sum("slow" in json.dumps(body) for _, body, _ in server.requests) == 2  # one try each, no retry


@pytest.mark.timeout(90)
def test_deadline_spans_an_items_retries():
    slow = [{"role": "user", "content": "slow " + "x" * 200}]
    with FakeServer(_by_word("slow", drip_answer)) as server:
        backend = backend_for(server, timeout=2, deadline=3, max_retries=5)
        [[failed], [done]] = backend.generate([slow, CHAT], SamplingParams(max_new_tokens=4))
        backend.close()
    assert done.error is None
    assert "the item's deadline of 3 s" in failed.error and "(after 2 attempts)" in failed.error
    assert sum("slow" in json.dumps(body) for _, body, _ in server.requests) == 2  # the third try would pass it


def test_200_without_usable_choices_fails_its_item():
    def script(path, body, attempt):
        said = json.dumps(body)
        if "empty" in said:
            return 200, {}, {}, 0.0
        if "null" in said:
            return 200, {"id": "x", "object": "chat.completion", "choices": None}, {}, 0.0
        if "none-left" in said:
            return 200, {"id": "x", "choices": []}, {}, 0.0
        if "no-message" in said:
            return 200, {"id": "x", "choices": [{"index": 0, "finish_reason": "stop"}]}, {}, 0.0
        if "bad-logprobs" in said:
            _, payload, _, _ = ok_answer(path, body)
            payload["choices"][0]["logprobs"] = {"content": "not a list"}
            return 200, payload, {}, 0.0
        if "not-json" in said:
            return 200, Streamed([b"<html>busy</html>"]), {}, 0.0
        if "one-of-two" in said:
            _, payload, _, _ = ok_answer(path, body)
            payload["choices"] = payload["choices"][:1]
            return 200, payload, {}, 0.0
        return ok_answer(path, body)

    words = ["empty", "null", "none-left", "no-message", "not-json"]
    chats = [CHAT] + [[{"role": "user", "content": w}] for w in words]
    with FakeServer(script) as server:
        backend = backend_for(server, max_retries=1)
        out = backend.generate(chats, SamplingParams(max_new_tokens=4))
        pairs = backend.generate(
            [CHAT, [{"role": "user", "content": "one-of-two"}]], SamplingParams(n=2, temperature=1.0)
        )
        scores = backend.choice_logprobs([CHAT, [{"role": "user", "content": "bad-logprobs"}], "empty"], ["A", "B"])
        backend.close()
    [ok], *failed = out
    assert ok.error is None and ok.text == "echo: hello"
    errors = [c.error for [c] in failed]
    assert all(e and e.startswith("the server answered HTTP 200 with an unusable body (") for e in errors), errors
    assert "\n" not in "".join(errors)
    assert "choices: Field required" in errors[0] and "choices: Input should be a valid array" in errors[1]
    assert "choices: List should have at least 1 item" in errors[2] and "choices.0.message" in errors[3]
    assert "Invalid JSON" in errors[4]
    assert [c.error is None for c in pairs[0]] == [True, True]
    assert all(c.error == "the server sent 1 answers where 2 were asked for" for c in pairs[1])
    assert scores[0] == {"A": -0.5, "B": -1.5}
    assert "choices.0.logprobs.content" in scores[1].error and "choices: Field required" in scores[2].error
    assert sum("empty" in json.dumps(body) for _, body, _ in server.requests) == 2  # not retried: 1 generate, 1 score


HUGE_BODY = """
import json, resource, sys
from cai.generators.backends.openai_backend import OpenAIBackend
from cai.generators.types import SamplingParams
from tests.fake_openai import MODEL, FakeServer, huge_answer, ok_answer

def script(path, body, attempt):
    return huge_answer() if "huge" in json.dumps(body) else ok_answer(path, body)

with FakeServer(script) as server:
    backend = OpenAIBackend(MODEL, base_url=server.base_url, api_key="x", max_retries=0)
    params = SamplingParams(max_new_tokens=4)
    backend.generate([[{"role": "user", "content": "warm up"}]], params)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = backend.generate([[{"role": "user", "content": "huge"}], [{"role": "user", "content": "hi"}]], params)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    backend.close()
print(json.dumps({"errors": [c.error for [c] in out], "texts": [c.text for [c] in out], "grew_kib": grew}))
"""


def test_huge_body_is_cut_off_unread():
    """300 MB made as it is sent: the item fails at the 32 MiB cap, memory never holds the rest
    (a fresh process, so its peak memory is this answer's alone)."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", HUGE_BODY], cwd=root, capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(done.stdout.splitlines()[-1])
    [huge, fine] = result["errors"]
    assert huge.startswith("the answer is larger than 33554432 bytes (options.max_body_bytes)"), huge
    assert fine is None and result["texts"][1] == "echo: hi"
    assert result["grew_kib"] < 100 * 1024, result["grew_kib"]


def test_per_prompt_seeds_reach_the_server():
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=5)
    with FakeServer() as server:
        backend = backend_for(server)
        given = backend.generate(chats, params, seeds=[11, 22, 33])
        derived = backend.generate(chats, params)
        unseeded = backend.generate(chats[:1], params.model_copy(update={"seed": None}))
        with pytest.raises(ValueError, match="2 seeds for 3 chats"):
            backend.generate(chats, params, seeds=[1, 2])
        backend.close()
    assert all(c.error is None for out in (given, derived, unseeded) for samples in out for c in samples)
    sent = [(body["messages"][0]["content"], body.get("seed")) for _, body, _ in server.requests]
    assert sorted(sent[:3]) == [("q0", 11), ("q1", 22), ("q2", 33)]
    assert sorted(sent[3:6]) == [(f"q{i}", request_seed(5, i)) for i in range(3)]
    assert sent[6] == ("q0", None)
