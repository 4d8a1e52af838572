"""Every config a run has seen, and what a new one changes.

Users tune downstream settings after the expensive stages have run (more ranking principles, CoT
instead of log-probs, a bigger feedback model). Record ids hash each stage's inputs and the
settings that shape them (declared on the config fields, `cai.core.identity`), so a changed stage
gets new ids and everything upstream of it is reused as it is. The run keeps each config as
`configs/NNN.yaml` (with its constitution) and an index saying which stage it first affected,
traced through each stage's identity; a config that differs only in how it names the same files,
or in nothing that shapes output, is the same version. A change is refused only where records
would mix without their ids showing it: a backend option that changes what a model writes (a
dtype, a quantization) is not part of any id, so records made before and after it would pass for
one another.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cai.core.errors import UserError

from .lock import RunLock
from .stages import NAMES, stages_of_role, stages_reading
from .store import writing


@dataclass
class Snapshot:
    """A config as the history keeps it: its frozen texts, and what of it shapes which stage.

    `digest`: the whole config's identity (sources by content, secrets out), so a config that
    names the same files by another path is the same version; `identities`: each stage's, so a
    change is traced to the first stage it affects; `models`: per role, the backend, model and
    options that shape output, so a changed option that no id shows is refused."""

    config: str
    constitution: str
    digest: str
    identities: dict[str, str]
    models: dict[str, dict]
    layers: dict[str, list[dict]] | None = None  # the files the constitution(s) merge, each with its hash


@dataclass
class ConfigChange:
    version: int
    first_stage: str | None
    sections: list[str] = field(default_factory=list)
    new: bool = False
    legacy: bool = False  # records made before ids covered only what each stage reads

    def redone(self) -> list[str]:
        """Stages whose records the change may replace (from the first affected one on)."""
        if self.first_stage is None:
            return []
        return list(NAMES[NAMES.index(self.first_stage) :])


def _index_path(root: Path) -> Path:
    return root / "configs" / "index.json"


def read_index(root: Path) -> list[dict]:
    path = _index_path(root)
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def first_changed(old: dict[str, str], new: dict[str, str]) -> str | None:
    """The first stage, in run order, whose identity differs."""
    return next((name for name in NAMES if old.get(name) != new.get(name)), None)


def _legacy_first_stage(old_text: str, new_text: str, old_con: str, new_con: str) -> tuple[str | None, list[str]]:
    """For a config kept before stage identities were: the first stage reading a changed section."""
    old, new = yaml.safe_load(old_text) or {}, yaml.safe_load(new_text) or {}
    sections = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if old_con != new_con and "constitution" not in sections:
        sections.append("constitution")
    affected = stages_reading(sections)
    return (affected[0] if affected else None), sections


def _changed_sections(old_text: str, new_text: str) -> list[str]:
    old, new = yaml.safe_load(old_text) or {}, yaml.safe_load(new_text) or {}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _legacy_models(config_text: str) -> dict[str, dict]:
    """Per role, the shaping options of a config kept before they were recorded."""
    from cai.generators.backends.base import operational_options

    cfg = yaml.safe_load(config_text) or {}
    policy = cfg.get("policy") or {}
    teacher = cfg.get("teacher") or policy
    roles = {
        "policy": policy,
        "feedback": cfg.get("feedback") or policy,
        "teacher": teacher,
        "introspection": (cfg.get("introspection") or {}).get("backend") or teacher,
    }
    out = {}
    for role, bc in roles.items():
        backend = bc.get("backend", "transformers")
        try:
            skip = operational_options(backend)
        except ImportError:
            skip = set()
        out[role] = {"options": {k: v for k, v in (bc.get("options") or {}).items() if k not in skip}}
    return out


def refuse_mixing(old: dict[str, dict], new: dict[str, dict], has_records: dict[str, bool]) -> None:
    """A changed option that shapes output, under a role whose stages already have records.

    Record ids show the model by name only (so that every id made before stays valid), so records
    made before and after such a change would pass for one another."""
    for role, now in new.items():
        a, b = (old.get(role) or {}).get("options", {}), now.get("options", {})
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        made = [s for s in stages_of_role(role) if has_records.get(s)]
        if changed and made:
            raise UserError(
                f"{role}.options.{changed[0]}: changed since {', '.join(made)} were made, and record ids do not "
                f"show backend options, so old and new records would mix; revert it or use a new --out"
            )


def record(root: Path, snap: Snapshot, shard: str, has_records: dict[str, bool], dry: bool = False) -> ConfigChange:
    """Compare with the run's latest config; keep the new one as the next version if it differs.
    With `dry`, only say what would happen."""
    if dry:
        return _record(root, snap, shard, has_records, dry=True)
    lock = RunLock(root, "-configs")  # shards of one run may start together
    lock.acquire(wait=30)
    try:
        return _record(root, snap, shard, has_records)
    finally:
        lock.release()


def _record(root: Path, snap: Snapshot, shard: str, has_records: dict[str, bool], dry: bool = False) -> ConfigChange:
    index = read_index(root)
    cfg_path, con_path = root / "config.yaml", root / "constitution.yaml"
    if not index and cfg_path.is_file():  # a run made before configs were versioned
        index = [_entry(1, "queries", [])]
        old_text, old_con = cfg_path.read_text(encoding="utf-8"), con_path.read_text(encoding="utf-8")
        if not dry:
            index = [_save(root, index[0], old_text, old_con)]
    elif index:
        old_text = (root / index[-1]["config"]).read_text(encoding="utf-8")
        old_con = (root / index[-1]["constitution"]).read_text(encoding="utf-8")
    else:
        old_text = old_con = None
    last = index[-1] if index else None
    legacy = last is not None and "identities" not in last and any(has_records.values())
    if last is not None and (
        last.get("digest") == snap.digest or (old_text, old_con) == (snap.config, snap.constitution)
    ):
        if legacy:
            return _legacy(root, index, snap, shard, dry)
        if not dry:
            last.setdefault("digest", snap.digest)
            last.setdefault("identities", snap.identities)
            last.setdefault("models", snap.models)
            if snap.layers:
                last.setdefault("layers", snap.layers)
            _mark_shard(root, index, shard)
        return ConfigChange(last["version"], None)
    if last is None:
        first, sections = "queries", []
    else:
        refuse_mixing(last.get("models") or _legacy_models(old_text or ""), snap.models, has_records)
        if "identities" in last:
            first, sections = (
                first_changed(last["identities"], snap.identities),
                _changed_sections(old_text, snap.config),
            )
            if old_con != snap.constitution:
                sections.append("constitution")
        else:
            first, sections = _legacy_first_stage(old_text or "", snap.config, old_con or "", snap.constitution)
    version = (last["version"] if last else 0) + 1
    change = ConfigChange(version, NAMES[0] if legacy else first, sections, new=True, legacy=legacy)
    if dry:
        return change
    entry = _entry(version, first, sections) | {
        "digest": snap.digest,
        "identities": snap.identities,
        "models": snap.models,
    }
    if snap.layers:
        entry["layers"] = snap.layers
    index.append(_save(root, entry, snap.config, snap.constitution))
    _write(cfg_path, snap.config)
    _write(con_path, snap.constitution)
    _mark_shard(root, index, shard)
    return change


def _legacy(root: Path, index: list[dict], snap: Snapshot, shard: str, dry: bool) -> ConfigChange:
    """A run made before record ids covered only what each stage reads: the same config, kept as a
    new version so that every stage re-plans under the new ids (and says so once)."""
    last = index[-1]
    change = ConfigChange(last["version"] + 1, NAMES[0], ["record ids"], new=True, legacy=True)
    if dry:
        return change
    entry = _entry(change.version, NAMES[0], ["record ids"])
    entry |= {"digest": snap.digest, "identities": snap.identities, "models": snap.models}
    if snap.layers:
        entry["layers"] = snap.layers
    index.append(_save(root, entry, snap.config, snap.constitution))
    _mark_shard(root, index, shard)
    return change


def _entry(version: int, first: str | None, sections: list[str]) -> dict:
    return {
        "version": version,
        "config": f"configs/{version:03d}.yaml",
        "constitution": f"configs/{version:03d}.constitution.yaml",
        "first_stage": first,
        "changed": sections,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "shards": {},
    }


def _save(root: Path, entry: dict, cfg: str, con: str) -> dict:
    folder = root / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    _write(root / entry["config"], cfg)
    _write(root / entry["constitution"], con)
    _write(_index_path(root), json.dumps(read_index(root) + [entry], indent=2))
    return entry


def _mark_shard(root: Path, index: list[dict], shard: str) -> None:
    """Note which config each shard last ran with, so export can tell a shard left behind."""
    entry = index[-1]
    entry.setdefault("shards", {})[shard] = time.strftime("%Y-%m-%dT%H:%M:%S")
    for e in index[:-1]:
        e.get("shards", {}).pop(shard, None)
    _write(_index_path(root), json.dumps(index, indent=2))


def lagging_shards(root: Path) -> list[str]:
    """Shards whose last run used an older config than the latest (their records may be stale)."""
    index = read_index(root)
    return sorted(s for e in index[:-1] for s in e.get("shards", {}))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def layers(root: Path) -> dict[str, list[dict]] | None:
    """The layers the run's latest constitution was merged from (path or shipped name, name and
    content hash of each, bases first), as its config history records them."""
    index = read_index(root)
    return index[-1].get("layers") if index else None
