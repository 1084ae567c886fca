"""Command-line flags derived from settings models, so that each option is declared once.

A command's options are the fields of a pydantic model: name, type, default, bounds and help text
live in the field; `Flag` (as `Annotated` metadata) only says how the field is spelled on the command
line when the default spelling (`--field-name`) is not the documented one. Nested settings models
(`train: TrainSettings = TrainSettings(learning_rate=5e-5)`) are flattened into flags, and the nested
default instance gives each flag its default for that command. argparse only splits the command line
into strings; pydantic converts and checks them, and every failure becomes one line naming the flag.

A small helper rather than pydantic-settings' CLI: the documented flags take several values after one
flag (`--seq 128 384`, `--runtime torch onnx`), `--no-tune`-style negations and hand-picked spellings
(`--lr`, `--mask`), and `prune --method` selects one of two models (a discriminated union) by a flag;
pydantic-settings spells lists as JSON or repeated flags and has no per-field renaming back to these.
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pruning.core.errors import BlockserveError


class OptionError(BlockserveError):
    """A command-line value is wrong; the message names the flag."""


@dataclass(frozen=True)
class Flag:
    """How one settings field is spelled on the command line (every part optional).

    `name`: the flag (default `--field-name`); `positional`: an argument without a flag; `switch`:
    a bool that is only ever turned on (`--resume`), instead of the `--x/--no-x` pair; `cli=False`:
    not a command-line option at all (set by code); `group`: the help section; `nargs` overrides the
    default for sequences (`+`).
    """

    name: str | None = None
    positional: bool = False
    switch: bool = False
    cli: bool = True
    group: str | None = None
    metavar: str | None = None
    nargs: str | None = None


@dataclass(frozen=True)
class Nested:
    """Metadata on a nested settings field: which of its fields are not options of this command."""

    exclude: frozenset[str] = frozenset()

    def __init__(self, *exclude: str) -> None:
        object.__setattr__(self, "exclude", frozenset(exclude))


# ---- reusable field types ---------------------------------------------------------------------------
def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{path} is not a file" if path.exists() else f"{path} does not exist")
    return path


def _model_reference(value: str) -> str:
    # Hub ids are allowed wherever a model directory is; only reject what looks like a local path.
    path = Path(value)
    if (value.startswith((".", "/", "~")) or path.suffix or value.count("/") > 1) and not path.is_dir():
        raise ValueError(f"{value} is not a directory" if path.exists() else f"{value} does not exist")
    return value


Device = Literal["cpu", "cuda"]
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
ModelReference = Annotated[str, AfterValidator(_model_reference)]  # a local directory or a hub id


# ---- the flat view of a model -----------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One leaf field of a (possibly nested) settings model, as a flag."""

    path: tuple[str, ...]  # field names from the command's model down to the leaf
    flag: str  # "--lr", or the positional's name
    kind: str  # "value" | "many" | "bool" | "switch"
    help: str
    default: Any
    choices: tuple[Any, ...] | None
    positional: bool
    group: str | None
    metavar: str | None
    nargs: str | None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _metadata(info: FieldInfo, kind: type) -> Any:
    return next((item for item in info.metadata if isinstance(item, kind)), None)


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _base(annotation: Any) -> Any:
    annotation = _strip_optional(annotation)
    while get_origin(annotation) is Annotated:
        annotation = _strip_optional(get_args(annotation)[0])
    return annotation


def _is_model(annotation: Any) -> bool:
    base = _base(annotation)
    return isinstance(base, type) and issubclass(base, BaseModel)


