"""JSON from outside (camera paths, render server messages) with a bounded nesting depth. The
standard parser recurses once per level, so a document nested deep enough ends in a
RecursionError (a crash rather than an answer); one nested deeper than its valid form can be is
refused before it is parsed. Standard library only (the add-on loads serve_protocol, which uses it)."""
from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from .errors import first_line

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def nesting(data: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text `data` (brackets inside
    strings do not count)."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    return max(accumulate(1 if c in b"[{" else -1 for c in brackets), default=0)


def loads(data: bytes, max_depth: int) -> Any:
    """The value of the UTF-8 JSON text `data`; ValueError (a one-line reason) for bytes that are
    not UTF-8, text that is not JSON, and JSON nested deeper than `max_depth`."""
    data = bytes(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start})") from None
    depth = nesting(data)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep, at most {max_depth} allowed")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:   # e.g. an integer of more than 4300 digits
        raise ValueError(first_line(e)) from None


def shown(value: Any, limit: int = 40) -> str:
    """A value read from outside as an error message quotes it: its repr, cut to `limit`
    characters (it may be a megabyte of text)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
