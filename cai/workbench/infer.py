"""`cai constitution infer`: principles that explain a set of preferences, tested on held-out pairs.

Inverse constitutional AI. The pairs are split (seeded) into a proposal half and a held-out half.
For each proposal pair the feedback model is shown the preferred and the other reply and asked
for a few short, general rules, each a "Which reply ...?" question, that would explain the
preference. Near-duplicate rules are merged (word-set Jaccard, as for queries), each merged
rule counting the pairs that proposed it (its support). The best-supported candidates are then
tested: each one alone ranks every held-out pair through the reading core, in both orders, and
its agreement is the share of pairs whose label it reproduces. Rules that beat chance are kept,
best first, skipping one whose labels repeat an already kept rule's, and written as a principle
file with their measurements in comments.

Proposals and test readings are appended to a work folder (a `RunStore`) under ids that hash
their inputs, so a rerun after a kill goes on where it stopped and a finished rerun makes no
model call; candidates are derived from the proposals each time and written to
`candidates.json` for inspection.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.constitution import Constitution, Principle
from cai.constitution.importers import text_id
from cai.core.errors import UserError
from cai.core.ids import derive_seed, record_id
from cai.critique.cache import ReadingCache
from cai.critique.rank import ranking_principles
from cai.critique.reading import ReadingConfig
from cai.evaluation.labeler import Reading, agreement, order_consistency, position_bias, read_labeled_pairs, readings_of
from cai.evaluation.pairs import LabeledPair
from cai.generators.backends.base import capabilities
from cai.generators.queries import Deduplicator
from cai.generators.templates import render
from cai.generators.types import SamplingParams
from cai.store import RunStore

from .compare import load_labeled, open_cache

OnProgress = Callable[[dict], None]


class InferConfig(BaseModel):
    """What shapes the proposals and tests (part of their ids), and how the winners are chosen."""

    model_config = ConfigDict(extra="forbid")

    holdout: float = Field(0.5, gt=0, lt=1, description="Share of the pairs held out to test candidates on.")
    rules_per_pair: int = Field(3, ge=1, description="Rules asked of the model for each proposal pair.")
    temperature: float = Field(0.7, ge=0)
    max_new_tokens: int = Field(96, ge=16)
    merge: float = Field(0.7, gt=0, le=1, description="Word-set Jaccard at which two rules are one.")
    candidates: int = Field(12, ge=1, description="Best-supported merged rules to test.")
    method: Literal["logprob", "cot"] = "logprob"
    keep: int = Field(5, ge=1, description="Most principles to write.")
    min_agreement: float = Field(0.5, ge=0, le=1, description="A kept principle's agreement is above this.")
    redundant: float = Field(0.9, gt=0, le=1, description="Skip a rule whose labels match a kept one's this often.")


class Proposal(BaseModel):
    id: str
    pair: str  # file:line
    pair_key: str
    rules: list[str]
    raw: str
    tokens: int = 0


class RuleTest(BaseModel):
    """One candidate's reading of one held-out pair, both orders."""

    id: str
    candidate: str  # the rule's text
    pair_key: str
    p_chosen: float  # P(the file's chosen answer is better) under this rule alone
    readings: list[dict]  # {p_a, chosen_is_a, kind, floored} per order


def pair_key(p: LabeledPair) -> str:
    return record_id("pair", p.context, p.chosen, p.rejected)


def split(pairs: list[LabeledPair], holdout: float, seed: int) -> tuple[list[LabeledPair], list[LabeledPair]]:
    """(proposal pairs, held-out pairs), drawn per pair from its content and the seed."""
    held = [derive_seed(seed, pair_key(p), "holdout") % 10_000 < holdout * 10_000 for p in pairs]
    if len(pairs) >= 2 and all(held):
        held[0] = False
    if len(pairs) >= 2 and not any(held):
        held[-1] = True
    return [p for p, h in zip(pairs, held) if not h], [p for p, h in zip(pairs, held) if h]


_LEAD = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.):]|rule\s*\d*\s*[:.)-])?\s*", re.I)


def parse_rules(text: str, n: int) -> list[str]:
    """The "Which ...?" questions of an answer, one per line, numbering and quotes dropped."""
    out: list[str] = []
    for line in text.splitlines():
        line = _LEAD.sub("", line).strip().strip("\"'“”*").strip()
        if "?" not in line or not line.lower().startswith("which "):
            continue
        q = " ".join(line[: line.index("?") + 1].split())
        if 15 <= len(q) <= 200 and q not in out:
            out.append(q[0].upper() + q[1:])
        if len(out) == n:
            break
    return out


