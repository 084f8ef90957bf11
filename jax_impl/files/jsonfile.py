"""JSON as monosem reads it: one parser (`read` for a file, `parse` for JSON inside another file) and one set of
typed accessors (`Node`), so that every value a reader takes from a JSON document is checked before use and every
problem is one line naming the file and the key:

    PATH: key 'apply_b_dec_to_input' is 'false', expected true or false

Parsing refuses a file over a size cap (MAX_BYTES), text that is not UTF-8, nesting deeper than MAX_DEPTH,
the constants NaN, Infinity and -Infinity (not JSON, though Python writes them), numbers that overflow a float
(1e400 would parse as inf) and integers beyond 64 bits (naming the key: no value read here is one). The depth
is measured on the raw text before the parser sees it, without recursion: json's own parser raises
RecursionError at about 1000 levels, and a deep document would reach this
package's recursive code (config comparisons, json.dumps of a record) after it.

The accessors check types (a bool is never an int, a string "false" is never a bool, an int is a number),
ranges and choices; what a value means beyond that (a config's rules) stays with the dataclass that owns it.
Every JSON file jax_impl reads goes through here: a run's manifest (rundir), a SAELens cfg.json (saelens), a
synthetic set's config (synthetic), a sweep's metrics, config and done files (sweep), a checkpoint's metadata
(checkpoints), a causal map (causal.runner) and a feature atlas (atlas). task.py's JSON cells are checked where
they are parsed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from jax_impl.errors import UserError

MAX_BYTES = 64 << 20  # a feature atlas of 2048 features is ~2.5 MB; the other documents are a few KB
MAX_DEPTH = 64  # the deepest document written here (a causal map) nests 7 levels
INT64 = (-(2**63), 2**63 - 1)  # an integer from a file is at least within what numpy and JAX can hold
_SCAN_CHUNK = 1 << 20  # bytes the depth scan looks at at once (its memory is a few times this)
_TOKEN = np.isin(np.arange(256), [0x22, 0x5B, 0x5D, 0x7B, 0x7D])  # " [ ] { }
_STEP = np.zeros(256, np.int64)
_STEP[[0x5B, 0x7B]], _STEP[[0x5D, 0x7D]] = 1, -1
_LARGE_NUMBER = re.compile(rb"[eE]\+?\d{3}|\d{19}")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_\-]+")


class JSONFileError(UserError, ValueError):
    """A JSON document that cannot be read or holds a value of the wrong type or range (one line naming the file
    and the key). A ValueError too, as json's own errors are, so a caller that treats unreadable JSON as a
    ValueError keeps doing so."""


# --------------------------------------------------------------------------- parsing


def read(path: Path | str, *, unreadable: str = "not readable JSON", hint: str = "",
         max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Node:
    """The JSON document in `path` as a Node. JSONFileError `PATH: {unreadable} (why){; hint}` when the file
    cannot be read, is larger than max_bytes, is not UTF-8 JSON or nests deeper than max_depth; the Node's
    accessors add `hint` to their own errors."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise JSONFileError(_message(path, unreadable, e.strerror or type(e).__name__, hint)) from None
    if len(data) > max_bytes:
        raise JSONFileError(_message(path, unreadable, f"larger than {max_bytes} bytes, the most a JSON file read "
                                     "here may have", hint))
    return parse(data, str(path), unreadable=unreadable, hint=hint, max_depth=max_depth)


def parse(data: bytes | str, where: str, *, unreadable: str = "not readable JSON", hint: str = "",
          max_depth: int = MAX_DEPTH) -> Node:
    """The JSON document in `data` (UTF-8 bytes or text) as a Node named `where` in messages (a file, or e.g.
    `FILE: metadata` for JSON inside another format). JSONFileError as for `read`."""
    if isinstance(data, str):
        raw, text = data.encode("utf-8", "surrogatepass"), data
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise JSONFileError(_message(where, unreadable, f"{type(data).__name__}, not JSON text", hint))
    else:
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONFileError(_message(where, unreadable, f"not UTF-8 text: byte {raw[e.start]:#04x} at offset "
                                         f"{e.start}", hint)) from None
    if nesting_depth(raw, limit=max_depth) > max_depth:
        raise JSONFileError(_message(where, unreadable, f"nested deeper than {max_depth} levels", hint))
    try:
        # Only a number of 19 digits or more, or with a 3-digit exponent, can overflow a float or 64 bits: the
        # (slower) checks that refuse one run where the text has such a number (or a string that looks like one).
        large = _LARGE_NUMBER.search(raw) is not None
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float if large else None)
    except ValueError as e:  # json.JSONDecodeError, and the two hooks' refusals
        raise JSONFileError(_message(where, unreadable, _first_line(e), hint)) from None
    node = Node(value, where, "", hint)
    if large:
        _check_integers(node)
    return node


