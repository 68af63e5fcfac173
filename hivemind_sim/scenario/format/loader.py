"""Scenario files in, `Scenario` models out, with every problem reported as `FILE:LINE: key.path: message`.

The YAML text is composed into a node tree (which knows each key's line) and constructed into
plain data; ``--set key.path=value`` overrides edit that data; pydantic validates it. Each
validation error's location is walked through the model types (to drop pydantic's union tags
and to know which keys were valid there, for "did you mean") and through the node tree (for the
line). A value that came from an override is reported against its `--set`, not a line.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .schema import Loc, PeerGroup, Scenario, ScenarioProblems, suggest
from .units import parse_duration

M = TypeVar("M", bound=BaseModel)

_DISCRIMINATORS = ("distribution", "action")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a scenario."""

    where: str
    """`FILE:LINE`, or `--set key.path=value` for an override."""
    path: str
    """Dotted key path (`peers.0.churn.session`); empty for the whole file."""
    message: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}" if self.path else f"{self.where}: {self.message}"


class ScenarioError(Exception):
    """An invalid scenario; the message lists every problem found, one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read, override (`key.path=value` strings) and validate a scenario file; raises ``ScenarioError``."""
    path = Path(path)
    return parse_scenario(read_text(path), filename=str(path), base_dir=path.parent, overrides=overrides)


def read_text(path: Path) -> str:
    """A YAML file's text; ``ScenarioError`` naming the file if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError([Problem(str(path), "", f"cannot read the file: {error}")]) from None


def parse_model(text: str, model: type[M], *, filename: str) -> M:
    """A YAML document validated as ``model`` (a schema model other than a whole scenario), with
    a scenario's line-numbered problems; raises ``ScenarioError``."""
    node, data = _compose(text, filename)
    problems = _duplicate_keys(node, filename)
    if problems:
        raise ScenarioError(problems)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        mapper = _Locator(filename, node, data, {})
        raise ScenarioError(sorted(mapper.problems(error), key=lambda p: (p.line, p.path))) from None


