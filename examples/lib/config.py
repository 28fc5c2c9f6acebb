"""One way to configure an example: a frozen dataclass, and command-line flags made from its fields.

Each example has one `Config` dataclass. Its named presets (the paper's tables) are functions
returning a `Config`, or a list of them for a sweep. `add_flags` gives every field a flag
(`learning_rate` -> `--learning-rate`), and `parse` lays the flags given on the command line over
a base config (the defaults, or a preset), so a flag that is not given never overrides a preset.

A field's metadata may carry `flags` (its flag names, e.g. `("--lr", "--learning-rate")`), `help`,
`choices`, `separator` (between a tuple's items on the command line; default ",") and `unset`
(what a None default means, shown in the help as the default).

`command_line` is every example's `main.py`: the flags, and `--config NAME` to start from a named
preset (a function of the flags given, returning the configs to run).
Booleans that default to True get a `--no-<name>` flag, the others a `--<name>` flag.

Examples:
  >>> import dataclasses
  >>> @dataclasses.dataclass(frozen=True)
  ... class Config:
  ...   epochs: int = 3
  ...   seeds: tuple[int, ...] = (0,)
  ...   checkpoint: bool = True
  >>> parse(Config, ["--epochs", "5", "--seeds", "1,2", "--no-checkpoint"])
  Config(epochs=5, seeds=(1, 2), checkpoint=False)
  >>> replace_from_strings(Config(), {"epochs": "7"})
  Config(epochs=7, seeds=(0,), checkpoint=True)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any


class Comparison:
  """For config dataclasses with `optimizers` and `seeds`: one run of the comparison is a config
  with one of each."""

  @property
  def optimizer(self) -> str:
    """The optimiser of a one-run config (see `run`)."""
    (name,) = self.optimizers
    return name

  @property
  def seed(self) -> int:
    """The seed of a one-run config."""
    (seed,) = self.seeds
    return seed

  def run(self, optimizer: str, **changes: Any) -> Any:
    """The one-run config of `optimizer`, with `changes`."""
    return dataclasses.replace(self, optimizers=(optimizer,), **changes)


def setting(default: Any, help: str = "", **metadata: Any) -> Any:
  """A dataclass field with a default and command-line metadata: `help`, and optionally `flags`,
  `choices`, `separator`, `unset`."""
  return dataclasses.field(default=default, metadata={"help": help, **metadata})


def field_types(cls: type) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def value_type(annotation: Any) -> tuple[Any, str | None]:
  """(type of one value, 'tuple' or None) of a field annotation; `T | None` gives T."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  origin = typing.get_origin(annotation)
  if origin in (typing.Union, types.UnionType):
    return value_type(args[0])
  if origin is tuple:
    return args[0], "tuple"
  return annotation, None


def parse_value(annotation: Any, text: str, separator: str = ",") -> Any:
  """`text` as a value of a field annotated `annotation`."""
  kind, container = value_type(annotation)
  if container == "tuple":
    return tuple(kind(item) for item in text.split(separator) if item)
  if kind is bool:
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"{text!r} is not a boolean; write true or false.")
    return text.lower() in ("true", "1")
  return kind(text)


def value_parser(annotation: Any, separator: str = ","):
  """text -> `parse_value(annotation, text, separator)`, named after the value's type (argparse
  names it in its error messages)."""

  def parse_text(text: str) -> Any:
    return parse_value(annotation, text, separator)

  kind, container = value_type(annotation)
  parse_text.__name__ = f"{container} of {kind.__name__}" if container else kind.__name__
  return parse_text


def flag_names(field: dataclasses.Field) -> tuple[str, ...]:
  return field.metadata.get("flags", ("--" + field.name.replace("_", "-"),))


