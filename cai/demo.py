"""`cai demo`: a first look at cai on the embedded model, in about a minute on a laptop CPU."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table


def run_demo(console: Console) -> None:
    from constitution import library_names, load_constitution
    from constitution.lint import lint_file
    from generators import SamplingParams, load_backend

    for name in library_names():
        c, warnings = lint_file(name)
        console.print(f"[green]ok[/green] {name}: {len(c.principles)} principles, {len(c.traits)} traits")
        for w in warnings:
            console.print(f"  [yellow]warning[/yellow] {w}")
    harmless = load_constitution("harmless")
    queries = (harmless.query_generation.examples if harmless.query_generation else [])[:4]
    t0 = time.perf_counter()
    backend = load_backend("transformers")
    answers = backend.generate(
        [[{"role": "user", "content": q}] for q in queries], SamplingParams(temperature=0, max_new_tokens=64)
    )
    principle = harmless.comparison_principles[0]
    judge = [
        [
            {
                "role": "user",
                "content": f"Question: {q}\nAnswer: {a[0].text}\n\n{principle.comparison}\n"
                "(A) the answer above\n(B) a polite refusal\nReply with A or B.",
            },
            {"role": "assistant", "content": "("},
        ]
        for q, a in zip(queries, answers)
    ]
    scores = backend.choice_logprobs(judge, ["A", "B"])
    table = Table("query", "answer", "logp A", "logp B", show_lines=True, title="embedded model")
    tokens = 0
    for q, a, s in zip(queries, answers, scores):
        tokens += a[0].tokens
        table.add_row(q, a[0].text, f"{s['A']:.2f}", f"{s['B']:.2f}")
    console.print(table)
    secs = time.perf_counter() - t0
    console.print(f"{len(queries)} answers, {tokens} tokens, {secs:.1f}s ({tokens / secs:.1f} tokens/s incl. loading)")
