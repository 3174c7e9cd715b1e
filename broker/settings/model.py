"""``Settings``: every setting's type, default, bounds and description, and its checks.

The fields are the single source of the README's settings table (``make settings-table``;
``tests/unit/broker/test_settings_doc.py`` fails on drift).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    AliasChoices,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url

from broker.session.limits import TamperPolicy
from broker.settings import rules
from broker.settings.key_file import load_or_create_key_file
from broker.settings.rules import MIN_WEBHOOK_KEY_BYTES, MIN_WEBHOOK_SECRET_CHARS, SettingsError
from broker.settings.secret import Secret
from broker.settings.sources import ENV_FILE, ENV_PREFIX, read
from broker.tenant_metrics import DEFAULT_MAX_TENANTS

DEFAULT_DATABASE_URL: Final = "sqlite+aiosqlite:///./broker.db"
DEFAULT_TOOLS_CONFIG: Final = Path(__file__).parents[1] / "tools" / "demo_tools.toml"
DEFAULT_SIGNING_KEY_FILE: Final = Path(".broker/signing.key")
DEFAULT_AUDIT_SIGNING_KEY_FILE: Final = Path(".broker/audit-signing.pem")
DEFAULT_AUDIT_CHECKPOINT_FILE: Final = Path(".broker/audit-checkpoints.jsonl")
OPENAI_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_MODEL: Final = "gpt-realtime"
"""The default realtime model; third-party notices announce replacements (docs/protocol.md §0)."""
DEFAULT_VOICE: Final = "marin"
DEFAULT_INPUT_TRANSCRIPTION_MODEL: Final = "gpt-4o-mini-transcribe"
TRANSCRIPTION_OFF: Final = "off"
"""``BROKER_INPUT_TRANSCRIPTION_MODEL``'s value for none: an empty variable counts as unset
(``broker.settings.sources``), so an empty value cannot say it."""
MIN_ADMIN_KEY_CHARS: Final = 16
MIN_SIGNING_KEY_CHARS: Final = 32
MAX_RATE: Final = 100_000


def _shown_default(text: str) -> dict[str, Any]:
    """The README's Default cell where the value itself would mislead (a path, a fallback)."""
    return {"shown_default": text}


