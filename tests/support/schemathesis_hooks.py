"""Schemathesis hooks for ``tests/integration/test_openapi.py`` (``SCHEMATHESIS_HOOKS``).

The offer's body is SDP text, a media type schemathesis has no serializer for: it is sent as
plain text is.
"""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("application/sdp", "text/plain")
