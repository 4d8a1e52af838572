"""One layer file: what it may hold, and how its own removals, overrides and additions apply to
what its bases merged into (see layers.py for the whole merge)."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml
from pydantic import Field, ValidationError, field_validator

from cai.core.files import field_name, line_of

from .schema import (
    ComparisonExample,
    FewShot,
    Ident,
    Principle,
    Probe,
    QueryGeneration,
    Text,
    Trait,
    _Strict,
)

ITEMS = ("principles", "traits")
LISTS = ("few_shot", "comparison_examples", "probes")
FIELDS = {
    "principles": ("critique", "revision", "comparison", "weight", "tags"),
    "traits": ("text", "questions", "comparison", "weight", "tags"),
}


class Override(_Strict):
    """New values for fields of an inherited principle or trait; the fields left out stay."""

    id: Ident
    critique: Text | None = None
    revision: Text | None = None
    comparison: Text | None = None
    weight: float | None = Field(None, gt=0)
    tags: list[Text] | None = None
    text: Text | None = None
    questions: list[Text] | None = Field(None, min_length=1)

    @property
    def given(self) -> list[str]:
        return [k for k in type(self).model_fields if k != "id" and k in self.model_fields_set]


class LayerFile(_Strict):
    """A principle file with `extends:`: what it adds to, changes in and removes from its bases."""

    name: Text | None = None
    description: Text | None = None
    version: Text | None = None
    extends: list[Text] = Field(min_length=1, description="Base files or shipped names, merged in this order.")
    remove: list[Ident] = Field(default_factory=list)
    override: list[Override] = Field(default_factory=list)
    principles: list[Principle] = Field(default_factory=list)
    traits: list[Trait] = Field(default_factory=list)
    few_shot: list[FewShot] = Field(default_factory=list)
    comparison_examples: list[ComparisonExample] = Field(default_factory=list)
    query_generation: QueryGeneration | None = None
    probes: list[Probe] = Field(default_factory=list)

    @field_validator("extends", mode="before")
    @classmethod
    def _one_or_more(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


def is_layered(data: object) -> bool:
    return isinstance(data, dict) and "extends" in data


@dataclass(frozen=True)
class Place:
    """Where something was written: a file, its node tree and the location inside it."""

    path: str
    node: yaml.Node | None
    loc: tuple = ()

    def at(self, rest: tuple = ()) -> str:
        return f"{self.path}:{line_of(self.node, self.loc + tuple(rest))}"


@dataclass
class Item:
    """A principle, trait or list entry on its way through the merge, and where it came from."""

    data: dict
    origin: str  # the label of the layer that added it
    place: Place
    changed: list[tuple[str, tuple[str, ...], Place]] = field(default_factory=list)  # (layer, fields, where)

    def describe(self) -> str:
        out = f"from {self.origin}"
        for label, fields, _ in self.changed:
            out += f"; {', '.join(fields)} from {label}"
        return out


@dataclass
class State:
    header: dict = field(default_factory=dict)
    items: dict[str, dict[str, Item]] = field(default_factory=lambda: {k: {} for k in ITEMS})
    lists: dict[str, list[Item]] = field(default_factory=lambda: {k: [] for k in LISTS})
    query_generation: dict | None = None
    removed: dict[str, str] = field(default_factory=dict)  # id → the layer that removed it


def merge_queries(base: dict | None, own: dict) -> dict:
    if base is None:
        return own
    return {
        "instructions": own.get("instructions") or base.get("instructions"),
        "topics": [*base.get("topics", []), *own.get("topics", [])],
        "examples": [*base.get("examples", []), *own.get("examples", [])],
    }


def apply_layer(state: State, layer: LayerFile, label: str, here: Place, problems: list) -> None:
    """This layer's own removals, overrides and additions, each problem at its line."""
    node = here.node

    def report(loc: tuple, msg: str) -> None:
        problems.append((line_of(node, loc), f"{field_name(loc)}: {msg}"))

    def section_of(ident: str) -> str | None:
        return next((s for s in ITEMS if ident in state.items[s]), None)

    removed_here: set[str] = set()
    for i, ident in enumerate(layer.remove):
        section = section_of(ident)
        if ident in removed_here:
            report(("remove", i), f"{ident!r} is listed twice")
        elif section is None:
            report(("remove", i), f"no base has a principle or trait with id {ident!r}")
        else:
            del state.items[section][ident]
            state.removed[ident] = label
            removed_here.add(ident)
            for kind in LISTS:  # what was written for it goes with it
                state.lists[kind] = [x for x in state.lists[kind] if tied_to(x.data) != ident]
    seen: set[str] = set()
    for i, o in enumerate(layer.override):
        section = section_of(o.id)
        if o.id in seen:
            report(("override", i, "id"), f"{o.id!r} is overridden twice in this file")
            continue
        seen.add(o.id)
        if section is None:
            why = "this file removes it" if o.id in removed_here else "no base has a principle or trait with that id"
            report(("override", i, "id"), f"cannot override {o.id!r}: {why}")
            continue
        if not o.given:
            report(("override", i), "names no field to change")
            continue
        wrong = [k for k in o.given if k not in FIELDS[section]]
        if wrong:
            report(("override", i, wrong[0]), f"a {section[:-1]} has no field {wrong[0]!r}")
            continue
        empty = [k for k in o.given if getattr(o, k) is None]
        if empty:
            report(("override", i, empty[0]), "needs a value (to drop the whole item, list its id under remove:)")
            continue
        item = state.items[section][o.id]
        merged = {**item.data, **o.model_dump(mode="json", include=set(o.given))}
        model = Principle if section == "principles" else Trait
        try:
            model.model_validate(merged)
        except ValidationError as err:
            first = err.errors()[0]
            msg = str((first.get("ctx") or {}).get("error") or first["msg"]).removeprefix("Value error, ")
            report(("override", i), f"{o.id!r} after this override: {msg}")
            continue
        item.data = merged
        item.changed.append((label, tuple(o.given), Place(here.path, node, ("override", i))))
    for section in ITEMS:
        for i, new in enumerate(getattr(layer, section)):
            if new.id in state.items["principles"] or new.id in state.items["traits"]:
                have = section_of(new.id)
                origin = state.items[have][new.id].origin
                report(
                    (section, i, "id"),
                    f"{new.id!r} is already in {origin}: change it under override:, or list it under remove: first",
                )
                continue
            state.items[section][new.id] = Item(
                new.model_dump(mode="json"), label, Place(here.path, node, (section, i))
            )
    for section in LISTS:
        for i, x in enumerate(getattr(layer, section)):
            state.lists[section].append(Item(x.model_dump(mode="json"), label, Place(here.path, node, (section, i))))
    for key in ("name", "description", "version"):
        if getattr(layer, key) is not None:
            state.header[key] = getattr(layer, key)
    if layer.query_generation is not None:
        state.query_generation = merge_queries(state.query_generation, layer.query_generation.model_dump(mode="json"))


def tied_to(data: dict) -> str | None:
    """The principle or trait a few-shot example, comparison example or probe was written for."""
    return data.get("principle_id") or data.get("principle")
