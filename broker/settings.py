"""Every setting, read from the environment (``BROKER_*``) once at start, typed and validated."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from broker.session.limits import TamperPolicy
from broker.webhooks.signature import SECRET_PREFIX, signing_key

DEFAULT_DATABASE_URL: Final = "sqlite+aiosqlite:///./broker.db"
DEFAULT_TOOLS_CONFIG: Final = Path(__file__).parent / "tools" / "demo_tools.toml"
MIN_SECRET_TTL: Final = 30
MAX_SECRET_TTL: Final = 3600
MAX_BREAKER_COOLDOWN_S: Final = 3600.0
MIN_WEBHOOK_SECRET_CHARS: Final = 32
MIN_WEBHOOK_KEY_BYTES: Final = 24
"""A ``whsec_`` secret's key, base64-decoded (the Standard Webhooks minimum)."""


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable, never its value."""


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value: only for the one place that must send or compare it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """The broker's configuration. Build with :meth:`from_env`; tests construct it directly."""

    signing_key: Secret
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    """May hold a password: kept out of ``repr``; see :meth:`database_password`."""
    admin_key: Secret | None = None
    provider_base_url: str | None = None
    """``…/v1`` of an OpenAI-compatible provider; ``None`` runs the built-in emulator."""
    provider_api_key: Secret | None = None
    provider_timeout: float = 10.0
    tools_config: Path = DEFAULT_TOOLS_CONFIG
    client_secret_ttl: int = 300
    sideband_attach_timeout: float = 10.0
    """How long a 404 (or refused connection) on sideband attach is retried after call creation."""
    sideband_reconnect_timeout: float = 30.0
    """How long a lost sideband is re-attached (jittered backoff) before the session is
    ``degraded`` and the bridge takes over."""
    sideband_answer_wait_s: float = 1.5
    """How long the SDP answer waits for the call's first sideband attach (``0``: it does not
    wait). A page can act only once it has its answer, so a sideband attached first watches
    everything; one attached later resyncs under the provenance rule."""
    session_probe_interval_s: float = 30.0
    """Seconds between probes of the provider's session config on each live call (``0``: only
    the probes after a reconnect and before each broker ``response.create``)."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM: how long running tool calls may finish and be delivered before the rest
    is left recorded for the next broker process."""
    bridge_wait_timeout: float = 5.0
    """How long a bridge request waits for the sideband to finish a call it owns."""
    default_model: str = "gpt-realtime"
    default_voice: str = "marin"
    default_instructions: str = "You are a helpful voice assistant."
    call_max_duration_s: int = 1800
    """Default and ceiling of a session's call duration; the leash hangs up past it."""
    call_idle_timeout_s: int = 300
    """Default and ceiling of the time with no user speech or text before hangup."""
    session_max_tool_calls: int = 50
    session_max_concurrent_tools: int = 4
    tool_max_argument_bytes: int = 32 * 1024
    tool_breaker_failures: int = 5
    """Consecutive failures of one tool that pause it (its circuit opens); 0: never."""
    tool_breaker_cooldown_s: float = 30.0
    """How long a paused tool's calls are refused before one trial call may run."""
    tamper_policy: TamperPolicy = TamperPolicy.REVERT
    """Default reaction to a browser rewriting the session config (sessions may choose)."""
    emulator_port: int = 0
    """Port of the built-in emulator when no provider is configured (0: any free port)."""
    session_create_rate: int = 60
    """Sessions each API key may create per minute, on average (0: no limit)."""
    session_create_burst: int = 20
    """How many sessions a key may create at once before the rate applies."""
    bridge_rate: int = 120
    """Bridge requests (``POST …/tools/{tool}``) each session may make per minute, on
    average (0: no limit). A tool call takes one, plus one per re-ask after a 202."""
    bridge_burst: int = 30
    """How many bridge requests a session may make at once before the rate applies."""
    offer_rate: int = 12
    """Offer requests each session may make per minute (0: no limit); the end route has a
    bucket of its own with the same numbers. A page makes one of each per call."""
    offer_burst: int = 5
    """How many offer (or end) requests a session may make at once before the rate applies."""
    body_read_timeout_s: float = 10.0
    """How long a client may take to send a whole request body; past it 408 ``body_timeout``."""
    event_streams_per_key: int = 20
    """Event streams (``GET …/events``) one API key may hold open at once (0: no cap)."""
    event_log_max_coalescible: int = 2000
    """Coalescible events (deltas and other high-rate traffic) one session's log stores."""
    event_log_max_coalescible_bytes: int = 2 * 1024 * 1024
    """Their total size (compact JSON) per session; past either cap they are dropped."""
    cors_origins: frozenset[str] = frozenset()
    """Exact origins (``https://app.example``) whose pages may call the browser endpoints."""
    demo: bool = False
    """Serve the demo page at ``/`` and its ``POST /demo/session`` (``broker serve --dev``):
    development only, as anyone who can reach the broker can start calls."""
    webhook_url: str | None = None
    """Where ``session.ended`` webhooks are posted; ``None``: no webhooks."""
    webhook_secret: Secret | None = None
    """The key webhooks are signed with (:mod:`broker.webhooks.signature`); required with a URL."""
    webhook_timeout_s: float = 10.0
    """How long one delivery attempt may take."""
    webhook_max_attempts: int = 8
    """Attempts per delivery before it is marked ``failed``."""
    webhook_backoff_s: float = 30.0
    """The wait before the first retry; it doubles each time (with jitter)."""
    webhook_backoff_max_s: float = 3600.0
    """The longest wait between attempts (also the most a ``Retry-After`` is honoured)."""

    def __post_init__(self) -> None:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise SettingsError("BROKER_WEBHOOK_URL is set but BROKER_WEBHOOK_SECRET is not")

    @property
    def database_password(self) -> Secret | None:
        """The database URL's password, for the log redaction filter."""
        password = make_url(self.database_url).password
        return Secret(str(password)) if password else None

    @property
    def uses_builtin_provider(self) -> bool:
        return self.provider_api_key is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the environment.

        Raises:
            SettingsError: a value is malformed (the message names the variable only).
        """
        env = os.environ if env is None else env
        provider_key = env.get("BROKER_PROVIDER_API_KEY") or env.get("OPENAI_API_KEY")
        base_url = env.get("BROKER_PROVIDER_BASE_URL")
        if provider_key and not base_url:
            base_url = "https://api.openai.com/v1"
        if base_url and not provider_key:
            raise SettingsError(
                "BROKER_PROVIDER_BASE_URL is set but no BROKER_PROVIDER_API_KEY / OPENAI_API_KEY"
            )
        database_url = env.get("BROKER_DATABASE_URL", DEFAULT_DATABASE_URL)
        ttl = _int(env, "BROKER_CLIENT_SECRET_TTL", 300)
        if not MIN_SECRET_TTL <= ttl <= MAX_SECRET_TTL:
            raise SettingsError(
                f"BROKER_CLIENT_SECRET_TTL must be between {MIN_SECRET_TTL} and {MAX_SECRET_TTL}"
            )
        admin = env.get("BROKER_ADMIN_KEY")
        if admin is not None and len(admin) < 16:
            raise SettingsError("BROKER_ADMIN_KEY must be at least 16 characters")
        return cls(
            host=env.get("BROKER_HOST", "127.0.0.1"),
            port=_int(env, "BROKER_PORT", 8080),
            database_url=database_url,
            admin_key=Secret(admin) if admin else None,
            provider_base_url=base_url,
            provider_api_key=Secret(provider_key) if provider_key else None,
            provider_timeout=_float(env, "BROKER_PROVIDER_TIMEOUT", 10.0),
            tools_config=Path(env.get("BROKER_CONFIG", str(DEFAULT_TOOLS_CONFIG))),
            client_secret_ttl=ttl,
            sideband_attach_timeout=_float(env, "BROKER_SIDEBAND_ATTACH_TIMEOUT", 10.0),
            sideband_reconnect_timeout=_bounded_float(
                env, "BROKER_SIDEBAND_RECONNECT_TIMEOUT", 30.0, 3600.0
            ),
            shutdown_grace_s=_bounded_float(env, "BROKER_SHUTDOWN_GRACE_S", 10.0, 600.0),
            sideband_answer_wait_s=_optional_float(env, "BROKER_SIDEBAND_ANSWER_WAIT_S", 1.5, 30.0),
            session_probe_interval_s=_optional_float(
                env, "BROKER_SESSION_PROBE_INTERVAL_S", 30.0, 3600.0
            ),
            bridge_wait_timeout=_float(env, "BROKER_BRIDGE_WAIT_TIMEOUT", 5.0),
            signing_key=_signing_key(env),
            emulator_port=_int(env, "BROKER_EMULATOR_PORT", 0),
            call_max_duration_s=_bounded(env, "BROKER_CALL_MAX_DURATION", 1800, 10, 3600),
            call_idle_timeout_s=_bounded(env, "BROKER_CALL_IDLE_TIMEOUT", 300, 5, 3600),
            session_max_tool_calls=_bounded(env, "BROKER_SESSION_MAX_TOOL_CALLS", 50, 0, 10_000),
            session_max_concurrent_tools=_bounded(
                env, "BROKER_SESSION_MAX_CONCURRENT_TOOLS", 4, 1, 64
            ),
            tool_max_argument_bytes=_bounded(
                env, "BROKER_TOOL_MAX_ARGUMENT_BYTES", 32 * 1024, 2, 1024 * 1024
            ),
            tool_breaker_failures=_bounded(env, "BROKER_TOOL_BREAKER_FAILURES", 5, 0, 1000),
            tool_breaker_cooldown_s=_bounded_float(
                env, "BROKER_TOOL_BREAKER_COOLDOWN_S", 30.0, MAX_BREAKER_COOLDOWN_S
            ),
            tamper_policy=_tamper_policy(env),
            session_create_rate=_bounded(env, "BROKER_SESSION_CREATE_RATE", 60, 0, 100_000),
            session_create_burst=_bounded(env, "BROKER_SESSION_CREATE_BURST", 20, 1, 100_000),
            bridge_rate=_bounded(env, "BROKER_BRIDGE_RATE", 120, 0, 100_000),
            bridge_burst=_bounded(env, "BROKER_BRIDGE_BURST", 30, 1, 100_000),
            offer_rate=_bounded(env, "BROKER_OFFER_RATE", 12, 0, 100_000),
            offer_burst=_bounded(env, "BROKER_OFFER_BURST", 5, 1, 100_000),
            body_read_timeout_s=_bounded_float(env, "BROKER_BODY_READ_TIMEOUT_S", 10.0, 300.0),
            event_streams_per_key=_bounded(env, "BROKER_EVENT_STREAMS_PER_KEY", 20, 0, 10_000),
            event_log_max_coalescible=_bounded(
                env, "BROKER_EVENT_LOG_MAX_COALESCIBLE", 2000, 0, 1_000_000
            ),
            event_log_max_coalescible_bytes=_bounded(
                env, "BROKER_EVENT_LOG_MAX_COALESCIBLE_BYTES", 2 * 1024 * 1024, 0, 1024**3
            ),
            cors_origins=_origins(env, "BROKER_CORS_ORIGINS"),
            demo=_flag(env, "BROKER_DEMO"),
            **_webhook_settings(env),
        )


def _webhook_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``webhook_*`` fields: the URL and secret go together, both or neither."""
    url = env.get("BROKER_WEBHOOK_URL") or None
    raw_secret = env.get("BROKER_WEBHOOK_SECRET") or None
    if url is None:
        if raw_secret is not None:
            raise SettingsError("BROKER_WEBHOOK_SECRET is set but BROKER_WEBHOOK_URL is not")
        return {}
    parsed = urlsplit(url)
    try:
        parsed.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        raise SettingsError("BROKER_WEBHOOK_URL has a malformed port") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SettingsError("BROKER_WEBHOOK_URL must be an http:// or https:// URL")
    if parsed.username is not None or parsed.password is not None:
        # The URL is logged (its host); credentials belong in the signature's secret.
        raise SettingsError("BROKER_WEBHOOK_URL must not carry credentials")
    if raw_secret is None:
        raise SettingsError("BROKER_WEBHOOK_URL is set but BROKER_WEBHOOK_SECRET is not")
    _check_webhook_secret(raw_secret)
    backoff = _bounded_float(env, "BROKER_WEBHOOK_BACKOFF_S", 30.0, 86_400.0)
    backoff_max = _bounded_float(env, "BROKER_WEBHOOK_BACKOFF_MAX_S", 3600.0, 86_400.0)
    if backoff_max < backoff:
        raise SettingsError(
            "BROKER_WEBHOOK_BACKOFF_MAX_S must be at least BROKER_WEBHOOK_BACKOFF_S"
        )
    return {
        "webhook_url": url,
        "webhook_secret": Secret(raw_secret),
        "webhook_timeout_s": _bounded_float(env, "BROKER_WEBHOOK_TIMEOUT", 10.0, 120.0),
        "webhook_max_attempts": _bounded(env, "BROKER_WEBHOOK_MAX_ATTEMPTS", 8, 1, 50),
        "webhook_backoff_s": backoff,
        "webhook_backoff_max_s": backoff_max,
    }


