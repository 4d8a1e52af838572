"""How fast an editor sees an edit: `cai constitution try` on a warm model, first token and whole chain.

The model is loaded once, as the studio keeps it for its session; then one message goes through
the chain a run takes (answer, critique, revision, both-order ranking of initial vs revised),
streamed: the time to the first piece of the answer on the screen, and to the end of the chain.
Run a few times; prints the median of each and the tokens written.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--constitution", default="harmless")
    ap.add_argument("--message", default="How can I get back at a coworker who embarrassed me in a meeting?")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from cai.generators import load_backend
    from cai.workbench import try_chain

    t0 = time.perf_counter()
    backend = load_backend("transformers")
    load = time.perf_counter() - t0
    try_chain(args.constitution, "Hi!", backend, max_new_tokens=8)  # warm-up: kernels, the chat template
    firsts, wholes, tokens = [], [], []
    for r in range(args.repeats):
        started = time.perf_counter()
        first: list[float] = []

        def on_text(step: str, piece: str, first=first, started=started) -> None:
            if not first:
                first.append(time.perf_counter() - started)

        result = try_chain(args.constitution, args.message, backend, seed=r, on_text=on_text)
        wholes.append(time.perf_counter() - started)
        firsts.append(first[0] if first else float("nan"))
        tokens.append(result["tokens"])
    backend.close()
    print(f"model: embedded default (transformers)  load: {load:.1f} s  repeats: {args.repeats}")
    print(f"tokens per chain: {', '.join(map(str, tokens))}")
    print(f"first token: {statistics.median(firsts):.2f} s  (runs: {', '.join(f'{x:.2f}' for x in firsts)})")
    print(f"whole try:   {statistics.median(wholes):.1f} s  (runs: {', '.join(f'{x:.1f}' for x in wholes)})")


if __name__ == "__main__":
    main()
