"""The openai backend against a server that misbehaves on purpose (tests/fake_openai.py): it fails
the way hosted APIs and overloaded servers do. Everything else in these tests is real: the openai
client, tenacity, sockets and timeouts.
"""

from __future__ import annotations

import json
import math
import socket
import time

import pytest

from cai.constitution.errors import UserError
from cai.generators.backends.openai_backend import OpenAIBackend
from cai.generators.types import SamplingParams

from .fake_openai import MODEL, FakeServer, error_answer, ok_answer

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
