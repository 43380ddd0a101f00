"""Command lines and `STUDIO_*` environment variables, derived from the dataclasses of `settings`.

`CommandLine(*parts, prog=..., description=...)` turns every field of the given dataclasses into a flag through
transformers' `HfArgumentParser` (`train_every` becomes `--train-every`, also spelt `--train_every`; a boolean that
defaults to true also gets `--no-...`) and into a variable `STUDIO_<FIELD>` (`STUDIO_TRAIN_EVERY`). A flag wins over
its variable, a variable over the dataclass default. A multi-valued field takes several values or repeats of its
flag, and commas in its variable. A part is a dataclass or `(dataclass, field names)` for some of its fields; a
name that two parts share is one flag that sets both; a field whose type is itself a dataclass is not a flag.

A bad flag, variable or value ends the command argparse's way: one error line and exit code 2, never a
traceback. `--help` shows each field's help, its variable and its default, never a variable's value, so secrets
stay out of it. This module knows argparse and the environment, nothing of what a setting means.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, NoReturn

ENV_PREFIX = "STUDIO_"
TRUE, FALSE = ("1", "true", "yes", "y", "on"), ("0", "false", "no", "n", "off")


def env_name(name: str) -> str:
    """The environment variable of setting `name`: STUDIO_ and the name in capitals."""
    return ENV_PREFIX + name.upper()


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Kind:
    """How a field is written as text: its scalar type, whether it holds several values, whether it may be unset."""

    scalar: type
    many: bool
    optional: bool
    nested: bool = False  # the field is a dataclass of its own: not a flag

    def convert(self, text: str):
        """One value (or, for a multi-valued field, one comma-separated list) from text; ValueError if not."""
        if self.many:
            return [self._one(item.strip()) for item in text.split(",") if item.strip()]
        return self._one(text.strip())

    def _one(self, text: str):
        if self.scalar is bool:
            if text.lower() not in TRUE + FALSE:
                raise ValueError(f"expected one of {'/'.join(TRUE)} or {'/'.join(FALSE)}")
            return text.lower() in TRUE
        return self.scalar(text)


def kinds(cls) -> dict[str, Kind]:
    """The `Kind` of every init field of dataclass `cls`, by name."""
    hints = typing.get_type_hints(cls)
    return {f.name: _kind(hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _kind(hint) -> Kind:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = len(args) < len(typing.get_args(hint)), args[0]
    if dataclasses.is_dataclass(hint):
        return Kind(hint, False, optional, nested=True)
    if typing.get_origin(hint) is tuple:
        return Kind(typing.get_args(hint)[0], True, optional)
    return Kind(hint, False, optional)


class _Extend(argparse.Action):
    """argparse's "extend", starting from an empty list where the parser's default is SUPPRESS (not given)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is argparse.SUPPRESS else list(items)
        setattr(namespace, self.dest, items + list(values))


@dataclasses.dataclass(frozen=True)
class Parsed:
    """What one command line and the environment said. `values` holds only the settings given by a flag or a
    variable (the dataclasses fill in the rest); `sources` names the flag or variable each came from."""

    values: dict[str, Any]
    sources: dict[str, str]
    extra: argparse.Namespace  # the command's own arguments (a positional prompt, --once, ...)
    parser: argparse.ArgumentParser

    def given(self, cls) -> dict[str, Any]:
        """The given values of `cls`'s fields."""
        return {name: self.values[name] for name in kinds(cls) if name in self.values}

    def build(self, cls, **more):
        """`cls` from its given values (and `more`), its defaults for the rest; a refused value exits with code 2."""
        try:
            return cls(**self.given(cls), **more)
        except ValueError as e:
            self.error(str(e))

    def error(self, message: str) -> NoReturn:
        self.parser.error(message)


