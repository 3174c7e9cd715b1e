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
    try:
        info = path.stat()
    except FileNotFoundError:
        info = None
    if info is not None and info.st_mode & 0o077:
        raise SettingsError(
            f"{path} is readable by other users (mode {info.st_mode & 0o777:o}); "
            "delete it (a new key is made at start) or chmod 600 it if it never left this host"
        )
    if info is not None and info.st_uid != os.geteuid():
        raise SettingsError(f"{path} belongs to another user; delete it (a new key is made)")
    value = path.read_text().strip() if info is not None else ""
    if len(value) >= 32:
        return value
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory is: otherwise a crash could bring back
    # the old (empty) file after tokens were signed with the new key.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return value