def add_flags(parser: argparse.ArgumentParser, cls: type, base: Any = None,
              fields: Iterable[str] | None = None) -> None:
  """A flag for each field of dataclass `cls` (or each of `fields`); a flag that is not given
  is absent from the parsed namespace. `base` supplies the defaults shown in the help."""
  base = cls() if base is None else base
  types_ = field_types(cls)
  chosen = None if fields is None else set(fields)
  for field in dataclasses.fields(cls):
    if chosen is not None and field.name not in chosen:
      continue
    default = getattr(base, field.name)
    help_text = field.metadata.get("help", "")
    options = {"dest": field.name, "default": argparse.SUPPRESS}
    if types_[field.name] is bool:
      names = (f"--no-{field.name.replace('_', '-')}",) if default else flag_names(field)
      parser.add_argument(*names, action="store_const", const=not default, help=help_text,
                          **options)
      continue
    separator = field.metadata.get("separator", ",")
    shown = separator.join(map(str, default)) if isinstance(default, tuple) else default
    if default is None:
      shown = field.metadata.get("unset")
    parser.add_argument(
        *flag_names(field), type=value_parser(types_[field.name], separator),
        choices=field.metadata.get("choices"),
        help=help_text if shown is None else f"{help_text} (default: {shown})".lstrip(),
        **options)


def make_parser(cls: type, description: str | None = None, base: Any = None,
                fields: Iterable[str] | None = None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_flags(parser, cls, base, fields)
  return parser


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
  """The fields of `cls` that the command line set."""
  names = {field.name for field in dataclasses.fields(cls)}
  return {k: v for k, v in vars(args).items() if k in names}


def parse(cls: type, argv: Sequence[str] | None, base: Any = None,
          parser: argparse.ArgumentParser | None = None, **parser_options: Any) -> Any:
  """`base` (default `cls()`) with the fields that the flags in `argv` set replaced; `parser`
  defaults to `make_parser(cls, base=base, **parser_options)`."""
  base = cls() if base is None else base
  parser = parser or make_parser(cls, base=base, **parser_options)
  return dataclasses.replace(base, **given(parser.parse_args(argv), cls))


Preset = Callable[[dict[str, Any], argparse.Namespace], list[Any]]


def lay(configs: Iterable[Any], flags: Mapping[str, Any]) -> list[Any]:
  """Each of `configs` with the fields in `flags` replaced (the flags given over a preset)."""
  return [dataclasses.replace(config, **flags) for config in configs]


def command_line(
    cls: type, presets: Mapping[str, Preset], argv: Sequence[str] | None, description: str | None,
    *, base: Any = None, fields: Iterable[str] | None = None,
    extra_flags: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[Any]]:
  """(parser, parsed flags, configs to run) of an example's command line.

  Without `--config`, one config: `base` (default `cls()`) with the given flags laid over it.
  With `--config NAME`, `presets[NAME](flags given, namespace)`: the preset lays the flags over
  its configs (`lay`), and may read what `extra_flags` added to the parser; a ValueError it
  raises is a usage error (exit 2).
  """
  base = cls() if base is None else base
  parser = make_parser(cls, description, base=base, fields=fields)
  if presets:
    parser.add_argument(
        "--config", choices=sorted(presets),
        help="start from a named preset (configs.py); the other flags override its fields")
  if extra_flags is not None:
    extra_flags(parser)
  args = parser.parse_args(argv)
  flags = given(args, cls)
  name = getattr(args, "config", None)
  try:
    configs = presets[name](flags, args) if name else lay([base], flags)
  except ValueError as error:  # a preset's own flags missing or wrong: a usage error
    parser.error(str(error))
  return parser, args, configs


def exit_code(run: Callable[[], object]) -> int:
  """0 after `run()`; 2, with the message on stderr, when it raises FileNotFoundError (a data set
  that is not there: the examples' messages say how to point at one)."""
  try:
    run()
  except FileNotFoundError as error:
    print(error, file=sys.stderr)
    return 2
  return 0


def json_values(config: Any) -> dict[str, Any]:
  """The fields of `config` as JSON values (tuples become lists), as config.json holds them."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def replace_from_strings(config: Any, options: Mapping[str, str]) -> Any:
  """`config` with fields replaced by values written as on the command line; a key is a field
  name or one of its flag names without the dashes (e.g. `lr`)."""
  fields = {}
  for field in dataclasses.fields(config):
    fields[field.name] = field
    fields.update({name.lstrip("-").replace("-", "_"): field for name in flag_names(field)})
  types_ = field_types(type(config))
  changes = {}
  for key, text in options.items():
    if key not in fields:
      raise ValueError(f"Unknown setting {key!r}; choose from {', '.join(sorted(fields))}.")
    field = fields[key]
    changes[field.name] = parse_value(
        types_[field.name], text, field.metadata.get("separator", ","))
  return dataclasses.replace(config, **changes)
