"""The browser package's types: ``tsc --strict`` on a typed consumer, and the types match the
module's exports.

TypeScript is the version pinned in ``web/package-lock.json``, installed with ``npm ci`` into
a directory under the system's temporary folder, kept per lock file so a second run reuses
it (the checkout stays free of ``node_modules``). Without node and npm this skips, unless
``CI=true``: then it fails.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

import pytest

from tests.conftest import skip_or_fail

ROOT: Final = Path(__file__).resolve().parents[2]
WEB: Final = ROOT / "web"
CONSUMER: Final = ROOT / "tests" / "js"
PACKAGE_FILES: Final = ("package.json", "broker-client.js", "broker-client.d.ts")
NPM_CI_TIMEOUT_S: Final = 300
TSC_TIMEOUT_S: Final = 180


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        skip_or_fail("node and npm are needed to check the browser package's types")
    assert node is not None and npm is not None
    return node, npm


def _run(argv: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def typescript_dir() -> Path:
    """A directory with the pinned TypeScript installed (``npm ci``) and the package linked
    in as ``node_modules/@sideband-broker/client`` (fresh copies of its files)."""
    _, npm = _tools()
    lock = (WEB / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock + (WEB / "package.json").read_bytes()).hexdigest()[:16]
    work = Path(tempfile.gettempdir()) / f"sideband-broker-tsc-{digest}"
    installed = work / "node_modules" / "typescript" / "package.json"
    if not installed.exists():
        work.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(WEB / name, work / name)
        done = _run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], work, NPM_CI_TIMEOUT_S
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    package = work / "node_modules" / "@sideband-broker" / "client"
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir(parents=True)
    for name in PACKAGE_FILES:
        shutil.copy(WEB / name, package / name)
    return work


def test_the_pinned_typescript_is_the_one_installed(typescript_dir: Path) -> None:
    pinned = json.loads((WEB / "package.json").read_text())["devDependencies"]["typescript"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "pin an exact version"
    installed = typescript_dir / "node_modules" / "typescript" / "package.json"
    assert json.loads(installed.read_text())["version"] == pinned


def test_a_typed_consumer_passes_tsc_strict(typescript_dir: Path) -> None:
    for name in ("consumer.ts", "tsconfig.json"):
        shutil.copy(CONSUMER / name, typescript_dir / name)
    node, _ = _tools()
    tsc = typescript_dir / "node_modules" / "typescript" / "bin" / "tsc"
    done = _run(
        [node, str(tsc), "--strict", "--noEmit", "-p", "tsconfig.json"],
        typescript_dir,
        TSC_TIMEOUT_S,
    )
    assert done.returncode == 0, f"tsc --strict failed:\n{done.stdout}\n{done.stderr}"


def test_tsc_refuses_a_consumer_that_misuses_the_types(typescript_dir: Path) -> None:
    """The check has teeth: a wrong type for a typed event detail is an error."""
    broken = (CONSUMER / "consumer.ts").read_text()
    broken = broken.replace(
        "const reason: CloseReason = event.detail.reason;",
        "const reason: number = event.detail.reason;",
    )
    assert "const reason: number" in broken
    (typescript_dir / "broken.ts").write_text(broken)
    config = json.loads((CONSUMER / "tsconfig.json").read_text())
    config["files"] = ["broken.ts"]
    (typescript_dir / "tsconfig.broken.json").write_text(json.dumps(config))
    node, _ = _tools()
    tsc = typescript_dir / "node_modules" / "typescript" / "bin" / "tsc"
    done = _run(
        [node, str(tsc), "--noEmit", "-p", "tsconfig.broken.json"], typescript_dir, TSC_TIMEOUT_S
    )
    assert done.returncode != 0
    assert "broken.ts" in done.stdout and "TS2322" in done.stdout, done.stdout


def test_the_public_types_have_no_any() -> None:
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", (WEB / "broker-client.d.ts").read_text(), flags=re.S)
    assert not re.search(r"\bany\b", code)


def test_the_types_declare_exactly_what_the_module_exports() -> None:
    node, _ = _tools()
    module = (WEB / "broker-client.js").as_uri()
    done = _run(
        [
            node,
            "--input-type=module",
            "-e",
            f"const m = await import({json.dumps(module)});"
            " console.log(JSON.stringify(Object.keys(m).sort()));",
        ],
        ROOT,
        60,
    )
    assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout)
    declared = re.findall(
        r"^export (?:declare )?(?:class|function|const) (\w+)",
        (WEB / "broker-client.d.ts").read_text(),
        flags=re.M,
    )
    assert exported == sorted(set(declared)) == ["BrokerClientError", "callBridge", "connect"]
