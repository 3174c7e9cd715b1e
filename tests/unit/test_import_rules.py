"""The runtime packages keep their import rules (tests/support/import_rules.py), and the
checker catches a planted break of each rule, so a pass here means something."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from tests.support.import_rules import RULES, Rule, Violation, check, parse_source, read_tree

ROOT: Final = Path(__file__).resolve().parents[2]


def _report(violations: list[Violation]) -> str:
    return "\n".join(str(v) for v in violations)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_the_runtime_packages_keep_the_rule(rule: Rule) -> None:
    broken = check(read_tree(ROOT), [rule])
    assert not broken, f"{rule.__doc__}\n{_report(broken)}"


# A planted break of each rule: (file, source, the rule's name, the line it is on).
PLANTED: Final = [
    ("broker/api/x.py", "from broker.db import engine\n", "api → services → db", 1),
    ("broker/api/x.py", "import broker.db.migrate\n", "api → services → db", 1),
    ("broker/api/x.py", "from sideband import Provider\n", "api → services → db", 1),
    (
        "broker/api/x.py",
        "async def handler(sm):\n    async with sm.begin() as s:\n        pass\n",
        "api → services → db",
        2,
    ),
    (
        "broker/api/x.py",
        "async def handler(sm):\n    async with sm() as s:\n        await s.commit()\n",
        "api → services → db",
        3,
    ),
    ("broker/session/x.py", "from broker.api import routes\n", "services below the api", 1),
    ("broker/record/x.py", "from broker import app_state\n", "services below the api", 1),
    ("broker/tools/x.py", "from ..api._auth import principal\n", "services below the api", 1),
    ("broker/db/x.py", "from broker.record.usage import Usage\n", "db is the bottom", 1),
    ("broker/db/queries/x.py", "from ...session import service\n", "db is the bottom", 1),
    ("broker/db/x.py", "import sideband\n", "db is the bottom", 1),
    ("broker/db/x.py", "from broker.audit import trail\n", "db is the bottom", 1),
    (
        "broker/audit/records.py",
        "from broker.db import models\n",
        "db value types stand alone",
        1,
    ),
    ("sideband/x.py", "from broker.db import models\n", "sideband never imports broker", 1),
    ("sideband/x.py", "def f():\n    import emulator\n", "sideband never imports broker", 2),
    ("emulator/x.py", "from sideband.events import Item\n", "emulator stands alone", 1),
    ("broker/session/x.py", "from sideband import CallController\n", "call → sideband", 1),
    ("broker/api/x.py", "import sideband.connection\n", "call → sideband", 1),
    ("broker/app.py", "from emulator import create_app\n", "emulator only at built-in start-up", 1),
    (
        "broker/app.py",
        "async def other():\n    from emulator import create_app\n",
        "emulator only at built-in start-up",
        2,
    ),
    (
        "broker/session/x.py",
        "import importlib\nmod = importlib.import_module('emulator.app')\n",
        "emulator only at built-in start-up",
        2,
    ),
    ("migrations/x.py", "import emulator\n", "emulator only at built-in start-up", 1),
    ("broker/call/x.py", "from openai.types import realtime\n", "runtime never imports openai", 1),
    ("emulator/x.py", "import openai\n", "runtime never imports openai", 1),
    (
        "broker/tools/x.py",
        "from opentelemetry import trace\n",
        "opentelemetry only in broker/tracing",
        1,
    ),
    (
        "sideband/x.py",
        "def f():\n    import opentelemetry.sdk.trace\n",
        "opentelemetry only in broker/tracing",
        2,
    ),
]


@pytest.mark.parametrize(("path", "source", "rule", "line"), PLANTED)
def test_a_planted_break_is_caught(path: str, source: str, rule: str, line: int) -> None:
    broken = check([parse_source(path, source)])
    assert [(v.path, v.line, v.rule) for v in broken if v.rule == rule] == [(path, line, rule)], (
        _report(broken)
    )
    assert path in str(broken[0]) and f":{line}:" in str(broken[0])


def test_every_rule_has_a_planted_break() -> None:
    planted = {rule for _, _, rule, _ in PLANTED}
    names = {v.rule for path, source, _, _ in PLANTED for v in check([parse_source(path, source)])}
    assert len(planted) == len(RULES) and planted == names


# What the rules allow, so a rule that flags everything fails too.
ALLOWED: Final = [
    ("broker/api/x.py", "from broker.db import queries\nfrom broker.db.models import SessionRow\n"),
    ("broker/api/x.py", "from broker.session.service import SessionService\n"),
    ("broker/api/x.py", "async def h(sm):\n    async with sm() as s:\n        await s.get(1)\n"),
    ("broker/session/x.py", "from broker.db import queries\nfrom sideband import Provider\n"),
    ("broker/call/x.py", "from sideband import CallController, SidebandConnection\n"),
    ("broker/db/queries/x.py", "from broker.db.models import SessionRow\nfrom . import _common\n"),
    ("broker/app.py", "from broker.api.routes import setup_routes\n"),
    (
        "broker/app.py",
        "async def start_builtin_provider(s, h):\n    from emulator import create_app\n",
    ),
    ("broker/cli.py", "def _emulator(h, p, k):\n    from emulator import EmulatorSettings\n"),
    ("sideband/x.py", "from sideband.events import Item\n"),
    ("emulator/x.py", "import numpy\nfrom emulator.settings import EmulatorSettings\n"),
    ("broker/tracing.py", "from opentelemetry import trace\n"),
    ("broker/tools/x.py", "from broker import tracing\n"),
]


@pytest.mark.parametrize(("path", "source"), ALLOWED)
def test_what_the_rules_allow_passes(path: str, source: str) -> None:
    assert check([parse_source(path, source)]) == []
