"""Is the engine kept busy? One stage's prompts three ways, on the same loaded engine, in one run:

(a) the raw engine given every prompt at once (vLLM's `LLM.generate` over the whole list; for the
    OpenAI backend, every request of the list gathered under its concurrency limit);
(b) a batch at a time, each waiting for its slowest answer (how a stage ran before it streamed);
(c) the responses stage of a real run, streamed through the backend.

The prompts vary in length and are sampled to EOS (a long max_new_tokens), so answers end at
different times: the case where a batch waits on its slowest row. Every item has its own seed, so
the three paths write the same texts and the same number of tokens; tokens/s are compared as
ratios, (c)/(a) and (b)/(a), for the vLLM engine in this process and for `vllm serve` through the
OpenAI backend. Where a CUDA device is at hand, the transformers backend on a small random-weight
Llama runs too (it batches: (c) there is the batched adapter). The last lines are the (c)/(a) ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TOPICS = [
    "tomato sauce",
    "a weekend hike",
    "mortgages",
    "remembering names",
    "the colour of the sky",
    "job interviews",
    "starting to run",
    "how vaccines work",
    "saving money",
    "learning a language",
]
ASKS = [
    "Say one word about {t}.",
    "Give me one tip about {t}.",
    "Explain {t} in two sentences.",
    "Write a short paragraph about {t}, with an example.",
    "Write a detailed guide to {t}: the steps, what can go wrong, and what to do then.",
]


def prompts(n: int) -> list[str]:
    return [ASKS[i % len(ASKS)].format(t=TOPICS[(i // len(ASKS)) % len(TOPICS)]) + f" ({i})" for i in range(n)]


def timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - t0, tokens


def raw_all(backend, chats, params, seeds) -> int:
    return sum(c[0].tokens for c in backend.generate(chats, params, seeds=seeds))


def batch_at_a_time(backend, chats, params, seeds, size: int) -> int:
    return sum(
        c[0].tokens
        for k in range(0, len(chats), size)
        for c in backend.generate(chats[k : k + size], params, seeds=seeds[k : k + size])
    )


def streamed_stage(backend, texts: list[str], max_new_tokens: int, tmp: Path, tag: str) -> tuple[float, int, list[int]]:
    """The responses stage of a run on these prompts, on the backend already loaded: its seconds
    (the stage's own, from its first task to its last write), its tokens, and each prompt's seed
    (the one the stage gave it), for the other two paths to use."""
    from rich.console import Console

    from cai.config import RunConfig
    from cai.executors import LocalExecutor
    from cai.generators import BackendConfig
    from cai.generators.records import Query, Response
    from cai.pipeline import Pipeline

    seeds = tmp / f"{tag}.txt"
    seeds.write_text("\n".join(texts) + "\n")
    bc = BackendConfig(backend=backend.name, model=backend.model)
    cfg = RunConfig.model_validate(
        {
            "constitution": "harmless",
            "seed": 0,
            "policy": bc.model_dump(),
            "queries": {"per_principle": 0, "seed_file": str(seeds), "max_chars": 1000},
            "responses": {"samples": 1, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": max_new_tokens},
            "revisions": {"rounds": 0},
        }
    )
    executor = LocalExecutor(Console(quiet=True))
    executor._backends[bc.model_dump_json()] = backend  # the engine already loaded, not a second one
    pipe = Pipeline(cfg, tmp / tag, console=Console(quiet=True), executor=executor)
    pipe.start()
    try:
        stats = pipe.run(until="responses")
    finally:
        pipe.ctx.refs.close()
        pipe.lock.release()
    from cai.core.ids import derive_seed

    queries = {q.id: q.text for q in pipe.store.load("queries", Query)}
    answered = {queries[r.query_id]: r.id for r in pipe.store.load("responses", Response)}
    missing = [t for t in texts if t not in answered]
    if missing:
        raise SystemExit(f"{tag}: {len(missing)} prompts got no answer; see {tmp / tag / 'errors.jsonl'}")
    seeds = [derive_seed(0, answered[t]) for t in texts]
    stage = next(s for s in stats if s.stage == "responses")
    return stage.seconds, stage.tokens, seeds


def measure(name: str, backend, texts: list[str], args, tmp: Path) -> float:
    from cai.generators import SamplingParams

    chats = [[{"role": "user", "content": t}] for t in texts]
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    backend.generate(chats[:4], params.model_copy(update={"max_new_tokens": 8}), seeds=[1, 2, 3, 4])  # warm-up
    stage_seconds, stage_tokens, seeds = streamed_stage(backend, texts, args.max_new_tokens, tmp, f"{name}-stage")
    c = (stage_seconds, stage_tokens)
    a = timed(lambda: raw_all(backend, chats, params, seeds))
    b = timed(lambda: batch_at_a_time(backend, chats, params, seeds, args.batch))
    rate = {k: tok / sec for k, (sec, tok) in zip("abc", (a, b, c))}
    print(f"== {name}: {len(chats)} prompts, sampled to EOS (max {args.max_new_tokens} tokens)")
    for k, label in zip("abc", ("raw engine, every prompt at once", f"batch at a time ({args.batch})", "stage")):
        sec, tok = {"a": a, "b": b, "c": c}[k]
        print(f"  ({k}) {label:34} {tok:7d} tokens {sec:7.1f} s {rate[k]:8.1f} tokens/s")
    print(f"  (b)/(a) = {rate['b'] / rate['a']:.3f}")
    return rate["c"] / rate["a"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch", type=int, default=32, help="the batch of (b): the old default batch_size")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight to vllm serve")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cai-saturation-"))
    texts = prompts(args.prompts)
    ratios: dict[str, float] = {}

    from cai.generators.backends.vllm_backend import VLLMBackend

    engine = VLLMBackend("default", max_model_len=2048, kv_cache_gb=2)
    try:
        ratios["vLLM engine"] = measure("vllm", engine, texts, args, tmp)
    finally:
        engine.close()

    from cai.generators.backends.openai_backend import OpenAIBackend
    from cai.generators.backends.vllm_server import VLLMServer

    serve = ["--max-model-len", "2048", "--dtype", "float32", "--enforce-eager", "--served-model-name", "default"]
    serve.append("--no-enable-chunked-prefill")  # on CPU, as the vllm backend does: seeded requests need it
    with VLLMServer("default", args=[*serve, "--kv-cache-memory-bytes", str(2 * 2**30)]) as server:
        server.wait_ready()
        client = OpenAIBackend("default", base_url=server.base_url, api_key="bench", concurrency=args.concurrency)
        try:
            ratios["vllm serve (openai)"] = measure("openai", client, texts, args, tmp)
        finally:
            client.close()

    import torch

    if torch.cuda.is_available():
        ratios["transformers (CUDA)"] = measure("transformers", cuda_llama(tmp), texts, args, tmp)
    for name, r in ratios.items():
        print(f"(c)/(a) {name}: {r:.3f}")


def cuda_llama(tmp: Path):
    """A small Llama with random weights on the embedded model's tokenizer, on the GPU."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cai.generators.backends.hf import TransformersBackend
    from cai.generators.default_model import prepare_default_model

    tok = AutoTokenizer.from_pretrained(prepare_default_model())
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    path = tmp / "llama"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return TransformersBackend(str(path), device="cuda", batch_size=64)


if __name__ == "__main__":
    main()
