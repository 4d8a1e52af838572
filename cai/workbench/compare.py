"""`cai constitution compare`: what an edit to a principle file does to the labels, before a run.

Both versions rank the same labelled pairs through the ranking core the comparisons stage uses
(evaluation/labeler.py on critique/reading.py: the same prompts, both orders, the same seed, so
the same answer sits first in both). What differs between the two sets of soft labels is then
the edit's doing: how many labels flip, by how much the probabilities move, overall and per
principle, what happens to order consistency, position bias and agreement with the file's own
labels, and which pairs moved most.

By default every ranking principle reads every pair (not k sampled ones as in a run), so each
principle's effect is measured on every pair and leaving one out (`ablate`) is a recombination of
readings already made, at no extra cost. Readings go through a `ReadingCache`: after one more
edit only the edited principle's readings are made again.

A version given as a layered file (`extends:`) names the layer each principle comes from, and
each label flip is put down to a layer: the flips that go away when that layer's principles are
read as the other version reads them. `without_examples` makes the version a constitution is
measured against when the edit is its comparison examples.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from cai.constitution import Constitution, Principle
from cai.constitution.diff import diff_constitutions
from cai.constitution.layers import Layered, load_layered
from cai.critique.cache import ReadingCache, backend_identity
from cai.critique.rank import ranking_principles
from cai.critique.reading import ReadingConfig, examples_read, question
from cai.evaluation.labeler import (
    PairLabel,
    Reading,
    agreement,
    order_consistency,
    position_bias,
    read_labeled_pairs,
    readings_of,
    summarise,
)
from cai.evaluation.pairs import LabeledPair, read_pairs

from .trying import as_constitution

OnProgress = Callable[[dict], None]
VERSIONS = ("old", "new")


def open_cache(cache_dir, backend, identity: object = None) -> ReadingCache | None:
    """`cache_dir` as a cache: None (no cache), a `ReadingCache`, or a folder to open one in."""
    if cache_dir is None or isinstance(cache_dir, ReadingCache):
        return cache_dir
    return ReadingCache(cache_dir, backend_identity(backend, identity))


def load_labeled(pairs: list[LabeledPair] | str | Path, limit: int | None) -> tuple[list[LabeledPair], dict]:
    """Pairs given, or read from a file (HH-RLHF, TRL or CAI-paper layouts); with what was skipped."""
    if isinstance(pairs, (str, Path)):
        read = read_pairs(pairs, limit)
        return read.pairs, {"pairs_file": str(pairs), "skipped": len(read.skipped), "skip_reasons": read.reasons()}
    return list(pairs)[:limit], {}


def _label(p: float) -> float:
    return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


def _flips(a: dict[int, float], b: dict[int, float]) -> dict:
    """Label flips and mean |Δp| over the pairs both sides have."""
    common = sorted(set(a) & set(b))
    if not common:
        return {"pairs": 0, "flips": 0, "flip_rate": None, "mean_abs_dp": None}
    flips = sum(_label(a[i]) != _label(b[i]) for i in common)
    dp = sum(abs(b[i] - a[i]) for i in common) / len(common)
    return {"pairs": len(common), "flips": flips, "flip_rate": flips / len(common), "mean_abs_dp": dp}


class Version:
    """One version's readings: per pair the probability of the file's chosen answer, overall and
    per principle, and the single readings for the labeler's metrics."""

    def __init__(self, c: Constitution, labels: list[PairLabel]):
        self.c = c
        self.labels = labels
        self.readings, self.errors = readings_of(labels)
        self.p: dict[int, float] = {}
        self.by_principle: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for lab in labels:
            if lab.reading.error is not None:
                continue
            self.p[lab.index] = lab.p_human
            for j in lab.reading.judgements:
                self.by_principle[j.principle_id][lab.index].append(j.p_first if lab.chosen_first else 1 - j.p_first)

    def principle_p(self, pid: str) -> dict[int, float]:
        return {i: sum(v) / len(v) for i, v in self.by_principle.get(pid, {}).items()}

    def without(self, pid: str | None) -> dict[int, float]:
        """Per pair, the soft label with one principle's readings left out (None: left out nothing)."""
        out = {}
        for i in self.p:
            vals = [x for q, per in self.by_principle.items() if q != pid for x in per.get(i, [])]
            if vals:
                out[i] = sum(vals) / len(vals)
        return out

    def metrics(self, readings: list[Reading] | None = None) -> dict:
        rs = self.readings if readings is None else readings
        return {
            "agreement": agreement(rs) if rs else None,
            "order_consistency": order_consistency(rs) if rs else None,
            "position_bias": position_bias(rs) if rs else None,
        }

    def summary(self) -> dict:
        s = summarise(self.readings) if self.readings else {}
        keys = ("agreement", "order_consistency", "position_bias", "mean_p_chosen", "reading_kinds")
        return {
            "name": self.c.name,
            "hash": self.c.content_hash(),
            "principles": len(ranking_principles(self.c)),
            "pairs_read": len(self.p),
            "readings": len(self.readings),
            "errors": len(self.errors),
            **{k: s.get(k) for k in keys},
        }


