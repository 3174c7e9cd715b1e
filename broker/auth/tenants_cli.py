"""``broker tenants create ID --name NAME`` and ``broker tenants list``.

The command line acts as whoever holds the database (audit actor ``cli``), like ``broker
keys``; it makes the same checks as ``POST /api/v1/tenants`` (:mod:`broker.auth.tenants`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from broker.audit.records import Actor
from broker.auth.tenants import create_tenant, list_tenants
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import Tenant
from broker.errors import BrokerError
from broker.settings import Settings


def add_tenants_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenants = sub.add_parser("tenants", help="manage tenants (teams sharing the broker)")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    create = tenants_sub.add_parser("create", help="create a tenant (audited tenant.created)")
    create.add_argument("tenant_id", metavar="ID", help="1-40 characters of a-z, 0-9, _ and -")
    create.add_argument("--name", required=True)
    tenants_sub.add_parser("list", help="list tenants: id, name, created")


async def _create(database_url: str, tenant_id: str, name: str) -> Tenant:
    engine = create_engine(database_url)
    try:
        return await create_tenant(make_sessionmaker(engine), tenant_id, name, actor=Actor.CLI)
    finally:
        await engine.dispose()


async def _list(database_url: str) -> Sequence[Tenant]:
    engine = create_engine(database_url)
    try:
        return await list_tenants(make_sessionmaker(engine))
    finally:
        await engine.dispose()


def tenants_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.tenants_command == "create":
        try:
            row = asyncio.run(_create(settings.database_url, args.tenant_id, args.name))
        except BrokerError as exc:
            sys.stderr.write(f"broker: {exc.code}: {exc.detail}\n")
            return 2
        sys.stdout.write(f"created tenant {row.id} ({row.name})\n")
        return 0
    rows = asyncio.run(_list(settings.database_url))
    table = [("ID", "NAME", "CREATED")] + [
        (r.id, r.name, r.created_at.strftime("%Y-%m-%d %H:%M:%S")) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for cells in table:
        line = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")
    return 0
