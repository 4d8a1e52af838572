"""The `openai` backend: any OpenAI-compatible server (vLLM, TGI, llama.cpp, hosted APIs).

Requests go out concurrently (an asyncio semaphore caps how many are in flight) from one event
loop that lives in a background thread for the backend's lifetime, so the synchronous interface
works from scripts, from notebooks that already run a loop, and across many calls without
rebinding the HTTP connection pool. Rate limits, 5xx answers, timeouts and dropped connections
are retried with exponential backoff (tenacity); an item that still fails becomes an error
value, and the rest of the batch goes on.

A server can misbehave without failing: answer one byte a second, send a body of hundreds of
megabytes, or a 200 without `choices`. None of that may hang or abort a run, so each attempt has
one total deadline (connect, every read, the whole body: `timeout`), an item may have one across
its retries (`deadline`), a body past `max_body_bytes` is cut off as it streams in, and an answer
is checked against the few fields read from it before any is used; each of these fails the one
item with a recorded error.

When the model's tokenizer is at hand (`default`, a local path, or the `tokenizer` option),
prompts are rendered and tokenized here exactly as the other backends do, over-long prompts fail
before any request, and choices are scored through the completions endpoint with token-id
prompts: the server sees the very tokens the transformers and vLLM backends score. Without one
(a hosted model), chats go to the chat endpoint and each choice is matched by its text against
the reported top tokens. Either way a choice outside the top-K gets the floor of
`engine_utils.floor_logprob` and is listed in `ChoiceScores.floored`.

A chat that ends with an assistant message is continued through vLLM's chat extras
(`continue_final_message`); servers without them (hosted APIs) reject such an item, which then
fails alone with the server's message. What the server can do is declared once, in
`capabilities`, from the options (`continue_final_message`, `logprobs`, `logprobs_k`): the ranking
core then asks a server that cannot continue an assistant turn for a one-letter answer and reads
its first token's top log-probs, and parses the letter from text where there are no log-probs.

The API key is never printed: the options hold it as a secret, `repr` leaves it out, and error
messages are scrubbed of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from cai.core.errors import UserError

from ..chat import choice_token_ids, context_error, encode, ends_with_assistant
from ..default_model import DEFAULT_ALIASES, resolve_model
from ..types import ChoiceScores, Completion, Prompt, SamplingParams
from .base import Capabilities, parse_options
from .engine_utils import ChoicePlan, StepResult, finish_reason, floor_logprob, request_seed
from .options import DEFAULT_BASE_URL, OpenAIOptions

_STATUS_PREFIX = re.compile(r"^Error code: \d+ - ")  # the client's own prefix; we say the status once
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}  # vLLM's chat extras
NO_LOGPROBS = "the server returned no log-probs (with options.logprobs: false letters are parsed from text)"


def _retryable(error: BaseException) -> bool:
    if isinstance(error, openai.APIConnectionError | _TimedOut):  # includes the client's own timeouts
        return True
    return isinstance(error, openai.APIStatusError) and (
        error.status_code in (408, 409, 429) or error.status_code >= 500
    )


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str = "default", **options):
        self.options = opts = parse_options(OpenAIOptions, options, self.name)
        self.model = model
        self.base_url = (opts.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        key = opts.api_key.get_secret_value() if opts.api_key else os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._key = SecretStr(key)
        served = self._served_models()
        self.served_model = self._pick_model(served)
        self.tokenizer = self._load_tokenizer(served)
        if opts.endpoint == "completions" and self.tokenizer is None:
            raise UserError(
                "backend openai: options.endpoint: `completions` needs a local tokenizer; set options.tokenizer"
            )
        card = (served or {}).get(self.served_model, {})
        self.context_length = opts.max_model_len or card.get("max_model_len")
        prefill = opts.continue_final_message
        if prefill is None:
            prefill = self.tokenizer is not None or card.get("owned_by") == "vllm"
        self.capabilities = Capabilities(prefill=prefill, logprobs=opts.logprobs, top_logprobs=opts.logprobs_k)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cai-openai", daemon=True)
        self._thread.start()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=opts.concurrency)  # the semaphore caps
        pool = httpx.AsyncHTTPTransport(limits=limits)
        http = httpx.AsyncClient(transport=_CappedTransport(pool, opts.max_body_bytes), follow_redirects=True)
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=key, timeout=opts.timeout, max_retries=0, http_client=http
        )
        self._sem: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, served_model={self.served_model!r}, base_url={self.base_url!r})"

    def _served_models(self) -> dict[str, dict] | None:
        """GET /models, quickly: a dead server must fail now with one line, not hang a run."""
        url = f"{self.base_url}/models"
        headers = {"Authorization": f"Bearer {self._key.get_secret_value()}"}
        try:
            answer = httpx.get(url, headers=headers, timeout=self.options.connect_timeout)
        except httpx.HTTPError as e:
            reason = self._redact(str(e)) or type(e).__name__
            raise UserError(f"backend openai: cannot reach {self.base_url} ({reason})") from None
        if answer.status_code in (401, 403):
            raise UserError(f"backend openai: {self.base_url} refused the API key (HTTP {answer.status_code})")
        if answer.status_code == 404:
            return None  # a server without a model list; the model name is taken as given
        if answer.status_code >= 400:
            raise UserError(f"backend openai: {url} answered HTTP {answer.status_code}")
        try:
            return {m["id"]: m for m in answer.json()["data"]}
        except (ValueError, KeyError, TypeError):
            raise UserError(f"backend openai: {url} sent no model list; is it an OpenAI-compatible server?") from None

    def _pick_model(self, served: dict[str, dict] | None) -> str:
        name = self.options.served_model_name or self.model
        if served is None or name in served:
            return name
        if not self.options.served_model_name and self.model.lower() in DEFAULT_ALIASES and len(served) == 1:
            return next(iter(served))
        listed = ", ".join(sorted(served)) or "nothing"
        raise UserError(f"backend openai: {self.base_url} does not serve {name!r}; it serves: {listed}")

    def _load_tokenizer(self, served: dict[str, dict] | None):
        """The model's tokenizer when it is surely the served model's, else None (server-side)."""
        opts = self.options
        if not opts.local_tokenizer:
            return None
        source = opts.tokenizer
        if source is None and self.model.lower() in DEFAULT_ALIASES:
            local = resolve_model(self.model)
            card = (served or {}).get(self.served_model, {})
            if served is None or self.served_model.lower() in DEFAULT_ALIASES or card.get("root") == local:
                source = local
        elif source is None and Path(self.model).is_dir():
            source = self.model
        if source is None:
            return None
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise UserError(f"backend openai: options.tokenizer: cannot load {source!r} ({e})") from None

    def _redact(self, text: str) -> str:
        key = self._key.get_secret_value()
        return text.replace(key, "***") if len(key) >= 4 else text

    def _describe(self, error: BaseException, attempts: int) -> str:
        if isinstance(error, _TimedOut):
            what = f"timed out after {error.seconds:.3g} s waiting for {self.base_url}"
            if error.deadline:
                what += f" (the item's deadline of {self.options.deadline:g} s)"
        elif isinstance(error, openai.APITimeoutError):
            what = f"timed out after {self.options.timeout:g} s waiting for {self.base_url}"
        elif isinstance(error, openai.APIConnectionError):
            what = f"cannot reach {self.base_url}"
        elif isinstance(error, openai.APIStatusError):
            what = f"HTTP {error.status_code}: {_STATUS_PREFIX.sub('', error.message)}"
        elif isinstance(error, _Failed | _BodyTooLarge):
            what = str(error)
        else:
            what = f"{type(error).__name__}: {error}"
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        return self._redact(what)[:500] + tries

    def _wait(self, state) -> float:
        """Exponential backoff, stretched to a server's Retry-After when it sends one."""
        opts = self.options
        wait = (wait_exponential(multiplier=opts.backoff, max=opts.max_backoff) + wait_random(0, opts.backoff))(state)
        error = state.outcome.exception() if state.outcome else None
        response = getattr(error, "response", None)
        try:
            asked = float(response.headers.get("retry-after")) if response is not None else 0.0
        except (TypeError, ValueError):
            asked = 0.0
        return max(wait, min(asked, opts.max_backoff))

    async def _call(self, create, shape: type[_Answer], **kwargs) -> _Answer:
        """One request with retries, its answer checked against `shape`; raises _Failed with a
        clean message after the last attempt.

        `create` is a `with_raw_response` method: the client's own parsing builds whatever it is
        sent (a 200 without choices becomes an object that breaks the caller far away), so the
        body is checked here instead.
        """
        opts = self.options
        loop = asyncio.get_running_loop()
        ends: list[float] = []  # the item's deadline, set when its first attempt starts

        def out_of_time(state) -> bool:
            return bool(ends) and loop.time() + state.upcoming_sleep >= ends[0]

        retrying = AsyncRetrying(
            stop=stop_after_attempt(opts.max_retries + 1) | out_of_time,
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with self._sem:
                        if opts.deadline is not None and not ends:
                            ends.append(loop.time() + opts.deadline)
                        limit = min(opts.timeout, ends[0] - loop.time()) if ends else opts.timeout
                        cut = limit < opts.timeout
                        if limit <= 0:
                            raise _TimedOut(0.0, deadline=True)
                        timer = asyncio.timeout(limit)
                        try:
                            async with timer:
                                raw = await create(**kwargs)
                        except TimeoutError:
                            if timer.expired():
                                raise _TimedOut(limit, deadline=cut) from None
                            raise
        except Exception as e:
            raise _Failed(self._describe(e, retrying.statistics.get("attempt_number", 1))) from None
        try:
            return shape.model_validate_json(raw.content)
        except ValidationError as e:
            raise _Failed(_unusable(e)) from None

    def _run_all(self, job, items: list) -> list:
        async def main():
            if self._sem is None:
                self._sem = asyncio.Semaphore(self.options.concurrency)
            return await asyncio.gather(*(job(i, item) for i, item in enumerate(items)))

        if not items:
            return []
        return asyncio.run_coroutine_threadsafe(main(), self._loop).result()

    def _encode(self, prompt: Prompt, reserve: int) -> list[int] | None:
        """Token ids (None without a local tokenizer); raises _Failed for a prompt that cannot run."""
        if self.tokenizer is None:
            return None
        try:
            ids = encode(self.tokenizer, prompt)
        except Exception as e:
            raise _Failed(f"could not render prompt: {e}") from None
        if self.context_length and len(ids) + reserve > self.context_length:
            raise _Failed(context_error(len(ids), self.context_length))
        return ids

    def generate(
        self, chats: list[Prompt], params: SamplingParams, seeds: list[int] | None = None
    ) -> list[list[Completion]]:
        """`seeds`: one per chat, its request's seed (the server derives one per sample from it);
        without them, chat i is seeded from `params.seed` and its index (`request_seed`)."""
        if seeds is not None and len(seeds) != len(chats):
            raise ValueError(f"{len(seeds)} seeds for {len(chats)} chats")

        async def job(i: int, prompt: Prompt) -> list[Completion]:
            seed = seeds[i] if seeds is not None else request_seed(params.seed, i)
            try:
                return await self._generate_one(prompt, params, seed)
            except _Failed as e:
                return [Completion.failed(str(e)) for _ in range(params.n)]

        return self._run_all(job, chats)

    async def _generate_one(self, prompt: Prompt, params: SamplingParams, seed: int | None) -> list[Completion]:
        ids = self._encode(prompt, reserve=1)
        greedy = params.temperature == 0
        n = 1 if greedy else params.n  # vLLM refuses n > 1 when greedy; every copy is alike
        max_tokens = params.max_new_tokens
        if ids is not None and self.context_length:
            max_tokens = min(max_tokens, self.context_length - len(ids))
        kwargs: dict[str, Any] = dict(
            model=self.served_model, n=n, temperature=params.temperature, max_tokens=max_tokens
        )
        if not greedy:
            kwargs["top_p"] = params.top_p
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if seed is not None:
            kwargs["seed"] = seed
        if isinstance(prompt, str) or self.options.endpoint == "completions":
            if n > 1:
                kwargs["logprobs"] = 0  # one entry per token: how many each sample took
            answer = await self._call(
                self._client.completions.with_raw_response.create,
                _TextAnswer,
                prompt=ids if ids is not None else prompt,
                **kwargs,
            )
            rows = [(c.index, c.text, c.finish_reason, c.logprobs and c.logprobs.tokens) for c in answer.choices]
        else:
            if n > 1:
                kwargs["logprobs"] = True
            if ends_with_assistant(prompt):
                kwargs["extra_body"] = CONTINUE
            answer = await self._call(
                self._client.chat.completions.with_raw_response.create, _ChatAnswer, messages=prompt, **kwargs
            )
            rows = [
                (c.index, c.message.content or "", c.finish_reason, c.logprobs and c.logprobs.content)
                for c in answer.choices
            ]
        if len(rows) != n:
            raise _Failed(f"the server sent {len(rows)} answers where {n} were asked for")
        used = answer.usage.completion_tokens if answer.usage else None
        comps = []
        for _, text, reason, per_token in sorted(rows, key=lambda r: r[0]):
            if n == 1 and used is not None:
                tokens = used
            elif per_token is not None:
                tokens = len(per_token)
            elif self.tokenizer is not None:
                tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                tokens = (used or 0) // max(1, len(rows))
            comps.append(Completion(text=text, tokens=tokens, finish_reason=finish_reason(reason)))
        if greedy and comps:
            comps = [comps[0].model_copy() for _ in range(params.n)]
        return comps

    def stream(self, feed) -> Iterator[tuple[Any, Any]]:
        """Requests go out as the feed gives them, the concurrency window kept full for the whole
        stage; results come back in the order they finish, whatever order they went out in."""
        window: dict[concurrent.futures.Future, tuple[Any, Any]] = {}
        try:
            while True:
                for key, req in feed.take(max(0, self.options.concurrency - len(window))):
                    window[asyncio.run_coroutine_threadsafe(self._one(req), self._loop)] = (key, req)
                if not window:
                    return
                done, _ = concurrent.futures.wait(window, return_when=concurrent.futures.FIRST_COMPLETED)
                for f in done:
                    key, req = window.pop(f)
                    try:
                        yield key, f.result()
                    except Exception as e:  # noqa: BLE001 - one request's failure, not the stream's
                        yield key, req.failed(self._redact(f"{type(e).__name__}: {e}"))
        finally:
            for f in window:
                f.cancel()

    async def _one(self, req) -> Any:
        """One request of a stream: an answer, or the choices' log-probs."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.options.concurrency)
        if req.choices is None:
            try:
                return await self._generate_one(req.prompt, req.params, req.seed)
            except _Failed as e:
                return req.failed(str(e))
        return await self._scores(req.prompt, list(req.choices))

    async def _scores(self, prompt: Prompt, choices: list[str]) -> ChoiceScores:
        if not self.options.logprobs:
            return ChoiceScores(error="the server gives no log-probs (options.logprobs: false)")
        try:
            if self.tokenizer is None:
                return await self._score_by_text(prompt, choices)
            return await self._score_by_tokens(prompt, choices, ChoicePlan(choice_token_ids(self.tokenizer, choices)))
        except _Failed as e:
            return ChoiceScores(error=str(e))

    def choice_logprobs(self, prompts: list[Prompt], choices: list[str]) -> list[ChoiceScores]:
        plan = ChoicePlan(choice_token_ids(self.tokenizer, choices)) if self.tokenizer is not None else None
        if plan is None and not choices:
            raise ValueError("choices must not be empty")
        if not self.options.logprobs:
            return [ChoiceScores(error="the server gives no log-probs (options.logprobs: false)") for _ in prompts]

        async def job(i: int, prompt: Prompt) -> ChoiceScores:
            try:
                if plan is None:
                    scores = await self._score_by_text(prompt, choices)
                else:
                    scores = await self._score_by_tokens(prompt, choices, plan)
            except _Failed as e:
                return ChoiceScores(error=str(e))
            return scores

        return self._run_all(job, prompts)

    async def _score_by_tokens(self, prompt: Prompt, choices: list[str], plan: ChoicePlan) -> ChoiceScores:
        ids = self._encode(prompt, reserve=max(len(c) for c in plan.choice_ids))
        k = self.options.logprobs_k
        answers = await asyncio.gather(
            *(
                self._call(
                    self._client.completions.with_raw_response.create,
                    _TextAnswer,
                    model=self.served_model,
                    prompt=ids + list(prefix),
                    max_tokens=1,
                    temperature=0,
                    logprobs=k,
                )
                for prefix, _ in plan.steps
            )
        )
        steps = []
        for answer, (_, wanted) in zip(answers, plan.steps):
            top = _top_of_completion(answer)
            found = {}
            for tok in wanted:
                text = self.tokenizer.decode([tok])
                if text in top:
                    found[tok] = top[text]
            steps.append(StepResult(found=found, floor=floor_logprob(top.values())))
        return plan.combine(choices, steps)

    async def _score_by_text(self, prompt: Prompt, choices: list[str]) -> ChoiceScores:
        """No tokenizer here: each choice is taken to be one token and matched by its text."""
        k = self.options.logprobs_k
        common = dict(model=self.served_model, max_tokens=1, temperature=0)
        if isinstance(prompt, str):
            top = _top_of_completion(
                await self._call(
                    self._client.completions.with_raw_response.create, _TextAnswer, prompt=prompt, logprobs=k, **common
                )
            )
        else:
            extra = {"extra_body": CONTINUE} if ends_with_assistant(prompt) else {}
            answer = await self._call(
                self._client.chat.completions.with_raw_response.create,
                _ChatAnswer,
                messages=prompt,
                logprobs=True,
                top_logprobs=k,
                **common,
                **extra,
            )
            content = answer.choices[0].logprobs.content if answer.choices[0].logprobs else None
            if not content:
                raise _Failed(NO_LOGPROBS)
            top = {t.token: t.logprob for t in content[0].top_logprobs}
        if not top:
            raise _Failed(NO_LOGPROBS)
        floor = floor_logprob(top.values())
        scores = {c: top.get(c, floor) for c in choices}
        return ChoiceScores(scores, floored=[c for c in choices if c not in top])

    def close(self) -> None:
        """Close the connection pool and stop the loop thread."""
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


class _Failed(Exception):
    """An item that cannot be done; its message becomes the item's recorded error."""


class _TimedOut(Exception):
    """An attempt that outlived its time (`deadline`: the item's deadline cut it short)."""

    def __init__(self, seconds: float, deadline: bool = False):
        super().__init__(f"timed out after {seconds:.3g} s")
        self.seconds, self.deadline = seconds, deadline


class _BodyTooLarge(Exception):
    """An answer past `max_body_bytes`: dropped as it streams in, never held whole."""


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, cap: int):
        self.inner, self.cap = inner, cap

    async def __aiter__(self):
        seen = 0
        async for chunk in self.inner:
            seen += len(chunk)
            if seen > self.cap:
                raise _BodyTooLarge(f"the answer is larger than {self.cap} bytes (options.max_body_bytes); cut off")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CappedTransport(httpx.AsyncBaseTransport):
    """Counts each response body as it arrives; the openai client reads answers whole, so a cap
    has to sit below it, on the stream it reads from."""

    def __init__(self, inner: httpx.AsyncBaseTransport, cap: int):
        self.inner, self.cap = inner, cap

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CappedStream(response.stream, self.cap),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Read(BaseModel):
    """The fields read from an answer, checked; whatever else a server sends is ignored."""

    model_config = ConfigDict(extra="ignore")


