"""Constitutions that ship with cai, found by name with `importlib.resources`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def library_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def library_path(name: str) -> Path | None:
    f = resources.files(__name__) / f"{name}.yaml"
    return Path(str(f)) if f.is_file() else None
