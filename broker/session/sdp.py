"""Checks on a browser's SDP before it goes anywhere near the provider."""

from __future__ import annotations

from typing import Final

from broker.errors import BadRequestError

MAX_SDP_BYTES: Final = 64 * 1024


def check_offer(sdp: str) -> None:
    """Accept only an SDP *offer* with an audio section and a WebRTC data channel.

    RFC 5763 §5 requires an offerer to use ``a=setup:actpass``; answers use active or passive,
    which is how an answer posted as an offer is caught.

    Raises:
        BadRequestError: ``invalid_sdp``, naming what is missing.
    """
    lines = [line.strip() for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise BadRequestError("invalid_sdp", "the body is not an SDP description (no v=0 line)")
    media = [line for line in lines if line.startswith("m=")]
    if not any(line.startswith("m=audio ") for line in media):
        raise BadRequestError("invalid_sdp", "the SDP offer has no audio section")
    if not any(
        line.startswith("m=application ") and "webrtc-datachannel" in line for line in media
    ):
        raise BadRequestError("invalid_sdp", "the SDP offer has no WebRTC data channel")
    if not any(line == "a=setup:actpass" for line in lines):
        raise BadRequestError("invalid_sdp", "the SDP is not an offer (no a=setup:actpass)")
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise BadRequestError("invalid_sdp", "the SDP offer has no DTLS fingerprint")
