"""``broker --version`` and ``--help``: the installed version, and plain text a terminal reads."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

from broker.cli import main

REST_MARKUP = re.compile(r"``|:(class|func|meth|data|mod|attr):`|\.\. [a-z]+::")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "--version") == f"broker {metadata.version('sideband-broker')}\n"


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("serve", "--help"),
        ("migrate", "--help"),
        ("keys", "--help"),
        ("keys", "create", "--help"),
        ("keys", "grant", "--help"),
        ("emulator", "--help"),
    ],
)
def test_help_is_plain_text(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    out = _run(capsys, *argv)
    assert out.startswith("usage: broker")
    assert REST_MARKUP.search(out) is None, out
    assert all(len(line) <= 100 for line in out.splitlines()), out


def test_top_level_help_names_every_command_and_keeps_its_layout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _run(capsys, "--help")
    for command in ("serve", "migrate", "keys", "emulator"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.MULTILINE), command
    assert "--version" in out
    # The examples stay one per line (argparse's default formatter would refill them).
    assert "\n  broker serve --dev " in out
    assert "\n  broker migrate " in out


def test_serve_help_describes_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "serve", "--help")
    for option in ("--host", "--port", "--dev"):
        line = next(line for line in out.splitlines() if line.strip().startswith(option))
        assert len(line.split()) > 2, line  # the option has a description