def merge_rules(proposals: list[Proposal], threshold: float) -> list[dict]:
    """Near-duplicate rules as one candidate: its wording (the most proposed, then the shortest),
    its members, and its support (how many pairs proposed it). Best supported first."""
    dedupe = Deduplicator(threshold)
    clusters: dict[str, dict] = {}
    for k, prop in enumerate(proposals):
        for j, rule in enumerate(prop.rules):
            rid = f"{k}/{j}"
            root = dedupe.check(rid, rule) or rid
            c = clusters.setdefault(root, {"members": {}, "pairs": set(), "first": k})
            c["members"][rule] = c["members"].get(rule, 0) + 1
            c["pairs"].add(prop.pair_key)
    out = []
    for c in clusters.values():
        text = min(c["members"], key=lambda t: (-c["members"][t], len(t), t))
        out.append(
            {
                "id": text_id(text),
                "text": text,
                "support": len(c["pairs"]),
                "members": sorted(c["members"]),
                "origin": "proposed",
                "first": c["first"],
            }
        )
    out.sort(key=lambda c: (-c["support"], c["first"], c["text"]))
    return out


def proposal_chat(p: LabeledPair, n: int, prefix: str | None) -> list[dict]:
    """The request for rules explaining one preference; where the backend continues an assistant
    turn, the answer is begun for it ("1. Which reply"), which keeps small models on the format."""
    ask = render(
        "cai.critique", "propose_principles.jinja", messages=p.context, chosen=p.chosen, rejected=p.rejected, n=n
    )
    chat = [{"role": "user", "content": ask}]
    return chat + ([{"role": "assistant", "content": prefix}] if prefix else [])


def _propose(backend, pending, cfg, seed, store, batch_size, progress) -> None:
    prefix = render("cai.critique", "propose_prefix.jinja") if capabilities(backend).prefill else None
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        chats = [proposal_chat(p, cfg.rules_per_pair, prefix) for _, p in batch]
        params = SamplingParams(
            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=derive_seed(seed, batch[0][0])
        )
        records, errors = [], []
        for (pid, p), (comp,) in zip(batch, backend.generate(chats, params)):
            if comp.error:
                errors.append({"task_id": pid, "pair": p.where, "error": comp.error})
                continue
            raw = f"{prefix} {comp.text.lstrip()}" if prefix else comp.text
            rules = parse_rules(raw, cfg.rules_per_pair)
            records.append(
                Proposal(id=pid, pair=p.where, pair_key=pair_key(p), rules=rules, raw=raw, tokens=comp.tokens)
            )
        store.append("proposals", records)
        store.append_errors("proposals", errors)
        progress("propose", len(batch))


def _test(backend, cand: dict, pending, cfg, seed, store, cache, batch_size, progress) -> None:
    c = Constitution(name="candidate", principles=[Principle(id=cand["id"], comparison=cand["text"])])
    rc = ReadingConfig(method=cfg.method, principles=1)
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        labels = read_labeled_pairs(backend, c, [p for _, p in batch], rc, seed, cache=cache)
        records, errors = [], []
        for (tid, p), lab in zip(batch, labels):
            if lab.reading.error is not None:
                errors.append({"task_id": tid, "pair": p.where, "error": lab.reading.error})
                continue
            rs, _ = readings_of([lab])
            rows = [{"p_a": r.p_a, "chosen_is_a": r.chosen_is_a, "kind": r.kind, "floored": r.floored} for r in rs]
            records.append(
                RuleTest(id=tid, candidate=cand["text"], pair_key=pair_key(p), p_chosen=lab.p_human, readings=rows)
            )
        store.append("tests", records)
        store.append_errors("tests", errors)
        progress("test", len(batch))


def _score(tests: list[RuleTest], order: dict[str, int]) -> dict:
    readings = [
        Reading(order[t.pair_key], "rule", r["p_a"], r["chosen_is_a"], r["kind"], r["floored"])
        for t in tests
        for r in t.readings
    ]
    if not readings:
        return {"pairs": 0, "agreement": None, "order_consistency": None, "position_bias": None}
    return {
        "pairs": len(tests),
        "agreement": agreement(readings),
        "order_consistency": order_consistency(readings),
        "position_bias": position_bias(readings),
    }


