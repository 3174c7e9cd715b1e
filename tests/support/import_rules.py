"""Who may import whom among the runtime packages, checked on their source with ``ast``.

The layers, as the README draws them::

    broker/app.py, cli.py (wiring)
      └─ broker/api (HTTP)  ──►  services: auth, session, call, tools, record, webhooks
                                   └─ broker/db (rows and queries)
    broker/call ──► sideband (the call's controller and socket)
    emulator: a stand-alone fake provider, loaded only to serve as the built-in one

Each rule reads one parsed file and yields what it breaks; :func:`check` runs them all.
Imports are read wherever they are (a function body, ``if TYPE_CHECKING``), including
``importlib.import_module("…")`` with a literal name. An import is named by what it binds:
``from broker.db import queries`` imports ``broker.db.queries`` and ``from sideband import
CallController`` imports ``sideband.CallController``; rules match dotted prefixes.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

RUNTIME_PACKAGES: Final = ("broker", "sideband", "emulator", "migrations")
WIRING: Final = ("broker.app", "broker.app_state", "broker.cli", "broker.__main__")
"""The top of the house: they build the app and may import anything in ``broker``."""
SERVICES: Final = (
    "broker.audit",
    "broker.auth",
    "broker.session",
    "broker.call",
    "broker.tools",
    "broker.record",
    "broker.webhooks",
)
API_READS: Final = (
    "broker.db.models",
    "broker.db.queries",
    "broker.db.session_list",
    "broker.db.times",
)
"""What a handler may take from ``broker.db``: row types (and their times read back as UTC),
and queries run in a read session."""
DB_VALUE_TYPES: Final = ("broker.audit.records", "broker.audit.canonical")
"""Value types ``broker/db`` may use: the audit record's format (what its rows hold and how
they are hashed). They import nothing of the broker but each other, so the bottom stays the
bottom."""
TRANSACTION_CALLS: Final = frozenset({"begin", "begin_nested", "commit", "flush"})
CALL_MACHINERY: Final = (
    "sideband.CallController",
    "sideband.controller",
    "sideband.SidebandConnection",
    "sideband.connection",
)
EMULATOR_STARTS: Final = frozenset(
    {("broker/app.py", "start_builtin_provider"), ("broker/cli.py", "_emulator")}
)
"""The functions that may import ``emulator``: ``broker serve``'s built-in provider and the
``broker emulator`` command."""
TRACING: Final = "broker.tracing"
"""The one module that imports the optional ``opentelemetry`` packages."""


@dataclass(frozen=True)
class Import:
    line: int
    target: str
    functions: tuple[str, ...]
    """The enclosing function names, outermost first; empty at module level."""


@dataclass(frozen=True)
class AttributeCall:
    line: int
    attribute: str


@dataclass(frozen=True)
class SourceFile:
    path: str
    """Relative to the repository root, with ``/``."""
    module: str
    imports: tuple[Import, ...]
    calls: tuple[AttributeCall, ...]


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    target: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.detail}"


def within(target: str, *prefixes: str) -> bool:
    """Whether the dotted ``target`` is one of ``prefixes`` or inside one."""
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class _Reader(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self._package = module_name(path).split(".")
        if not path.endswith("__init__.py"):
            self._package = self._package[:-1]
        self._functions: list[str] = []
        self.imports: list[Import] = []
        self.calls: list[AttributeCall] = []

    def _add(self, node: ast.stmt | ast.expr, target: str) -> None:
        self.imports.append(Import(node.lineno, target, tuple(self._functions)))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions.append(node.name)
        self.generic_visit(node)
        self._functions.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self._package[: len(self._package) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        for alias in node.names:
            self._add(node, module if alias.name == "*" else f"{module}.{alias.name}")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (
            name in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            self._add(node, node.args[0].value)
        if isinstance(func, ast.Attribute):
            self.calls.append(AttributeCall(node.lineno, func.attr))
        self.generic_visit(node)


def parse_source(path: str, source: str) -> SourceFile:
    """Read one file's imports and attribute calls; ``path`` as in the repository."""
    reader = _Reader(path)
    reader.visit(ast.parse(source, filename=path))
    return SourceFile(path, module_name(path), tuple(reader.imports), tuple(reader.calls))


def read_tree(root: Path, packages: Iterable[str] = RUNTIME_PACKAGES) -> list[SourceFile]:
    return [
        parse_source(path.relative_to(root).as_posix(), path.read_text())
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    ]


Rule = Callable[[SourceFile], Iterator[Violation]]


def api_reads_through_services(file: SourceFile) -> Iterator[Violation]:
    """api → services → db: a handler takes row types and read queries from ``broker.db``
    and never holds a transaction (every write is a service's); it never reaches the
    provider's libraries directly."""
    rule = "api → services → db"
    if not within(file.module, "broker.api"):
        return
    for imp in file.imports:
        if within(imp.target, "broker.db") and not within(imp.target, *API_READS):
            yield Violation(
                file.path,
                imp.line,
                rule,
                imp.target,
                f"imports {imp.target}; handlers use only {', '.join(API_READS)} from broker.db",
            )
        elif within(imp.target, "sideband", "emulator"):
            yield Violation(
                file.path,
                imp.line,
                rule,
                imp.target,
                f"imports {imp.target}; handlers reach the provider through a service",
            )
    for call in file.calls:
        if call.attribute in TRANSACTION_CALLS:
            yield Violation(
                file.path,
                call.line,
                rule,
                call.attribute,
                f"calls .{call.attribute}(): a handler never writes; the write belongs in a"
                " service",
            )


