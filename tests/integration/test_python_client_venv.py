"""The Python client works where the broker is not installed: a fresh virtualenv with only
``clients/python`` (and ``httpx``, from the package index) in it.

The virtualenv is made once per run: ``python -m venv``, then ``pip install`` of a copy of
``clients/python`` (a build in place would leave ``build/`` and ``*.egg-info`` in the
checkout), with a pip cache of the run's own. Without the package index this skips, unless
``CI=true``, where it fails. The script runs as a subprocess, away from this checkout (no
``PYTHONPATH``, another working directory), against a live broker on this test's loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from broker import Secret
from tests.conftest import BrokerFactory
from tests.support.broker_server import ADMIN_KEY
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says, wait_session_ended
from tests.support.subprocesses import clean_env, needs_index
from tests.support.tool_backend import TOOL_SECRET, ToolBackend
from tests.support.webhook_receiver import WebhookReceiver

CLIENT_DIR: Final = Path(__file__).resolve().parents[2] / "clients" / "python"
WEBHOOK_SECRET: Final = "venv-test-webhook-secret-" + "v" * 20
SCRIPT_TIMEOUT_S: Final = 60

# What an app backend would write; each step is one run of the venv's python.
SCRIPT: Final = """
import base64, json, sys

from broker_client import BrokerClient, NotFoundError, WebhookVerificationError
from broker_client.webhooks import verify_event, verify_tool_call

step, args = sys.argv[1], sys.argv[2:]
if step == "create":
    base_url, key = args
    with BrokerClient(base_url, key) as broker:
        print(json.dumps(broker.create_session(tools=["lookup_order"]).raw))
elif step == "hang-up":
    base_url, key, session_id = args
    with BrokerClient(base_url, key) as broker:
        live = broker.get_session(session_id)
        calls = [(c.tool, c.status) for c in live.tool_calls]
        hung_up = broker.hang_up(session_id, reason="from the venv")
        try:
            broker.get_session("sess_" + "0" * 24)
            missing = None
        except NotFoundError as exc:
            missing = [exc.status, exc.code]
    print(json.dumps({"state": live.state, "calls": calls, "hung_up": hung_up,
                      "missing": missing}))
elif step == "verify":
    secret, tool_secret, path = args
    with open(path) as f:
        saved = json.load(f)
    hook = saved["webhook"]
    body = base64.b64decode(hook["body"])
    event = verify_event(secret, hook["headers"], body)
    forged = body.replace(b'"ops_hangup"', b'"max_duration"')
    assert forged != body
    try:
        verify_event(secret, hook["headers"], forged)
        tampered = "accepted"
    except WebhookVerificationError:
        tampered = "refused"
    tool = saved["tool"]
    verify_tool_call(tool_secret, tool["headers"], base64.b64decode(tool["body"]))
    print(json.dumps({"type": event.type, "session_id": event.data["session_id"],
                      "end_reason": event.data["end_reason"], "tampered": tampered,
                      "tool_call": "verified"}))
"""

PROBE: Final = """
import importlib.util, json
import broker_client, broker_client.webhooks
print(json.dumps({name: importlib.util.find_spec(name) is not None
                  for name in ("aiohttp", "aiortc", "broker", "sideband", "emulator", "httpx")}))
"""


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtualenv holding only the client and its dependencies."""
    root = tmp_path_factory.mktemp("client-venv")
    source = root / "source"
    shutil.copytree(
        CLIENT_DIR,
        source,
        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "dist"),
    )
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--cache-dir", str(root / "pip-cache")]
        + [str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        cwd=root,
    )
    needs_index(install, "pip install of clients/python")
    return python


async def _run(python: Path, cwd: Path, *args: str) -> Any:
    """Run the venv's python on ``args`` without blocking the broker; its JSON output."""
    proc = await asyncio.create_subprocess_exec(
        str(python),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=clean_env(),
    )
    async with asyncio.timeout(SCRIPT_TIMEOUT_S):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def _saved(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    return {"headers": headers, "body": base64.b64encode(body).decode()}


async def test_the_client_and_the_verifiers_work_in_a_virtualenv_without_the_broker(
    client_venv: Path,
    make_broker: BrokerFactory,
    receiver: WebhookReceiver,
    tool_backend: ToolBackend,
    tmp_path: Path,
) -> None:
    found = await _run(client_venv, tmp_path, "-c", PROBE)
    assert found == {
        "aiohttp": False,
        "aiortc": False,
        "broker": False,
        "sideband": False,
        "emulator": False,
        "httpx": True,
    }

    broker = await make_broker(
        webhook_url=receiver.url,
        webhook_secret=Secret(WEBHOOK_SECRET),
        webhook_backoff_s=0.05,
        webhook_backoff_max_s=0.2,
    )
    script = tmp_path / "backend.py"
    script.write_text(SCRIPT)

    created = await _run(client_venv, tmp_path, str(script), "create", broker.base_url, ADMIN_KEY)
    assert created["id"].startswith("sess_") and created["client_secret"]["value"]
    # The answer the venv's client printed is what the page gets, unchanged.
    browser = await connect_browser(broker, created)
    try:
        ask(browser, "lookup_order 42")
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
        hung_up = await _run(
            client_venv, tmp_path, str(script), "hang-up", broker.base_url, ADMIN_KEY, created["id"]
        )
    finally:
        await browser.close()
    assert hung_up == {
        "state": "live",
        "calls": [["lookup_order", "succeeded"]],
        "hung_up": True,
        "missing": [404, "session_not_found"],
    }
    assert (await wait_session_ended(broker, created["id"]))["end_reason"] == "ops_hangup"

    [delivery] = await receiver.wait_deliveries(1)
    [tool_request] = tool_backend.calls_to("lookup_order")
    saved = tmp_path / "requests.json"
    saved.write_text(
        json.dumps(
            {
                "webhook": _saved(delivery.headers, delivery.body),
                "tool": _saved(tool_request.headers, tool_request.body),
            }
        )
    )
    verified = await _run(
        client_venv, tmp_path, str(script), "verify", WEBHOOK_SECRET, TOOL_SECRET, str(saved)
    )
    assert verified == {
        "type": "session.ended",
        "session_id": created["id"],
        "end_reason": "ops_hangup",
        "tampered": "refused",
        "tool_call": "verified",
    }
