"""The ``broker`` command: serve, migrate, keys create|list|revoke|grant, audit, emulator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final, Literal

from aiohttp import web
from sqlalchemy.engine import make_url

from broker import app_state, stack_dump
from broker.app import create_app
from broker.audit.cli import add_audit_parser, audit_command, is_offline
from broker.auth.api_keys import (
    CLI,
    UnknownScopeError,
    UnknownToolError,
    create_api_key,
    list_api_keys,
    revoke_api_key,
    set_tool_grants,
    tool_grant_list,
)
from broker.auth.dev_keys import APP_KEY, OPS_KEY, dev_keys_file, ensure_dev_keys
from broker.auth.principals import describe_scopes
from broker.auth.tenants import CROSS_TENANT, require_known_tenant
from broker.auth.tenants_cli import add_tenants_parser, tenants_command
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.migrate import upgrade_database
from broker.db.models import DEFAULT_TENANT, ApiKey
from broker.errors import ValidationFailedError
from broker.logs import LogFormat, configure_logging
from broker.settings import Secret, Settings, SettingsError
from broker.version import VERSION

logger = logging.getLogger("broker")


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _new_key(
    database_url: str, name: str, scopes: Sequence[str], tools: Sequence[str], tenant: str
) -> tuple[str, str]:
    engine = create_engine(database_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        if tenant != CROSS_TENANT:
            await require_known_tenant(sessionmaker, tenant)
        row, key = await create_api_key(
            sessionmaker,
            name,
            scopes,
            actor=CLI,
            tool_grants=tools,
            tenant_id=None if tenant == CROSS_TENANT else tenant,
        )
    finally:
        await engine.dispose()
    return row.id, key


async def _grant(
    database_url: str, key_id: str, tools: Sequence[str]
) -> tuple[ApiKey, list[str]] | None:
    engine = create_engine(database_url)
    try:
        return await set_tool_grants(make_sessionmaker(engine), key_id, tools, actor=CLI)
    finally:
        await engine.dispose()


def _tool_grants(text: str, settings: Settings) -> list[str]:
    """``--tools a,b`` (or ``*``) as grants, checked against the configured tools' names.

    Only the names are read from the tools file: the command needs none of the tools'
    secrets, which the broker's environment may hold and this shell may not.

    Raises:
        UnknownToolError: a name is not a configured tool.
        SettingsError: the tools file cannot be read.
    """
    names = [t.strip() for t in text.split(",") if t.strip()]
    try:
        tools = tomllib.loads(settings.tools_config.read_text()).get("tools", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{settings.tools_config}: cannot read tools config: {exc}") from exc
    return tool_grant_list(names, known=tools if isinstance(tools, dict) else {})


def _tools_column(grants: Sequence[str]) -> str:
    return ",".join(grants) or "-"


async def _dev_keys(settings: Settings) -> tuple[str, str]:
    engine = create_engine(settings.database_url)
    try:
        keys = await ensure_dev_keys(
            make_sessionmaker(engine), dev_keys_file(settings.signing_key_file)
        )
    finally:
        await engine.dispose()
    return keys[APP_KEY], keys[OPS_KEY]


async def _list_keys(database_url: str) -> Sequence[ApiKey]:
    engine = create_engine(database_url)
    try:
        return await list_api_keys(make_sessionmaker(engine))
    finally:
        await engine.dispose()


async def _revoke_key(database_url: str, key_id: str) -> ApiKey | None:
    engine = create_engine(database_url)
    try:
        return await revoke_api_key(make_sessionmaker(engine), key_id, actor=CLI)
    finally:
        await engine.dispose()


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _keys_command(command: str, args: argparse.Namespace, settings: Settings) -> int:
    """``broker keys create|list|revoke|grant``; never prints a stored hash, only a new key once."""
    tools: list[str] = []
    if command in ("create", "grant"):
        try:
            tools = _tool_grants(args.tools, settings)
        except UnknownToolError as exc:
            sys.stderr.write(f"broker: {exc}; use configured tools, or '*' for any\n")
            return 2
        except SettingsError as exc:
            sys.stderr.write(f"broker: configuration error: {exc}\n")
            return 2
    if command == "create":
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        try:
            key_id, key = asyncio.run(
                _new_key(settings.database_url, args.name, scopes, tools, args.tenant)
            )
        except UnknownScopeError as exc:
            sys.stderr.write(f"broker: {exc}; use: {describe_scopes()}\n")
            return 2
        except ValidationFailedError as exc:
            sys.stderr.write(f"broker: {exc.code}: {exc.detail}\n")
            return 2
        _out(f"created {key_id} ({args.name}); the key is shown only once:")
        _out(key)
    elif command == "grant":
        changed = asyncio.run(_grant(settings.database_url, args.key_id, tools))
        if changed is None:
            sys.stderr.write(f"broker: no API key with id {args.key_id!r}\n")
            return 2
        granted, before = changed
        _out(
            f"{granted.id} ({granted.name}) may grant: {_tools_column(granted.tool_grants)}"
            f" (was: {_tools_column(before)})"
        )
    elif command == "list":
        rows = asyncio.run(_list_keys(settings.database_url))
        table = [("ID", "NAME", "SCOPES", "TOOLS", "CREATED", "REVOKED")] + [
            (
                r.id,
                r.name,
                ",".join(r.scopes),
                _tools_column(r.tool_grants),
                _when(r.created_at),
                _when(r.revoked_at),
            )
            for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            _out(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
    elif command == "revoke":
        revoked = asyncio.run(_revoke_key(settings.database_url, args.key_id))
        if revoked is None:
            sys.stderr.write(f"broker: no API key with id {args.key_id!r}\n")
            return 2
        _out(f"revoked {revoked.id} ({revoked.name}) at {_when(revoked.revoked_at)}")
    return 0


def _serve(settings: Settings, dev: bool, log_format: LogFormat) -> None:
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        # A local SQLite file is ours to bring up to date; a shared server database is
        # migrated deliberately with `broker migrate`.
        upgrade_database(settings.database_url)
    dev_key = ops_key = None
    if dev:
        dev_key, ops_key = asyncio.run(_dev_keys(settings))
        settings = settings.replace(demo=True)
    app = create_app(settings)

    async def listening(app: web.Application) -> None:
        # A log pipeline reads JSON lines only: one record instead of the banner.
        logger.info(
            "broker listening url=http://%s:%s provider=%s",
            settings.host,
            settings.port,
            app[app_state.PROVIDER].base_url,
        )

    async def banner(app: web.Application) -> None:
        base = f"http://{settings.host}:{settings.port}"
        _out()
        if settings.demo:
            _out(f"  demo page   {base}/   (open it in a browser)")
        _out(f"  broker      {base}")
        _out(f"  health      {base}/healthz")
        _out(f"  sessions    POST {base}/api/v1/sessions")
        _out(f"  ops         {base}/ops/   (dashboard: paste an ops key)")
        if app_state.EMULATOR_RUNNER in app:
            _out(f"  provider    built-in emulator ({app[app_state.PROVIDER].base_url})")
        else:
            _out(f"  provider    {app[app_state.PROVIDER].base_url}")
        if dev_key is not None:
            _out(
                f"  API key     {dev_key}   (development key, scopes: sessions:create monitor:read)"
            )
        if ops_key is not None:
            _out(f"  ops key     {ops_key}   (development key, scopes: monitor:read admin)")
        if dev_key is not None:
            _out()
            _out("  try:")
            _out(
                f"    curl -s -X POST {base}/api/v1/sessions -H 'Authorization: Bearer {dev_key}'"
                " -H 'Content-Type: application/json' -d '{\"tools\": [\"lookup_order\"]}'"
            )
        _out()

    async def watch_stacks(app: web.Application) -> None:
        stack_dump.watch_loop(asyncio.get_running_loop())

    app.on_startup.append(watch_stacks)
    app.on_startup.append(listening if log_format is LogFormat.JSON else banner)
    stack_dump.install()
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    # After every cleanup: a process that logged this and still runs is held by a thread.
    logger.info("broker stopped")


def _emulator_key(cli_key: str | None, environ: Mapping[str, str]) -> str | None:
    # The environment is preferred in the docs: a command-line key shows in `ps`.
    return cli_key or environ.get("EMULATOR_API_KEY") or None


def _emulator(host: str, port: int, api_key: str, flavor: Literal["openai", "azure"]) -> None:
    # Imported here: every other command runs without the emulator's media stack.
    from emulator import EmulatorSettings
    from emulator import create_app as create_emulator_app

    app = create_emulator_app(EmulatorSettings(api_key=api_key, flavor=flavor))
    if flavor == "azure":
        _out(f"emulator: Azure OpenAI realtime API at http://{host}:{port}/openai/v1")
    else:
        _out(f"emulator: OpenAI-compatible realtime API at http://{host}:{port}/v1")
    web.run_app(app, host=host, port=port, print=None)


def _log_format(args: argparse.Namespace, configured: str | None) -> LogFormat:
    """JSON for a server (log pipelines read it); text for a developer's terminal."""
    chosen: str | None = args.log_format or configured
    if chosen:
        return LogFormat(chosen)
    if args.command == "serve" and not args.dev:
        return LogFormat.JSON
    return LogFormat.CONSOLE


