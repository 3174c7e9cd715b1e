"""``broker serve --dev``'s two API keys: made once per host, then reused at every start.

The keys themselves are kept in a private file beside the signing key (only their hashes are in
the database, so they could not be shown again otherwise). At each start a stored key is reused
while its row is still active with the same scopes and tool grants (every tool: a development
broker's tools are all there to try); otherwise a new one is made. Either way every other
active key with a development name and scopes is revoked, so the keys of earlier starts (or of
a lost key file) never pile up and stay valid.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit.records import Actor
from broker.auth.api_keys import create_api_key, revoke_api_key
from broker.auth.principals import Scope, hash_api_key
from broker.db.models import ALL_TOOLS, ApiKey
from broker.settings import SettingsError
from broker.settings.key_file import read_private_file, write_private_file

logger = logging.getLogger(__name__)

DEV_KEYS_FILE_NAME: Final = "dev-keys.json"


@dataclass(frozen=True)
class DevKey:
    """One development key: its name in ``broker keys list``, its scopes and tool grants."""

    name: str
    scopes: tuple[Scope, ...]
    tools: tuple[str, ...] = (ALL_TOOLS,)


APP_KEY: Final = DevKey("development", (Scope.SESSIONS_CREATE, Scope.MONITOR_READ))
OPS_KEY: Final = DevKey("development ops", (Scope.MONITOR_READ, Scope.ADMIN))
"""The dashboard's key: watch, hang up, disable tools (never create)."""
DEV_KEYS: Final = (APP_KEY, OPS_KEY)


def dev_keys_file(signing_key_file: Path) -> Path:
    """Where the development keys are kept: beside the signing key (``.broker/``)."""
    return signing_key_file.parent / DEV_KEYS_FILE_NAME


def _stored(path: Path) -> dict[str, str]:
    try:
        text = read_private_file(path)
    except OSError as exc:
        raise SettingsError(f"cannot read the development keys in {path}: {exc.strerror}") from exc
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        # A damaged file only costs new keys (the old ones are revoked below).
        logger.warning("development key file unreadable, making new keys path=%s", path)
        return {}
    if not isinstance(data, dict):
        return {}
    return {name: key for name, key in data.items() if isinstance(key, str)}


def _is_dev_row(row: ApiKey, spec: DevKey) -> bool:
    return row.name == spec.name and sorted(row.scopes) == sorted(spec.scopes)


def _is_current(row: ApiKey, spec: DevKey) -> bool:
    """A development row to keep: also its grants are the spec's (older ones may lack them)."""
    return _is_dev_row(row, spec) and sorted(row.tool_grants) == sorted(spec.tools)


async def ensure_dev_keys(
    sessionmaker: async_sessionmaker[AsyncSession], path: Path
) -> Mapping[DevKey, str]:
    """The development keys to print: reused from ``path`` if still active, else new.

    Raises:
        SettingsError: the key file is readable by others, not the broker's own, or cannot
            be written.
    """
    stored = _stored(path)
    async with sessionmaker() as s:
        active = (
            await s.scalars(
                select(ApiKey).where(
                    ApiKey.name.in_([spec.name for spec in DEV_KEYS]),
                    ApiKey.revoked_at.is_(None),
                )
            )
        ).all()
    keys: dict[DevKey, str] = {}
    kept: set[str] = set()
    for spec in DEV_KEYS:
        key = stored.get(spec.name)
        row = next(
            (
                r
                for r in active
                if key is not None and _is_current(r, spec) and r.key_hash == hash_api_key(key)
            ),
            None,
        )
        if row is None or key is None:
            row, key = await create_api_key(
                sessionmaker, spec.name, spec.scopes, actor=Actor.BROKER, tool_grants=spec.tools
            )
        keys[spec] = key
        kept.add(row.id)
    stale = [r.id for r in active if r.id not in kept and any(_is_dev_row(r, s) for s in DEV_KEYS)]
    for key_id in stale:
        # Through the one revoke path, so each revocation is audited like any other.
        await revoke_api_key(sessionmaker, key_id, actor=Actor.BROKER)
    if stale:
        logger.info("earlier development keys revoked count=%d", len(stale))
    by_name = {spec.name: key for spec, key in keys.items()}
    if stored != by_name:
        try:
            write_private_file(path, json.dumps(by_name, indent=2) + "\n")
        except OSError as exc:
            # The keys just made stay unprinted and are revoked at the next start.
            raise SettingsError(
                f"cannot keep the development keys in {path}: {exc.strerror}"
            ) from exc
    return keys