def services_stay_below_the_api(file: SourceFile) -> Iterator[Violation]:
    """Services and the database never import the HTTP layer or the wiring above them."""
    if not within(file.module, *SERVICES, "broker.db"):
        return
    for imp in file.imports:
        if within(imp.target, "broker.api", *WIRING):
            yield Violation(
                file.path,
                imp.line,
                "services below the api",
                imp.target,
                f"imports {imp.target}, which sits above {file.module}",
            )


def db_is_the_bottom(file: SourceFile) -> Iterator[Violation]:
    """``broker/db`` imports nothing of the broker outside itself, nor the provider's side."""
    if not within(file.module, "broker.db"):
        return
    for imp in file.imports:
        if within(imp.target, "broker", "sideband", "emulator") and not within(
            imp.target, "broker.db", *DB_VALUE_TYPES
        ):
            yield Violation(
                file.path,
                imp.line,
                "db is the bottom",
                imp.target,
                f"imports {imp.target}; broker/db depends on nothing above it",
            )


def db_value_types_stand_alone(file: SourceFile) -> Iterator[Violation]:
    """The value types ``broker/db`` may use import nothing of the broker but each other."""
    if not within(file.module, *DB_VALUE_TYPES):
        return
    for imp in file.imports:
        if within(imp.target, "broker", "sideband", "emulator") and not within(
            imp.target, *DB_VALUE_TYPES
        ):
            yield Violation(
                file.path,
                imp.line,
                "db value types stand alone",
                imp.target,
                f"imports {imp.target}; broker/db uses this module, so it sits at the bottom too",
            )


def sideband_never_imports_broker(file: SourceFile) -> Iterator[Violation]:
    """``sideband`` is the broker's library: it knows neither the broker nor the emulator."""
    if not within(file.module, "sideband"):
        return
    for imp in file.imports:
        if within(imp.target, "broker", "emulator"):
            yield Violation(
                file.path,
                imp.line,
                "sideband never imports broker",
                imp.target,
                f"imports {imp.target}; the broker injects what sideband needs",
            )


def emulator_stands_alone(file: SourceFile) -> Iterator[Violation]:
    """The emulator is an independent fake provider: sharing the client's code would let a
    misreading of the protocol pass on both sides."""
    if not within(file.module, "emulator"):
        return
    for imp in file.imports:
        if within(imp.target, "broker", "sideband"):
            yield Violation(
                file.path,
                imp.line,
                "emulator stands alone",
                imp.target,
                f"imports {imp.target}",
            )


def call_owns_the_sideband(file: SourceFile) -> Iterator[Violation]:
    """call → sideband: only ``broker/call`` drives a call's controller and socket."""
    if within(file.module, "broker.call") or not within(file.module, "broker"):
        return
    for imp in file.imports:
        if within(imp.target, *CALL_MACHINERY):
            yield Violation(
                file.path,
                imp.line,
                "call → sideband",
                imp.target,
                f"imports {imp.target}; the call controller is broker/call's",
            )


def emulator_only_at_builtin_startup(file: SourceFile) -> Iterator[Violation]:
    """Nothing imports ``emulator`` but the built-in provider's start-up, inside a function,
    so a broker with a provider key never loads it (nor aiortc, av, numpy)."""
    if within(file.module, "emulator"):
        return
    for imp in file.imports:
        if not within(imp.target, "emulator"):
            continue
        where = imp.functions[-1] if imp.functions else None
        if (file.path, where) not in EMULATOR_STARTS:
            place = f"in {where}()" if where else "at module level"
            yield Violation(
                file.path,
                imp.line,
                "emulator only at built-in start-up",
                imp.target,
                f"imports {imp.target} {place}; only "
                + ", ".join(f"{p}:{f}()" for p, f in sorted(EMULATOR_STARTS))
                + " may, lazily",
            )


def runtime_never_imports_openai(file: SourceFile) -> Iterator[Violation]:
    """The OpenAI SDK is a test dependency (conformance checks); runtime code speaks the
    protocol itself."""
    for imp in file.imports:
        if within(imp.target, "openai"):
            yield Violation(
                file.path,
                imp.line,
                "runtime never imports openai",
                imp.target,
                f"imports {imp.target}; openai is in the dev extra only",
            )


def opentelemetry_only_in_tracing(file: SourceFile) -> Iterator[Violation]:
    """OpenTelemetry is an optional extra: only ``broker/tracing.py`` imports it, under its
    guard, so the broker runs without it (``tests/unit/broker/test_tracing.py``)."""
    if file.module == TRACING:
        return
    for imp in file.imports:
        if within(imp.target, "opentelemetry"):
            yield Violation(
                file.path,
                imp.line,
                "opentelemetry only in broker/tracing",
                imp.target,
                f"imports {imp.target}; the otel extra is optional: use broker.tracing",
            )


RULES: Final[tuple[Rule, ...]] = (
    api_reads_through_services,
    services_stay_below_the_api,
    db_is_the_bottom,
    db_value_types_stand_alone,
    sideband_never_imports_broker,
    emulator_stands_alone,
    call_owns_the_sideband,
    emulator_only_at_builtin_startup,
    runtime_never_imports_openai,
    opentelemetry_only_in_tracing,
)


def check(files: Iterable[SourceFile], rules: Iterable[Rule] = RULES) -> list[Violation]:
    """Every violation of ``rules`` in ``files``."""
    rules = tuple(rules)
    return [violation for file in files for rule in rules for violation in rule(file)]
