"""Where the browser files (``web/`` of the repository) are read from.

``web/`` is their one source. A wheel carries a copy inside the package, ``broker/web/``
(written by ``setup.py``'s build step), so an installed broker serves the ops dashboard, the
demo and the client package without a checkout. A checkout (``pip install -e``) has no such
copy and serves ``web/`` itself, so an edited file shows without a rebuild.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

PACKAGED_ROOT: Final = Path(__file__).resolve().parents[1] / "web"
"""``broker/web/``: the wheel's copy."""
CHECKOUT_ROOT: Final = Path(__file__).resolve().parents[2] / "web"
"""``web/`` beside ``broker/`` in a checkout."""


def web_root() -> Path:
    """The packaged copy if there is one, else the checkout's ``web/``.

    The packaged copy comes first: for an installed wheel the "checkout" path is
    ``site-packages/web``, which may be another distribution's package.
    """
    return PACKAGED_ROOT if PACKAGED_ROOT.is_dir() else CHECKOUT_ROOT


WEB_ROOT: Final = web_root()
