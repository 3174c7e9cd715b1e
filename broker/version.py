"""The broker's version: the installed distribution's.

``broker --version`` and the ``broker_build_info`` metric report it.
"""

from __future__ import annotations

from importlib import metadata
from typing import Final

DISTRIBUTION: Final = "sideband-broker"


def _installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        # Run from a checkout that was never installed (e.g. PYTHONPATH=.): no metadata to read.
        return "unknown"


VERSION: Final = _installed_version()
