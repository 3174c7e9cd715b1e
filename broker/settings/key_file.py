"""The development signing key's file: made private at once, refused if it may have leaked."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from broker.settings.rules import SettingsError


def load_or_create_key_file(path: Path) -> str:
    """Read a key file, creating it (0600, random 256 bits) if it is missing or too short.

    A new key is written to a temporary file created 0600 in the same directory and renamed
    over the old one, so the key is never readable by others, not even for a moment, and a
    crash never leaves half a key. An existing key file that others may read (group or world
    bits), or that another user owns, is refused rather than fixed: the broker cannot tell
    whether a readable key was already copied, and quietly tightening the mode would keep a
    key that may have leaked. A readable file is refused even when empty (its replacement
    would be 0600): one rule, and a key directory others can read is set up wrong, which the
    operator should see. A directory made for the key is 0700.

    Raises:
        SettingsError: the key file is readable by group or others, or not the broker's own.
    """
    value = read_private_file(path) or ""
    if len(value) >= 32:
        return value
    value = secrets.token_urlsafe(32)
    write_private_file(path, value + "\n")
    return value


def read_private_file(path: Path) -> str | None:
    """The stripped text of a secret file the broker keeps, ``None`` if there is none.

    Raises:
        SettingsError: the file is readable by group or others, or not the broker's own.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    if info.st_mode & 0o077:
        raise SettingsError(
            f"{path} is readable by other users (mode {info.st_mode & 0o777:o}); "
            "delete it (a new key is made at start) or chmod 600 it if it never left this host"
        )
    if info.st_uid != os.geteuid():
        raise SettingsError(f"{path} belongs to another user; delete it (a new key is made)")
    return path.read_text().strip()


def write_private_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, never readable by others and never half-written.

    The directory is made 0700 if missing.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory is: otherwise a crash could bring back
    # the old file after secrets were handed out from the new one.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
