"""The container health check: ``python probe.py /healthz`` (liveness) or ``/readyz`` (readiness).

Exits 0 when the broker in this container answers the path with 2xx, 1 otherwise (a 503 while
it drains or is overloaded, a refused connection, a timeout). The image has no curl; Python's
standard library is enough. The port is ``BROKER_PORT`` (the image sets it).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    url = f"http://127.0.0.1:{os.environ.get('BROKER_PORT', '8080')}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        # HTTPError (a 503) is a URLError: the reason shows in `docker inspect`'s health log.
        sys.stderr.write(f"{path}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
