"""The ops dashboard's files: served at ``/ops/`` with a strict CSP, and nothing else is."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from broker.api.ops_dashboard import OPS_ROOT, dashboard_files
from tests.support.broker_server import RunningBroker

CSP_MUST = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "frame-ancestors 'none'",
)


def assert_strict_csp(headers: dict[str, str]) -> None:
    csp = headers["Content-Security-Policy"]
    for directive in CSP_MUST:
        assert directive in csp, f"{directive!r} missing from {csp!r}"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_the_page_and_its_files_are_served_with_a_strict_policy(
    broker: RunningBroker,
) -> None:
    """Always mounted (the test broker is not in demo mode); the html is never cached."""
    assert not broker.settings.demo
    page = await broker.request("GET", "/ops/", token=None)
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-store"
    assert_strict_csp(page.headers)
    assert '<script type="module" src="ops.js">' in page.text
    # Nothing inline (the policy would block it): no script body, style element or attribute.
    assert "<script>" not in page.text and "<style" not in page.text
    assert " style=" not in page.text and " onclick=" not in page.text

    for name, content_type in (("ops.js", "text/javascript"), ("style.css", "text/css")):
        reply = await broker.request("GET", f"/ops/{name}", token=None)
        assert reply.status == 200, name
        assert reply.headers["Content-Type"].startswith(content_type)
        assert_strict_csp(reply.headers)
        assert reply.text == (OPS_ROOT / name).read_text()
    index = await broker.request("GET", "/ops/index.html", token=None)
    assert index.status == 200 and index.headers["Cache-Control"] == "no-store"

    head = await broker.request("HEAD", "/ops/", token=None)
    assert head.status == 200 and head.text == ""


async def test_ops_without_a_slash_redirects_to_the_page(broker: RunningBroker) -> None:
    async with broker.http.get(broker.base_url + "/ops", allow_redirects=False) as resp:
        assert resp.status == 308
        assert resp.headers["Location"] == "/ops/"
    async with broker.http.get(broker.base_url + "/ops") as followed:
        assert followed.status == 200
        assert str(followed.url).endswith("/ops/")


async def test_the_key_is_never_sent_by_the_form_itself() -> None:
    """Were the script not to run, a submit would put named fields in the URL: there are none."""
    html = (OPS_ROOT / "index.html").read_text()
    [key_input] = [tag for tag in re.findall(r"<input[^>]*>", html) if 'id="key-input"' in tag]
    assert 'id="key-input"' in key_input and 'type="password"' in key_input
    assert "name=" not in key_input
    assert "localStorage." not in (OPS_ROOT / "ops.js").read_text()


@pytest.mark.parametrize(
    "path",
    [
        "/ops/nope.js",
        "/ops/README.md",
        "/ops/ops.js/",
        "/ops/sub/ops.js",
        "/ops/%2e%2e/broker-client.js",
        "/ops/..%2fbroker-client.js",
        "/ops/..%2F..%2Fpyproject.toml",
        "/ops/%2e%2e%2f%2e%2e%2fbroker%2fapp.py",
        "/ops/..%5c..%5cpyproject.toml",
        "/ops/.hidden",
    ],
)
async def test_unknown_files_are_404(broker: RunningBroker, path: str) -> None:
    async with broker.http.get(broker.base_url + path, allow_redirects=False) as resp:
        body = await resp.text()
        assert resp.status == 404, (path, resp.status, body[:200])
        assert resp.content_type == "application/problem+json"


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """One HTTP/1.0 request with ``target`` sent byte for byte (no client normalises it)."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            reply = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    return int(reply.split(b" ", 2)[1]), reply


@pytest.mark.parametrize(
    "target",
    [
        "/ops/../pyproject.toml",
        "/ops/../../pyproject.toml",
        "/ops/../broker/app.py",
        "/ops/./../web/broker-client.js",
        "/ops/..%2f..%2fpyproject.toml",
        "/ops//etc/passwd",
    ],
)
async def test_no_path_reaches_outside_the_dashboard_folder(
    broker: RunningBroker, target: str
) -> None:
    """Raw request targets, so ``..`` reaches the server as sent."""
    port = int(broker.base_url.rsplit(":", 1)[1])
    status, reply = await raw_get(port, target)
    assert status in (404, 400), reply[:300]
    assert b"[project]" not in reply and b"def create_app" not in reply
    assert b"root:" not in reply and b"export async function connect" not in reply


def test_only_the_dashboards_own_kinds_of_file_are_served(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "app.js").write_text("")
    (tmp_path / "notes.md").write_text("")
    (tmp_path / ".env").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.js").write_text("")
    (tmp_path / "linked.js").symlink_to(tmp_path / "app.js")
    assert sorted(dashboard_files(tmp_path)) == ["app.js", "index.html"]
    assert dashboard_files(tmp_path / "missing") == {}
    assert {"index.html", "ops.js", "style.css"} <= set(dashboard_files())


async def test_the_api_is_unchanged_next_to_the_dashboard(broker: RunningBroker) -> None:
    """The dashboard's routes take nothing from the API: its problem replies still come."""
    reply = await broker.request("GET", "/api/v1/sessions", token=None)
    assert (reply.status, reply.code) == (401, "missing_credentials")
    assert "Content-Security-Policy" not in reply.headers