class Settings(BaseSettings):
    """The broker's configuration. Read with :meth:`from_env`; tests construct it directly.

    Built either way, every value is checked, and a bad one raises :class:`SettingsError`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        hide_input_in_errors=True,
    )

    # What a session that names none gets: fixed, not a setting (no variable sets it).
    default_instructions: ClassVar[str] = "You are a helpful voice assistant."

    # --- serving --------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="where `broker serve` listens (also `--host`)")
    port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="the port `broker serve` listens on (also `--port`, and `make run PORT=…`)",
    )
    log_format: Literal["json", "console"] | None = Field(
        None,
        description="log lines: `json` (one object per line) or `console` (also `--log-format`)",
        json_schema_extra=_shown_default("`json` for `serve`; `console` with `--dev` and others"),
    )
    otel: bool = Field(
        False,
        description="trace offers, sideband attaches, tool calls and webhooks with OpenTelemetry"
        " (`pip install '.[otel]'`), exported as the standard `OTEL_*` variables say (README"
        ' "Tracing")',
    )
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        repr=False,  # may hold a password; see database_password
        description="SQLite, or `postgresql+asyncpg://…` (`pip install -e '.[postgres]'`)",
    )
    demo: bool = Field(
        False,
        description="serve the demo page at `/` and `POST /demo/session` (also `broker serve"
        " --dev`): development only, as anyone who can reach the broker can start calls",
    )
    cors_origins: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(),
        description="comma-separated exact origins (`https://app.example.com`) whose pages may"
        " call the offer, bridge and end endpoints; no path, no wildcard",
    )

    public_url: str | None = Field(
        None,
        description="the broker's absolute public base URL (`https://broker.example.com`, an"
        " optional path prefix; no query or fragment): the create response's `offer_url`,"
        " `bridge_url` and `end_url` start with it, since pages on other origins call them;"
        " so do the callback URLs of `http_async` tools (none are offered without it)",
        json_schema_extra=_shown_default(
            "for development: `http://` and the address and port the request reached"
        ),
    )

    # --- the provider ---------------------------------------------------------------------
    provider: Literal["openai", "azure"] = Field(
        "openai",
        description="who serves the calls: `openai` (or any provider speaking its unified"
        " interface) or `azure` (Azure OpenAI's GA `/openai/v1` path: the offer goes through"
        " an ephemeral client secret; see Azure OpenAI below)",
    )
    default_model: str = Field(
        DEFAULT_MODEL,
        min_length=1,
        max_length=100,
        description="the model of a session that names none (for Azure: a deployment name);"
        " realtime models are renamed and retired, so this is the one place that names one",
    )
    default_voice: str = Field(
        DEFAULT_VOICE,
        min_length=1,
        max_length=40,
        description="the voice of a session that names none (the provider's own default,"
        " when no voice is sent, is `alloy`)",
    )
    provider_api_key: Secret | None = Field(
        None,
        validation_alias=AliasChoices(
            "BROKER_PROVIDER_API_KEY", "OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"
        ),
        description="the provider's key (Azure's resource key goes as `api-key`);"
        " `OPENAI_API_KEY` is read only for `openai`, `AZURE_OPENAI_API_KEY` only for `azure`;"
        " unset (and no token command): the built-in emulator runs in-process, in the"
        " provider's flavour",
    )
    azure_token_command: str | None = Field(
        None,
        repr=False,
        description="`azure`, instead of a key: a command printing a Microsoft Entra access"
        " token (or `az`'s JSON), e.g. `az account get-access-token --resource"
        " https://cognitiveservices.azure.com --query accessToken -o tsv`; run without a"
        " shell for each offer, hangup and sideband dial (tokens expire mid-call), within"
        " `BROKER_PROVIDER_TIMEOUT`, without the `BROKER_*` variables; its output is never"
        " logged",
    )
    provider_base_url: str | None = Field(
        None,
        validate_default=True,
        description="`…/v1` of an OpenAI-compatible provider (needs a key); for `azure` the"
        " resource endpoint `https://{resource}.openai.azure.com` (`/openai/v1` is added;"
        " required with a key or token command)",
        json_schema_extra=_shown_default(f"`{OPENAI_BASE_URL}` when a key is set"),
    )
    azure_webrtc_filter: bool | None = Field(
        None,
        description="`azure`: create calls with `?webrtcfilter=on`, so the page sees speech,"
        " transcripts and output events but no function calls and no session config; then"
        " bridge-only sessions are refused (422 `provider_lacks_capability`) and a degraded"
        " call has no bridge fallback",
        json_schema_extra=_shown_default("on (with `azure`)"),
    )
    provider_timeout: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="seconds for each provider HTTP request"
    )
    emulator_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="port of the built-in emulator when no provider key is set (`0`: any free"
        " port; it listens on 127.0.0.1 only)",
    )

    # --- keys -----------------------------------------------------------------------------
    admin_key: Secret | None = Field(
        None,
        description="accepted as an API key with every scope (at least"
        f" {MIN_ADMIN_KEY_CHARS} characters)",
    )
    signing_key_file: Path = Field(
        DEFAULT_SIGNING_KEY_FILE,
        description="where the signing key is kept when `BROKER_SIGNING_KEY` is unset: made"
        " (0600, in a 0700 directory) on first start so client secrets survive a restart; a"
        " file other users may read, or that another user owns, stops the broker",
    )
    signing_key: Secret = Field(
        None,
        validate_default=True,
        description=f"the client-secret signing key (at least {MIN_SIGNING_KEY_CHARS} characters)",
        json_schema_extra=_shown_default("the key in `BROKER_SIGNING_KEY_FILE`"),
    )
    client_secret_ttl: int = Field(
        300, ge=30, le=3600, description="seconds a browser's client secret is valid"
    )
    trusted_token_ttl_s: int = Field(
        300,
        ge=30,
        le=3600,
        description="seconds a trusted session's connect token is valid (it is single use)",
    )
    trusted_tool_timeout_s: float = Field(
        30.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="seconds the broker waits for a trusted backend's `broker.tool_result`"
        " (a server tool's own `timeout` wins)",
    )
    trusted_relay_queue: int = Field(
        1024,
        ge=16,
        le=65536,
        description="events queued for a trusted backend's WebSocket; a backend that falls"
        " this far behind is disconnected (its session ends)",
    )

    # --- audit trail ----------------------------------------------------------------------
    audit_signing_key_file: Path = Field(
        DEFAULT_AUDIT_SIGNING_KEY_FILE,
        description="where the audit trail's Ed25519 signing key (PEM) is kept when"
        " `BROKER_AUDIT_SIGNING_KEY` is unset: made (0600) on first start",
    )
    audit_signing_key: Secret | None = Field(
        None,
        description="the audit trail's Ed25519 private key (PEM, PKCS#8); to rotate, set a new"
        " one: records name their key id and old public keys stay published",
        json_schema_extra=_shown_default("the key in `BROKER_AUDIT_SIGNING_KEY_FILE`"),
    )
    audit_checkpoint_file: Path | None = Field(
        DEFAULT_AUDIT_CHECKPOINT_FILE,
        description="where the audit chain's signed head is appended (JSON lines) as it moves;"
        " ship it off this host: `broker audit verify --expect-head` detects truncation"
        " against it",
    )
    audit_checkpoint_interval_s: float = Field(
        60.0, ge=0.1, le=86_400, description="seconds between audit checkpoints, at least"
    )
    redaction_key: Secret | None = Field(
        None,
        description="the key of redacted fields' keyed hashes and of sealed tool arguments"
        f" (at least {MIN_SIGNING_KEY_CHARS} characters); shared by every instance",
        json_schema_extra=_shown_default("derived from the signing key"),
    )

    # --- tools ----------------------------------------------------------------------------
    tools_config: Path = Field(
        DEFAULT_TOOLS_CONFIG,
        validation_alias="BROKER_CONFIG",
        description="the tools file (TOML, see Tools below)",
        json_schema_extra=_shown_default("`broker/tools/demo_tools.toml`"),
    )
    tool_max_argument_bytes: int = Field(
        32 * 1024,
        ge=2,
        le=1024 * 1024,
        description="size of one call's arguments; default and ceiling of"
        " `limits.max_argument_bytes`",
    )
    tool_breaker_failures: int = Field(
        5,
        ge=0,
        le=1000,
        description="consecutive failures of one tool that pause it (its circuit opens; below);"
        " `0`: never",
    )
    tool_breaker_cooldown_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="seconds a paused tool's calls are refused before one trial call may run",
    )
    bridge_wait_timeout: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds a bridge request waits for the sideband to finish a call it owns",
    )

    # --- the sideband ---------------------------------------------------------------------
    sideband_attach_timeout: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds a sideband 404 (or refused connection) right after call creation"
        " is retried",
    )
    sideband_reconnect_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="seconds a lost sideband is re-attached (jittered backoff) before the"
        " session is `degraded` and the bridge takes over",
    )
    sideband_answer_wait_s: float = Field(
        1.5,
        ge=0,
        le=30,
        allow_inf_nan=False,
        description="seconds the SDP answer waits for the call's first sideband attach (`0`: it"
        " does not wait, and every first attach resyncs)",
    )
    session_probe_interval_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="seconds between probes of the provider's session config on each live call"
        " (`0`: only after a reconnect and before each broker `response.create`)",
    )
    tamper_policy: TamperPolicy = Field(
        TamperPolicy.REVERT,
        description="default `on_tamper` when a browser rewrites the session config: `revert`,"
        " or `hangup` to also end the call",
    )
    shutdown_grace_s: float = Field(
        10.0,
        gt=0,
        le=600,
        allow_inf_nan=False,
        description="on SIGTERM, seconds running tool calls may finish and be delivered; the"
        " rest stay recorded for the next broker process",
    )
    lease_ttl_s: float = Field(
        10.0,
        ge=1,
        le=300,
        allow_inf_nan=False,
        description="seconds a broker instance's lease on a call lasts unrenewed (renewed every"
        " fifth of it): an instance that dies has its calls taken up by another after at most"
        " this long plus a scan; one that cannot renew stops acting on its calls before it runs"
        " out",
    )
    instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="this instance's name among the brokers sharing the database (default: the"
        " host name, the process id and a random suffix); with a stable name a restarted"
        " instance takes its own calls back at once instead of after their leases run out. It"
        " must be unique among running instances",
    )

    # --- input transcription --------------------------------------------------------------
    input_transcription_model: str | None = Field(
        DEFAULT_INPUT_TRANSCRIPTION_MODEL,
        description="the model that writes down what the user says (`audio.input.transcription`"
        " of every session that does not choose, e.g. `whisper-1`); `off`: sessions are not"
        " transcribed unless they ask (spoken turns then have no words in the transcript)",
    )

    # --- per-session limits ---------------------------------------------------------------
    call_max_duration_s: int = Field(
        1800,
        ge=10,
        le=3600,
        validation_alias="BROKER_CALL_MAX_DURATION",
        description="seconds a call may last; default and ceiling of `limits.max_duration_s`",
    )
    call_idle_timeout_s: int = Field(
        300,
        ge=5,
        le=3600,
        validation_alias="BROKER_CALL_IDLE_TIMEOUT",
        description="seconds without user speech or text before hangup; default and ceiling of"
        " `limits.idle_timeout_s`",
    )
    session_max_tool_calls: int = Field(
        50,
        ge=0,
        le=10_000,
        description="tool calls a session may start; default and ceiling of"
        " `limits.max_tool_calls`",
    )
    session_max_concurrent_tools: int = Field(
        4,
        ge=1,
        le=64,
        description="tool calls a session may run at once; default and ceiling of"
        " `limits.max_concurrent_tools`",
    )

    # --- rate limits (token buckets: in memory on SQLite, shared rows on PostgreSQL) ------
    session_create_rate: int = Field(
        60,
        ge=0,
        le=MAX_RATE,
        description="sessions each API key may create per minute, on average (`0`: no limit);"
        " past it 429 `rate_limited`",
    )
    session_create_burst: int = Field(
        20,
        ge=1,
        le=MAX_RATE,
        description="sessions a key may create at once before the rate applies",
    )
    bridge_rate: int = Field(
        120,
        ge=0,
        le=MAX_RATE,
        description="bridge requests (`POST …/tools/{tool}`) each session may make per minute,"
        " on average, keyed on the verified client secret's session (`0`: no limit); a tool"
        " call takes one, plus one per re-ask after a 202; past it 429 `rate_limited`",
    )
    bridge_burst: int = Field(
        30,
        ge=1,
        le=MAX_RATE,
        description="bridge requests a session may make at once before the rate applies",
    )
    offer_rate: int = Field(
        12,
        ge=0,
        le=MAX_RATE,
        description="offer requests each session may make per minute (`0`: no limit); end"
        " requests have a bucket of their own with the same numbers",
    )
    offer_burst: int = Field(
        5,
        ge=1,
        le=MAX_RATE,
        description="offer (or end) requests a session may make at once before the rate applies",
    )
    body_read_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="seconds a client may take to send a whole request body (SDP or JSON); past"
        " it 408 `body_timeout`",
    )
    event_streams_per_key: int = Field(
        20,
        ge=0,
        le=10_000,
        description="event streams (`GET …/events`) one API key may hold open at once, per"
        " process (`0`: no cap); past it 429 `too_many_streams`",
    )

    # --- the event log --------------------------------------------------------------------
    event_log_max_coalescible: int = Field(
        2000,
        ge=0,
        le=1_000_000,
        description="coalescible events (high-rate traffic such as rate-limit and buffer"
        " notices, and input transcription's deltas; other deltas are never stored) one"
        " session's log stores; the rest are dropped and counted (kept events are never"
        " capped)",
    )
    event_log_max_pending: int = Field(
        50_000,
        ge=100,
        le=10_000_000,
        description="events waiting for the event-log writer (all sessions) past which"
        " coalescible ones are shed; half of it counts as overload",
    )
    event_log_max_coalescible_bytes: int = Field(
        2 * 1024 * 1024,
        ge=0,
        le=1024**3,
        description="their total bytes per session (compact JSON; 2 MiB by default); past it"
        " they are dropped too",
    )

    # --- retention ------------------------------------------------------------------------
    retention_days: int | None = Field(
        None,
        ge=1,
        le=36_500,
        description="days after its end a session's content (event log, transcript, tool"
        " arguments and outputs, instructions, metadata, audit bodies) is erased; a tenant's"
        " own `retention_days` overrides it; unset: kept until erased by `DELETE"
        " /api/v1/sessions/{id}`",
    )

    # --- overload -------------------------------------------------------------------------
    max_live_calls: int = Field(
        1000,
        ge=0,
        le=1_000_000,
        description="supervised calls this process takes at most (`0`: no ceiling); at it, new"
        " sessions and offers get 503 `overloaded` with `Retry-After` and `/readyz` fails",
    )
    overload_loop_lag_s: float = Field(
        0.1,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="event-loop lag (seconds a timer ran late, on average over the last"
        " second) that counts as overload: new sessions and offers are refused, coalescible"
        " events shed",
    )
    overload_event_log_lag_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="how long the event-log writer's oldest unstored event may wait before"
        " it counts as overload (a writer that cannot keep up)",
    )
    overload_retry_after_s: int = Field(
        5,
        ge=1,
        le=3600,
        description="the `Retry-After` (seconds) of a 503 `overloaded`",
    )

    # --- metrics --------------------------------------------------------------------------
    # On by default: tenants are made by an admin, not by requests, and the label is capped.
    metrics_tenant_labels: bool = Field(
        True,
        description="export the `broker_tenant_*` metrics (sessions created, quota refusals"
        ' and tool calls by `tenant`); `false`: none of them (README "Metrics")',
    )
    metrics_max_tenants: int = Field(
        DEFAULT_MAX_TENANTS,
        ge=1,
        le=10_000,
        description="distinct `tenant` label values a process reports, first seen first kept;"
        " any further tenant is counted as `other`",
    )

    # --- the session.ended webhook --------------------------------------------------------
    webhook_url: str | None = Field(
        None,
        description="`http(s)://` URL that gets `session.ended` webhooks (no credentials in it);"
        " unset: no webhooks",
    )
    webhook_secret: Secret | None = Field(
        None,
        description="the key webhooks are signed with, required with the URL: at least"
        f" {MIN_WEBHOOK_SECRET_CHARS} characters, or `whsec_` + base64 of at least"
        f" {MIN_WEBHOOK_KEY_BYTES} bytes",
    )
    webhook_timeout_s: float = Field(
        10.0,
        gt=0,
        le=120,
        allow_inf_nan=False,
        validation_alias="BROKER_WEBHOOK_TIMEOUT",
        description="seconds one delivery attempt may take",
    )
    webhook_max_attempts: int = Field(
        8, ge=1, le=50, description="attempts per delivery before it is marked `failed`"
    )
    webhook_backoff_s: float = Field(
        30.0,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="seconds before the first retry; it doubles each time (with jitter)",
    )
    webhook_backoff_max_s: float = Field(
        3600.0,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="the longest wait between attempts, in seconds (also the most a"
        " `Retry-After` is honoured); at least `BROKER_WEBHOOK_BACKOFF_S`",
    )

    # --- phone calls (SIP) -----------------------------------------------------------------
    sip_webhook_secret: Secret | None = Field(
        None,
        description="the `whsec_` secret the provider signs its `realtime.call.incoming`"
        " webhooks with (`POST /api/v1/sip/incoming`); phone calls are off unless this and"
        " `BROKER_SIP_LINES` are both set",
    )
    sip_lines: Path | None = Field(
        None,
        description="the phone lines file (TOML, see Phone calls (SIP) below): which dialled"
        " numbers are accepted, rejected or referred, and with what session",
    )
    sip_accept_timeout_s: float = Field(
        8.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="seconds an incoming call's accept (or reject, refer) may take at the"
        " provider before the call's session fails",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
            return
        except ValidationError as exc:
            refused = rules.refused(exc, type(self).model_fields)
        # Raised past the except block so that no ``__context__`` keeps the ValidationError:
        # its ``errors()`` carry the inputs, secrets included.
        raise refused

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Built directly, settings are exactly the arguments: a test's broker never picks up
        # the shell's BROKER_* or a developer's .env. from_env reads the variables itself.
        return (init_settings,)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, env_file: Path | None = None
    ) -> Settings:
        """Read the variables.

        Args:
            env: the variables (default: the process environment, over :data:`ENV_FILE`).
            env_file: a dotenv file whose variables apply where ``env`` has none (default:
                ``.env`` when ``env`` is the process environment; none for a given mapping).

        Raises:
            SettingsError: a value is malformed (the message names the variable only).
        """
        if env is None:
            env, env_file = os.environ, env_file or ENV_FILE
        # The other vendor's key variable is left out: a shell's OPENAI_API_KEY must never be
        # sent to Azure, nor an AZURE_OPENAI_API_KEY to OpenAI.
        provider = read(cls, env, env_file).get("provider")
        foreign = "OPENAI_API_KEY" if provider == "azure" else "AZURE_OPENAI_API_KEY"
        return cls(**read(cls, env, env_file, ignore=(foreign,)))

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, checked like a new instance (``model_copy`` checks nothing)."""
        current = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self)(**(current | changes))

    @property
    def database_password(self) -> Secret | None:
        """The database URL's password, for the log redaction filter."""
        password = make_url(self.database_url).password
        return Secret(str(password)) if password else None

    @property
    def uses_builtin_provider(self) -> bool:
        return self.provider_api_key is None and self.azure_token_command is None

    @property
    def webrtc_filter(self) -> bool:
        """Whether Azure calls are created with ``?webrtcfilter=on`` (the default there)."""
        return self.provider == "azure" and self.azure_webrtc_filter is not False

    @property
    def azure_token_argv(self) -> tuple[str, ...] | None:
        """``BROKER_AZURE_TOKEN_COMMAND`` split like a shell would (it runs without one)."""
        if self.azure_token_command is None:
            return None
        return tuple(shlex.split(self.azure_token_command))

    @field_validator("input_transcription_model", mode="before")
    @classmethod
    def _transcription_off(cls, value: Any) -> Any:
        # ``off`` from a variable; ``""`` or ``None`` when built directly (tests, the CLI).
        if value is None or (isinstance(value, str) and value.strip() in ("", TRANSCRIPTION_OFF)):
            return None
        return value

    @field_validator("input_transcription_model")
    @classmethod
    def _transcription_model_name(cls, value: str | None) -> str | None:
        if value is not None:
            rules.model_name(value)
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _exact_origins(cls, value: Any) -> Any:
        return rules.exact_origins(value)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None else rules.public_url(value)

    @field_validator("azure_token_command")
    @classmethod
    def _token_command(cls, value: str | None) -> str | None:
        if value is not None:
            rules.command_line(value)
        return value

    @field_validator("provider_base_url")
    @classmethod
    def _provider_url_with_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        has_key = info.data.get("provider_api_key") is not None
        if info.data.get("provider") == "azure":
            credential = has_key or info.data.get("azure_token_command") is not None
            if value is None and credential:
                raise ValueError(
                    "is required with BROKER_PROVIDER=azure: https://{resource}.openai.azure.com"
                )
            if value is not None and not credential:
                raise ValueError(
                    "is set but neither BROKER_PROVIDER_API_KEY / AZURE_OPENAI_API_KEY nor"
                    " BROKER_AZURE_TOKEN_COMMAND is"
                )
            return None if value is None else rules.azure_base_url(value)
        if value is None and has_key:
            return OPENAI_BASE_URL
        if value is not None and not has_key:
            raise ValueError("is set but no BROKER_PROVIDER_API_KEY / OPENAI_API_KEY")
        return value

    @model_validator(mode="after")
    def _provider_rules(self) -> Self:
        """Azure's settings only with ``azure``; one Azure credential, not two."""
        if self.provider != "azure":
            for name, value in (
                ("BROKER_AZURE_TOKEN_COMMAND", self.azure_token_command),
                ("BROKER_AZURE_WEBRTC_FILTER", self.azure_webrtc_filter),
            ):
                if value is not None:
                    raise SettingsError(f"{name} is set but BROKER_PROVIDER is not azure")
        elif self.provider_api_key is not None and self.azure_token_command is not None:
            raise SettingsError(
                "BROKER_PROVIDER_API_KEY / AZURE_OPENAI_API_KEY and BROKER_AZURE_TOKEN_COMMAND"
                " are both set: choose one Azure credential"
            )
        return self

    @field_validator("admin_key")
    @classmethod
    def _long_admin_key(cls, value: Secret | None) -> Secret | None:
        if value is not None:
            rules.at_least(value.reveal(), MIN_ADMIN_KEY_CHARS)
        return value

    @field_validator("signing_key", mode="before")
    @classmethod
    def _key_or_key_file(cls, value: Any, info: ValidationInfo) -> Any:
        """No signing key given: the development key in ``signing_key_file``."""
        path = info.data.get("signing_key_file")
        if value is None and path is not None:
            return Secret(load_or_create_key_file(path))
        return value

    @property
    def signing_key_configured(self) -> bool:
        """Whether the signing key was given, not taken from the per-host generated file."""
        try:
            from_file = self.signing_key_file.read_text().strip()
        except OSError:
            return True
        return from_file != self.signing_key.reveal()

    @field_validator("signing_key")
    @classmethod
    def _long_signing_key(cls, value: Secret) -> Secret:
        rules.at_least(value.reveal(), MIN_SIGNING_KEY_CHARS)
        return value

    @field_validator("redaction_key")
    @classmethod
    def _long_redaction_key(cls, value: Secret | None) -> Secret | None:
        if value is not None:
            rules.at_least(value.reveal(), MIN_SIGNING_KEY_CHARS)
        return value

    @property
    def redaction_secret(self) -> str:
        """The secret redaction keys derive from: ``BROKER_REDACTION_KEY`` or the signing key."""
        chosen = self.redaction_key if self.redaction_key is not None else self.signing_key
        return chosen.reveal()

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            rules.webhook_url(value)
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: Secret | None) -> Secret | None:
        if value is not None:
            rules.webhook_secret(value.reveal())
        return value

    @field_validator("sip_webhook_secret")
    @classmethod
    def _sip_webhook_secret(cls, value: Secret | None) -> Secret | None:
        if value is not None:
            if not value.reveal().startswith("whsec_"):
                raise ValueError("must be a whsec_ secret (the provider's webhook secret)")
            rules.webhook_secret(value.reveal())
        return value

    @property
    def sip_enabled(self) -> bool:
        """Phone calls are taken only with both the webhook secret and the lines file."""
        return self.sip_webhook_secret is not None and self.sip_lines is not None

    @model_validator(mode="after")
    def _webhook_rules(self) -> Self:
        """The webhook URL and secret go together, both or neither; backoff grows to its cap."""
        if self.webhook_url is not None and self.webhook_secret is None:
            raise SettingsError("BROKER_WEBHOOK_URL is set but BROKER_WEBHOOK_SECRET is not")
        if self.webhook_url is None and self.webhook_secret is not None:
            raise SettingsError("BROKER_WEBHOOK_SECRET is set but BROKER_WEBHOOK_URL is not")
        if self.webhook_backoff_max_s < self.webhook_backoff_s:
            raise SettingsError(
                "BROKER_WEBHOOK_BACKOFF_MAX_S must be at least BROKER_WEBHOOK_BACKOFF_S"
            )
        return self