def without_examples(c: Constitution) -> Constitution:
    """The constitution with no comparison examples: what its examples are measured against."""
    return Constitution.model_validate(c.model_dump(mode="json") | {"comparison_examples": []})


def _layers_of(version: Constitution | Layered | str | Path) -> tuple[Constitution, Layered | None]:
    """A version as a constitution, with its layers where it was given as a file (or merged)."""
    if isinstance(version, Layered):
        return version.constitution, version
    if isinstance(version, Constitution):
        return version, None
    layered = load_layered(version)
    return layered.constitution, layered


def _layer_of(layered: Layered | None, pid: str | None, removed: bool = False) -> str | None:
    """The layer that gives a principle the question it is read under (or that removed it)."""
    if layered is None or pid is None:
        return None
    if removed:
        return layered.state.removed.get(pid)
    item = layered.origin("principles", pid) or layered.origin("traits", pid)
    if item is None:
        return None
    return next((label for label, fields, _ in reversed(item.changed) if "comparison" in fields), item.origin)


def _matching(old: Constitution, new: Constitution, few_shot: int = 0, cot: bool = False) -> list[dict]:
    """Ranking principles of both versions matched by id (renames followed): status and both ids.
    A principle read under the same question with other comparison examples shown is `examples`."""
    renamed = {
        ch.new: ch.old for ch in diff_constitutions(old, new) if ch.kind == "renamed" and ch.section != "few_shot"
    }
    before: dict[str, Principle] = {p.id: p for p in ranking_principles(old)}
    after: dict[str, Principle] = {p.id: p for p in ranking_principles(new)}
    rows, seen = [], set()
    for pid, p in after.items():
        oid = renamed.get(pid, pid)
        if oid in before:
            seen.add(oid)
            status = "renamed" if oid != pid else "unchanged"
            if question(before[oid]) != question(p):
                status = "edited"
            elif examples_read(before[oid], few_shot, cot) != examples_read(p, few_shot, cot):
                status = "examples"
            rows.append({"id": pid, "old_id": oid, "status": status})
        else:
            rows.append({"id": pid, "old_id": None, "status": "added"})
    rows += [{"id": None, "old_id": oid, "status": "removed"} for oid in before if oid not in seen]
    return rows


def _read(backend, c, pairs, cfg, seed, cache, name, on_progress, batch_pairs) -> list[PairLabel]:
    labels: list[PairLabel] = []
    for start in range(0, len(pairs), batch_pairs):
        chunk = pairs[start : start + batch_pairs]
        for lab in read_labeled_pairs(backend, c, chunk, cfg, seed, cache=cache):
            labels.append(PairLabel(start + lab.index, lab.pair, lab.chosen_first, lab.reading))
        if on_progress is not None:
            event = {"version": name, "done": len(labels), "total": len(pairs)}
            on_progress({**event, "cache": cache.stats() if cache is not None else None})
    return labels


