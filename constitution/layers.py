"""Layered principle files: a file that `extends:` others adds, overrides and removes principles.

A constitution is rarely one file: broad rules from whoever trains the model, narrower ones from an
organisation or a country, preferences from a product. A copy of the base drifts from it; a layer
names its bases and says only what it changes:

    name: support-bot
    extends: [harmless, ../org/rules.yaml]   # shipped names, or paths relative to this file
    remove: [some-id]                        # inherited principles or traits dropped
    override:                                # fields of an inherited principle or trait, by id
      - id: harm
        weight: 2
    principles: [...]                        # added, as in any principle file

The merge, always in this order, so the result never depends on how a file is laid out:

1. the bases, each resolved first, merge left to right; an id two bases define differently keeps
   the place the first gave it and the later base's content (lint says so); an item equal in both
   (a root they share) counts once;
2. `remove:` drops inherited ids, with the examples and probes written for them;
3. `override:` replaces the fields it names;
4. `principles:` and `traits:` are appended: an id still inherited is an error (override it, or
   remove it first); `few_shot`, `comparison_examples` and `probes` are appended after the bases';
   `query_generation` takes the layer's instructions and adds its topics and examples; `name`,
   `description` and `version` are the layer's own, else the last base's.

The result is an ordinary constitution: record ids hash it and never the layers, so moving a
principle from one layer to another changes no id while the merged file stays the same.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from cai.core.files import duplicate_keys, field_name, line_of, located_problems, raise_problems, read_structured

from .errors import ConstitutionError
from .layer_file import ITEMS, LISTS, Item, LayerFile, Place, State, apply_layer, is_layered, merge_queries
from .loader import validate
from .schema import Constitution

MAX_LAYERS = 32  # files in one constitution's layering, counted once each


@dataclass(frozen=True)
class Layer:
    """One file of a layered constitution: how it is named, what it calls itself, its content hash."""

    label: str
    path: Path
    name: str
    hash: str

    def record(self) -> dict:
        return {"layer": self.label, "name": self.name, "hash": self.hash}


@dataclass
class Layered:
    """A constitution with the layers it was merged from, bases first and the file itself last."""

    constitution: Constitution
    layers: list[Layer]
    state: State
    top: Place
    warnings: list[str] = field(default_factory=list)

    @property
    def layered(self) -> bool:
        return len(self.layers) > 1

    def origin(self, section: str, ident: str) -> Item | None:
        return self.state.items.get(section, {}).get(ident)

    def locate(self, loc: tuple) -> str:
        """`FILE:LINE` of a location in the merged constitution: the layer that wrote it."""
        if len(loc) >= 2 and loc[0] in ITEMS and isinstance(loc[1], int):
            items = list(self.state.items[loc[0]].values())
            if loc[1] < len(items):
                item, rest = items[loc[1]], loc[2:]
                for _, fields, place in reversed(item.changed):
                    if rest and rest[0] in fields:
                        return place.at(rest)
                return item.place.at(rest)
        if len(loc) >= 2 and loc[0] in LISTS and isinstance(loc[1], int) and loc[1] < len(self.state.lists[loc[0]]):
            return self.state.lists[loc[0]][loc[1]].place.at(loc[2:])
        return self.top.at(loc)

    def records(self) -> list[dict]:
        return [layer.record() for layer in self.layers]


def content_hash(data: dict) -> str:
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Resolver:
    """One resolution: each file read once (a root two bases share too), cycles and depth bounded."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.done: dict[Path, State] = {}
        self.layers: list[Layer] = []
        self.warnings: list[str] = []

    def label(self, path: Path, named: str, shipped: bool) -> str:
        if shipped:
            return named
        return os.path.relpath(path, self.folder) if not Path(named).is_absolute() else str(path)

    def resolve(self, path: Path, label: str, stack: tuple[Path, ...], data=None, node=None, source=None) -> State:
        """A file's merged state; `source` names it in messages (default: its path)."""
        key = path.resolve()
        if key in self.done:
            return copy.deepcopy(self.done[key])
        source = source or str(path)
        if data is None:
            data, node = read_structured(path)
        if is_layered(data):
            state, layer = self._layer(path, label, data, node, stack + (key,), source)
        else:
            c = validate(data, node, source)
            state, layer = _flat(c, label, Place(source, node)), Layer(label, path, c.name, c.content_hash())
        self.done[key] = state
        self.layers.append(layer)
        return copy.deepcopy(state)

    def _layer(self, path: Path, label: str, data: dict, node, stack: tuple[Path, ...], source: str):
        problems = list(duplicate_keys(node))
        try:
            layer = LayerFile.model_validate(data)
        except ValidationError as err:
            problems += located_problems(err, node)
        raise_problems(problems, source, ConstitutionError)
        here = Place(source, node)
        state = State()
        for j, entry in enumerate(layer.extends):
            base, shipped = _base_path(entry, path.parent)
            where = ("extends", j)
            if base is None:
                why = "no such file next to this one, and no shipped constitution has that name"
                problems.append((line_of(node, where), f"extends[{j}]: {entry}: {why}"))
            elif base.resolve() in stack:
                chain = " -> ".join(p.name for p in stack[stack.index(base.resolve()) :]) + f" -> {base.name}"
                problems.append((line_of(node, where), f"extends[{j}]: {entry} makes a cycle ({chain})"))
            elif len(stack) >= MAX_LAYERS or len(self.done) >= MAX_LAYERS:
                problems.append((line_of(node, where), f"extends[{j}]: more than {MAX_LAYERS} layers"))
            else:
                raise_problems(problems, source, ConstitutionError)
                base_state = self.resolve(base, self.label(base, entry, shipped), stack)
                self._merge(state, base_state, here.at(where), j, entry)
        raise_problems(problems, source, ConstitutionError)
        apply_layer(state, layer, label, here, problems)
        raise_problems(problems, source, ConstitutionError)
        _assemble(state, here, path.stem)  # what only the whole shows, reported in this file
        own = layer.model_dump(mode="json", exclude={"probes"}, exclude_defaults=True)
        return state, Layer(label, path, layer.name or state.header.get("name") or path.stem, content_hash(own))

    def _merge(self, state: State, base: State, at: str, j: int, entry: str) -> None:
        """A base into what the bases before it gave: later content wins, equal items count once."""
        where = f"{at}: extends[{j}]"
        for section in ITEMS:
            for ident, item in base.items[section].items():
                have = state.items[section].get(ident)
                if have is not None and have.data != item.data:
                    self.warnings.append(
                        f"{where}: {section[:-1]} {ident!r} of {item.origin} differs from the one of {have.origin}; "
                        f"the later base's is used (override it here to choose)"
                    )
                if have is None or have.data != item.data:
                    state.items[section][ident] = item
        for ident, remover in base.removed.items():
            kept = next((s for s in ITEMS if ident in state.items[s]), None)
            if kept is not None:
                self.warnings.append(
                    f"{where}: {entry} removes {ident!r} but an earlier base keeps it, so it stays "
                    "(remove it here to drop it)"
                )
            state.removed.setdefault(ident, remover)
        for section in LISTS:
            for item in base.lists[section]:
                if all(have.data != item.data for have in state.lists[section]):
                    state.lists[section].append(item)
        state.header.update({k: v for k, v in base.header.items() if v is not None})
        if base.query_generation is not None:
            state.query_generation = merge_queries(state.query_generation, base.query_generation)