def _describe_default(value: Any) -> str:
    if isinstance(value, tuple | list):
        return " ".join(str(item) for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def options_of(model: type[BaseModel], defaults: BaseModel | None = None, prefix: tuple[str, ...] = ()) -> list[Option]:
    """Every command-line option of `model`, nested settings flattened (with `defaults` for a nested one)."""
    found: list[Option] = []
    for name, info in model.model_fields.items():
        flag = _metadata(info, Flag) or Flag()
        if not flag.cli:
            continue
        default = getattr(defaults, name) if defaults is not None else info.get_default(call_default_factory=True)
        if _is_model(info.annotation):
            nested = _metadata(info, Nested) or Nested()
            instance = default if isinstance(default, BaseModel) else None  # None: the class's own defaults
            inner = [
                option
                for option in options_of(_base(info.annotation), instance, (*prefix, name))
                if option.path[len(prefix) + 1] not in nested.exclude
            ]
            found += inner
            continue
        base = _base(info.annotation)
        origin = get_origin(base)
        choices = None
        if origin is Literal:
            choices = get_args(base)
        elif origin in (tuple, list, Sequence, typing.Sequence) and get_args(base):
            item = _base(get_args(base)[0])
            choices = get_args(item) if get_origin(item) is Literal else None
        if base is bool:
            kind = "switch" if flag.switch else "bool"
        elif origin in (tuple, list, Sequence, typing.Sequence):
            kind = "many"
        else:
            kind = "value"
        required = default is PydanticUndefined
        text = info.description or ""
        if required:
            text += " (required)"
        elif default is not None and kind != "switch":
            text += f" (default {_describe_default(default)})"
        found.append(
            Option(
                path=(*prefix, name),
                flag=flag.name or (name if flag.positional else "--" + name.replace("_", "-")),
                kind=kind,
                help=text.strip(),
                default=None if required else default,
                choices=choices,
                positional=flag.positional,
                group=flag.group,
                metavar=flag.metavar,
                nargs=flag.nargs,
            )
        )
    return found


# ---- argparse ---------------------------------------------------------------------------------------
def _members(settings: Any) -> list[type[BaseModel]]:
    """The models a command can validate into: one, or the members of a discriminated union."""
    if isinstance(settings, type) and issubclass(settings, BaseModel):
        return [settings]
    base = settings
    while get_origin(base) is Annotated:
        base = get_args(base)[0]
    return list(get_args(base))


def _discriminator(settings: Any) -> str | None:
    if get_origin(settings) is Annotated:
        info = next((m for m in get_args(settings)[1:] if isinstance(m, FieldInfo)), None)
        return info.discriminator if info else None
    return None


def add_options(parser: argparse.ArgumentParser, settings: Any) -> None:
    """Declare the flags of `settings` (a model, or an `Annotated` discriminated union of models)."""
    seen: dict[str, Option] = {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    members = _members(settings)
    discriminator = _discriminator(settings)
    for member in members:
        for option in options_of(member):
            if option.path == (discriminator,):
                tags = tuple(get_args(m.model_fields[discriminator].annotation)[0] for m in members)
                option = replace(option, choices=tags, default=members[0].model_fields[discriminator].default)
            if option.flag in seen:
                if (seen[option.flag].kind, seen[option.flag].choices) != (option.kind, option.choices):
                    raise TypeError(f"{option.flag} means different things in the members of {settings}")
                continue
            seen[option.flag] = option
            where = parser
            if option.group:
                where = groups.get(option.group) or groups.setdefault(
                    option.group, parser.add_argument_group(option.group)
                )
            # SUPPRESS: only what the user typed reaches the model; the model applies every default.
            keywords: dict[str, Any] = {"help": option.help.replace("%", "%%") or None}
            if not option.positional:
                keywords.update(default=argparse.SUPPRESS, dest=option.dest)
            if option.kind == "bool":
                keywords["action"] = argparse.BooleanOptionalAction
            elif option.kind == "switch":
                keywords["action"] = "store_true"
            else:
                keywords["metavar"] = option.metavar or (
                    "{" + ",".join(map(str, option.choices)) + "}" if option.choices else None
                )
                if option.kind == "many":
                    keywords["nargs"] = option.nargs or "+"
            where.add_argument(option.flag, **keywords)


def parse_settings(namespace: argparse.Namespace, settings: Any) -> BaseModel:
    """Validate what argparse collected into the command's model; `OptionError` names the flag."""
    members = _members(settings)
    discriminator = _discriminator(settings)
    member = members[0]
    given_all = dict(vars(namespace))
    if discriminator is not None:
        chosen = given_all.get(discriminator)
        by_tag = {get_args(m.model_fields[discriminator].annotation)[0]: m for m in members}
        if chosen is None:
            chosen = members[0].model_fields[discriminator].default
        if chosen not in by_tag:
            flag = "--" + discriminator.replace("_", "-")
            raise OptionError(f"{flag} {chosen}: choose one of {', '.join(map(str, by_tag))}")
        member = by_tag[chosen]
    options = options_of(member)
    known = {option.dest for option in options}
    every = {option.dest: option for m in members for option in options_of(m)}
    foreign = [every[dest].flag for dest in given_all if dest in every and dest not in known]
    if foreign:
        raise OptionError(f"{', '.join(foreign)} is not an option of --{discriminator} {chosen}")
    values: dict[str, Any] = {}
    for option in options:
        if option.dest in given_all:
            _put(values, option.path, given_all[option.dest])
    _keep_nested_defaults(member, values)
    _required_nested(member, values)
    try:
        return member.model_validate(values)
    except ValidationError as error:
        raise OptionError(describe_option_error(error, options)) from None


def _put(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        values = values.setdefault(name, {})
    values[path[-1]] = value


def _keep_nested_defaults(model: type[BaseModel], values: dict[str, Any]) -> None:
    """A nested field the user touched starts from the command's default instance, not the class defaults."""
    for name, info in model.model_fields.items():
        if name in values and isinstance(values[name], dict) and _is_model(info.annotation):
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                given = values[name]
                values[name] = {key: getattr(default, key) for key in default.model_fields_set}
                values[name].update(given)
            _keep_nested_defaults(_base(info.annotation), values[name])


def _required_nested(model: type[BaseModel], values: dict[str, Any]) -> None:
    """A nested settings model without a default is validated even when none of its flags was given,
    so its own rules ("give exactly one budget") speak instead of a bare "field required"."""
    for name, info in model.model_fields.items():
        if _is_model(info.annotation) and info.is_required():
            _required_nested(_base(info.annotation), values.setdefault(name, {}))


def describe_option_error(error: ValidationError, options: list[Option]) -> str:
    """One line: each failing flag with the value given and what is wrong with it."""
    by_path = {option.path: option for option in options}
    parts = []
    for item in error.errors():
        location = tuple(str(part) for part in item["loc"] if not isinstance(part, int))
        option = by_path.get(location)
        # A field's error is scoped by the model holding it; a model validator's by the model itself.
        scope = location[:-1] if option is not None else location
        message = _flags_in_message(item["msg"].removeprefix("Value error, "), options, scope)
        if option is None:
            parts.append(message)
        elif item["type"] == "missing":
            parts.append(f"{option.flag} is required")
        else:
            shown = item.get("input")
            shown = " ".join(map(str, shown)) if isinstance(shown, list | tuple) else shown
            parts.append(f"{option.flag} {shown}: {message}")
    return "; ".join(dict.fromkeys(parts))


def _flags_in_message(message: str, options: list[Option], scope: tuple[str, ...]) -> str:
    """Field names a validator wrote in backticks become the flags the user types (`speedup` → --speedup)."""
    names = {option.path[-1]: option.flag for option in options if option.path[:-1] == scope}
    names.update({option.path[-1]: option.flag for option in options if option.path[-1] not in names})
    return re.sub(r"`(\w+)`", lambda match: names.get(match.group(1), match.group(1)), message)
