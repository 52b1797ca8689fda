"""Command-line helpers every command shares: one-line usage errors, the pair flags, and flags built
from a typed dataclass config, so that each default lives in the dataclass alone.

A config field becomes a flag `--field-name` with the field's type and default (a bool field that
defaults to False becomes a switch: `--field-name` alone turns it on); its help text is the field's
`help` metadata (`flag(default, "help")`). `config_from_args` builds the dataclass back from
the parsed namespace by field name, so a command never repeats a default or copies fields by hand.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable

from jsonargparse import ArgumentParser

from deferral.errors import DeferralError


def flag(default: Any, help: str) -> Any:  # noqa: A002  (the argparse word)
    """A dataclass field that is also a command-line flag: its default and its help text (a list or
    dict default is copied for each instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def required_flag(help: str) -> Any:  # noqa: A002
    """A dataclass field that is a required flag (no default; declare it before the defaulted ones)."""
    return field(metadata={"help": help})


def config_fields(cls, skip: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of a dataclass config that are flags (all but `skip`)."""
    skipped = set(skip)
    return [f for f in dataclasses.fields(cls) if f.name not in skipped]


def add_config_flags(parser: ArgumentParser, cls, skip: Iterable[str] = ()) -> None:
    """One `--field-name` flag per field of the dataclass `cls` (type, default and help from the field)."""
    hints = typing.get_type_hints(cls)
    for f in config_fields(cls, skip):
        name = "--" + f.name.replace("_", "-")
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            parser.add_argument(name, type=hints[f.name], required=True, help=f.metadata.get("help", ""))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if hints[f.name] is bool and default is False:  # a switch: `--name` alone turns it on
            parser.add_argument(name, action="store_true", help=f.metadata.get("help", ""))
        else:
            parser.add_argument(name, type=hints[f.name], default=default, help=f.metadata.get("help", ""))


def config_from_args(cls, args, skip: Iterable[str] = (), **overrides):
    """The dataclass `cls` from a parsed namespace (fields by name; `overrides` win; `skip` keep defaults)."""
    values = {f.name: getattr(args, f.name) for f in config_fields(cls, skip) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def parse(parser: ArgumentParser, argv: list[str]):
    """Parse argv; turn jsonargparse's usage errors into one DeferralError line."""
    try:
        return parser.parse_args(argv)
    except Exception as exc:  # jsonargparse raises ArgumentError / ValueError subclasses
        raise DeferralError(f"{str(exc).splitlines()[0]} (see {parser.prog} --help)") from None


@dataclass
class PairOptions:
    """The drafter and target a command loads (deferral.pair.load_pair)."""

    drafter: str | None = flag(None, "drafter: Hugging Face id, local folder or .gguf file (default: the embedded drafter)")
    target: str | None = flag(None, "target: Hugging Face id, local folder or .gguf file (default: SmolLM2-135M-Instruct)")
    device: str = flag("cpu", "cpu, cuda, cuda:N or auto")
    dtype: str = flag("float32", "float32, bfloat16 or float16")


def add_pair_arguments(parser: ArgumentParser) -> None:
    """--drafter/--target/--device/--dtype, shared by every command that loads a pair."""
    add_config_flags(parser, PairOptions)
