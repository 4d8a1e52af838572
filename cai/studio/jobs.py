"""What "try" and "compare with saved" run on the model thread, and the events the page gets.

The work itself is `cai.workbench` (the same code as `cai constitution try` and `compare`,
ranking through the pair-reading core); this module only turns its step and progress callbacks
into the page's events and keeps one reading cache open, so a compare after a small edit
re-reads only what the edit changed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from .models import Emit, Models


def _cache(models: Models):
    """The reading cache in the user's cache folder, opened on the model thread (SQLite stays on one thread)."""
    if getattr(models, "reading_cache", None) is None:
        from cai.core.identity import identity
        from cai.critique.cache import ReadingCache, backend_identity
        from cai.generators.default_model import cache_root

        _, feedback = models.backends(lambda e: None)
        fb = models.feedback_cfg or models.policy_cfg
        folder = models.cache_dir or cache_root() / "readings"
        shaping = identity(fb, "stage")["options"]  # keys and timeouts change no reading
        models.reading_cache = ReadingCache(folder, backend_identity(feedback, shaping))
    return models.reading_cache


def _ranking_event(r: dict) -> dict:
    return {
        "event": "ranking",
        "p_revision": r.get("p_revised"),
        "order_consistent": r.get("order_consistent"),
        "reading": r.get("reading"),
        "error": r.get("error"),
        "readings": [
            {
                "principle": x["principle_id"],
                "revision_as": "A" if x["shown_as_a"] == "revised" else "B",
                "p_revision": x["p_revised"],
            }
            for x in r.get("readings", [])
        ],
    }


def run_try(models: Models, c, message: str, principle: str | None, emit: Emit, max_new_tokens: int) -> dict:
    from cai.critique.revise import RevisionConfig
    from cai.workbench import try_chain

    policy, feedback = models.backends(emit)
    cache = _cache(models)
    nxt = {"answer": "critiquing", "critique": "revising", "revision": "ranking answer against revision"}

    def on_step(step: str, data: dict) -> None:
        if step == "ranking":
            emit(_ranking_event(data))
        elif step == "critique":
            emit({"event": "critique", "principle": data["principle_id"], "text": data["text"]})
        else:
            emit({"event": step, **data})
        if step == "revision" and not data.get("kept"):
            emit({"event": "status", "message": "the revision repeats the critique or the answer: nothing to rank"})
        elif step in nxt:
            emit({"event": "status", "message": f"{nxt[step]}…"})

    emit({"event": "status", "message": "answering…"})
    revision = RevisionConfig(critique_max_new_tokens=max_new_tokens, revision_max_new_tokens=max_new_tokens)
    result = try_chain(
        c,
        message,
        policy,
        feedback,
        principle_id=principle,
        on_step=on_step,
        max_new_tokens=max_new_tokens,
        revision=revision,
        cache=cache,
        on_text=lambda step, piece: emit({"event": "text", "step": step, "text": piece}),
    )
    return {"seconds": result["seconds"], "tokens": result["tokens"]}


def run_compare(models: Models, old, new, pairs: Path, emit: Emit, limit: int | None) -> dict:
    from cai.workbench import compare

    _, feedback = models.backends(emit)
    cache = _cache(models)

    def on_progress(event: dict) -> None:
        c = event.get("cache") or {}
        note = f" ({c.get('hits', 0)} readings from the cache)" if c else ""
        which = "saved file" if event["version"] == "old" else "editor's text"
        emit({"event": "status", "message": f"{which}: {event['done']}/{event['total']} pairs{note}"})

    emit({"event": "status", "message": "reading the pairs…"})
    r = compare(old, new, pairs, feedback, limit=limit, cache_dir=cache, top=10, on_progress=on_progress)
    return {
        "seconds": r["seconds"],
        "pairs": r["pairs"],
        "flips": r["flips"],
        "flip_rate": r["flip_rate"],
        "mean_abs_dp": r["mean_abs_dp"],
        "skipped": r.get("skipped", 0),
        "errors": len(r["errors"]["old"]) + len(r["errors"]["new"]),
        "old": r["old"],
        "new": r["new"],
        "principles": [
            {k: row.get(k) for k in ("id", "old_id", "status", "pairs", "flips", "flip_rate", "mean_abs_dp")}
            for row in r["by_principle"]
        ],
        "moved": [{k: m[k] for k in ("prompt", "chosen", "rejected", "p_old", "p_new", "flipped")} for m in r["moved"]],
    }


def run_probe_job(models: Models, c, emit: Emit) -> dict:
    """The constitution's probes, as `cai constitution test` runs them, through the same cache."""
    from cai.core.identity import identity
    from cai.workbench.probes import run_probes

    policy, feedback = models.backends(emit)
    cache = _cache(models)

    def on_progress(event: dict) -> None:
        what = "writing critiques and revisions" if event["phase"] == "writing" else "reading"
        emit({"event": "status", "message": f"{what}: {event['done']}/{event['total']} probes"})

    emit({"event": "status", "message": f"running {len(c.probes)} probes…"})
    shaping = identity(models.policy_cfg, "stage")["options"]
    r = run_probes(c, feedback, policy, cache_dir=cache, policy_identity=shaping, on_progress=on_progress)
    keys = ("id", "kind", "principle", "status", "p", "threshold", "why", "critique", "revision")
    return {
        "seconds": r["seconds"],
        **{k: r[k] for k in ("passed", "failed", "errors", "readings", "texts")},
        "probes": [{k: row.get(k) for k in keys} for row in r["probes"]],
    }


def available(max_new_tokens: int, limit: int | None) -> dict:
    """The jobs the page can start, as the app calls them: (models, ..., emit) -> result."""
    return {
        "try": partial(run_try, max_new_tokens=max_new_tokens),
        "compare": partial(run_compare, limit=limit),
        "probes": run_probe_job,
    }
