"""Labeler throughput on human-labelled HH-RLHF pairs, backend against backend, side by side.

The labeler reads every pair under k principles in both orders: 2k long prompts (conversation,
two answers, a question) scored for one token each, so its cost is almost all prefill. This
measures that work through the labeler itself (`evaluation.labeler.label_pairs`, the prompts the
ranking core builds) on the real embedded model, for:

  * `before`: the transformers backend with `prefix_sharing: false` (each row in full, logits at
    every position) and transformers' own sdpa attention: the earlier code path, the one the
    prefix sharing is checked against;
  * `after`: the transformers backend as configured by default (shared prefixes run once, only
    the last position's logits);
  * `vllm`: the vLLM offline engine as configured by default (automatic prefix caching on; its
    cache is emptied before every repeat, so no repeat reuses an earlier one's prefixes);
  * `NAME+OPTION=VALUE+...`: any of these with other backend options, e.g.
    `vllm+enable_prefix_caching=false`, `vllm+block_size=128` or `after+attn_implementation=sdpa`
    (with `--backends`).

Configurations run in turn, repeated with the order rotated each time, all in one process; the
table gives readings/s and prompt tokens/s (the tokens of the prompts as written), the median of
the per-repeat ratios, and the labeler's agreement with the human labels for each, which must not
change with the backend. Ratios are given by wall time and by CPU time (this process and the
engine's processes): on a machine other jobs share, wall time follows their load, while CPU time
with `--threads 1` stays close to the work itself. It also reports how close the transformers
backend runs to the machine: the model's FLOPs per token against a float32 matmul rate measured
here, on the model's own shapes, between the repeats. The ranking core puts the principle's
question after the two answers, so that a pair's conversation and answers (in one order) form one
prefix shared by all k principles; `--layouts` also reads every prompt with the question moved
before the answers (the earlier layout: same labels, same letters), to show what that is worth.

A benchmark measures; it asserts nothing. Timings move with machine load: compare the ratios of
one run.

    python bench/labeler_throughput.py [--pairs 24] [--principles 4] [--repeats 2]
        [--backends before,after,vllm,vllm+block_size=128] [--layouts] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import torch  # noqa: E402

CONTEXT = 2048
KV_CACHE_GB = 1.0
PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
NAMES = ("before", "after", "vllm")


class Recorded:
    """A real backend that keeps the prompts it is asked to score (to count their tokens), and
    optionally rewrites each prompt first (the layout comparison)."""

    def __init__(self, backend, rewrite=None):
        self.backend, self.rewrite, self.prompts = backend, rewrite, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def choice_logprobs(self, prompts, choices):
        if self.rewrite is not None:
            prompts = [self.rewrite(p) for p in prompts]
        self.prompts = list(prompts)
        return self.backend.choice_logprobs(prompts, choices)


def question_first(questions: list[str]):
    """A rewrite that moves the principle's question from after the two answers (the layout the
    ranking core writes) to before them, the earlier layout; None where a prompt holds no known
    question."""

    def rewrite(chat):
        user = chat[0]["content"]
        for q in questions:
            mark = f"\n\n{q}\n\n"
            if mark in user:
                head, _, tail = user.rpartition(mark)
                i = head.rindex("\n\n(A) ")
                return [{**chat[0], "content": f"{head[:i]}\n\n{q}{head[i:]}\n\n{tail}"}, *chat[1:]]
        raise ValueError("no principle question found in a comparison prompt")

    return rewrite


def backend_options(name: str) -> dict:
    """`vllm+block_size=32+enable_prefix_caching=false` → {"block_size": 32, ...}."""
    options = {}
    for item in name.split("+")[1:]:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def build(name: str):
    base, options = name.split("+")[0], backend_options(name)
    if base in ("before", "after"):
        from cai.generators.backends.hf import TransformersBackend

        if base == "before":  # each row in full, logits everywhere, transformers' own sdpa
            options = {"prefix_sharing": False, "attn_implementation": "sdpa", **options}
        return TransformersBackend("default", max_length=CONTEXT, **options)
    from cai.generators.backends.vllm_backend import VLLMBackend

    return VLLMBackend("default", max_model_len=CONTEXT, kv_cache_gb=KV_CACHE_GB, **options)


def matmul_gflops(hidden: int, inner: int, tokens: int = 2048, repeats: int = 3) -> float:
    """float32 GEMM rate on the shapes of the model's projections, with this process's threads."""
    shapes = [(tokens, hidden, inner), (tokens, inner, hidden), (tokens, hidden, hidden)]
    mats = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    for a, b in mats:
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        for a, b in mats:
            a @ b
    flops = repeats * sum(2 * m * k * n for m, k, n in shapes)
    return flops / (time.perf_counter() - start) / 1e9


def model_flops_per_token(lm, mean_context: float) -> float:
    """Forward FLOPs per prompt token: 2 per weight outside the embedding (the output head is
    run for the last position only), plus attention over a causal context of `mean_context`."""
    cfg = lm.config
    weights = sum(p.numel() for n, p in lm.named_parameters() if "embed" not in n and "lm_head" not in n)
    heads = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    return 2 * weights + 4 * cfg.num_hidden_layers * heads * mean_context / 2


def computed_tokens(backend, rows: list[list[int]]) -> tuple[int, int]:
    """(tokens run, tokens run with padding) by the transformers backend's prefix sharing."""
    run = padded = 0
    for groups in backend._grouped_batches(rows, len(rows), backend.options.batch_tokens):
        run += sum(g.shared + sum(len(rows[k]) - g.shared for k in g.rows) for g in groups)
        width = max(len(rows[k]) - g.shared for g in groups for k in g.rows)
        padded += len(groups) * max(g.shared for g in groups) + width * sum(len(g.rows) for g in groups)
    return run, padded