def _base_path(entry: str, folder: Path) -> tuple[Path | None, bool]:
    """A base as an `extends:` entry names it: a file beside the layer, or a shipped name."""
    p = Path(entry)
    candidate = p if p.is_absolute() else folder / p
    if candidate.is_file():
        return candidate, False
    if candidate.exists() or p.suffix or "/" in entry:
        return None, False
    from .library import library_path

    shipped = library_path(entry)
    return shipped, shipped is not None


def _flat(c: Constitution, label: str, place: Place) -> State:
    """A principle file without `extends:` as the merge sees it: every item written in it."""
    data = c.model_dump(mode="json")
    state = State(header={k: data[k] for k in ("name", "description", "version")})
    for section in ITEMS:
        for i, item in enumerate(data[section]):
            state.items[section][item["id"]] = Item(item, label, Place(place.path, place.node, (section, i)))
    for section in LISTS:
        state.lists[section] = [
            Item(x, label, Place(place.path, place.node, (section, i))) for i, x in enumerate(data[section])
        ]
    state.query_generation = data["query_generation"]
    return state


def _assemble(state: State, here: Place, fallback_name: str) -> Constitution:
    """The merged constitution; a problem only the whole shows (an example or probe naming a
    principle this layer removed) is reported at the layer's `remove:`."""
    data: dict = {"name": state.header.get("name") or fallback_name}
    for key in ("description", "version"):
        if state.header.get(key) is not None:
            data[key] = state.header[key]
    for section in ITEMS:
        data[section] = [item.data for item in state.items[section].values()]
    for section in LISTS:
        data[section] = [item.data for item in state.lists[section]]
    if state.query_generation is not None:
        data["query_generation"] = state.query_generation
    try:
        return Constitution.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            found = getattr((e.get("ctx") or {}).get("error"), "problems", None)
            pairs = [(tuple(e["loc"]) + p.loc, p.msg) for p in found] if found else [(tuple(e["loc"]), e["msg"])]
            for loc, msg in pairs:
                msg = msg.removeprefix("Value error, ")
                lines.append(
                    f"{here.at(('remove',))}: {field_name(loc)}: {msg} ({_where(state, loc)}; after the merge)"
                )
        raise ConstitutionError("\n".join(lines), problems=lines) from None