def _check_integers(root: Node) -> None:
    """JSONFileError naming the first integer of the document beyond 64 bits (no value read here is one, and a
    float field given one could not convert it); a loop over the document, no recursion."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node.value, dict):
            stack.extend(node.child(k, v) for k, v in node.value.items())
        elif isinstance(node.value, list):
            stack.extend(node.child(i, v) for i, v in enumerate(node.value))
        elif isinstance(node.value, int) and not isinstance(node.value, bool) and not INT64[0] <= node.value <= INT64[1]:
            node.fail("a number within 64 bits")


def nesting_depth(data: bytes, limit: int | None = None) -> int:
    """How deep `[` and `{` nest in JSON text (UTF-8), brackets inside strings not counted, measured by a loop over
    chunks of the bytes, so any depth is measured without recursion. With `limit`: text with no more opening
    brackets than that is not scanned (the count, an upper bound <= limit, is returned), and the scan stops at
    the first chunk that goes deeper than limit (returning a depth > limit).

    Escapes are removed first, left to right as a JSON parser reads them (an escaped backslash, then an escaped
    quote); every quote left opens or closes a string. UTF-8 multi-byte characters never hold these bytes."""
    opening = data.count(b"[") + data.count(b"{")
    if limit is not None and opening <= limit:
        return opening
    plain = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    inside, depth, deepest = 0, 0, 0
    for start in range(0, len(plain), _SCAN_CHUNK):
        chunk = np.frombuffer(plain, np.uint8, count=min(_SCAN_CHUNK, len(plain) - start), offset=start)
        tokens = chunk[_TOKEN[chunk]]  # the quotes and brackets, in order
        if tokens.size == 0:
            continue
        in_string = (np.cumsum(tokens == 0x22, dtype=np.int64) + inside) % 2  # after each token
        levels = np.cumsum(_STEP[tokens] * (in_string == 0)) + depth  # a quote's own step is 0
        deepest = max(deepest, int(levels.max()))
        if limit is not None and deepest > limit:
            return deepest
        inside, depth = int(in_string[-1]), int(levels[-1])
    return deepest


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for a float")
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if "Exceeds the limit" in text and "integer string conversion" in text:
        return "an integer of more than 4300 digits"
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _message(where: str | Path, unreadable: str, why: str, hint: str) -> str:
    return f"{where}: {unreadable} ({why})" + (f"; {hint}" if hint else "")


# --------------------------------------------------------------------------- typed access

_MISSING: Any = type("Missing", (), {"__repr__": lambda self: "missing"})()


def describe(value: Any) -> str:
    """A value as a message shows it: JSON's spelling for true/false/null, strings quoted, long things short."""
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            text = str(value)
        except ValueError:  # more digits than Python converts (the parser refuses those)
            return "an integer of thousands of digits"
        return text if len(text) <= 30 else f"an integer of {len(text.lstrip('-'))} digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    return type(value).__name__


def _key_part(name: str | int) -> str:
    if isinstance(name, int):
        return f"[{name}]"
    return f".{name}" if _IDENTIFIER.fullmatch(name) else f"[{json.dumps(name)[:42]}]"


