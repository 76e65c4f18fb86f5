"""Every entry of the `herd` command says what it does: each subcommand (at every level) has a
summary and a description, each option and argument a help text; `herd` alone prints the help."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from herd.cli import _parser
from herd.cli import main as cli_main


def _walk(
    parser: argparse.ArgumentParser, path: str = "herd"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def _subcommand_summaries(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    summaries: dict[str, str | None] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            summaries.update({name: listed.get(name) for name in action.choices})
    return summaries


def test_every_command_and_option_has_help() -> None:
    walked = list(_walk(_parser()))
    assert {"herd talk", "herd mail", "herd user add", "herd outbox"} <= {p for p, _ in walked}
    missing = []
    for path, parser in walked:
        if not (parser.description or "").strip():
            missing.append(f"{path}: no description")
        for name, summary in _subcommand_summaries(parser).items():
            if not (summary or "").strip():
                missing.append(f"{path} {name}: no summary in the list of commands")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_herd_alone_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: herd")
    for command in ("run", "up", "status", "user", "outbox", "mail", "talk"):
        assert f"\n    {command} " in out, command


def test_talk_and_mail_help_name_their_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in (
        (["talk", "--help"], ("SERVER", "HOST:PORT", "--config PATH")),
        (["mail", "--help"], ("--html [FILE]", "--ics [FILE]", "ID")),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli_main(argv)
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        for word in words:
            assert word in out, (argv, word)
