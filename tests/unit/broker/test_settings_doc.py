"""The README's settings table is generated from ``Settings``: any drift fails here."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from broker.settings import Settings
from broker.settings.doc import END, START, main, settings_table, table_in, with_table
from tests.support.postgres import TEST_DATABASE_ENV

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
CODE = ("broker", "sideband", "emulator", "migrations", "bench")
ENV_READ = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\()\s*["'](BROKER_[A-Z0-9_]+)["']""")


def _variables(text: str) -> set[str]:
    return set(re.findall(r"\b(?:BROKER|OPENAI)_[A-Z0-9_]*[A-Z0-9]\b", text))


def test_the_readme_table_is_the_generated_one() -> None:
    documented, generated = table_in(README.read_text()), settings_table()
    diff = "".join(
        difflib.unified_diff(
            documented.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            "README.md",
            "broker/settings/model.py",
        )
    )
    assert documented == generated, (
        "README.md's settings table differs from broker/settings/model.py: run"
        f" `make settings-table`\n{diff}"
    )


def test_every_setting_is_described_and_listed_once() -> None:
    table = settings_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    assert all(field.description for field in Settings.model_fields.values())
    # The variables the issue found undocumented, and those only in prose before.
    for name in (
        "BROKER_EMULATOR_PORT",
        "BROKER_SIGNING_KEY_FILE",
        "BROKER_LOG_FORMAT",
        "BROKER_TOOL_BREAKER_FAILURES",
        "BROKER_TOOL_BREAKER_COOLDOWN_S",
    ):
        assert sum(row.startswith(f"| `{name}`") for row in rows) == 1, name


def test_every_variable_the_code_reads_is_in_the_table() -> None:
    """A ``BROKER_*`` read straight from the environment anywhere is a setting to document."""
    documented = _variables(settings_table())
    read = {
        (name, str(path.relative_to(ROOT)))
        for package in CODE
        for path in (ROOT / package).rglob("*.py")
        for name in ENV_READ.findall(path.read_text())
    }
    assert {(name, path) for name, path in read if name not in documented} == set()


def test_the_scan_for_environment_reads_finds_each_form() -> None:
    sample = """
        os.environ["BROKER_A"]
        os.environ.get(
            "BROKER_B", "x"
        )
        os.getenv('BROKER_C')
        name.startswith(("BROKER_", "OPENAI_"))
    """
    assert set(ENV_READ.findall(sample)) == {"BROKER_A", "BROKER_B", "BROKER_C"}


def test_the_readme_names_no_variable_the_broker_does_not_read() -> None:
    # The test suite's own variable is documented with `make test`; the broker never reads it.
    unknown = _variables(README.read_text()) - _variables(settings_table()) - {TEST_DATABASE_ENV}
    assert unknown == set(), f"README.md names variables that are not settings: {unknown}"


def test_writing_the_table_replaces_only_what_is_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nBefore.\n\n{START}\n| stale |\n{END}\n\nAfter.\n")
    assert main(["--write", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nBefore.\n\n") and text.endswith(f"{END}\n\nAfter.\n")
    assert table_in(text) == settings_table() and "stale" not in text
    assert with_table(text, settings_table()) == text  # a second run changes nothing


@pytest.mark.parametrize("text", ["no markers", f"{END}\n{START}\n"])
def test_a_file_without_the_markers_is_refused(tmp_path: Path, text: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(text)
    assert main(["--write", str(readme)]) == 1
    assert readme.read_text() == text
    with pytest.raises(ValueError, match="settings-table:start"):
        table_in(text)
