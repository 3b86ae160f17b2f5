"""cli.py: argparse generated from dataclasses (types, Optional, bools, help from comments)."""
import argparse
from dataclasses import dataclass
from typing import Optional

from cli import add_dataclass_args, dataclass_from_args


@dataclass
class Example:
    lr: float = 1e-6  # learning rate
    name: str | None = None  # a name or none
    steps: Optional[int] = 3  # optional steps
    flag: bool = False  # a switch


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, Example)
    return dataclass_from_args(Example, parser.parse_args(list(argv))), parser


def test_types_optional_and_bools():
    cfg, _ = parse("--lr", "0.5", "--name", "x", "--steps", "none", "--flag")
    assert cfg == Example(lr=0.5, name="x", steps=None, flag=True)
    assert parse("--name", "none")[0].name == "none"  # a string option keeps the word (e.g. --curriculum none)
    assert parse()[0] == Example()
    assert parse("--no-flag", "--steps", "7")[0] == Example(steps=7, flag=False)


def test_help_lists_comments_and_defaults():
    text = parse()[1].format_help()
    assert "learning rate (default: 1e-06)" in text and "a switch (default: False)" in text