def cpu_seconds() -> float:
    """CPU time of this process and its live children (the vLLM engine's processes)."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def measure(backends, runs, layouts, c, pairs, args):
    """Time every (backend, layout) run, `args.repeats` times, the order rotated each repeat.
    Returns {run: [(wall s, cpu s)]}, {run: (readings, errors, prompts)} and matmul rates."""
    from cai.evaluation.labeler import label_pairs

    times: dict[tuple, list[tuple[float, float]]] = {run: [] for run in runs}
    results: dict[tuple, tuple] = {}
    gflops = []
    hf = next((backends[n] for n in ("after", "before") if n in backends), None)
    for r in range(args.repeats):
        if hf is not None:
            gflops.append(matmul_gflops(hf.lm.config.hidden_size, hf.lm.config.intermediate_size))
        for name, layout in runs[r % len(runs) :] + runs[: r % len(runs)]:
            backend = backends[name]
            if name.startswith("vllm"):
                backend.llm.reset_prefix_cache()
            rec = Recorded(backend, layouts[layout])
            wall, cpu = time.perf_counter(), cpu_seconds()
            readings, errors = label_pairs(rec, c, pairs, principles=args.principles)
            times[(name, layout)].append((time.perf_counter() - wall, cpu_seconds() - cpu))
            results[(name, layout)] = (readings, errors, rec.prompts)
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)
    if hf is not None:
        gflops.append(matmul_gflops(hf.lm.config.hidden_size, hf.lm.config.intermediate_size))
    return times, results, gflops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24, help="HH-RLHF pairs read (the file's first N)")
    parser.add_argument("--principles", type=int, default=4, help="principles per pair (each in both orders)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", default="before,after,vllm", help=f"comma-separated, from {NAMES}")
    parser.add_argument("--layouts", action="store_true", help="also read with the question before the answers")
    parser.add_argument("--threads", type=int, help="torch threads of this process (default: torch's own)")
    parser.add_argument("--data", type=Path, default=PAIRS, help="HH-RLHF pairs file")
    args = parser.parse_args()
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = {n for n in names if n.split("+")[0] not in NAMES}
    if unknown:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    if importlib.util.find_spec("vllm") is None and any(n.startswith("vllm") for n in names):
        print("vllm is not installed: skipping it")
        names = [n for n in names if not n.startswith("vllm")]
    if args.threads:
        torch.set_num_threads(args.threads)

    from cai.constitution import load_constitution
    from cai.critique.rank import ranking_principles
    from cai.critique.reading import question
    from cai.evaluation.labeler import label_pairs, summarise
    from cai.evaluation.pairs import load_pairs
    from cai.generators.chat import encode

    c = load_constitution("harmless")
    pairs, _ = load_pairs(args.data, args.pairs)
    layouts = {"as written": None}
    if args.layouts:
        layouts["question first"] = question_first(sorted({question(p) for p in ranking_principles(c)}, key=len)[::-1])
    backends, load_s = {}, {}
    for name in names:
        print(f"loading {name} ...", flush=True)
        start = time.perf_counter()
        backends[name] = build(name)
        load_s[name] = time.perf_counter() - start
    runs = [(name, layout) for layout in layouts for name in names]
    for name, layout in runs:  # warm up: first calls pay for allocation and kernel selection
        label_pairs(Recorded(backends[name], layouts[layout]), c, pairs[:1], principles=1)
    times, results, gflops = measure(backends, runs, layouts, c, pairs, args)

    tokenizer = next(iter(backends.values())).tokenizer
    rows_of = {lay: [encode(tokenizer, p) for p in results[(names[0], lay)][2]] for lay in layouts}
    print(
        f"\n{len(pairs)} HH-RLHF pairs x {args.principles} principles x 2 orders; {args.repeats} repeats, "
        f"order rotated; medians; {torch.get_num_threads()} torch threads; load average "
        f"{os.getloadavg()[1]:.1f} (5 min) on {os.cpu_count()} CPUs"
    )
    heads = [("layout", 15), ("readings", 9), ("tokens", 8), ("wall s", 8), ("cpu s", 8)]
    heads += [("read/s", 8), ("tok/s", 7), ("agree", 7), ("errors", 7), ("load s", 8)]
    print(f"{'backend':<24}" + "".join(f"{h:>{w}}" for h, w in heads))
    for name, layout in runs:
        readings, errors, _ = results[(name, layout)]
        wall = statistics.median(t[0] for t in times[(name, layout)])
        cpu = statistics.median(t[1] for t in times[(name, layout)])
        tokens = sum(map(len, rows_of[layout]))
        agree = summarise(readings)["agreement"] if readings else float("nan")
        print(
            f"{name:<24}{layout:>15}{len(readings):>9}{tokens:>8}{wall:>8.1f}{cpu:>8.1f}{len(readings) / wall:>8.2f}"
            f"{tokens / wall:>7.0f}{agree:>7.3f}{len(errors):>7}{load_s[name]:>8.1f}"
        )

    def ratio(a, b, k):
        return statistics.median(tb[k] / ta[k] for ta, tb in zip(times[a], times[b]))

    def compare(a, b):
        return (
            f"{a[0]} ({a[1]}) / {b[0]} ({b[1]}): {ratio(a, b, 0):.2f}x by wall time, {ratio(a, b, 1):.2f}x by CPU time"
        )

    print()
    base = ("before", "as written")
    for run in runs:
        if run != base and base in times:
            print(compare(run, base))
    for name in (n for n in names if n.startswith(("vllm", "after+")) and "after" in names):
        for layout in layouts:
            print(compare((name, layout), ("after", layout)))
    if "before" in names and "after" in names:
        for layout in layouts:
            old, new = results[("before", layout)][0], results[("after", layout)][0]
            diff = max((abs(a.p_chosen - b.p_chosen) for a, b in zip(old, new)), default=float("nan"))
            print(f"after vs before ({layout}), largest difference of a reading's p_chosen: {diff:.1e}")
    hf = next((backends[n] for n in ("after", "before") if n in backends), None)
    if hf is not None:
        machine_limit(hf, times, rows_of, gflops)
    for backend in backends.values():
        backend.close()


def machine_limit(hf, times, rows_of, gflops) -> None:
    """Prompt tokens/s against what the measured matmul rate allows for this model."""
    rate = statistics.median(gflops)
    print(
        f"\nmachine: float32 matmul {rate:.1f} GFLOP/s (median of {len(gflops)}: {min(gflops):.1f}-{max(gflops):.1f})"
    )
    for layout, rows in rows_of.items():
        per_token = model_flops_per_token(hf.lm, statistics.mean(map(len, rows)))
        limit = rate * 1e9 / per_token
        total = sum(map(len, rows))
        run, padded = computed_tokens(hf, rows)
        print(
            f"  {layout}: {per_token / 1e6:.0f} MFLOP per prompt token, so at most {limit:.0f} tokens/s computed; "
            f"prefix sharing computes {run} of {total} prompt tokens ({padded} with padding)"
        )
        for name in ("before", "after"):
            if (name, layout) in times:
                wall = statistics.median(t[0] for t in times[(name, layout)])
                done = total if name == "before" else run
                print(
                    f"    {name}: {total / wall:.0f} prompt tokens/s = {total / wall / limit:.0%} of the limit; "
                    f"{done / wall:.0f} computed tokens/s = {done / wall / limit:.0%}"
                )


if __name__ == "__main__":
    main()
