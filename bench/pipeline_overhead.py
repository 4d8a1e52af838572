"""Pipeline overhead: the responses stage through `cai`'s pipeline vs straight through the backend.

Both sides get the same prompts and greedy decoding, in one process with the model loaded once,
alternating so drift in machine load hits both; the raw side calls the backend in batches of
--batch-size, the pipeline streams with batch_size set to the same. Prints tokens/s of each and
their ratio (pipeline / raw; 1.0 means the run store, progress bars and records cost nothing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "How do I make a simple tomato sauce?",
    "What should I pack for a weekend hike?",
    "Explain what a mortgage is in two sentences.",
    "How can I get better at remembering names?",
    "Why is the sky blue?",
    "Give me three tips for a job interview.",
    "What is a good way to start running?",
    "How do vaccines work?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from rich.console import Console

    from cai.config import RunConfig
    from cai.generators import SamplingParams
    from cai.generators.records import Query
    from cai.generators.responses import response_chat
    from cai.pipeline import Pipeline

    queries = [f"{PROMPTS[i % len(PROMPTS)]} (case {i})" for i in range(args.queries)]
    tmp = Path(tempfile.mkdtemp(prefix="cai-bench-"))
    seeds = tmp / "seeds.txt"
    seeds.write_text("\n".join(queries) + "\n")
    cfg = RunConfig.model_validate(
        {
            "constitution": "harmless",
            "batch_size": args.batch_size,
            "queries": {"per_principle": 0, "seed_file": str(seeds)},
            "responses": {"samples": 1, "temperature": 0, "max_new_tokens": args.max_new_tokens},
        }
    )
    quiet = Console(quiet=True)
    first = Pipeline(cfg, tmp / "warm", console=quiet)
    backend = first.executor.backend(cfg.policy)
    params = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens)
    first.run(until="responses")  # warm-up, and the queries the raw side will use
    kept = [q for q in first.store.load("queries", Query) if q.dropped is None]
    chats = [response_chat(q, cfg.responses) for q in kept]

    raw_rates, pipe_rates = [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        tokens = 0
        for s in range(0, len(chats), args.batch_size):
            tokens += sum(c[0].tokens for c in backend.generate(chats[s : s + args.batch_size], params))
        raw_rates.append(tokens / (time.perf_counter() - t0))

        pipe = Pipeline(cfg, tmp / f"run{r}", console=quiet, executor=first.executor)  # same loaded model
        pipe.start()
        t0 = time.perf_counter()
        stats = next(s for s in pipe.run(until="responses") if s.stage == "responses")
        pipe_rates.append(stats.tokens / (time.perf_counter() - t0))
    raw, piped = statistics.median(raw_rates), statistics.median(pipe_rates)
    print(f"backend: {backend.name}  model: {backend.model}  queries: {len(chats)}  batch: {args.batch_size}")
    print(f"raw backend   {raw:8.1f} tokens/s  (runs: {', '.join(f'{x:.1f}' for x in raw_rates)})")
    print(f"pipeline      {piped:8.1f} tokens/s  (runs: {', '.join(f'{x:.1f}' for x in pipe_rates)})")
    print(f"ratio pipeline/raw: {piped / raw:.3f}")


if __name__ == "__main__":
    main()
