"""`cai constitution test`: a constitution's probes, checked the way a run would read them.

A probe pins one case (see `constitution/schema.py`): two replies one of which must win under a
principle, a reply whose revision must lose or gain a pattern or earn a yes, a reply whose
critique must catch a planted flaw. Each goes through the code a run uses: rankings through the
pair-reading core (both orders, under the named principle or the whole ensemble), critiques and
revisions through the same prompts (`critique_chat`, `revision_chat`, the worked examples, greedy
by default), and yes/no questions read as letters like the pointwise judge's, in both orders so
that a judge leaning to (A) leans both ways.

Everything a probe asks of a model is kept in the reading cache by what it was shown: letters as
the pair-reading core keeps them, and written critiques and revisions under the exact chat, its
sampling and seed. A probe's seeds come from its content, never its id or place. So after an edit
only the probes whose prompts the edit changed reach a model again, and renaming a probe costs
nothing.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from cai.constitution import Constitution, Principle
from cai.constitution.schema import Probe
from cai.core.errors import UserError
from cai.core.ids import derive_seed, record_id
from cai.core.stage import Task
from cai.critique.cache import ReadingCache
from cai.critique.rank import ranking_principles, trait_principle
from cai.critique.reading import (
    ANSWER_PREFIX,
    LetterQuestion,
    LetterReading,
    Mode,
    PairToRead,
    ReadingConfig,
    letter_chat,
    letter_from,
    letter_requests,
    read_pair,
    reading_mode,
)
from cai.critique.revise import (
    RevisionConfig,
    clean_revision,
    critique_chat,
    examples_for,
    revision_chat,
    usable_revision,
)
from cai.generators.streaming import Request, TaskFailed, drive
from cai.generators.templates import render
from cai.generators.types import SamplingParams

from .compare import open_cache

OnProgress = Callable[[dict], None]
YES_SEATS = (("A", "B"), ("B", "A"))  # (letter of yes, letter of no): yes shown first, then second


def probe_key(probe: Probe) -> str:
    """What a probe reads, by content: its seeds come from this, never from its id or its
    principle's id, so renaming either reads nothing again."""
    return record_id("probe", probe.kind, probe.conversation, probe.chosen, probe.rejected, probe.reply)


def select(c: Constitution, ids: list[str] | None = None) -> list[Probe]:
    """The probes to run: all of them, or those named (UserError for an id the file lacks)."""
    if not ids:
        return list(c.probes)
    known = {p.id: p for p in c.probes}
    missing = [i for i in ids if i not in known]
    if missing:
        raise UserError(f"--probe: {c.name} has no probe {missing[0]!r} (it has {', '.join(known) or 'none'})")
    return [known[i] for i in dict.fromkeys(ids)]


def ranking_pool(c: Constitution, probe: Probe) -> list[Principle]:
    """The principles a ranking probe reads under: the one it names (a trait read as its
    question), or every ranking principle, as a run's ensemble."""
    if probe.principle is None:
        return ranking_principles(c)
    if probe.principle in {p.id for p in c.principles}:
        return [c.principle(probe.principle)]
    return [trait_principle(c.trait(probe.principle))]


# ---------------------------------------------------------------------------------------------
# Writing: the critique (and revision) of a revision or critique probe, on the policy


def _written(request: Request, cache: ReadingCache | None, counts: dict):
    """One written text, from the cache when this exact request (chat, sampling, seed) was answered before."""
    key = None
    if cache is not None:
        key = cache.key("probe-text", request.prompt, request.params.model_dump(mode="json"), request.seed)
        found = cache.lookup([key])
        if key in found:
            counts["cached"] += 1
            return found[key]["text"]
    ((comp,),) = yield [request]
    if comp.error:
        raise TaskFailed(comp.error)
    counts["written"] += 1
    if cache is not None:
        cache.store([(key, {"text": comp.text, "tokens": comp.tokens})])
    return comp.text