class _TopToken(_Read):
    token: str
    logprob: float


class _TokenLogprob(_TopToken):
    top_logprobs: list[_TopToken] = []


class _ChatLogprobs(_Read):
    content: list[_TokenLogprob] | None = None


class _Message(_Read):
    content: str | None = None


class _ChatChoice(_Read):
    index: int = 0
    message: _Message
    finish_reason: str | None = None
    logprobs: _ChatLogprobs | None = None


class _TextLogprobs(_Read):
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None


class _TextChoice(_Read):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: _TextLogprobs | None = None


class _Usage(_Read):
    completion_tokens: int | None = None


class _ChatAnswer(_Read):
    choices: list[_ChatChoice] = Field(min_length=1)
    usage: _Usage | None = None


class _TextAnswer(_Read):
    choices: list[_TextChoice] = Field(min_length=1)
    usage: _Usage | None = None


_Answer = _ChatAnswer | _TextAnswer


def _unusable(error: ValidationError) -> str:
    """One line for an answer that is not what was asked for (the value itself is left out: it may be huge)."""
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"the server answered HTTP 200 with an unusable body ({where + ': ' if where else ''}{first['msg']})"


def _top_of_completion(answer: _TextAnswer) -> dict[str, float]:
    logprobs = answer.choices[0].logprobs
    top = logprobs.top_logprobs if logprobs is not None else None
    if not top or not top[0]:
        raise _Failed(NO_LOGPROBS)
    return dict(top[0])
