"""End-to-end fixtures: Debian's Chromium, headless, driven by Playwright, on the demo page.

Chromium is the one from the distribution (``/usr/bin/chromium``), never a downloaded one;
without it these tests skip on a laptop and fail when ``CI=true``. Each test gets a fresh
profile (a new browser context) with a fake microphone that needs no permission prompt.
"""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import pytest

from tests.conftest import BrokerFactory, skip_or_fail
from tests.support.audio import RATE, silence
from tests.support.broker_server import RunningBroker

CHROMIUM: Final = Path("/usr/bin/chromium")
SCREENSHOTS: Final = Path(__file__).resolve().parent / "screenshots"
"""Where each scenario's screenshot goes (kept out of git; docs/demo.png is the README's)."""
FLAGS: Final = (
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
)


async def launch(playwright: Any, *extra: str) -> Any:
    """Chromium with the test flags (and ``extra``, e.g. a WAV as the fake microphone)."""
    if not CHROMIUM.exists():
        skip_or_fail("chromium is not installed (apt-get install chromium)")
    return await playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*FLAGS, *extra]
    )


@pytest.fixture
async def playwright() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # pragma: no cover - the dev extra installs it
        skip_or_fail("the playwright package is not installed (pip install -e '.[dev]')")
    async with async_playwright() as running:
        yield running


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """Write 16-bit mono PCM at :data:`RATE` for ``--use-file-for-fake-audio-capture``."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.astype(np.int16).tobytes())
    return path


@pytest.fixture
async def chromium(playwright: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """Chromium whose fake microphone is silent.

    Chromium's default fake device beeps every second; the emulator's server VAD hears
    each beep as a user turn, and a turn that lands while a tool runs makes the model
    answer the "speech" instead of the tool result. Typed scenarios need a quiet room.
    """
    quiet = write_wav(tmp_path / "silence.wav", silence(2.0))
    browser = await launch(playwright, f"--use-file-for-fake-audio-capture={quiet}")
    yield browser
    await browser.close()


@pytest.fixture
async def demo_broker(make_broker: BrokerFactory) -> RunningBroker:
    return await make_broker(demo=True)


@pytest.fixture
async def page(chromium: Any) -> AsyncIterator[Any]:
    """A page in a fresh context; what the page logs is kept for failure messages."""
    context = await chromium.new_context(viewport={"width": 1100, "height": 760})
    new_page = await context.new_page()
    new_page.console_lines = []
    new_page.on("console", lambda msg: new_page.console_lines.append(f"{msg.type}: {msg.text}"))
    new_page.on("pageerror", lambda exc: new_page.console_lines.append(f"pageerror: {exc}"))
    yield new_page
    await context.close()


async def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