def write_steps(c: Constitution, cfg: RevisionConfig, seed: int, cache: ReadingCache | None, counts: dict):
    """A probe's critique and revision as a run's first round writes them (`revision_steps`)."""
    crit_params = SamplingParams(
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.critique_max_new_tokens
    )
    rev_params = crit_params.model_copy(update={"max_new_tokens": cfg.revision_max_new_tokens})

    def steps(task: Task[Probe]):
        probe = task.data
        key = probe_key(probe)
        p = c.principle(probe.principle)
        conversation = probe.conversation + [{"role": "assistant", "content": probe.reply}]
        prompt = critique_chat(c, p, conversation, examples_for(c, p, cfg.few_shot, f"{seed}/{key}/0"))
        ask = Request(prompt, crit_params, seed=derive_seed(seed, key, 0, "critique"))
        critique = (yield from _written(ask, cache, counts)).strip()
        if probe.kind == "critique":
            return {"critique": critique}
        ask = Request(revision_chat(prompt, critique, p), rev_params, seed=derive_seed(seed, key, 0, "revision"))
        revision = clean_revision((yield from _written(ask, cache, counts)))
        kept = usable_revision(revision, critique)
        return {"critique": critique, "revision": revision, "kept": kept}

    return steps


# ---------------------------------------------------------------------------------------------
# Reading: rankings and yes/no questions, on the feedback model


def question_text(messages: list[dict], question: str, critique: str | None, yes: str, no: str) -> str:
    return render(
        "cai.critique", "probe_check.jinja", messages=messages, critique=critique, question=question, yes=yes, no=no
    )


def _yes(messages: list[dict], question: str, critique: str | None, mode: Mode, cache: ReadingCache | None):
    """P(yes) to `question` about the conversation (and the critique), yes shown as (A) then as
    (B), the mean of both; one failed reading fails it."""
    asked = [LetterQuestion(question_text(messages, question, critique, y, n), ANSWER_PREFIX) for y, n in YES_SEATS]
    keys = [cache.key(mode, "probe-yes", letter_chat(q, mode)) for q in asked] if cache is not None else []
    found = cache.lookup(keys) if cache is not None else {}
    letters: list[LetterReading | None] = [None] * len(asked)
    for k, key in enumerate(keys):
        if key in found:
            v = found[key]
            letters[k] = LetterReading(p_a=v["p_a"], logp=v.get("logp", {}), mode=v["mode"], answer=v.get("answer"))
    fresh = [k for k in range(len(asked)) if letters[k] is None]
    if fresh:
        got = yield letter_requests([asked[k] for k in fresh], mode)
        for k, result in zip(fresh, got):
            letters[k] = letter_from(result, mode)
    failed = next((x.error for x in letters if x is not None and x.error), None)
    if failed:
        raise TaskFailed(failed)
    if cache is not None:
        cache.store(
            [
                (keys[k], {"p_a": letters[k].p_a, "logp": letters[k].logp, "mode": mode, "answer": letters[k].answer})
                for k in fresh
            ]
        )
    return sum(x.p_a if y == "A" else 1.0 - x.p_a for x, (y, _) in zip(letters, YES_SEATS)) / len(YES_SEATS)


def read_steps(c: Constitution, method: str, seed: int, mode: Mode, cache: ReadingCache | None, written: dict):
    """What the feedback model reads of a probe: its pair, or its check's question. A pattern
    check reads nothing."""

    def steps(task: Task[Probe]):
        probe = task.data
        if probe.kind == "ranking":
            pool = ranking_pool(c, probe)
            pair = PairToRead(probe_key(probe), probe.conversation, probe.chosen, probe.rejected, pool)
            r = yield from read_pair(pair, ReadingConfig(method=method, principles=len(pool)), seed, mode, cache)
            if r.error is not None:
                raise TaskFailed(r.error)
            return {"p": r.p_first, "order_consistent": r.order_consistent, "by_principle": _by_principle(r)}
        out = dict(written[task.id])
        text = _checked_text(probe, out)
        check = probe.expect
        if check.question is None:
            pattern = check.absent if check.absent is not None else check.present
            m = re.search(pattern, text)
            return {**out, "matched": m.group(0) if m else None}
        messages = probe.conversation + [
            {"role": "assistant", "content": text if probe.kind == "revision" else probe.reply}
        ]
        critique = out["critique"] if probe.kind == "critique" else None
        return {**out, "p": (yield from _yes(messages, check.question, critique, mode, cache))}

    return steps


def _checked_text(probe: Probe, written: dict) -> str:
    """The text a check reads: the critique, or the answer a run keeps after one round (the
    revision if it is usable, else the reply as it was)."""
    if probe.kind == "critique":
        return written["critique"]
    return written["revision"] if written["kept"] else probe.reply