DESCRIPTION: Final = """\
Sideband-controlled WebRTC session broker for realtime voice models.

Configuration comes from BROKER_* environment variables (and a .env file);
the README lists every setting."""

EPILOG: Final = """\
examples:
  broker serve --dev            serve with the built-in provider, the demo page
                                and development keys (what `make run` does)
  broker serve                  serve as configured (JSON logs)
  broker migrate                bring the database schema up to date
  broker keys create --name app --scopes sessions:create --tools lookup_order
  broker audit verify --public-key audit.pub
                                recompute the audit chain and its signatures
  broker emulator --port 8090   run the local provider alone

Run `broker COMMAND --help` for a command's options."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="broker",
        description=DESCRIPTION,
        epilog=EPILOG,
        # The texts above are laid out by hand; argparse would refill them into one paragraph.
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)"
    )
    parser.add_argument(
        "--log-format",
        choices=[f.value for f in LogFormat],
        help="json (one object per line; the default) or console (the default with --dev);"
        " env BROKER_LOG_FORMAT",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the broker (and the built-in provider if no key)",
        description="Run the broker. Without a provider key it starts the built-in emulator"
        " on loopback and says so.",
    )
    serve.add_argument("--host", help="address to listen on (default: BROKER_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: BROKER_PORT, 8080)")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="print development keys (made once, kept beside the signing key) and serve the"
        " demo page at /",
    )
    sub.add_parser("migrate", help="bring the database schema up to date")
    keys_cmd = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes",
        required=True,
        help=f"comma-separated, among: {describe_scopes()}",
    )
    create.add_argument(
        "--tools",
        default="",
        help="comma-separated tools it may put in a session's allowlist, or '*' for any"
        " (default: none)",
    )
    create.add_argument(
        "--tenant",
        default=DEFAULT_TENANT,
        help=f"its tenant (default: {DEFAULT_TENANT}); '{CROSS_TENANT}' for a cross-tenant key",
    )
    keys_sub.add_parser(
        "list", help="list keys: id, name, scopes, tools, created, revoked (no secrets)"
    )
    revoke = keys_sub.add_parser("revoke", help="revoke a key: refused from its next request")
    revoke.add_argument("key_id", metavar="KEY_ID")
    grant = keys_sub.add_parser(
        "grant",
        help="replace the tools a key may grant (audited); its next session is checked",
    )
    grant.add_argument("key_id", metavar="KEY_ID")
    grant.add_argument(
        "--tools",
        required=True,
        help="comma-separated tools, '*' for any, '' for none",
    )
    add_tenants_parser(sub)
    add_audit_parser(sub)
    emu = sub.add_parser("emulator", help="run the local OpenAI-compatible provider alone")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8090)
    emu.add_argument(
        "--api-key",
        help="the standard Bearer key the emulator accepts (default: $EMULATOR_API_KEY; "
        "prefer the variable: a key given here is visible in process listings such as ps)",
    )
    emu.add_argument(
        "--flavor",
        choices=["openai", "azure"],
        default="openai",
        help="the provider to play: OpenAI (routes under /v1) or Azure OpenAI's GA path "
        "(under /openai/v1: api-key header, client secrets only on /realtime/calls)",
    )
    args = parser.parse_args(argv)
    emulator_key = None
    if args.command == "emulator":
        emulator_key = _emulator_key(args.api_key, os.environ)
        if emulator_key is None:
            emu.error("set EMULATOR_API_KEY or pass --api-key")

    if args.command == "audit" and is_offline(args):
        return audit_command(args, None)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.stderr.write(f"broker: configuration error: {exc}\n")
        return 2
    log_format = _log_format(args, settings.log_format)
    configure_logging(
        args.log_level,
        [
            settings.admin_key,
            settings.provider_api_key,
            settings.signing_key,
            settings.database_password,
            settings.webhook_secret,
            Secret(emulator_key) if emulator_key else None,
        ],
        fmt=log_format,
    )
    if args.command == "serve":
        settings = settings.replace(
            host=args.host or settings.host,
            port=args.port if args.port is not None else settings.port,
        )
        try:
            _serve(settings, args.dev, log_format)
        except SettingsError as exc:
            # Found at start-up, beside the other instances (broker.call.ownership).
            sys.stderr.write(f"broker: configuration error: {exc}\n")
            return 2
    elif args.command == "migrate":
        upgrade_database(settings.database_url)
        _out("database is up to date")
    elif args.command == "keys":
        return _keys_command(args.keys_command, args, settings)
    elif args.command == "tenants":
        return tenants_command(args, settings)
    elif args.command == "audit":
        return audit_command(args, settings)
    elif args.command == "emulator" and emulator_key is not None:
        _emulator(args.host, args.port, emulator_key, args.flavor)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
