"""Run the emulator standalone: ``EMULATOR_API_KEY=sk-… python -m emulator --port 8090``.

The standard key comes from ``EMULATOR_API_KEY`` or ``--api-key``; prefer the environment,
since a command-line argument shows in process listings (``ps``). The same goes for the
secret that signs phone calls' webhooks: ``EMULATOR_SIP_WEBHOOK_SECRET`` or
``--sip-webhook-secret``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from .app import create_app
from .settings import EmulatorSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--sideband-ready-delay", type=float, default=0.0)
    parser.add_argument("--token-interval", type=float, default=0.002)
    parser.add_argument("--replay-session-created-to-sideband", action="store_true")
    parser.add_argument(
        "--speech",
        choices=["auto", "espeak-ng", "tone", "off"],
        default="auto",
        help="how responses are voiced (auto: espeak-ng when installed, else a tone)",
    )
    parser.add_argument(
        "--flavor",
        choices=["openai", "azure"],
        default="openai",
        help="the provider to play: OpenAI (routes under /v1) or Azure OpenAI (under /openai/v1)",
    )
    parser.add_argument(
        "--sip-webhook-url",
        help="where POST /_emulator/sip/ring posts realtime.call.incoming (a ring may name "
        "another)",
    )
    parser.add_argument(
        "--sip-webhook-secret",
        help="the whsec_<base64> secret that signs those webhooks (default: "
        "$EMULATOR_SIP_WEBHOOK_SECRET; visible in process listings when given here)",
    )
    parser.add_argument(
        "--sip-ring-timeout",
        type=float,
        default=30.0,
        help="seconds a phone call rings unanswered before it ends",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--api-key",
        help="the standard Bearer key to accept (default: $EMULATOR_API_KEY; a key given "
        "here is visible to other users in process listings such as ps)",
    )
    args = parser.parse_args(argv)
    api_key = args.api_key or os.environ.get("EMULATOR_API_KEY", "")
    if not api_key:
        parser.error("set EMULATOR_API_KEY (or --api-key) to the Bearer key to accept")
    sip_secret = args.sip_webhook_secret or os.environ.get("EMULATOR_SIP_WEBHOOK_SECRET") or None
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        settings = EmulatorSettings(
            api_key=api_key,
            sideband_ready_delay=args.sideband_ready_delay,
            token_interval=args.token_interval,
            replay_session_created_to_sideband=args.replay_session_created_to_sideband,
            speech=args.speech,
            flavor=args.flavor,
            sip_webhook_url=args.sip_webhook_url,
            sip_webhook_secret=sip_secret,
            sip_ring_timeout=args.sip_ring_timeout,
        )
    except ValueError as exc:
        parser.error(str(exc))
    web.run_app(create_app(settings), host=args.host, port=args.port, shutdown_timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
