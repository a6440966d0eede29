"""Env files for `include`: `KEY=value` statements as compose-go's dotenv/ reads them."""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Mapping
from pathlib import Path

from forklift_boot.requirements.compose.interpolation import TemplateError, substitute
from forklift_boot.requirements.compose.model import ComposeError
from forklift_boot.requirements.files import UnreadableFile, read_regular_file


def read_env_files(paths: list[Path], env: Mapping[str, str]) -> dict[str, str]:
    """dotenv.GetEnvFromFile: later files win; values may use the environment and earlier files."""
    values: dict[str, str] = {}
    for path in paths:
        if not path.exists():
            raise ComposeError(f"couldn't find env file: {path}")
        if path.is_dir():
            raise ComposeError(f"{path} is a directory")
        try:
            text = read_regular_file(path).decode("utf-8").removeprefix("\ufeff")
            values.update(_parse_env_file(text, ChainMap(dict(env), values), path))
        except UnicodeDecodeError as err:
            raise ComposeError(
                f"failed to read {path}: it is not UTF-8 text (byte {err.start})"
            ) from err
        except (UnreadableFile, TemplateError, ComposeError) as err:
            raise ComposeError(f"failed to read {path}: {err}") from err
    return values


_ENV_EXPORT = re.compile(r"export\s+")
_ENV_SPACE = " \t\v\f\r\x85\xa0"  # dotenv isSpace: white space but not a line break
_ENV_ESCAPE = re.compile(r'\\(?:[abcfnrtv$"\\]|0[0-9]{0,3})')
_ENV_ESCAPED = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    '"': '"', "\\": "\\", "$": "$$",  # `\$` is a literal `$`, written `$$` for the expansion
}  # fmt: skip


def _parse_env_file(text: str, lookup: Mapping[str, str], file: Path) -> dict[str, str]:
    """`KEY=value` statements with `export`, comments, quotes and variable expansion."""
    values: dict[str, str] = {}
    expand_with = ChainMap(dict(lookup), values)  # dotenv looks in the environment first
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return values
        if text[pos] == "#":
            pos = text.find("\n", pos)
            if pos == -1:
                return values
            continue
        if _ENV_EXPORT.match(text, pos):
            pos += len("export")
            while pos < len(text) and text[pos] in _ENV_SPACE:
                pos += 1
        key, pos, inherited = _env_key(text, pos)
        while pos < len(text) and text[pos] in _ENV_SPACE:
            pos += 1
        if inherited:  # a bare `KEY` takes its value from the environment
            if key in lookup:
                values[key] = lookup[key]
            continue
        values[key], pos = _env_value(text, pos, expand_with, f"{key} of env file {file}")


def _env_key(text: str, start: int) -> tuple[str, int, bool]:
    """The key at ``start``, where its value starts, and whether it has no value."""
    for index in range(start, len(text)):
        char = text[index]
        if char in "=:\n":
            key = text[start:index].rstrip()
            if " " in key:
                raise ComposeError(f"line {_line_of(text, index)}: key cannot contain a space")
            return key, index + 1, char == "\n"
        if not (char in _ENV_SPACE or char in "_.-[]" or char.isalnum()):
            # compose-go quotes the line here; it may be a secret, an env_file can be any file.
            raise ComposeError(
                f"line {_line_of(text, index)}: unexpected character in variable name"
            )
    return "", start, False  # compose-go then reads the whole statement as the value of ""


def _env_value(text: str, start: int, env: Mapping[str, str], where: str) -> tuple[str, int]:
    quote = text[start : start + 1]
    if quote not in ("'", '"'):
        end = text.find("\n", start)
        end = len(text) if end == -1 else end
        value = text[start:end].split(" #", 1)[0].rstrip()
        return substitute(value, env, where), end + 1
    chars: list[str] = []
    escaped = False
    for index in range(start + 1, len(text)):
        char = text[index]
        if char == quote and not escaped:
            value = "".join(chars)
            if quote == '"':
                value = substitute(_ENV_ESCAPE.sub(_unescape, value), env, where)
            return value, index + 1
        if char == "\\" and not escaped:
            escaped = True
            continue
        if escaped and char != quote:
            chars.append("\\")
        escaped = False
        chars.append(char)
    raise ComposeError(f"line {_line_of(text, start)}: unterminated quoted value")


def _unescape(match: re.Match[str]) -> str:
    escape = match.group()
    if escape[1] != "0":
        return _ENV_ESCAPED.get(escape[1], escape)  # `\c` is not a Go escape and stays
    digits = escape[2:]  # `\0ddd` is an octal byte
    if len(digits) == 3 and all(d in "01234567" for d in digits) and int(digits, 8) < 256:
        return chr(int(digits, 8))
    return escape


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1
