"""The deployment files: ``docker-compose.yml`` as ``docker-compose config`` reads it, the proxy's
``deploy/nginx.conf`` and the ``Dockerfile``.

No Docker engine runs here: ``config`` only parses, interpolates and checks the file, which is
what these tests need. Both Debian packagings answer: v1 (Python, prints YAML) and v2 (Go,
prints JSON on request).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from broker.settings import Settings
from broker.settings.sources import variables
from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"postgres", "migrate", "emulator", "broker-1", "broker-2", "proxy"}
BROKERS = ("broker-1", "broker-2")
# Dummy values for the variables the file requires (`${VAR:?…}`); long enough for the
# broker's own checks (a signing key of 32 characters, an admin key of 16).
REQUIRED = {
    "POSTGRES_PASSWORD": "compose-test-password",
    "BROKER_SIGNING_KEY": "compose-test-signing-key-" + "s" * 16,
    "BROKER_ADMIN_KEY": "compose-test-admin-key",
    "BROKER_PROVIDER_API_KEY": "compose-test-provider-key",
}
# v1 prints YAML only; the project has no YAML parser, but v1's own interpreter has PyYAML
# (compose v1 is built on it), so it turns its output into JSON.
YAML_TO_JSON = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _setting_variables() -> set[str]:
    return {v for name, field in Settings.model_fields.items() for v in variables(name, field)}


def _env(**overrides: str | None) -> dict[str, str]:
    """The test's environment with the required variables set; ``None`` unsets one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "COMPOSE_"))}
    env |= REQUIRED
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _seconds(duration: str | int | float) -> float:
    """A compose duration (``45s``, ``1m30s``) in seconds; v2's JSON may give nanoseconds."""
    if isinstance(duration, int | float):
        return duration / 1e9
    factors = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = DURATION.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * factors[u] for n, u in parts)


@pytest.fixture(scope="module")
def compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        skip_or_fail("docker-compose is not installed (apt-get install docker-compose)")
        raise AssertionError("unreachable")
    return path


