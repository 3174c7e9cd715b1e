"""Run Alembic migrations programmatically (``broker migrate``, ``broker serve`` on SQLite)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # ConfigParser interpolation would eat '%' in passwords.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``.

    Synchronous: it runs its own event loop (Alembic's async template), so call it before the
    server's loop starts or from a worker thread.
    """
    command.upgrade(alembic_config(database_url), revision)
