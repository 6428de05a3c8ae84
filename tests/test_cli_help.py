"""Every ``lmscope`` command's help is complete: each option says what it does and its default, descriptions
carry no reStructuredText markup, the command list has one style, and ``lmscope --version`` answers."""

from __future__ import annotations

import argparse
import re

import pytest

from lmscope.interventions import cli

NO_VALUE = (None, False, [], ())  # options whose absence needs no stated default (flags, optional paths, lists)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def shows_default(help_text: str, default: object) -> bool:
    """Whether ``help_text`` states ``default`` (``1e-3`` and ``0.001`` both state 0.001)."""
    if isinstance(default, float):
        spelled = {repr(default), f"{default:g}", re.sub(r"e-0*", "e-", f"{default:.0e}")}
    else:
        spelled = {str(default)}
    return "default" in help_text and any(s in help_text for s in spelled)


def options() -> list[tuple[str, argparse.Action]]:
    return [(name, a) for name, p in sorted(subcommands().items()) for a in p._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


@pytest.mark.parametrize("command, action", options(), ids=lambda x: x if isinstance(x, str) else
                         (x.option_strings or [x.dest])[0])
def test_every_option_has_help_and_its_default(command: str, action: argparse.Action) -> None:
    assert action.help and action.help.strip() and action.help is not argparse.SUPPRESS, "no help text"
    if action.required or action.default in NO_VALUE or isinstance(action.default, bool):
        return
    assert shows_default(action.help, action.default), f"help does not state the default {action.default!r}"


def test_the_walk_covers_every_command() -> None:
    names = set(subcommands())
    assert {"decode", "train-lens", "eval-lens", "steer", "probe", "attribute", "patch", "overthinking"} <= names
    assert len(options()) > 80


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_descriptions_carry_no_markup(command: str) -> None:
    parser = subcommands()[command]
    texts = [parser.description or ""] + [a.help or "" for a in parser._actions]
    assert not [t for t in texts if "``" in t or ":class:" in t or ":func:" in t]


def test_command_list_has_one_style() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for choice in sub._choices_actions:
        text = choice.help or ""
        assert text[:1].isupper() and text.endswith("."), (choice.dest, text)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"lmscope \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_patch_method_spellings() -> None:
    """``atp-star`` needs no shell quoting; ``atp*`` still works; both mean AtP* with the QK fix."""
    from lmscope.probes.patching.cli import METHODS

    parser = cli.build_parser()
    base = ["patch", "--clean", "a", "--corrupt", "b", "--target", "x", "--out", "o", "--method"]
    spelled = {parser.parse_args(base + [m]).method for m in ("atp-star", "atp*")}
    assert spelled == {"atp-star"} and METHODS["atp-star"] == "atp*"
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["atp"])