def _where(state: State, loc: tuple) -> str:
    if len(loc) >= 2 and loc[0] in LISTS and isinstance(loc[1], int) and loc[1] < len(state.lists[loc[0]]):
        return f"written at {state.lists[loc[0]][loc[1]].place.at(loc[2:])}"
    return "in the merged constitution"


def resolve_layers(path: str | Path, data=None, node=None, source: str | None = None) -> Layered:
    """A principle file with every layer under it merged. `data`/`node`: the file already parsed
    (an editor's unsaved text, named `source` in messages, its bases found beside `path`)."""
    path = Path(path)
    resolver = _Resolver(path.parent)
    source = source or str(path)
    state = resolver.resolve(path, source, (), data, node, source)
    if data is None:
        data, node = read_structured(path)
    top = Place(source, node)
    c = _assemble(state, top, path.stem)
    return Layered(c, resolver.layers, state, top, resolver.warnings)


def load_layered(path: str | Path) -> Layered:
    """`resolve_layers` on a path or a shipped name (which names its layer)."""
    from .loader import resolve_path

    resolved = resolve_path(path)
    return resolve_layers(resolved, source=str(path) if resolved != Path(path) else None)


def layer_records(path: str | Path) -> list[dict]:
    """Each layer of a principle file (itself alone, when it extends nothing), bases first: how it
    is named, what it calls itself and its content hash, as runs and dataset cards record them."""
    return load_layered(path).records()


def dump_effective(layered: Layered) -> str:
    """The merged constitution as YAML a run would read, each principle, trait and example under
    a comment naming the layer it comes from and the layers that changed its fields."""
    c = layered.constitution
    data = c.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    lines = [f"# The merged constitution of {layered.top.path}; its layers, bases first:"]
    lines += [f"#   {x.label} ({x.name}) {x.hash}" for x in layered.layers]
    out = ["\n".join(lines) + "\n", _yaml({"name": c.name, "version": c.version, **_pick(data, ("description",))})]
    origins = {s: list(layered.state.items[s].values()) for s in ITEMS} | {s: layered.state.lists[s] for s in LISTS}
    for key in ("principles", "traits", "few_shot", "comparison_examples", "query_generation", "probes"):
        if key not in data:
            continue
        if key not in origins:
            out.append(_yaml({key: data[key]}))
            continue
        out.append(f"{key}:\n")
        for item, origin in zip(data[key], origins[key]):
            out.append(f"# {origin.describe()}\n" + _yaml([item]))
    return "".join(out)


def _pick(data: dict, keys: tuple[str, ...]) -> dict:
    return {k: data[k] for k in keys if k in data}


def _yaml(value: object) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100)
