"""The built wheel, installed in a fresh virtualenv, serves the browser files without a checkout.

The wheel is built once per run from a copy of the source (a build in place would leave
``build/`` and ``*.egg-info`` in the checkout), installed with its dependencies from the package
index into a new virtualenv (pip's cache is the run's own), and ``broker serve --dev`` is started
from that virtualenv in an empty directory: ``/ops/``, the demo and ``broker-client.js`` must
come from the installed package. Without the package index this skips, unless ``CI=true``,
where it fails.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import pytest

from tests.support.subprocesses import clean_env, needs_index, stop_group

ROOT: Final = Path(__file__).resolve().parents[2]
SOURCES: Final = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "LICENSE",
    "broker",
    "sideband",
    "emulator",
    "migrations",
    "web",
)
"""What a build reads (pyproject.toml, setup.py and MANIFEST.in name the rest)."""
INSTALL_TIMEOUT_S: Final = 480
START_TIMEOUT_S: Final = 90

# The first test pays for the build and the install (a minute or two on two cores).
pytestmark = pytest.mark.timeout(2 * INSTALL_TIMEOUT_S + 120)


def _clean_env() -> dict[str, str]:
    """This environment without what would point the venv at the checkout or its settings."""
    return clean_env(drop_prefixes=("BROKER_", "OPENAI_", "AZURE_OPENAI_"))


def _pip(python: Path, cache: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", *args, "--quiet", "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        env=_clean_env(),
        cwd=cwd,
    )


@pytest.fixture(scope="session")
def installed_broker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin/`` of a fresh virtualenv with the built wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    source, dist, cache = root / "source", root / "dist", root / "pip-cache"
    source.mkdir()
    skipped = shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "build", "dist", "node_modules", ".*"
    )
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=skipped)
        else:
            shutil.copy2(path, source / name)
    built = _pip(
        Path(sys.executable), cache, "wheel", "--no-deps", "--wheel-dir", str(dist), ".", cwd=source
    )
    needs_index(built, "building the wheel (pip fetches setuptools)")
    (wheel,) = dist.glob("sideband_broker-*.whl")

    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    bin_dir = root / "venv" / "bin"
    installed = _pip(bin_dir / "python", cache, "install", str(wheel), cwd=root)
    needs_index(installed, "installing the wheel's dependencies")
    return bin_dir


@dataclass
class Served:
    base_url: str
    http: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, dict[str, str], str]:
        async with self.http.get(self.base_url + path) as resp:
            return resp.status, dict(resp.headers), await resp.text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served(installed_broker: Path, tmp_path: Path) -> AsyncIterator[Served]:
    """``broker serve --dev`` of the virtualenv, run in an empty directory."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        str(installed_broker / "broker"),
        "serve",
        "--dev",
        "--port",
        str(port),
        cwd=tmp_path,
        env=_clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    output: list[str] = []
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            # The banner's last key line: the app is started and listening right after it.
            while not any(re.search(r"ops key\s+bk_", line) for line in output):
                line = (await proc.stdout.readline()).decode()
                assert line, "the installed broker exited early:\n" + "".join(output)
                output.append(line)
        async with aiohttp.ClientSession() as http:
            base_url = f"http://127.0.0.1:{port}"
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with http.get(base_url + "/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
            yield Served(base_url, http)
    finally:
        await stop_group(proc, grace_s=15)


def test_the_wheel_carries_the_browser_files_under_the_package(installed_broker: Path) -> None:
    probe = subprocess.run(
        [
            str(installed_broker / "python"),
            "-c",
            "import json, broker, broker.api.web_files as w;"
            " print(json.dumps([broker.__file__, str(w.WEB_ROOT)]))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        cwd=installed_broker.parent,
    )
    assert probe.returncode == 0, probe.stderr
    module, web_root = map(Path, json.loads(probe.stdout))
    venv = installed_broker.parent
    assert module.is_relative_to(venv) and not module.is_relative_to(ROOT)
    assert web_root == module.parent / "web"
    for name in ("ops/index.html", "ops/ops.js", "demo/index.html", "broker-client.js"):
        assert (web_root / name).read_bytes() == (ROOT / "web" / name).read_bytes(), name
    # Development files of web/ stay out of the wheel.
    assert not (web_root / "node_modules").exists()
    assert not (web_root / "package-lock.json").exists()


async def test_the_installed_broker_serves_the_ops_dashboard_and_the_browser_client(
    served: Served,
) -> None:
    status, headers, page = await served.get("/ops/")
    assert status == 200, page
    assert headers["Content-Type"].startswith("text/html")
    assert page == (ROOT / "web" / "ops" / "index.html").read_text()
    assert '<script type="module" src="ops.js">' in page

    status, headers, script = await served.get("/ops/ops.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert script == (ROOT / "web" / "ops" / "ops.js").read_text()

    status, headers, client = await served.get("/broker-client.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert client == (ROOT / "web" / "broker-client.js").read_text()
    assert "export async function connect" in client

    status, _, demo = await served.get("/")
    assert status == 200 and demo == (ROOT / "web" / "demo" / "index.html").read_text()
    status, _, app_js = await served.get("/demo/app.js")
    assert status == 200 and app_js == (ROOT / "web" / "demo" / "app.js").read_text()


async def test_the_installed_broker_reports_its_version(installed_broker: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(installed_broker / "broker"),
        "--version",
        stdout=asyncio.subprocess.PIPE,
        env=_clean_env(),
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert out.decode() == f"broker {version}\n"
