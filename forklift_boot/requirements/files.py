"""Reading the files a pallet leads to: regular files only, bounded in size, nesting and aliasing.

Pallets, packages and bundles come from outside (cloned repositories, USB sticks), so every file
they lead forklift-boot to read is read here: a FIFO must not block the read, a device or a huge
file must not fill memory, and a YAML alias bomb must not expand. Errors name the file and the
position, never the file's content.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError

from forklift_boot.errors import RequirementsError

# 500 times the largest file of a real pallet; a 4 MiB YAML file of one-line mappings still
# takes about 10 s and 400 MiB to parse (16 MiB: 60 s and 1.5 GiB).
MAX_FILE_BYTES = 4 * 1024 * 1024
# Deeper YAML is refused before it is built: the code that walks the values recurses per level.
# (go-yaml v3 stops at 10000 levels; no Forklift or compose file comes close to this limit.)
MAX_YAML_DEPTH = 100

# go-yaml v3's decode.go allowedAliasRatio: up to 400,000 decodes, 99% of them may come from
# expanding aliases; from 4,000,000 on, 10%; linear in between.
_ALIAS_RATIO_LOW = 400_000
_ALIAS_RATIO_HIGH = 4_000_000

# libyaml's parser when PyYAML has it (Debian's and PyPI's do).
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class UnreadableFile(Exception):
    """Why a file was not read, in words that never quote it; ``missing`` if it does not exist."""

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.missing = missing


def read_regular_file(
    path: Path, *, limit: int = MAX_FILE_BYTES, follow_symlinks: bool = True
) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    It is looked at before it is opened (no FIFO or device is ever opened), opened without
    blocking, looked at again on the open descriptor (it may have been replaced meanwhile), and
    read at most ``limit`` + 1 bytes (a size in ``stat`` may not be the truth).
    """
    nofollow = 0 if follow_symlinks else os.O_NOFOLLOW
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | nofollow
    try:
        _check_regular(os.stat(path, follow_symlinks=follow_symlinks), limit)
        fd = os.open(path, flags)
    except FileNotFoundError as err:
        raise UnreadableFile("no such file or directory", missing=True) from err
    except OSError as err:
        raise UnreadableFile(_os_reason(err, follow_symlinks)) from err
    try:
        _check_regular(os.fstat(fd), limit)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as err:
        raise UnreadableFile(_os_reason(err, follow_symlinks)) from err
    finally:
        os.close(fd)
    if left <= 0:
        raise UnreadableFile(_too_big(limit))
    return b"".join(chunks)


def _check_regular(info: os.stat_result, limit: int) -> None:
    mode = info.st_mode
    if stat.S_ISREG(mode):
        if info.st_size > limit:
            raise UnreadableFile(_too_big(limit))
        return
    if stat.S_ISDIR(mode):
        raise UnreadableFile("it is a directory")
    kind = (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a symlink"
        if stat.S_ISLNK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
    )
    raise UnreadableFile(f"it is {kind}, not a regular file")


def _too_big(limit: int) -> str:
    size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
    return f"it is larger than {size}, the limit for such files"