def _by_principle(r) -> dict[str, float]:
    per: dict[str, list[float]] = {}
    for j in r.judgements:
        per.setdefault(j.principle_id, []).append(j.p_first)
    return {pid: sum(v) / len(v) for pid, v in per.items()}


# ---------------------------------------------------------------------------------------------
# Verdicts


def verdict(probe: Probe, got: dict) -> tuple[bool, str]:
    """(passed, why) for what a probe's readings and writing came to."""
    threshold = 0.5 + probe.margin
    if probe.kind == "ranking":
        ok = got["p"] > threshold
        return ok, f"P(chosen wins) {got['p']:.3f} {'>' if ok else '<='} {threshold:.3f}"
    where = "critique" if probe.kind == "critique" else "revision" if got["kept"] else "reply (no usable revision)"
    check = probe.expect
    if check.question is not None:
        ok = got["p"] > threshold
        return ok, f"P(yes) {got['p']:.3f} {'>' if ok else '<='} {threshold:.3f} on the {where}"
    if check.absent is not None:
        ok = got["matched"] is None
        return (
            ok,
            f"/{check.absent}/ is not in the {where}"
            if ok
            else f"/{check.absent}/ still in the {where}: {got['matched']!r}",
        )
    ok = got["matched"] is not None
    return (
        ok,
        f"/{check.present}/ found in the {where}: {got['matched']!r}"
        if ok
        else f"/{check.present}/ not in the {where}",
    )


def _row(probe: Probe, got: dict | TaskFailed) -> dict:
    row: dict = {
        "id": probe.id,
        "kind": probe.kind,
        "principle": probe.principle,
        "check": "ranking" if probe.kind == "ranking" else probe.expect.kind,
        "margin": probe.margin,
        "threshold": None,
        "p": None,
    }
    if probe.kind == "ranking" or probe.expect.question is not None:
        row["threshold"] = 0.5 + probe.margin
    if isinstance(got, TaskFailed):
        return {**row, "status": "error", "passed": False, "why": f"failed: {got.message}", "error": got.message}
    ok, why = verdict(probe, got)
    return {**row, **got, "status": "pass" if ok else "fail", "passed": ok, "why": why, "error": None}


