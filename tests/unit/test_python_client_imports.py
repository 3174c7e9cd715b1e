"""The Python client and the broker stay apart, read from their source with ``ast``
(tests/support/import_rules.py's reader): the broker never imports ``broker_client`` (it
must run without the client installed), the client imports only the standard library and
``httpx``, and its webhook verifier the standard library alone (a receiver may take that
module by itself). The virtualenv test (tests/integration/test_python_client_venv.py)
shows the same at run time."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import pytest

from tests.support.import_rules import RUNTIME_PACKAGES, SourceFile, parse_source, read_tree

ROOT: Final = Path(__file__).resolve().parents[2]
CLIENT_SRC: Final = ROOT / "clients" / "python" / "src"
STDLIB: Final = frozenset(sys.stdlib_module_names) | {"__future__"}


def _top(target: str) -> str:
    return target.split(".")[0]


def broker_imports_of_the_client(files: Iterable[SourceFile]) -> list[str]:
    return [
        f"{f.path}:{imp.line} imports {imp.target}"
        for f in files
        for imp in f.imports
        if _top(imp.target) == "broker_client"
    ]


def foreign_client_imports(files: Iterable[SourceFile]) -> list[str]:
    """Imports outside the standard library, ``httpx`` and the client itself; for the
    verifier module, outside the standard library."""
    found = []
    for f in files:
        allowed = STDLIB if f.module == "broker_client.webhooks" else STDLIB | {"httpx"}
        found += [
            f"{f.path}:{imp.line} imports {imp.target}"
            for imp in f.imports
            if _top(imp.target) not in allowed
            and not (_top(imp.target) == "broker_client" and f.module != "broker_client.webhooks")
        ]
    return found


def test_the_broker_never_imports_the_client() -> None:
    files = read_tree(ROOT, RUNTIME_PACKAGES)
    assert files and broker_imports_of_the_client(files) == []


def test_the_client_imports_only_the_standard_library_and_httpx() -> None:
    files = read_tree(CLIENT_SRC, ("broker_client",))
    assert {f.module for f in files} >= {"broker_client.client", "broker_client.webhooks"}
    assert foreign_client_imports(files) == []


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("broker_client/client.py", "import aiohttp\n"),
        ("broker_client/models.py", "def f():\n    from broker.errors import BrokerError\n"),
        ("broker_client/webhooks.py", "import httpx\n"),
        ("broker_client/webhooks.py", "from broker_client.errors import BrokerError\n"),
    ],
)
def test_a_planted_client_import_is_caught(path: str, source: str) -> None:
    assert len(foreign_client_imports([parse_source(path, source)])) == 1


def test_a_planted_broker_import_of_the_client_is_caught() -> None:
    planted = parse_source("broker/webhooks/x.py", "from broker_client import verify\n")
    assert broker_imports_of_the_client([planted]) == [
        "broker/webhooks/x.py:1 imports broker_client.verify"
    ]
    allowed = parse_source("broker_client/errors.py", "import json\nfrom typing import Any\n")
    assert foreign_client_imports([allowed]) == []
