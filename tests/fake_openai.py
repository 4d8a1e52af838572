"""A small OpenAI-compatible HTTP server on loopback, scripted to behave as a test needs.

A real `vllm serve` cannot be made to answer 429 or 500 on cue, nor to refuse an assistant
prefill or cap `top_logprobs` the way hosted APIs do, so this server speaks just enough of the
OpenAI API (/models, /chat/completions, /completions) and answers as its script says. Everything
on the client side stays real: the openai client, tenacity, sockets and timeouts.

A script may also answer with a `Streamed` body, written chunk by chunk as the server makes it:
a server that drips its answer a byte a second (`drip_answer`) or sends hundreds of megabytes
(`huge_answer`) without ever holding them.

`hosted_judge` scripts a hosted chat API acting as a feedback model with a known preference: it
picks the option whose text holds "GOOD" (or answers "yes" to a reply that holds it), refuses a
trailing assistant message unless told otherwise, caps `top_logprobs`, or gives no log-probs.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "fake-model"


@dataclass
class Streamed:
    """A body sent as it is made, `pause` seconds between chunks, with no Content-Length: it ends
    when the server closes the connection (HTTP/1.0), as a proxy streaming an answer may."""

    chunks: Iterable[bytes]
    pause: float = 0.0


class FakeServer:
    """`script(path, body, attempt)` returns (status, json, headers, delay) for each request;
    `attempt` counts requests with the same body, so a script can fail the first few tries."""

    def __init__(self, script=None, models_status: int = 200):
        self.script = script or (lambda path, body, attempt: ok_answer(path, body))
        self.models_status = models_status
        self.requests: list[tuple[str, dict, dict]] = []
        self.in_flight = self.max_in_flight = 0
        self.stopped = threading.Event()  # ends streamed bodies still being written
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
                if isinstance(payload, Streamed):
                    return self._stream(status, payload, headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, status, body: Streamed, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.flush()
                for chunk in body.chunks:
                    if fake.stopped.is_set():
                        return
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    if body.pause:
                        time.sleep(body.pause)

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
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                        self._send(status, payload, headers)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
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


def drip_answer(path: str, body: dict, pause: float = 1.0):
    """A correct answer, one byte every `pause` seconds: no single read waits long, the whole
    takes minutes."""
    _, payload, _, _ = ok_answer(path, body)
    data = json.dumps(payload).encode()
    return 200, Streamed((data[i : i + 1] for i in range(len(data))), pause=pause), {}, 0.0


def huge_answer(size: int = 300 * 2**20):
    """A well-formed chat answer whose text is `size` bytes, made a megabyte at a time as it is sent."""
    head = b'{"id": "x", "object": "chat.completion", "created": 0, "model": "' + MODEL.encode()
    head += b'", "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "'
    tail = b'"}}]}'
    block = 2**20

    def chunks():
        yield head
        for start in range(0, size, block):
            yield b"x" * min(block, size - start)
        yield tail

    return 200, Streamed(chunks()), {}, 0.0


def error_answer(status: int, message: str = "try again", headers=None, kind: str = "server_error"):
    return status, {"error": {"message": message, "type": kind}}, headers or {}, 0.0


# The hosted judge's next-token distribution after the question: its letter, the other letter,
# then tokens a chat model might start an answer with.
P_PICKED, P_OTHER = 0.7, 0.2
_OPTIONS = re.compile(r"^\(A\) (.*?)\n\n\(B\) (.*?)(?:\n\n|$)", re.DOTALL | re.MULTILINE)


def picked_letter(messages: list[dict]) -> str:
    """The letter the hosted judge gives: the option holding GOOD, or "A" (yes) for a pointwise
    question about a reply holding GOOD; options are read from the first user turn that has them."""
    for m in messages:
        if m["role"] == "user":
            found = _OPTIONS.search(m["content"])
            if found:
                return "A" if "GOOD" in found.group(1) else "B"
    return "A" if any("GOOD" in m["content"] for m in messages) else "B"


def hosted_judge(prefill: bool = False, top_logprobs: int | None = 5, logprobs: bool = True):
    """A script for `FakeServer`: a hosted chat API. `prefill`: accept a trailing assistant message
    (as vLLM does with `continue_final_message`); `top_logprobs`: the most alternatives it gives
    (more is a 400, as hosted APIs answer); `logprobs=False`: it ignores the request for them."""

    def script(path: str, body: dict, attempt: int):
        if not path.endswith("/chat/completions"):
            return error_answer(404, "only the chat endpoint is served")
        messages = body["messages"]
        if messages[-1]["role"] == "assistant" and not prefill:
            return error_answer(400, "assistant message prefill is not supported", kind="invalid_request_error")
        wanted = body.get("top_logprobs")
        if logprobs and wanted is not None and top_logprobs is not None and wanted > top_logprobs:
            return error_answer(400, f"top_logprobs must be at most {top_logprobs}", kind="invalid_request_error")
        letter = picked_letter(messages)
        other = "B" if letter == "A" else "A"
        if body.get("max_tokens", 16) == 1:
            text = letter
        elif messages[-1]["role"] == "user" and "Think it through" in messages[-1]["content"]:
            text = "One reply is plainly better than the other."
        else:
            text = f"The better reply is ({letter})."
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        if logprobs and body.get("logprobs"):
            alternatives = [(letter, P_PICKED), (other, P_OTHER), ("The", 0.05), ("(", 0.03), ("I", 0.01)]
            top = [{"token": t, "logprob": math.log(p)} for t, p in alternatives[: wanted or 0]]
            first = {"token": letter, "logprob": math.log(P_PICKED), "top_logprobs": top}
            choice["logprobs"] = {"content": [first]}
        payload = {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [choice]}
        payload["usage"] = {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
        return 200, payload, {}, 0.0

    return script