@dataclass(frozen=True)
class Node:
    """One value of a JSON document: `value` (plain Python: dict, list, str, int, float, bool, None), the
    document's name `where` (its file) and the value's `key` in it (`a.b[2].c`; "" for the whole document).
    The accessors return the plain value when it has the type and range asked for, else raise JSONFileError
    `WHERE: key 'KEY' is VALUE, expected ...; HINT`."""

    value: Any
    where: str
    key: str = ""
    hint: str = ""

    # -- errors

    def problem(self, expected: str) -> str:
        subject = f"key '{self.key}' is" if self.key else "the document is"
        return f"{self.where}: {subject} {describe(self.value)}, expected {expected}" + (
            f"; {self.hint}" if self.hint else "")

    def fail(self, expected: str) -> NoReturn:
        raise JSONFileError(self.problem(expected))

    @property
    def present(self) -> bool:
        return self.value is not _MISSING

    @property
    def is_null(self) -> bool:
        return self.value is None

    # -- containers

    def child(self, name: str | int, value: Any) -> Node:
        key = (self.key + _key_part(name)).lstrip(".")
        return Node(value, self.where, key, self.hint)

    def fields(self, known: Collection[str] | None = None) -> dict[str, Node]:
        """An object's members as Nodes; with `known`, a key outside it is refused."""
        if not isinstance(self.value, dict):
            self.fail("an object" + (f" with keys {sorted(known)}" if known else ""))
        if known is not None:
            unknown = sorted(set(self.value) - set(known))
            if unknown:
                shown = ", ".join(json.dumps(k)[:42] for k in unknown[:5])
                self.fail(f"an object without {shown} (keys known here: {', '.join(sorted(known))})")
        return {k: self.child(k, v) for k, v in self.value.items()}

    def object(self, known: Collection[str] | None = None) -> dict[str, Any]:
        """An object's plain value, checked as `fields` checks it."""
        self.fields(known)
        return self.value

    def get(self, name: str, default: Any = _MISSING) -> Node:
        """Member `name` of an object (the object itself is checked); absent: a Node holding `default`, or one
        that every accessor reports as missing."""
        if not isinstance(self.value, dict):
            self.fail("an object")
        return self.child(name, self.value.get(name, default))

    def __getitem__(self, name: str) -> Node:
        return self.get(name)

    def elements(self, *, min_items: int = 0, max_items: int | None = None) -> list[Node]:
        """A list's items as Nodes."""
        v = self.value
        if not isinstance(v, list) or len(v) < min_items or (max_items is not None and len(v) > max_items):
            if max_items is not None:
                self.fail(f"a list of {min_items} to {max_items} items")
            self.fail("a list" + (f" of at least {min_items} item{'s' if min_items != 1 else ''}" if min_items else ""))
        return [self.child(i, x) for i, x in enumerate(v)]

    def items(self) -> Iterator[tuple[str, Node]]:
        yield from self.fields().items()

    # -- scalars

    def boolean(self, *, null: bool = False) -> bool | None:
        if null and self.value is None:
            return None
        if not isinstance(self.value, bool):
            self.fail("true or false" + " or null" * null)
        return self.value

    def integer(self, lo: int | None = None, hi: int | None = None, *, null: bool = False) -> int | None:
        """An int (a bool is not one) in lo..hi; by default within 64 bits."""
        if null and self.value is None:
            return None
        lo_, hi_ = INT64[0] if lo is None else lo, INT64[1] if hi is None else hi
        v = self.value
        if not isinstance(v, int) or isinstance(v, bool) or not lo_ <= v <= hi_:
            self.fail(_integer_phrase(lo, hi) + " or null" * null)
        return v

    def number(self, lo: float | None = None, hi: float | None = None, *, above: float | None = None,
               below: float | None = None, null: bool = False) -> int | float | None:
        """A finite int or float (a bool is not one), as the document holds it: lo <= it <= hi, above < it < below."""
        if null and self.value is None:
            return None
        v = self.value
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if ok:
            try:
                ok = (math.isfinite(v) and (lo is None or v >= lo) and (hi is None or v <= hi)
                      and (above is None or v > above) and (below is None or v < below))
            except OverflowError:  # an int too large for a float
                ok = False
        if not ok:
            self.fail(_number_phrase(lo, hi, above, below) + " or null" * null)
        return v

    def string(self, choices: Collection[str] | None = None, *, null: bool = False) -> str | None:
        if null and self.value is None:
            return None
        if not isinstance(self.value, str) or (choices is not None and self.value not in choices):
            expected = "a string" if choices is None else "one of " + ", ".join(repr(c) for c in choices)
            self.fail(expected + " or null" * null)
        return self.value


def _integer_phrase(lo: int | None, hi: int | None) -> str:
    if lo == 1 and hi is None:
        return "a positive integer"
    if lo == 0 and hi is None:
        return "a non-negative integer"
    if lo == 1:
        return f"a positive integer (at most {hi})"
    if lo is None and hi is None:
        return "an integer (within 64 bits)"
    return f"an integer in {INT64[0] if lo is None else lo}..{INT64[1] if hi is None else hi}"


def _number_phrase(lo: float | None, hi: float | None, above: float | None, below: float | None) -> str:
    if lo is not None and hi is not None:
        return f"a finite number in [{lo:g}, {hi:g}]"
    if above is not None and below is not None:
        return f"a finite number in ({above:g}, {below:g})"
    bounds = [(">=", lo), (">", above), ("<=", hi), ("<", below)]
    parts = [f"{op} {bound:g}" for op, bound in bounds if bound is not None]
    return "a finite number" + (" " + " and ".join(parts) if parts else "")


def number(x: float | None, digits: int = 4) -> float | None:
    """x rounded to `digits` for a JSON document; None for None, NaN and inf (JSON has no NaN)."""
    return None if x is None or not np.isfinite(x) else round(float(x), digits)
