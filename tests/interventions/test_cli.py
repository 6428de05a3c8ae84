"""The ``lmscope`` dispatcher: layer specs, the exit-code rule, commands registered through entry points."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmscope.interventions import cli
from lmscope.interventions.errors import SiteError
from lmscope.interventions.specs import parse_layers, resolve_layers


def test_parse_layers() -> None:
    assert parse_layers(None) is None and parse_layers("all") is None
    assert parse_layers("0,5,10") == [0, 5, 10]
    assert parse_layers("0-3,8,-1") == [0, 1, 2, 3, 8, -1]
    for bad in ("a", "3-1", "1-x"):
        with pytest.raises(cli.InputError, match="--layers"):
            parse_layers(bad)


def test_out_of_range_layers_name_the_bound_typed() -> None:
    """``25-40`` on a 30-layer model: the message names 40 (the bound typed), not 30 (the first missing layer)."""
    with pytest.raises(SiteError, match=r"Layer 40 is out of range \(11 of the layers asked, 30\.\.40, do not exist\): "
                                        r"this model has 30 layers \(0\.\.29 or -30\.\.-1\)"):
        resolve_layers(30, parse_layers("25-40"))
    with pytest.raises(SiteError, match=r"Layer -35 is out of range"):
        resolve_layers(30, [-31, -35, 40 - 10])
    with pytest.raises(SiteError, match=r"Layer 30 is out of range: this model"):
        resolve_layers(30, [30])
    assert resolve_layers(30, parse_layers("25-29,-1")) == [25, 26, 27, 28, 29]


def test_every_installed_command_registers() -> None:
    names = set(cli.command_registrars())
    assert {"decode", "train-lens", "eval-lens", "steer"} <= names
    parser = cli.build_parser()
    for name in names:  # every command parses its --help without importing torch (checked in test_layout)
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([name, "--help"])
        assert exit_.value.code == 0


def test_plugin_command_through_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A third-party package adds a command by declaring an ``lmscope.commands`` entry point."""
    (tmp_path / "fakeplug.py").write_text(
        "def register(sub):\n"
        "    p = sub.add_parser('hello')\n"
        "    p.set_defaults(func=lambda args: print('hello from plugin') or 0)\n")
    dist = tmp_path / "fakeplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lmscope.commands]\nhello = fakeplug:register\n"
                                           "broken = fakeplug_absent:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["hello"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "hello from plugin"
    assert "broken" in captured.err and "failed to import" in captured.err


def test_lmscope_errors_exit_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["decode", "hi", "--layers", "x-y"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmscope: error:") and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage errors are also status 2
        cli.main(["no-such-command"])
    assert exit_.value.code == 2


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: lmscope" in capsys.readouterr().err


def test_negative_layers_reach_the_parser() -> None:
    assert cli._join_negative_values(["decode", "x", "--layers", "-2,-1"]) == ["decode", "x", "--layers=-2,-1"]
    assert cli._join_negative_values(["decode", "x", "--layers", "3", "--json"]) == \
        ["decode", "x", "--layers", "3", "--json"]


def test_no_cli_option_lands_on_an_attribute_every_object_has() -> None:
    """nnsight gives every object a ``.save()`` method; argparse then treats ``args.save`` as already set and
    never fills in the option's default, so ``--save`` was a bound method when absent (found by a fresh clone's
    full run). No option of any command may use a destination an empty namespace already has."""
    import argparse

    import nnsight  # noqa: F401 - its import is what adds the attribute

    from lmscope.interventions.cli import build_parser

    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    clashes = []
    for sub in subparsers:
        for name, command in sub.choices.items():
            for action in command._actions:
                if action.dest != "help" and hasattr(argparse.Namespace(), action.dest):
                    clashes.append(f"lmscope {name} {'/'.join(action.option_strings)} -> {action.dest}")
    assert clashes == []
    args = parser.parse_args(["steer", "--pairs", "sentiment", "--layer", "16", "--scale", "0.2", "hi"])
    assert args.save_folder is None
