"""Command lines generated from config dataclasses.

Every file that runs alone builds its argparse from its dataclasses, so `--help` lists every knob with
its one-line comment from the dataclass source and its default, and the resolved config is one `asdict` away from being printed or
saved. Field types drive parsing: bool fields take `--flag/--no-flag`, Optional numeric fields take a number
or the word `none`; Optional[str] fields take any string (so `--curriculum none` means the string).
"""
import argparse
import dataclasses
import inspect
import re
import types
import typing


def _field_type(tp):
    """Return (parser, is_bool) for a dataclass field annotation."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] or X | None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        parse, is_bool = _field_type(inner)
        if inner is str:  # 'none' can be a real value (e.g. --curriculum none): strings stay strings
            return parse, is_bool
        return (lambda s: None if s.lower() == "none" else parse(s)), is_bool
    if tp is bool:
        return None, True
    return tp, False


def flag(name: str) -> str:
    """The command-line flag of a dataclass field: max_new_tokens -> --max-new-tokens (for error messages)."""
    return "--" + name.replace("_", "-")


def field_comments(cls) -> dict:
    """{field name: its trailing `# comment`} read from the dataclass source (fields are documented once)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, flags=re.M))


def add_dataclass_args(parser: argparse.ArgumentParser, cls, help_texts: dict | None = None):
    """Add one `--field-name` option per field of dataclass `cls` (defaults taken from the class)."""
    hints = typing.get_type_hints(cls)
    help_texts = {**field_comments(cls), **(help_texts or {})}
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = help_texts.get(f.name, "").replace("%", "%%")
        parse, is_bool = _field_type(hints[f.name])
        if is_bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                               help=f"{text} (default: {default})")
        else:
            group.add_argument(flag(f.name), dest=f.name, type=parse, default=default,
                               help=f"{text} (default: {default})")


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    """Build `cls` from the parsed namespace (fields not present keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
