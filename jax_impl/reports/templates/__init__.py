"""The HTML, CSS and JS of the offline pages (atlas, circuit reports) as package data files.

A template marks each place a value goes as `@@NAME@@`; `fill` puts the values in (plain text replacement:
the CSS and JS keep their own braces, and a value is never scanned for markers again).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_MARKER = re.compile(r"@@([A-Z]+)@@")


@cache
def template(name: str) -> str:
    """The text of jax_impl/reports/templates/NAME (UTF-8)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def fill(text: str, **values: str) -> str:
    """text with every `@@NAME@@` replaced by values[NAME]; KeyError for a marker without a value, ValueError
    for a value without a marker (a template and its caller out of step)."""
    used = set(_MARKER.findall(text))
    if set(values) - used:
        raise ValueError(f"no marker for {sorted(set(values) - used)} in the template")
    return _MARKER.sub(lambda m: values[m.group(1)], text)