def _check_webhook_secret(secret: str) -> None:
    if secret.startswith(SECRET_PREFIX):
        try:
            key = signing_key(secret)
        except ValueError:
            raise SettingsError("BROKER_WEBHOOK_SECRET is whsec_ but not base64 after it") from None
        if len(key) < MIN_WEBHOOK_KEY_BYTES:
            raise SettingsError(
                f"BROKER_WEBHOOK_SECRET (whsec_) must hold at least {MIN_WEBHOOK_KEY_BYTES} bytes"
            )
    elif len(secret) < MIN_WEBHOOK_SECRET_CHARS:
        raise SettingsError(
            f"BROKER_WEBHOOK_SECRET must be at least {MIN_WEBHOOK_SECRET_CHARS} characters"
        )


def _bounded(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = _int(env, name, default)
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}")
    return value


def _bounded_float(env: Mapping[str, str], name: str, default: float, high: float) -> float:
    value = _float(env, name, default)
    if value > high:
        raise SettingsError(f"{name} must be at most {high:g}")
    return value


def _optional_float(env: Mapping[str, str], name: str, default: float, high: float) -> float:
    """A number from 0 (off) up to ``high``."""
    if env.get(name) in ("0", "0.0"):
        return 0.0
    return _bounded_float(env, name, default, high)