def _os_reason(err: OSError, follow_symlinks: bool) -> str:
    reason = (err.strerror or str(err)).lower()
    if err.errno == errno.ELOOP:
        return f"it is a symlink loop ({reason})" if follow_symlinks else "it is a symlink"
    return reason


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file; an empty file is an empty mapping."""
    try:
        text = read_regular_file(path).decode("utf-8")
    except UnreadableFile as err:
        if err.missing:
            raise RequirementsError(f"couldn't find {what} {path}", path) from err
        raise RequirementsError(f"couldn't read {what} {path}: {err}", path) from err
    except UnicodeDecodeError as err:
        raise RequirementsError(
            f"couldn't read {what} {path}: it is not UTF-8 text (byte {err.start})", path
        ) from err
    loader = _Loader(text)
    events: Any = loader  # PyYAML's parser methods are untyped
    try:
        node = next(compose_documents(loader), None)
        if node is not None and events.check_event(yaml.DocumentStartEvent):
            # PyYAML's get_single_node
            raise ComposerError(
                "expected a single document in the stream",
                node.start_mark,
                "but found another document",
                events.peek_event().start_mark,
            )
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        raise RequirementsError(
            f"couldn't parse {what} {path}: {describe_yaml_error(err)}", path
        ) from err
    except (ValueError, TypeError, AttributeError) as err:
        # PyYAML's constructors fail this way on explicit tags (`!!int abc`).
        raise RequirementsError(
            f"couldn't parse {what} {path}: invalid value for its explicit tag", path
        ) from err
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RequirementsError(
            f"couldn't parse {what} {path}: expected a mapping at the top level, "
            f"found {_yaml_type(data)}",
            path,
        )
    return data


def compose_documents(loader: yaml.SafeLoader) -> Iterator[yaml.Node]:
    """The node graph of each YAML document, as PyYAML's composer builds it, within the limits.

    Aliases are counted as go-yaml v3 counts them when it decodes (each one as every node it
    expands to), before anything is expanded: a document that needs more than go-yaml allows
    fails with go-yaml's words, "document contains excessive aliasing". Nesting, aliases
    expanded, is capped at MAX_YAML_DEPTH levels.
    """
    events: Any = loader  # PyYAML's parser methods are untyped
    if events.check_event(yaml.StreamStartEvent):
        events.get_event()
    while not events.check_event(yaml.StreamEndEvent):
        events.get_event()  # DocumentStartEvent
        node = _Composer(loader).node(0)[0]
        events.get_event()  # DocumentEndEvent
        yield node
    events.get_event()  # StreamEndEvent


class _Composer:
    """PyYAML's Composer.compose_node, counting what go-yaml's decoder would count."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader: Any = loader  # PyYAML's parser methods are untyped
        # anchor -> (node, decodes to expand it, levels it nests); None while it is being built
        self.anchors: dict[str, tuple[yaml.Node, tuple[int, int] | None]] = {}
        self.decodes = 0
        self.aliased = 0

    def node(self, depth: int) -> tuple[yaml.Node, int, int]:
        """The next node, the decodes it costs, and how many levels it nests (0: a scalar)."""
        loader = self.loader
        if loader.check_event(yaml.AliasEvent):
            event = loader.get_event()
            if event.anchor not in self.anchors:
                raise ComposerError(None, None, "found undefined alias", event.start_mark)
            target, cost = self.anchors[event.anchor]
            if cost is None:
                raise ComposerError(None, None, "recursive YAML alias", event.start_mark)
            decodes, levels = cost
            self._count(1 + decodes, decodes, event.start_mark)
            self._check_depth(depth + levels, event.start_mark)
            return target, 1 + decodes, levels
        event = loader.peek_event()
        anchor = event.anchor
        if anchor is not None and anchor in self.anchors:
            raise ComposerError(
                "found duplicate anchor; first occurrence",
                self.anchors[anchor][0].start_mark,
                "second occurrence",
                event.start_mark,
            )
        self._count(1, 0, event.start_mark)
        node: yaml.Node
        if loader.check_event(yaml.ScalarEvent):
            loader.get_event()
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            node = yaml.ScalarNode(
                tag, event.value, event.start_mark, event.end_mark, style=event.style
            )
            if anchor is not None:
                self.anchors[anchor] = (node, (1, 0))
            return node, 1, 0
        self._check_depth(depth + 1, event.start_mark)
        loader.get_event()
        mapping = isinstance(event, yaml.MappingStartEvent)
        kind = yaml.MappingNode if mapping else yaml.SequenceNode
        tag = event.tag
        if tag is None or tag == "!":
            tag = loader.resolve(kind, None, event.implicit)
        node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
        if anchor is not None:
            self.anchors[anchor] = (node, None)
        decodes, levels = 1, 1
        end = yaml.MappingEndEvent if mapping else yaml.SequenceEndEvent
        while not loader.check_event(end):
            item, item_decodes, item_levels = self.node(depth + 1)
            decodes, levels = decodes + item_decodes, max(levels, 1 + item_levels)
            if mapping:
                value, value_decodes, value_levels = self.node(depth + 1)
                decodes, levels = decodes + value_decodes, max(levels, 1 + value_levels)
                node.value.append((item, value))
            else:
                node.value.append(item)
        node.end_mark = loader.get_event().end_mark
        if anchor is not None:
            self.anchors[anchor] = (node, (decodes, levels))
        return node, decodes, levels

    def _count(self, decodes: int, aliased: int, mark: yaml.Mark) -> None:
        """decode.go unmarshal's check after ``decodes`` more, ``aliased`` of them by aliases."""
        self.decodes += decodes
        self.aliased += aliased
        if (
            self.aliased > 100
            and self.decodes > 1000
            and self.aliased / self.decodes > _allowed_alias_ratio(self.decodes)
        ):
            raise ComposerError(None, None, "document contains excessive aliasing", mark)

    @staticmethod
    def _check_depth(depth: int, mark: yaml.Mark) -> None:
        if depth > MAX_YAML_DEPTH:
            raise ComposerError(
                None, None, f"nesting exceeds the limit of {MAX_YAML_DEPTH} levels", mark
            )


def _allowed_alias_ratio(decodes: int) -> float:
    if decodes <= _ALIAS_RATIO_LOW:
        return 0.99
    if decodes >= _ALIAS_RATIO_HIGH:
        return 0.10
    return 0.99 - 0.89 * (decodes - _ALIAS_RATIO_LOW) / (_ALIAS_RATIO_HIGH - _ALIAS_RATIO_LOW)


def get_mapping(data: dict[str, Any], key: str, path: Path, what: str) -> dict[str, Any]:
    """``data[key]`` as a mapping; absent or null means empty."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequirementsError(
            f"couldn't parse {what} {path}: `{key}` must be a mapping, found {_yaml_type(value)}",
            path,
        )
    return value


def get_str_list(data: dict[str, Any], key: str, path: Path, what: str) -> list[str]:
    """``data[key]`` as a list of strings; absent or null means empty."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequirementsError(
            f"couldn't parse {what} {path}: `{key}` must be a list of strings", path
        )
    return value


def get_str(data: dict[str, Any], key: str, path: Path, what: str) -> str:
    """``data[key]`` as a string; absent or null means empty. Numbers are kept as written."""
    value = data.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RequirementsError(
            f"couldn't parse {what} {path}: `{key}` must be a string, found {_yaml_type(value)}",
            path,
        )
    return str(value)


def get_bool(data: dict[str, Any], key: str, path: Path, what: str) -> bool:
    value = data.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequirementsError(
            f"couldn't parse {what} {path}: `{key}` must be true or false", path
        )
    return value


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """What is wrong and where, without the file's text (PyYAML's message quotes the line)."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{err.problem or err.context or 'invalid YAML'}{where}"
    if isinstance(err, yaml.reader.ReaderError):
        return f"{err.reason} at byte {err.position}"
    return "invalid YAML"


def _yaml_type(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__