def run_probes(
    constitution: Constitution,
    feedback,
    policy=None,
    *,
    probes: list[str] | None = None,
    cache_dir: ReadingCache | str | Path | None = None,
    identity: object = None,
    policy_identity: object = None,
    method: Literal["logprob", "cot"] = "logprob",
    revision: RevisionConfig | None = None,
    seed: int = 0,
    on_progress: OnProgress | None = None,
) -> dict:
    """Run a constitution's probes (or those named in `probes`) and say which pass.

    Arguments:
        constitution: a `Constitution` carrying probes (see `load_with_probes`).
        feedback: the backend that ranks and answers yes/no questions; `policy` writes critiques
            and revisions (default: the feedback backend).
        cache_dir: a folder for the reading cache, an open `ReadingCache` (the feedback model's),
            or None; `identity` and `policy_identity` (e.g. the backends' options) enter its keys.
        method: how pairs are read ("logprob" or "cot"); revision: critique/revision settings;
            seed: the run seed the readings and texts use.
        on_progress: called with {phase: "writing" | "reading", done, total} as probes finish.

    Returns a dict (JSON-ready): constitution, hash, probes (one row each: id, kind, principle,
    check, status pass/fail/error, passed, p, threshold, why, and what was read or written),
    passed, failed, errors, readings {planned, read, cached}, texts {written, cached}, seconds.
    """
    start = time.perf_counter()
    c = constitution
    chosen = select(c, probes)
    cfg = revision or RevisionConfig()
    policy = policy if policy is not None else feedback
    own_cache = not isinstance(cache_dir, ReadingCache)
    cache = open_cache(cache_dir, feedback, identity)
    writer_cache = cache
    if cache is not None and policy is not feedback:
        writer_cache = open_cache(cache.folder, policy, policy_identity)
    counts = {"written": 0, "cached": 0}
    progress = on_progress or (lambda event: None)
    results: dict[str, dict | TaskFailed] = {}
    try:
        tasks = {p.id: Task(p.id, p, []) for p in chosen}
        to_write = [t for t in tasks.values() if t.data.kind != "ranking"]
        written: dict[str, dict] = {}
        for done, (task, got) in enumerate(drive(policy, to_write, write_steps(c, cfg, seed, writer_cache, counts)), 1):
            if isinstance(got, TaskFailed):
                results[task.id] = got
            else:
                written[task.id] = got
            progress({"phase": "writing", "done": done, "total": len(to_write)})
        to_read = [t for t in tasks.values() if t.id not in results]
        before = cache.stats() if cache is not None else None
        steps = read_steps(c, method, seed, reading_mode(feedback), cache, written)
        for done, (task, got) in enumerate(drive(feedback, to_read, steps), 1):
            results[task.id] = got
            progress({"phase": "reading", "done": done, "total": len(to_read)})
        planned = sum(_planned(c, t.data) for t in to_read)
        if cache is not None and before is not None:
            after = cache.stats()
            readings = {
                "planned": planned,
                "read": after["misses"] - before["misses"],
                "cached": after["hits"] - before["hits"],
            }
        else:
            readings = {"planned": planned, "read": planned, "cached": 0}
    finally:
        if writer_cache is not None and writer_cache is not cache:
            writer_cache.close()
        if cache is not None and own_cache:
            cache.close()
    rows = [_row(p, results[p.id]) for p in chosen]
    return {
        "kind": "constitution-test",
        "constitution": c.name,
        "hash": c.content_hash(),
        "method": method,
        "seed": seed,
        "backend": getattr(feedback, "name", type(feedback).__name__),
        "model": getattr(feedback, "model", ""),
        "probes": rows,
        "passed": sum(r["status"] == "pass" for r in rows),
        "failed": sum(r["status"] == "fail" for r in rows),
        "errors": sum(r["status"] == "error" for r in rows),
        "readings": readings,
        "texts": counts,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _planned(c: Constitution, probe: Probe) -> int:
    """Letters a probe reads: both orders of each principle of its pool, or yes in both seats."""
    if probe.kind == "ranking":
        return 2 * len(ranking_pool(c, probe))
    return len(YES_SEATS) if probe.expect.question is not None else 0


# ---------------------------------------------------------------------------------------------
# JUnit XML, for CI


def junit_xml(result: dict) -> str:
    """One testcase per probe (classname: constitution.kind), a failure or error with the p reached."""
    suite = ET.Element(
        "testsuite",
        name=f"cai constitution test: {result['constitution']}",
        tests=str(len(result["probes"])),
        failures=str(result["failed"]),
        errors=str(result["errors"]),
        skipped="0",
        time=f"{result['seconds']:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for k in ("constitution", "hash", "backend", "model", "method", "seed"):
        ET.SubElement(props, "property", name=k, value=str(result.get(k, "")))
    for row in result["probes"]:
        case = ET.SubElement(
            suite, "testcase", classname=f"{result['constitution']}.{row['kind']}", name=row["id"], time="0"
        )
        if row["status"] == "fail":
            p = "" if row["p"] is None else f" (p {row['p']:.3f})"
            ET.SubElement(case, "failure", message=row["why"] + p, type=row["check"]).text = _detail(row)
        elif row["status"] == "error":
            ET.SubElement(case, "error", message=row["why"], type="reading").text = row["error"]
        else:
            ET.SubElement(case, "system-out").text = _detail(row)
    root = ET.Element("testsuites", name="cai constitution test")
    root.append(suite)
    for k in ("tests", "failures", "errors", "time"):
        root.set(k, suite.get(k))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _detail(row: dict) -> str:
    lines = [row["why"]]
    if row.get("p") is not None:
        lines.append(f"p = {row['p']:.4f}, threshold = {row['threshold']:.4f}")
    for pid, p in (row.get("by_principle") or {}).items():
        lines.append(f"  {pid}: P(chosen wins) {p:.3f}")
    for k in ("critique", "revision"):
        if row.get(k):
            lines.append(f"{k}: {row[k]}")
    return "\n".join(lines)


def write_junit(result: dict, path: str | Path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(junit_xml(result), encoding="utf-8")
    except OSError as e:
        raise UserError(f"--junit: {path}: {e.strerror or e}") from None