def _origins(env: Mapping[str, str], name: str) -> frozenset[str]:
    """Comma-separated exact origins; no wildcard: an allowlist of ``*`` is no allowlist."""
    origins = set()
    for raw in (env.get(name) or "").split(","):
        if not raw.strip():
            continue
        origin = raw.strip().lower()
        parsed = urlsplit(origin)
        try:
            parsed.port  # noqa: B018 - a malformed port raises here
        except ValueError:
            raise SettingsError(f"{name} has a malformed port") from None
        if (
            parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or "*" in origin
            or parsed.username is not None
            or f"{parsed.scheme}://{parsed.netloc}" != origin
        ):
            raise SettingsError(
                f"{name} must list exact origins like https://app.example.com "
                "(scheme, host and optional port; no path, no wildcard)"
            )
        origins.add(origin)
    return frozenset(origins)


def _tamper_policy(env: Mapping[str, str]) -> TamperPolicy:
    raw = env.get("BROKER_TAMPER_POLICY") or TamperPolicy.REVERT.value
    try:
        return TamperPolicy(raw)
    except ValueError:
        choices = ", ".join(p.value for p in TamperPolicy)
        raise SettingsError(f"BROKER_TAMPER_POLICY must be one of: {choices}") from None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SettingsError(f"{name} must be 1/true/yes or 0/false/no")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer") from None
    if value < 0:
        raise SettingsError(f"{name} must not be negative")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number") from None
    if not value > 0:
        raise SettingsError(f"{name} must be positive")
    return value


def _signing_key(env: Mapping[str, str]) -> Secret:
    """The client-secret signing key: from the environment, else a persisted development key.

    The development key lives in ``BROKER_SIGNING_KEY_FILE`` (default ``.broker/signing.key``),
    created with mode 0600 on first start, so tokens survive a restart.
    """
    explicit = env.get("BROKER_SIGNING_KEY")
    if explicit:
        if len(explicit) < 32:
            raise SettingsError("BROKER_SIGNING_KEY must be at least 32 characters")
        return Secret(explicit)
    path = Path(env.get("BROKER_SIGNING_KEY_FILE", ".broker/signing.key"))
    return Secret(load_or_create_key_file(path))


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