def _moved(pairs: list[LabeledPair], a: Version, b: Version, top: int) -> list[dict]:
    common = [i for i in a.p if i in b.p]
    common.sort(key=lambda i: (-abs(b.p[i] - a.p[i]), i))
    return [
        {
            "pair": pairs[i].where,
            "prompt": pairs[i].context[-1]["content"],
            "chosen": pairs[i].chosen,
            "rejected": pairs[i].rejected,
            "p_old": a.p[i],
            "p_new": b.p[i],
            "dp": b.p[i] - a.p[i],
            "flipped": _label(a.p[i]) != _label(b.p[i]),
        }
        for i in common[:top]
        if abs(b.p[i] - a.p[i]) > 0
    ]


def _ablation(side: str, versions: dict[str, Version], matching: list[dict]) -> dict:
    """Leave each principle of one version out: how far its labels move, and how much of the
    old→new change is left when that principle is left out of both versions."""
    v = versions[side]
    full = v.p
    rows = []
    for m in matching:
        pid = m["id"] if side == "new" else m["old_id"]
        if pid is None:
            continue
        moved = _flips(full, v.without(pid))
        left = _flips(versions["old"].without(m["old_id"]), versions["new"].without(m["id"]))
        total = _flips(versions["old"].p, versions["new"].p)["flip_rate"]
        explained = None
        if total and left["flip_rate"] is not None:
            explained = 1.0 - left["flip_rate"] / total
        rows.append(
            {
                "id": pid,
                "status": m["status"],
                "pairs": moved["pairs"],
                "flip_rate": moved["flip_rate"],
                "mean_abs_dp": moved["mean_abs_dp"],
                "change_left": left["flip_rate"],
                "change_explained": explained,
            }
        )
    rows.sort(key=lambda r: (-(r["change_explained"] or 0), -(r["flip_rate"] or 0), -(r["mean_abs_dp"] or 0), r["id"]))
    return {"version": side, "principles": rows}


def _by_layer(versions: dict[str, Version], matching: list[dict]) -> list[dict]:
    """Each layer's share of the label flips: the flipped pairs whose label goes back when the
    principles that layer gives (or removed) are read as the old version reads them."""
    a, b = versions["old"], versions["new"]
    flipped = [i for i in a.p if i in b.p and _label(a.p[i]) != _label(b.p[i])]
    rows = []
    for layer in dict.fromkeys(m["layer"] for m in matching if m.get("layer")):
        mine = [m for m in matching if m.get("layer") == layer]
        back = 0
        for i in flipped:
            vals = []
            for m in matching:
                side, pid = (a, m["old_id"]) if m.get("layer") == layer else (b, m["id"])
                vals += side.by_principle.get(pid, {}).get(i, []) if pid else []
            back += bool(vals) and _label(sum(vals) / len(vals)) == _label(a.p[i])
        rows.append(
            {
                "layer": layer,
                "principles": [m["id"] or m["old_id"] for m in mine if m["status"] != "unchanged"],
                "flips": back,
                "share": back / len(flipped) if flipped else None,
            }
        )
    rows.sort(key=lambda r: (-r["flips"], r["layer"]))
    return rows


