"""Prompt templates: Jinja files inside the packages, loaded with importlib.resources.

`StrictUndefined` turns a misspelt variable into an error at render time instead of a prompt
with a silent hole in it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import jinja2


@cache
def _environment(package: str) -> jinja2.Environment:
    def load(name: str) -> str:
        return (resources.files(package) / "templates" / name).read_text(encoding="utf-8")

    return jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(package: str, name: str, **variables) -> str:
    return _environment(package).get_template(name).render(**variables).strip()