def _run(compose: str, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _major_version(compose: str) -> int:
    out = subprocess.run(
        [compose, "version", "--short"], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    return int(out.lstrip("v").split(".")[0])


@pytest.fixture(scope="module")
def config(compose: str) -> dict[str, Any]:
    """``docker-compose config``, parsed: the file after interpolation and merging."""
    if _major_version(compose) >= 2:
        done = _run(compose, "config", "--format", "json", env=_env())
        assert done.returncode == 0, done.stderr
        parsed: dict[str, Any] = json.loads(done.stdout)
        return parsed
    done = _run(compose, "config", env=_env())
    assert done.returncode == 0, done.stderr
    shebang = Path(compose).read_text().splitlines()[0]
    assert shebang.startswith("#!"), f"compose v1 is a Python script, not {shebang!r}"
    converted = subprocess.run(
        [*shebang[2:].split(), "-c", YAML_TO_JSON],
        input=done.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    parsed = json.loads(converted.stdout)
    return parsed


def test_the_file_has_the_topology(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == SERVICES
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Every broker-side service runs the one image built from the Dockerfile.
    image = services["broker-1"]["image"]
    assert all(services[name]["image"] == image for name in ("migrate", "emulator", *BROKERS))


def test_only_the_proxy_publishes_a_port(config: dict[str, Any]) -> None:
    publishing = {name for name, service in config["services"].items() if service.get("ports")}
    assert publishing == {"proxy"}


def test_the_brokers_share_keys_and_talk_to_postgres_and_the_emulator(
    config: dict[str, Any],
) -> None:
    services = config["services"]
    envs = [services[name]["environment"] for name in BROKERS]
    for env in envs:
        assert env["BROKER_SIGNING_KEY"] == REQUIRED["BROKER_SIGNING_KEY"]
        assert env["BROKER_ADMIN_KEY"] == REQUIRED["BROKER_ADMIN_KEY"]
        assert env["BROKER_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in env["BROKER_DATABASE_URL"]
        # Each variable is one the broker reads, and the broker accepts the values.
        assert {k for k in env if k.startswith("BROKER_")} <= _setting_variables()
        settings = Settings.from_env(env={k: str(v) for k, v in env.items()})
        assert settings.provider_base_url == "http://emulator:8090/v1"
        assert settings.provider_api_key is not None
        assert settings.provider_api_key.reveal() == REQUIRED["BROKER_PROVIDER_API_KEY"]
    # The same configuration but for each replica's own, unique instance name.
    names = [env.pop("BROKER_INSTANCE_ID") for env in envs]
    assert names == ["broker-1", "broker-2"]
    assert envs[0] == envs[1]
    emulator = services["emulator"]
    assert emulator["command"][0] == "emulator"
    assert emulator["command"][emulator["command"].index("--port") + 1] == "8090"
    assert emulator["environment"]["EMULATOR_API_KEY"] == REQUIRED["BROKER_PROVIDER_API_KEY"]
    for name in BROKERS:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert "emulator" in depends


def test_each_broker_checks_readiness_and_has_time_to_drain(config: dict[str, Any]) -> None:
    for name in BROKERS:
        broker = config["services"][name]
        check = broker["healthcheck"]
        assert not check.get("disable") and check["test"][0] in ("CMD", "CMD-SHELL")
        assert "/readyz" in " ".join(check["test"])
        grace = float(broker["environment"]["BROKER_SHUTDOWN_GRACE_S"])
        assert _seconds(broker["stop_grace_period"]) > grace + 10


@pytest.mark.parametrize("variable", sorted(REQUIRED))
def test_each_secret_must_be_set(compose: str, variable: str) -> None:
    """``${VAR:?…}``: no default signing key (or any other secret) is ever made up."""
    done = _run(compose, "config", env=_env(**{variable: None}))
    assert done.returncode != 0
    assert variable in done.stderr


def test_the_proxy_balances_over_both_brokers() -> None:
    conf = NGINX_CONF.read_text()
    upstreams = dict(re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", conf))
    assert len(upstreams) == 1
    ((name, body),) = upstreams.items()
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\b([^;]*);", body, re.MULTILINE)
    assert {host for host, _, _ in servers} == set(BROKERS)
    assert all(port == "8080" for _, port, _ in servers)
    assert all("max_fails=" in params for _, _, params in servers)
    assert set(re.findall(r"proxy_pass\s+http://([\w-]+)\s*;", conf)) == {name}
    # The event streams are not buffered and outlast the broker's 15 s keepalives.
    events = re.search(r"location\s+~\s+\S*events\S*\s*\{([^}]*)\}", conf)
    assert events is not None
    assert re.search(r"proxy_buffering\s+off;", events.group(1))
    assert re.search(r"proxy_read_timeout\s+1h;", events.group(1))


def test_the_proxy_names_the_services_the_compose_file_defines() -> None:
    """Without docker-compose: nginx's upstream hosts are the file's broker services."""
    compose_text = COMPOSE_FILE.read_text()
    defined = set(re.findall(r"^  (broker-\d+):\s*$", compose_text, re.MULTILINE))
    hosts = set(re.findall(r"^\s*server\s+([\w.-]+):\d+", NGINX_CONF.read_text(), re.MULTILINE))
    assert defined == hosts == set(BROKERS)
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf" in compose_text
    # Every BROKER_* the file sets is a setting (a misspelt one would be silently ignored).
    named = set(re.findall(r"\b(BROKER_[A-Z0-9_]*[A-Z0-9])\b\s*:", compose_text))
    assert named and named <= _setting_variables()


def test_the_image_runs_the_broker_unprivileged_from_a_checkout() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"pip install -e '\.\[postgres\]'", text)
    # The demo page and the ops dashboard are read from web/ beside the packages.
    assert re.search(r"^COPY web/ web/$", text, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    port = re.search(r"BROKER_PORT=(\d+)", text)
    assert port is not None
    assert re.search(rf"^EXPOSE {port.group(1)}$", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["broker"\]$', text, re.MULTILINE)
    assert re.search(r'^CMD \["serve"\]$', text, re.MULTILINE)