def compare(
    old: Constitution | Layered | str | Path,
    new: Constitution | Layered | str | Path,
    pairs: list[LabeledPair] | str | Path,
    backend,
    limit: int | None = None,
    ablate: bool | Literal["old", "new"] = False,
    cache_dir: ReadingCache | str | Path | None = None,
    *,
    identity: object = None,
    method: Literal["logprob", "cot"] = "logprob",
    principles: int | None = None,
    seed: int = 0,
    top: int = 5,
    batch_pairs: int = 8,
    on_progress: OnProgress | None = None,
    few_shot: int | None = None,
) -> dict:
    """Rank the same pairs under two versions of a constitution and say what changed.

    Arguments:
        old, new: `Constitution`s, shipped names or paths (a layered file's layers are then known),
            or merged `Layered` files.
        pairs: `LabeledPair`s, or a pairs file (HH-RLHF, TRL or CAI-paper layout); `limit` keeps the first N.
        backend: the feedback model's backend.
        ablate: leave-one-principle-out for the new version (True or "new") or the old one ("old").
        cache_dir: a folder for the reading cache, an open `ReadingCache`, or None for no cache;
            `identity` (e.g. the backend's options) is added to the backend's name and model in its keys.
        method: "logprob" or "cot"; principles: read each pair under k sampled principles as a run
            does (default: every ranking principle); seed: the run seed the readings use.
        top: how many of the pairs that moved most to return.
        few_shot: comparison examples shown before each pair (default: as a run shows them).
        on_progress: called with {version, done, total, cache: {hits, misses} | None} after each
            batch of `batch_pairs` pairs.

    Returns a dict (JSON-ready): old/new summaries (name, hash, agreement with the file's labels,
    order consistency, position bias, ...), pairs, flips, flip_rate, mean_abs_dp (of P(the file's
    chosen answer)), by_principle rows (id, old_id, status, flip_rate, mean_abs_dp, agreement /
    order consistency / position bias per version), moved (the pairs that moved most), ablation
    (when asked), changes (the principle-file diff), readings {planned, read, cached}, errors,
    seconds; with a layered version, each principle row's layer, the layers of both versions and
    by_layer rows (layer, its changed principles, the flips it accounts for and their share).
    """
    start = time.perf_counter()
    (c_old, l_old), (c_new, l_new) = _layers_of(old), _layers_of(new)
    cs = {"old": as_constitution(c_old), "new": as_constitution(c_new)}
    shots = {} if few_shot is None else {"few_shot": few_shot}
    data, source = load_labeled(pairs, limit)
    own_cache = not isinstance(cache_dir, ReadingCache)
    cache = open_cache(cache_dir, backend, identity)
    versions: dict[str, Version] = {}
    counts = {"planned": 0, "read": 0, "cached": 0}
    try:
        for name in VERSIONS:
            c = cs[name]
            k = principles or len(ranking_principles(c))
            cfg = ReadingConfig(method=method, principles=k, **shots)
            before = cache.stats() if cache is not None else None
            labels = _read(backend, c, data, cfg, seed, cache, name, on_progress, batch_pairs)
            versions[name] = Version(c, labels)
            planned = 2 * len(data) * min(k, len(ranking_principles(c)))
            counts["planned"] += planned
            if cache is not None and before is not None:
                after = cache.stats()
                counts["read"] += after["misses"] - before["misses"]
                counts["cached"] += after["hits"] - before["hits"]
            else:
                counts["read"] += planned
    finally:
        if cache is not None and own_cache:
            cache.close()
    a, b = versions["old"], versions["new"]
    shown = ReadingConfig(method=method, **shots).few_shot
    matching = _matching(cs["old"], cs["new"], shown, method == "cot")
    layered = any(x is not None and x.layered for x in (l_old, l_new))
    for m in matching if layered else []:
        gone = m["id"] is None
        m["layer"] = _layer_of(l_new, m["old_id"], removed=True) if gone else _layer_of(l_new, m["id"])
    rows = []
    for m in matching:
        pa = a.principle_p(m["old_id"]) if m["old_id"] else {}
        pb = b.principle_p(m["id"]) if m["id"] else {}
        row = {**m, **_flips(pa, pb)}
        for name, v, pid in (("old", a, m["old_id"]), ("new", b, m["id"])):
            rs = [r for r in v.readings if r.principle == pid] if pid else []
            row.update({f"{key}_{name}": val for key, val in v.metrics(rs).items()} if rs else {})
        rows.append(row)
    result = {
        "kind": "constitution-compare",
        **source,
        "old": a.summary(),
        "new": b.summary(),
        "method": method,
        "principles_per_pair": principles or "all",
        "seed": seed,
        "backend": getattr(backend, "name", type(backend).__name__),
        "model": getattr(backend, "model", ""),
        **_flips(a.p, b.p),
        "by_principle": rows,
        "moved": _moved(data, a, b, top),
        "changes": [ch.to_json() for ch in diff_constitutions(cs["old"], cs["new"])],
        "readings": counts,
        "errors": {"old": a.errors, "new": b.errors},
    }
    if layered:
        result["layers"] = {k: x.records() if x is not None else None for k, x in (("old", l_old), ("new", l_new))}
        result["by_layer"] = _by_layer(versions, matching)
    if ablate:
        result["ablation"] = _ablation("old" if ablate == "old" else "new", versions, matching)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result
