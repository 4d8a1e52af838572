"""Every config a run has seen, and what a new one changes.

Users tune downstream settings after the expensive stages have run (more ranking principles, CoT
instead of log-probs, a bigger feedback model). Record ids hash each stage's inputs and settings,
so a changed stage gets new ids and everything upstream of it is reused as it is. The run keeps
each config as `configs/NNN.yaml` (with its constitution) and an index saying which stage it
first affected. A change is refused only where records would mix without their ids showing it:
a backend option that changes what a model writes (a dtype, a quantization) is not part of any
id, so records made before and after it would pass for one another.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cai.constitution import UserError

from .lock import RunLock
from .store import STAGES

# Sections of a run config → the first stage whose records they shape ("export": none).
SECTION_STAGE = {
    "constitution": "queries",
    "seed": "queries",
    "queries": "queries",
    "policy": "queries",
    "responses": "responses",
    "revisions": "revisions",
    "feedback": "comparisons",
    "teacher": "comparisons",
    "introspection": "introspection",
    "comparisons": "comparisons",
    "export": "export",
    "batch_size": None,
    "retries": None,
    "executor": None,
}
# Backend options that change how fast or where a model runs, never what it writes.
OPERATIONAL_OPTIONS = {
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "data_parallel_size",
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_prefix_caching",
    "enforce_eager",
    "swap_space",
    "cpu_kvcache_space",
    "batch_size",
    "max_concurrency",
    "concurrency",
    "timeout",
    "max_retries",
    "backoff",
    "max_backoff",
    "api_key",
    "base_url",
    "device",
    "device_map",
}
ORDER = [*STAGES[:3], "introspection", *STAGES[3:], "export"]  # introspection runs between revisions and comparisons


@dataclass
class ConfigChange:
    version: int
    first_stage: str | None
    sections: list[str] = field(default_factory=list)
    new: bool = False

    def redone(self) -> list[str]:
        """Stages whose records the change may replace (from the first affected one on)."""
        if self.first_stage is None:
            return []
        return ORDER[ORDER.index(self.first_stage) :]


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


def _changed_options(old: dict, new: dict, role: str) -> list[str]:
    a, b = (old.get(role) or {}).get("options", {}), (new.get(role) or {}).get("options", {})
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in OPERATIONAL_OPTIONS)


def compare(old: dict, new: dict, old_constitution: str, new_constitution: str) -> tuple[str | None, list[str]]:
    """The first stage a config change affects, and the sections that changed."""
    sections = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if old_constitution != new_constitution and "constitution" not in sections:
        sections.append("constitution")
    stages = [SECTION_STAGE.get(s, "queries") for s in sections]
    stages = [s for s in stages if s is not None]
    first = min(stages, key=ORDER.index) if stages else None
    return first, sections


def refuse_mixing(old: dict, new: dict, has_records: dict[str, bool]) -> None:
    """A changed output-shaping backend option over stages that already have records."""
    fb_old, fb_new = old.get("feedback") or old.get("policy"), new.get("feedback") or new.get("policy")
    checks = [("policy", _changed_options(old, new, "policy"), ("queries", "responses", "revisions"))]
    checks.append(
        ("feedback", _changed_options({"f": fb_old}, {"f": fb_new}, "f"), ("comparisons",)),
    )
    teacher_old, teacher_new = old.get("teacher") or old.get("policy"), new.get("teacher") or new.get("policy")
    checks.append(("teacher", _changed_options({"t": teacher_old}, {"t": teacher_new}, "t"), ("teacher",)))
    own_old = (old.get("introspection") or {}).get("backend") or teacher_old
    own_new = (new.get("introspection") or {}).get("backend") or teacher_new
    checks.append(("introspection", _changed_options({"i": own_old}, {"i": own_new}, "i"), ("introspection",)))
    for role, changed, stages in checks:
        made = [s for s in stages if has_records.get(s)]
        if changed and made:
            raise UserError(
                f"{role}.options.{changed[0]}: changed since {', '.join(made)} were made, and record ids do not "
                f"show backend options, so old and new records would mix; revert it or use a new --out"
            )


def record(
    root: Path, config_text: str, constitution_text: str, shard: str, has_records: dict[str, bool], dry: bool = False
) -> ConfigChange:
    """Compare with the run's latest config; keep the new one as the next version if it differs.
    With `dry`, only say what would happen."""
    if dry:
        return _record(root, config_text, constitution_text, shard, has_records, dry=True)
    lock = RunLock(root, "-configs")  # shards of one run may start together
    lock.acquire(wait=30)
    try:
        return _record(root, config_text, constitution_text, shard, has_records)
    finally:
        lock.release()


def _record(
    root: Path, config_text: str, constitution_text: str, shard: str, has_records: dict[str, bool], dry: bool = False
) -> ConfigChange:
    index = read_index(root)
    cfg_path, con_path = root / "config.yaml", root / "constitution.yaml"
    legacy = not index and cfg_path.is_file()  # a run made before configs were versioned
    if legacy:
        old_text, old_con = cfg_path.read_text(encoding="utf-8"), con_path.read_text(encoding="utf-8")
        last_version = 1
        if not dry:
            index = [_save(root, 1, old_text, old_con, "queries", [])]
    elif index:
        last_version = index[-1]["version"]
        old_text = (root / index[-1]["config"]).read_text(encoding="utf-8")
        old_con = (root / index[-1]["constitution"]).read_text(encoding="utf-8")
    else:
        last_version, old_text, old_con = 0, None, None
    if old_text == config_text and old_con == constitution_text:
        if not dry:
            _mark_shard(root, index, shard)
        return ConfigChange(last_version, None)
    if old_text is None:
        first, sections = "queries", []
    else:
        old, new = yaml.safe_load(old_text) or {}, yaml.safe_load(config_text) or {}
        refuse_mixing(old, new, has_records)
        first, sections = compare(old, new, old_con or "", constitution_text)
    change = ConfigChange(last_version + 1, first, sections, new=True)
    if dry:
        return change
    index.append(_save(root, change.version, config_text, constitution_text, first, sections))
    _write(cfg_path, config_text)
    _write(con_path, constitution_text)
    _mark_shard(root, index, shard)
    return change


def _save(root: Path, version: int, cfg: str, con: str, first: str | None, sections: list[str]) -> dict:
    folder = root / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / f"{version:03d}.yaml", cfg)
    _write(folder / f"{version:03d}.constitution.yaml", con)
    entry = {
        "version": version,
        "config": f"configs/{version:03d}.yaml",
        "constitution": f"configs/{version:03d}.constitution.yaml",
        "first_stage": first,
        "changed": sections,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "shards": {},
    }
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
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
