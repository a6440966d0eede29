"""Variable substitution in compose values (compose-go interpolation/ and template/template.go)."""

from __future__ import annotations

import logging
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from forklift_boot.requirements.compose.model import ComposeError

log = logging.getLogger(__name__)


class TemplateError(Exception):
    pass


# compose-go's messages quote the template, the variable and its `:?` text: here they name the
# key and the file only, as a value may be a secret (an env file full of them, or a `$` in a
# password read as a variable).


class _InvalidTemplate(TemplateError):
    def __init__(self) -> None:
        super().__init__("invalid template")


class _MissingVariable(TemplateError):
    def __init__(self) -> None:
        super().__init__("required variable is missing a value")


def interpolate(value: Any, path: str, env: Mapping[str, str], file: Path) -> Any:
    """Substitute variables in every string value; keys are left alone."""
    if isinstance(value, str):
        try:
            return substitute(value, env, f"{path} of compose file {file}")
        except _InvalidTemplate as err:
            raise ComposeError(
                f"invalid interpolation format for {path} "
                "(you may need to escape any $ with another $)"
            ) from err
        except TemplateError as err:
            raise ComposeError(f"error while interpolating {path}: {err}") from err
    if isinstance(value, dict):
        return {
            k: interpolate(v, f"{path}.{k}" if path else k, env, file) for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(item, f"{path}.[]", env, file) for item in value]
    return value


_NAME_START = frozenset(string.ascii_letters + "_")
_NAME_CHARS = _NAME_START | frozenset(string.digits)


def substitute(template: str, env: Mapping[str, str], where: str) -> str:
    """Expand ``$$``, ``$NAME``, ``${NAME}`` and ``${NAME<op>word}``; any other ``$`` is kept.

    ``where`` names the value in warnings (the key and its file).
    """
    out: list[str] = []
    pos = 0
    while (dollar := template.find("$", pos)) != -1:
        out.append(template[pos:dollar])
        follower = template[dollar + 1 : dollar + 2]
        if follower == "$":
            out.append("$")
            pos = dollar + 2
        elif follower in _NAME_START:
            end = _name_end(template, dollar + 1)
            out.append(_lookup(template[dollar + 1 : end], env, where))
            pos = end
        elif follower == "{":
            text, pos = _substitute_braced(template, dollar, env, where)
            out.append(text)
        else:
            out.append("$")
            pos = dollar + 1
    out.append(template[pos:])
    return "".join(out)


def _name_end(text: str, start: int) -> int:
    end = start
    if end < len(text) and text[end] in _NAME_START:
        while end < len(text) and text[end] in _NAME_CHARS:
            end += 1
    return end


def _substitute_braced(
    template: str, dollar: int, env: Mapping[str, str], where: str
) -> tuple[str, int]:
    """The ``${...}`` at ``dollar``: its expansion and where the text after it starts."""
    name_end = _name_end(template, dollar + 2)
    name = template[dollar + 2 : name_end]
    line_end = template.find("\n", name_end)
    line_end = len(template) if line_end == -1 else line_end
    if name and template.startswith("}", name_end):
        return _lookup(name, env, where), name_end + 1
    operators = (":-", ":+", ":?", "-", "+", "?")
    operator = next((op for op in operators if template.startswith(op, name_end)), "")
    # compose-go's pattern `(.*)}` is greedy, so its match runs to the last `}` of the line ...
    close = template.rfind("}", name_end + len(operator), line_end) if name and operator else -1
    if close == -1:
        raise _InvalidTemplate
    match = template[dollar : close + 1]
    # ... then it cuts the match at the brace that closes `${` and expands the rest on its own.
    first = _first_closing_brace(match)
    body, rest = (match[2:first], match[first + 1 :]) if first != -1 else (match[2:-1], "")
    value = _apply_operator(name, operator, body[len(name) + len(operator) :], env, where)
    return value + substitute(rest, env, where), close + 1


def _first_closing_brace(text: str) -> int:
    """template.go getFirstBraceClosingIndex, including its skip of the character after `{`."""
    depth, index = 0, 0
    while index < len(text):
        if text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
        if text[index] == "{":
            depth += 1
            index += 1
        index += 1
    return -1


def _apply_operator(name: str, operator: str, word: str, env: Mapping[str, str], where: str) -> str:
    # compose-go expands the word before it looks at the variable, so `${SET:-${X:?}}` fails
    # and `${SET:-$UNSET}` warns even though the default is not used.
    word = substitute(word, env, where)
    value = env.get(name)
    if operator in (":-", "-"):
        use_word = value is None or (operator == ":-" and value == "")
        return word if use_word else str(value)
    if operator in (":+", "+"):
        use_word = value is not None and (operator == "+" or value != "")
        return word if use_word else (value or "")
    if value is None or (operator == ":?" and value == ""):
        raise _MissingVariable
    return value


def _lookup(name: str, env: Mapping[str, str], where: str) -> str:
    value = env.get(name)
    if value is None:
        log.warning("A variable in %s is not set. Defaulting to a blank string.", where)
        return ""
    return value