class CommandLine:
    """The flags and variables of one command, derived from its settings dataclasses."""

    def __init__(self, *parts, prog: str, description: str | None = None, required: tuple[str, ...] = (),
                 defaults_elsewhere: Mapping[type, str] | None = None):
        """`required`: settings that a flag or a variable must give. `defaults_elsewhere`: dataclasses whose unset
        fields the command fills from somewhere else (e.g. {SamplerConfig: "the model's"}), as help says."""
        from transformers import HfArgumentParser  # here, not at import: storage and the UI import `settings` too

        self.kinds: dict[str, Kind] = {}
        self.metadata: dict[str, Mapping] = {}
        self.negatable: list[str] = []  # booleans that default to true: they get a --no-... flag
        views = []
        for part in parts:
            cls, chosen = part if isinstance(part, tuple) else (part, None)
            views.append(self._view(cls, chosen, (defaults_elsewhere or {}).get(cls)))
        self.required = tuple(required)
        unknown = set(self.required) - set(self.kinds)
        if unknown:
            raise ValueError(f"required settings {sorted(unknown)} are not part of this command")
        self.parser = HfArgumentParser(views, prog=prog, description=description, allow_abbrev=False,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        for name in self.negatable:
            self.parser.add_argument(f"--no-{name.replace('_', '-')}", f"--no_{name}", dest=name, action="store_false",
                                     default=argparse.SUPPRESS, help=f"the opposite of {flag(name)}")

    def _view(self, cls, chosen, elsewhere: str | None):
        """A dataclass of `cls`'s fields as `HfArgumentParser` reads them: tuples as lists, help with the variable
        and the default, and no fields another part already offers."""
        specs, of_cls = [], kinds(cls)
        for f in dataclasses.fields(cls):
            kind = of_cls.get(f.name)
            if kind is None or kind.nested or (chosen is not None and f.name not in chosen) or f.name in self.kinds:
                continue
            help_text = f.metadata.get("help")
            if not help_text:
                raise ValueError(f"{cls.__name__}.{f.name} has no help text")
            shown = elsewhere or _shown(f.default)
            metadata = {"help": f"{help_text} [{env_name(f.name)}; default: {shown}]".replace("%", "%%")}
            for key in ("choices", "aliases", "metavar"):
                if key in f.metadata:
                    metadata[key] = list(f.metadata[key]) if key == "aliases" else f.metadata[key]
            if kind.many:
                metadata["action"] = _Extend  # --auth a --auth b, or --admins a b
            if kind.scalar is bool and f.default is True:
                self.negatable.append(f.name)
            # No defaults in the parser: only what a flag gives reaches the namespace, and the environment and
            # then the dataclass fill in the rest. (The list branch of HfArgumentParser reads it from metadata.)
            metadata["default"] = argparse.SUPPRESS
            # A list of numbers is read as text and split on commas in `parse`, so "7,8" means 7 and 8 there too.
            annotation = list[str] if kind.many else kind.scalar
            specs.append((f.name, annotation, dataclasses.field(default=argparse.SUPPRESS, metadata=metadata)))
            self.kinds[f.name], self.metadata[f.name] = kind, f.metadata
        summary = (cls.__doc__ or "").strip().split(". ")[0].splitlines()[0].rstrip(".")
        title = f"{cls.__name__}: {summary}" if summary else cls.__name__
        return dataclasses.make_dataclass(cls.__name__ + "Flags", specs, namespace={"_argument_group_name": title})

    def add_argument(self, *args, **kwargs):
        """An argument of the command itself (not a setting, no variable); it comes back in `Parsed.extra`."""
        return self.parser.add_argument(*args, **kwargs)

    def parse(self, argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Parsed:
        environ = os.environ if environ is None else environ
        namespace = vars(self.parser.parse_args(argv))
        values, sources = {}, {}
        for name, kind in self.kinds.items():
            text = environ.get(env_name(name), "")
            if text.strip() == "":
                continue
            try:
                values[name] = kind.convert(text)
            except ValueError as e:
                shown = "" if self.metadata[name].get("secret") else f": {text!r:.60}"
                self.parser.error(f"{env_name(name)}: invalid {kind.scalar.__name__} value{shown} ({e})")
            choices = self.metadata[name].get("choices")
            if choices is not None and values[name] not in choices:  # a flag's choices are argparse's to check
                self.parser.error(f"{env_name(name)}: invalid choice {values[name]!r} (choose from "
                                  f"{', '.join(map(str, choices))})")
            sources[name] = env_name(name)
        for name, value in namespace.items():
            if name in self.kinds and value is not argparse.SUPPRESS:
                kind = self.kinds[name]
                if kind.many and kind.scalar is not str:
                    try:
                        value = [kind.convert(item) for item in value]
                    except ValueError:
                        self.parser.error(f"argument {flag(name)}: invalid {kind.scalar.__name__} value: "
                                          f"{' '.join(value)!r:.60}")
                    value = [v for items in value for v in items]
                values[name], sources[name] = value, flag(name)
        missing = [name for name in self.required if name not in values]
        if missing:
            self.parser.error("the following settings are required: " + ", ".join(
                f"{flag(name)} (or {env_name(name)})" for name in missing))
        extra = argparse.Namespace(**{k: v for k, v in namespace.items() if k not in self.kinds})
        return Parsed(values, sources, extra, self.parser)


def _shown(value) -> str:
    if value is None or value == ():
        return "unset"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)
