"""The openai backend against a server that misbehaves on purpose.

A real `vllm serve` cannot be made to answer 429 or 500 on cue, so this small HTTP server on
loopback speaks just enough of the OpenAI API (/models, /chat/completions, /completions) and
fails the way hosted APIs and overloaded servers do. Everything else in these tests is real: the
openai client, tenacity, sockets and timeouts.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cai.constitution.errors import UserError
from cai.generators.backends.openai_backend import OpenAIBackend
from cai.generators.types import SamplingParams

KEY = "sk-test-SECRET-7f3a9c"
MODEL = "fake-model"
CHAT = [{"role": "user", "content": "hello"}]


class FakeServer:
    """`script(path, body, attempt)` returns (status, json, headers, delay) for each request;
    `attempt` counts requests with the same body, so a script can fail the first few tries."""

    def __init__(self, script=None, models_status: int = 200):
        self.script = script or (lambda path, body, attempt: ok_answer(path, body))
        self.models_status = models_status
        self.requests: list[tuple[str, dict, dict]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    models = {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 4096}]}
                    self._send(
                        fake.models_status, models if fake.models_status == 200 else {"error": {"message": "no"}}
                    )
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append((self.path, body, {k.lower(): v for k, v in self.headers.items()}))
                    attempt = sum(1 for p, b, _ in fake.requests if p == self.path and b == body)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    status, payload, headers, delay = fake.script(self.path, body, attempt)
                    time.sleep(delay)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                        self._send(status, payload, headers)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def ok_answer(path: str, body: dict, delay: float = 0.0):
    n = body.get("n", 1)
    if path.endswith("/chat/completions"):
        text = "echo: " + body["messages"][-1]["content"]
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} for i in range(n)
        ]
        if body.get("logprobs"):
            top = [{"token": "A", "logprob": -0.5}, {"token": "B", "logprob": -1.5}]
            for c in choices:
                c["logprobs"] = {"content": [{"token": "A", "logprob": -0.5, "top_logprobs": top}]}
        payload = {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL, "choices": choices}
    else:
        logprobs = None
        if body.get("logprobs") is not None:
            top = [{"A": -0.5, "B": -1.5}]
            logprobs = {"tokens": ["A"], "token_logprobs": [-0.5], "text_offset": [0], "top_logprobs": top}
        choices = [{"index": i, "text": " done", "finish_reason": "length", "logprobs": logprobs} for i in range(n)]
        payload = {"id": "x", "object": "text_completion", "created": 0, "model": MODEL, "choices": choices}
    payload["usage"] = {"prompt_tokens": 3, "completion_tokens": 2 * n, "total_tokens": 3 + 2 * n}
    return 200, payload, {}, delay


def error_answer(status: int, message: str = "try again", headers=None):
    return status, {"error": {"message": message, "type": "server_error"}}, headers or {}, 0.0


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
    assert scores.floored == ["C"] and backend.floored_count == 1


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
