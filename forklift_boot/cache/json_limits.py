"""Parsing JSON that forklift-boot cannot trust (caches, registries, archives), nesting bounded."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "JsonTooDeepError", "load_json"]

# Manifests, indexes, configs and index.json nest 5 levels or so; annotations and other
# tools' fields a few more. Deeper is no image document, and would make json (and every
# recursive walk of the result: json.dumps, comparisons) fail with RecursionError.
MAX_JSON_DEPTH = 64


class JsonTooDeepError(ValueError):
    """A document nests arrays and objects deeper than MAX_JSON_DEPTH.

    A ValueError like json's own errors, so every ``except ValueError`` that reports invalid
    JSON reports this one too, as one line.
    """

    def __init__(self) -> None:
        super().__init__(f"it nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")


def load_json(data: bytes | str) -> Any:
    """``json.loads`` that refuses a document nested deeper than MAX_JSON_DEPTH.

    json's own parser stops at the interpreter's recursion limit; that RecursionError and
    any depth above the cap become JsonTooDeepError.
    """
    try:
        document = json.loads(data)
    except RecursionError:
        raise JsonTooDeepError from None
    # Nesting can't go deeper than the brackets opened: most documents need no walk.
    if isinstance(data, str):
        opened = data.count("[") + data.count("{")
    else:
        opened = data.count(b"[") + data.count(b"{")
    if opened > MAX_JSON_DEPTH:
        _check_depth(document)
    return document


def _check_depth(document: object) -> None:
    # Iterative, so a document just under the interpreter's limit can't exhaust the stack here.
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise JsonTooDeepError
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