def parse_scenario(
    text: str,
    *,
    filename: str = "scenario.yaml",
    base_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Scenario:
    """Like ``load_scenario`` on YAML text; ``base_dir`` resolves relative file paths (default: cwd)."""
    node, data = _compose(text, filename)
    problems = _duplicate_keys(node, filename)
    overridden: dict[Loc, str] = {}
    for override in overrides:
        try:
            overridden[_apply_override(data, override)] = override
        except _OverrideError as error:
            problems.append(Problem(f"--set {override}", error.path, error.message))
    if problems:
        raise ScenarioError(problems)
    data.setdefault("name", Path(filename).stem)
    context = {"base_dir": Path(base_dir) if base_dir is not None else Path.cwd()}
    try:
        scenario = Scenario.model_validate(data, context=context)
    except ValidationError as error:
        mapper = _Locator(filename, node, data, overridden)
        raise ScenarioError(sorted(mapper.problems(error), key=lambda p: (p.line, p.path))) from None
    for group in scenario.peers:
        if group.churn is not None and group.churn.trace is not None:
            read_churn_trace(group)  # its problems name the CSV file and line
    return scenario


def dump_resolved(scenario: Scenario) -> str:
    """YAML of the scenario with every default filled in (seed included); it loads back equal."""
    data = scenario.model_dump(mode="json", exclude_none=True)
    data["events"] = [{"action": event.pop("action"), **event} for event in data.get("events", [])]
    header = "# resolved scenario: every default filled in; run it again to repeat this run exactly\n"
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


class _Dumper(yaml.SafeDumper):
    """Block style, except for short leaves (`select: {group: servers}`, `grid: [8, 8]`)."""

    def represent_dict(self, data: Any) -> yaml.Node:
        node = super().represent_dict(data)
        node.flow_style = _is_leaf(data.values()) and len(data) <= 4
        return node

    def represent_list(self, data: Any) -> yaml.Node:
        node = super().represent_list(data)
        node.flow_style = _is_leaf(data) and len(data) <= 8
        return node


def _is_leaf(values: Any) -> bool:
    return all(not isinstance(v, dict | list) for v in values)


_Dumper.add_representer(dict, _Dumper.represent_dict)
_Dumper.add_representer(list, _Dumper.represent_list)


# ---- YAML -------------------------------------------------------------------------------------------


def _compose(text: str, filename: str) -> tuple[yaml.Node, dict[str, Any]]:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = " ".join(filter(None, [error.context, error.problem]))
        raise ScenarioError([Problem(f"{filename}:{line}", "", f"invalid YAML: {what}", line)]) from None
    except yaml.YAMLError as error:
        raise ScenarioError([Problem(filename, "", f"invalid YAML: {error}")]) from None
    if not isinstance(data, dict) or node is None:
        line = node.start_mark.line + 1 if node is not None else 1
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        message = f"a scenario is a mapping of keys (schema_version, duration, peers...), got {got}"
        raise ScenarioError([Problem(f"{filename}:{line}", "", message, line)])
    return node, data


def _duplicate_keys(node: yaml.Node, filename: str, path: Loc = ()) -> list[Problem]:
    """YAML lets a later key silently replace an earlier one: that is almost always a mistake."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[object, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if isinstance(key, yaml.ScalarNode) and key.value in first:
                where, dotted = f"{filename}:{line}", ".".join(map(str, (*path, key.value)))
                message = f"duplicate key `{key.value}` (first at line {first[key.value]})"
                problems.append(Problem(where, dotted, message, line))
            elif isinstance(key, yaml.ScalarNode):
                first[key.value] = line
            problems += _duplicate_keys(value, filename, (*path, getattr(key, "value", "?")))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, filename, (*path, index))
    return problems


def _child(node: yaml.Node | None, key: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """(key node, value node) of a mapping key or sequence index, following `<<` merges."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in reversed(node.value):  # the last of duplicates wins, as in the data
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return key_node, value_node
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in merged:
                    found = _child(source, key)
                    if found is not None:
                        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        item = node.value[key]
        return item, item
    return None


# ---- model types along a key path ----------------------------------------------------------------------


def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    """The non-None alternatives of a union (or the type itself)."""
    tp = _strip(tp)
    if get_origin(tp) in (Union, UnionType):
        return [inner for member in get_args(tp) if member is not NoneType for inner in _members(member)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tag(model: Any) -> tuple[str, str] | None:
    """(discriminator key, value) of a union member model."""
    for key in _DISCRIMINATORS:
        field = model.model_fields.get(key)
        if field is not None and get_origin(field.annotation) is Literal:
            return key, get_args(field.annotation)[0]
    return None


def _pick(tp: Any, value: Any) -> Any:
    """The one type ``value`` is validated as: a model, a container, a scalar, or a list of models."""
    members = _members(tp)
    if len(members) == 1:
        return members[0]
    models = [m for m in members if _is_model(m) and _tag(m)]
    if isinstance(value, Mapping):
        for model in models:
            key, tag = _tag(model)  # type: ignore[misc]
            if value.get(key) == tag:
                return model
    return members


def _fields(picked: Any) -> list[str]:
    """Keys valid at a position: a model's fields, or those of any alternative."""
    models = [m for m in (picked if isinstance(picked, list) else [picked]) if _is_model(m)]
    return sorted({name for model in models for name in model.model_fields})


def _descend(picked: Any, key: str | int) -> Any:
    """The type under ``key``, or None when unknown."""
    if isinstance(picked, list):
        for member in picked:
            if _is_model(member) and key in member.model_fields:
                return member.model_fields[key].annotation
        return None
    if _is_model(picked):
        field = picked.model_fields.get(key)
        return None if field is None else field.annotation
    origin, args = get_origin(picked), get_args(picked)
    if origin in (tuple, list) and isinstance(key, int):
        return args[0]
    if origin is dict:
        return args[1]
    return None


def _value_at(value: Any, key: str | int) -> Any:
    if isinstance(value, Mapping):
        return value.get(key)
    if isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
        return value[key]
    return None


def _is_union_tag(picked: Any, key: str | int) -> Any:
    """The member model when ``key`` is pydantic's union tag at this position, else None."""
    for member in picked if isinstance(picked, list) else [picked]:
        tag = _tag(member) if _is_model(member) else None
        if tag is not None and tag[1] == key and key not in member.model_fields:
            return member
    return None


def _has_keys(picked: Any) -> bool:
    """Whether keys or indices lie under this position (a model, a container, models to pick from)."""
    if isinstance(picked, list):
        return any(_has_keys(member) for member in picked)
    return _is_model(picked) or get_origin(picked) in (tuple, list, dict)


def _clean(loc: Loc, data: Any) -> tuple[Loc, Any]:
    """Drop pydantic's union tags from ``loc``; also give the type picked at its end."""
    tp: Any = Scenario
    value, clean = data, []
    for key in loc:
        picked = _pick(tp, value) if tp is not None else None
        member = _is_union_tag(picked, key) if picked is not None else None
        if member is not None:
            tp = member
            continue
        if picked is not None and not _has_keys(picked):
            continue  # a scalar union's member name ("float", "str")
        clean.append(key)
        tp = _descend(picked, key) if picked is not None else None
        value = _value_at(value, key)
    return tuple(clean), (_pick(tp, value) if tp is not None else None)


# ---- validation errors -> problems ----------------------------------------------------------------------


def _misspelt(missing: Loc, unknown: Sequence[Loc]) -> bool:
    """Whether a missing key was written, misspelt, beside it (so one message is enough)."""
    beside = [str(loc[-1]) for loc in unknown if loc[:-1] == missing[:-1]]
    return bool(difflib.get_close_matches(str(missing[-1]), beside, n=1, cutoff=0.6))


def _quoted(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"`{value}`"


class _Locator:
    def __init__(self, filename: str, node: yaml.Node, data: Any, overridden: Mapping[Loc, str]) -> None:
        self.filename, self.node, self.data, self.overridden = filename, node, data, overridden

    def problems(self, error: ValidationError) -> list[Problem]:
        found: list[Problem] = []
        details = error.errors(include_url=False)
        failed = [tuple(detail["loc"]) for detail in details]
        unknown = [tuple(d["loc"]) for d in details if d["type"] == "extra_forbidden"]
        for detail in details:
            loc = tuple(detail["loc"])
            if detail["type"] == "too_short" and any(f[: len(loc)] == loc and f != loc for f in failed):
                continue  # "no items after validation" only repeats that every item failed
            if detail["type"] == "missing" and _misspelt(loc, unknown):
                continue  # "unknown key `cout` (did you mean `count`?)" says it already
            cause = detail.get("ctx", {}).get("error")
            if isinstance(cause, ScenarioProblems):
                clean, _ = _clean(loc, self.data)
                found += [self.problem((*clean, *sub), message) for sub, message in cause.problems]
            else:
                found.append(self.from_pydantic(loc, detail))
        return found

    def from_pydantic(self, loc: Loc, detail: Mapping[str, Any]) -> Problem:
        kind, ctx, raw = detail["type"], detail.get("ctx", {}), detail.get("input")
        clean, picked = _clean(loc, self.data)
        if kind == "extra_forbidden":
            parent = _clean(loc[:-1], self.data)[1]
            return self.problem(
                clean, f"unknown key `{clean[-1]}`{suggest(clean[-1], _fields(parent))}", key=True
            )
        if kind == "missing":
            return self.problem(clean, f"missing required key `{clean[-1]}`")
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            key = ctx["discriminator"].strip("'")
            tags = [_tag(m)[1] for m in (picked if isinstance(picked, list) else []) if _tag(m)]  # type: ignore[index]
            tags = tags or _quoted(ctx.get("expected_tags", ""))
            choices = ", ".join(f"`{t}`" for t in tags)
            if kind == "union_tag_not_found":
                plain = " (or a plain quantity for a constant)" if "constant" in tags else ""
                return self.problem(clean, f"missing `{key}`: one of {choices}{plain}")
            tag = ctx["tag"]
            return self.problem((*clean, key), f"unknown {key} `{tag}`{suggest(tag, tags)}; one of {choices}")
        if kind == "literal_error":
            options = _quoted(ctx.get("expected", ""))
            choices = ", ".join(f"`{o}`" for o in options)
            return self.problem(clean, f"expected one of {choices}, got {_show(raw)}{suggest(raw, options)}")
        if kind == "value_error":
            return self.problem(clean, str(ctx["error"]))
        bounds = {
            "greater_than": ">",
            "greater_than_equal": ">=",
            "less_than": "<",
            "less_than_equal": "<=",
        }
        if kind in bounds:
            limit = next(iter(ctx.values()))
            return self.problem(clean, f"must be {bounds[kind]} {limit}, got {_show(raw)}")
        if kind == "too_short":
            return self.problem(clean, f"needs at least {ctx['min_length']} item(s)")
        if kind in ("model_type", "dict_type", "model_attributes_type"):
            tagged = [
                _tag(m) for m in (picked if isinstance(picked, list) else []) if _is_model(m) and _tag(m)
            ]
            if tagged:
                choices = ", ".join(f"`{tag}`" for _, tag in tagged)
                message = f"expected a mapping with `{tagged[0][0]}` (one of {choices}) and its parameters"
                return self.problem(clean, f"{message}, got {_show(raw)}")
            return self.problem(clean, f"expected a mapping of keys, got {_show(raw)}")
        if kind in ("tuple_type", "list_type"):
            return self.problem(clean, f"expected a list, got {_show(raw)}")
        message = detail["msg"].replace("Input should be", "expected")
        return self.problem(clean, f"{message}, got {_show(raw)}")

    def problem(self, loc: Loc, message: str, *, key: bool = False) -> Problem:
        dotted = ".".join(map(str, loc))
        for prefix in (loc[:n] for n in range(len(loc), 0, -1)):
            if prefix in self.overridden:
                return Problem(f"--set {self.overridden[prefix]}", dotted, message)
        node: yaml.Node = self.node
        line = node.start_mark.line + 1
        for part in loc:
            found = _child(node, part)
            if found is None:
                break
            key_node, node = found
            line = (key_node if key and part == loc[-1] else node).start_mark.line + 1
        return Problem(f"{self.filename}:{line}", dotted, message, line)


# ---- overrides --------------------------------------------------------------------------------------------


class _OverrideError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message


def _apply_override(data: dict[str, Any], override: str) -> Loc:
    """Set ``key.path=value`` (value parsed as YAML) in ``data``; returns the path with list indices."""
    dotted, sep, text = override.partition("=")
    if not sep or not dotted.strip():
        raise _OverrideError("", "expected `key.path=value`, like `peers.0.count=8`")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise _OverrideError(dotted, f"the value is not valid YAML: {error}") from None
    parts = dotted.strip().split(".")
    tp: Any = Scenario
    container: Any = data
    loc: list[str | int] = []
    for depth, part in enumerate(parts):
        here = ".".join(map(str, loc)) or "the scenario"
        picked = _pick(tp, container)
        if isinstance(container, list):
            index = _list_index(container, part, here)
            loc.append(index)
            tp = _descend(picked, index)
        elif isinstance(container, dict):
            keys = _fields(picked) if (_is_model(picked) or isinstance(picked, list)) else None
            if keys is not None and part not in keys:
                raise _OverrideError(
                    ".".join(parts[: depth + 1]), f"unknown key `{part}`{suggest(part, keys)}"
                )
            loc.append(part)
            tp = _descend(picked, part)
        else:
            raise _OverrideError(dotted, f"`{here}` is {_show(container)}, which has no key `{part}`")
        if depth == len(parts) - 1:
            container[loc[-1]] = value
            break
        child = _value_at(container, loc[-1])
        if child is None:  # an absent section: create it, so that `workload.dht.keys=10` works
            child = {}
            container[loc[-1]] = child
        container = child
    return tuple(loc)


def _list_index(items: list[Any], part: str, here: str) -> int:
    """`0`, or a group or event name (`peers.servers.count`)."""
    if part.lstrip("-").isdigit():
        index = int(part)
        if not 0 <= index < len(items):
            raise _OverrideError(f"{here}.{part}", f"`{here}` has {len(items)} item(s), numbered from 0")
        return index
    names = [item.get("group", item.get("name")) if isinstance(item, Mapping) else None for item in items]
    if part in names:
        return names.index(part)
    known = [str(name) for name in names if name is not None]
    raise _OverrideError(
        f"{here}.{part}", f"no item `{part}` in `{here}` (an index from 0, or a name){suggest(part, known)}"
    )


# ---- churn traces ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceSession:
    """One stay of a peer, from a churn trace: up from ``join`` to ``leave`` (None: to the end)."""

    peer: str
    join: float
    leave: float | None


def read_churn_trace(group: PeerGroup) -> list[TraceSession]:
    """The sessions of a group's churn trace (CSV `peer,join,leave`), sorted by join time.

    Times are seconds from the start of the measured window (units allowed: `90s`, `2m`); an empty
    `leave` means the peer stays to the end. Peers must be the group's (`<group>-<index>`) and
    one peer's sessions must not overlap. Raises ``ScenarioError`` naming the file and line.
    """
    assert group.churn is not None and group.churn.trace is not None
    path = group.churn.trace
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError([Problem(str(path), "", f"cannot read the churn trace: {error}")]) from None
    header = [cell.strip() for cell in rows[0]] if rows else []
    if header != ["peer", "join", "leave"]:
        got = ",".join(header)
        raise ScenarioError(
            [Problem(f"{path}:1", "", f"expected the header `peer,join,leave`, got `{got}`", 1)]
        )
    problems: list[Problem] = []
    parsed: list[tuple[int, TraceSession]] = []
    names = frozenset(group.peer_names())
    for number, row in enumerate(rows[1:], start=2):
        if any(cell.strip() for cell in row):
            try:
                parsed.append((number, _trace_row(row, group, names)))
            except ValueError as error:
                problems.append(Problem(f"{path}:{number}", "", str(error), number))
    parsed.sort(key=lambda item: (item[1].peer, item[1].join))
    for (_, before), (number, after) in itertools.pairwise(parsed):
        if before.peer == after.peer and (before.leave is None or after.join < before.leave):
            message = f"`{after.peer}` joins at {after.join} s, before its session from {before.join} s ended"
            problems.append(Problem(f"{path}:{number}", "", message, number))
    if problems:
        raise ScenarioError(sorted(problems, key=lambda problem: problem.line))
    return sorted((session for _, session in parsed), key=lambda session: (session.join, session.peer))


def _trace_row(row: list[str], group: PeerGroup, names: frozenset[str]) -> TraceSession:
    if len(row) != 3:
        raise ValueError(f"expected 3 columns `peer,join,leave`, got {len(row)}")
    peer, join_text, leave_text = (cell.strip() for cell in row)
    if peer not in names:
        raise ValueError(f"no peer `{peer}` in group `{group.group}` ({group.group}-0 to -{group.count - 1})")
    join = parse_duration(join_text)
    leave = parse_duration(leave_text) if leave_text else None
    if leave is not None and leave <= join:
        raise ValueError(f"leave `{leave_text}` is not after join `{join_text}`")
    return TraceSession(peer, join, leave)