def _choose(cands: list[dict], tests: dict[str, dict[str, RuleTest]], cfg: InferConfig) -> None:
    """Mark the kept candidates (best agreement first, then support), skipping redundant ones."""
    ranked = sorted(
        (c for c in cands if c["agreement"] is not None),
        key=lambda c: (-c["agreement"], -c["support"], c["text"]),
    )
    kept: list[dict] = []
    for c in ranked:
        if len(kept) == cfg.keep or c["agreement"] <= cfg.min_agreement:
            c["why"] = c.get("why") or ("not above chance" if c["agreement"] <= cfg.min_agreement else "enough kept")
            continue
        mine = tests[c["text"]]
        for k in kept:
            theirs = tests[k["text"]]
            common = [key for key in mine if key in theirs]
            same = sum((mine[key].p_chosen > 0.5) == (theirs[key].p_chosen > 0.5) for key in common)
            if common and same / len(common) >= cfg.redundant:
                c["why"] = f"labels as {k['id']} does on {same} of {len(common)} pairs"
                break
        else:
            c["kept"] = True
            kept.append(c)


def infer(
    pairs: list[LabeledPair] | str | Path,
    backend,
    work_dir: str | Path,
    out: str | Path | None = None,
    *,
    name: str = "inferred",
    config: InferConfig | None = None,
    seed: int = 0,
    limit: int | None = None,
    include: Constitution | None = None,
    cache_dir: ReadingCache | str | Path | None = None,
    identity: object = None,
    batch_size: int = 8,
    on_progress: OnProgress | None = None,
) -> dict:
    """Propose, merge, test and choose principles that explain the preferences in `pairs`.

    Arguments:
        pairs: `LabeledPair`s or a pairs file (HH-RLHF, TRL or CAI-paper layout; human or AI labels).
        backend: the feedback model, which proposes the rules and ranks the held-out pairs.
        work_dir: where proposals and test readings are kept; a rerun resumes from it.
        out: write the chosen principles here as a principle file named `name` (see `principle_file`).
        config: `InferConfig` (split, proposals, merging, how many to test and keep).
        include: also test this constitution's ranking principles as candidates.
        cache_dir / identity: the reading cache, as for `compare`.
        on_progress: called with {stage: "propose" | "test", done, total}.

    Returns a dict: pairs, proposal_pairs, heldout_pairs, candidates (id, text, support,
    members, origin, agreement, order_consistency, position_bias, pairs, kept, why), kept (the
    chosen candidates in order), generated (proposal calls made by this call), readings
    {planned, read, cached}, written (the file, if any), seconds.
    """
    start = time.perf_counter()
    cfg = config or InferConfig()
    data, source = load_labeled(pairs, limit)
    if len(data) < 2:
        raise UserError("infer: needs at least 2 pairs (some to propose rules from, some to test them on)")
    store = RunStore(work_dir)
    ident = json.dumps([getattr(backend, "name", ""), getattr(backend, "model", ""), identity], default=str)
    proposing, held = split(data, cfg.holdout, seed)
    order = {pair_key(p): i for i, p in enumerate(held)}
    done = {"propose": 0, "test": 0}
    totals = {"propose": 0, "test": 0}

    def progress(stage: str, n: int) -> None:
        done[stage] += n
        if on_progress is not None:
            on_progress({"stage": stage, "done": done[stage], "total": totals[stage]})

    settings = cfg.model_dump(include={"rules_per_pair", "temperature", "max_new_tokens"})
    pids = [(record_id("proposal", pair_key(p), ident, seed, settings), p) for p in proposing]
    have = store.ids("proposals")
    pending = [(pid, p) for pid, p in pids if pid not in have]
    totals["propose"] = len(pending)
    _propose(backend, pending, cfg, seed, store, batch_size, progress)
    rank = {pid: k for k, (pid, _) in enumerate(pids)}
    proposals = sorted((r for r in store.iter_records("proposals", Proposal) if r.id in rank), key=lambda r: rank[r.id])

    cands = merge_rules(proposals, cfg.merge)[: cfg.candidates]
    for p in ranking_principles(include) if include is not None else []:
        text = p.comparison or ""
        same = next((c for c in cands if c["text"] == text), None)
        if same is not None:
            same["given"] = p.id  # proposed too: tested once, under the proposed id
        elif text:
            cands.append({"id": p.id, "text": text, "support": 0, "members": [text], "origin": "given", "first": -1})
    if not cands:
        raise UserError("infer: the model proposed no usable rule (a 'Which reply ...?' question); see proposals.jsonl")

    cache = open_cache(cache_dir, backend, identity)
    before = cache.stats() if cache is not None else {"hits": 0, "misses": 0}
    try:
        have = store.ids("tests")
        jobs = []
        for cand in cands:
            todo = [(record_id("rule-test", cand["text"], pair_key(p), ident, seed, cfg.method), p) for p in held]
            jobs.append((cand, [(tid, p) for tid, p in todo if tid not in have]))
        totals["test"] = sum(len(j[1]) for j in jobs)
        for cand, todo in jobs:
            _test(backend, cand, todo, cfg, seed, store, cache, batch_size, progress)
    finally:
        after = cache.stats() if cache is not None else before
        if cache is not None and not isinstance(cache_dir, ReadingCache):
            cache.close()

    tests: dict[str, dict[str, RuleTest]] = {c["text"]: {} for c in cands}
    for t in store.iter_records("tests", RuleTest):
        if t.candidate in tests and t.pair_key in order:
            tests[t.candidate][t.pair_key] = t
    for c in cands:
        c.update(_score(list(tests[c["text"]].values()), order), kept=False)
        c.pop("first", None)
    _choose(cands, tests, cfg)
    (Path(work_dir) / "candidates.json").write_text(json.dumps(cands, indent=2, ensure_ascii=False) + "\n")
    kept = [c for c in cands if c["kept"]]
    kept.sort(key=lambda c: (-c["agreement"], -c["support"], c["text"]))
    planned = totals["test"] * 2
    result = {
        "kind": "constitution-infer",
        **source,
        "seed": seed,
        "config": cfg.model_dump(),
        "backend": getattr(backend, "name", type(backend).__name__),
        "model": getattr(backend, "model", ""),
        "pairs": len(data),
        "proposal_pairs": len(proposing),
        "heldout_pairs": len(held),
        "rules_proposed": sum(len(p.rules) for p in proposals),
        "candidates": cands,
        "kept": kept,
        "generated": len(pending),
        "readings": {
            "planned": planned,
            "read": after["misses"] - before["misses"] if cache is not None else planned,
            "cached": after["hits"] - before["hits"],
        },
        "written": None,
    }
    if out is not None and kept:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(principle_file(result, name), encoding="utf-8")
        result["written"] = str(out)
    store.update_manifest("infer", pairs=len(data), proposals=len(proposals), candidates=len(cands), kept=len(kept))
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def principle_file(result: dict, name: str = "inferred") -> str:
    """The kept principles as a principle file, each with its measured agreement and support in
    a comment above it (YAML comments: written around the dumped file)."""
    from cai.constitution import dump_constitution

    kept = result["kept"]
    where = result.get("pairs_file", "the given pairs")
    c = Constitution(
        name=name,
        description=f"Ranking principles inferred from {where}.",
        principles=[Principle(id=k["id"], comparison=k["text"]) for k in kept],
    )
    model = f"{result['backend']}:{result['model']}"
    head = [
        f"# Inferred from {where}: {result['pairs']} pairs, rules proposed on {result['proposal_pairs']},",
        f"# tested on the other {result['heldout_pairs']} by {model} (seed {result['seed']}).",
        "# agreement: share of held-out pairs whose label the principle alone reproduces, both orders read.",
        "# support: proposal pairs whose rules merged into it.",
    ]
    notes = {
        k["id"]: f"# agreement {k['agreement']:.3f} on {k['pairs']} pairs (order consistency "
        f"{k['order_consistency']:.2f}, position bias {k['position_bias']:.2f}); support "
        f"{k['support']} of {result['proposal_pairs']}"
        for k in kept
    }
    lines = []
    for line in dump_constitution(c).splitlines():
        m = re.match(r"^(\s*)- id: (\S+)$", line)
        if m and m.group(2) in notes:
            lines.append(m.group(1) + notes[m.group(2)])
        lines.append(line)
    return "\n".join(head + lines) + "\n"
