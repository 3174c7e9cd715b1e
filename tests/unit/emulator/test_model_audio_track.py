"""The outbound ModelAudioTrack, frame decoding, and a Peer's audio over real aiortc.

Track tests pull frames from ``recv()`` directly; pacing makes each frame take 20 ms, so
clips stay short.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from numpy.typing import NDArray

from emulator.audio import Clip, ModelAudioTrack, frame_to_mono, tone_clip
from emulator.peer import Peer
from tests.support.audio import ScriptedMicTrack, rms_dbfs, silence, speech_like_signal
from tests.support.browser import FakeBrowser

FRAME = 960  # 20 ms at 48 kHz
SILENT = -100.0


def clip_of(frames: int, level: int = 8000) -> Clip:
    """A clip of exactly ``frames`` 20 ms frames of a 200 Hz tone."""
    t = np.arange(frames * FRAME) / 48000
    return Clip((level * np.sin(2 * np.pi * 200 * t)).astype(np.int16), "tone")


class Recorder:
    """Records callbacks in order, as the track reports them."""

    def __init__(self, name: str = "clip") -> None:
        self.name = name
        self.calls: list[str] = []
        self.stopped = asyncio.Event()
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    def on_start(self) -> None:
        self.calls.append(f"{self.name}:start")
        self.started_at = time.monotonic()

    def on_stop(self, interrupted: bool) -> None:
        self.calls.append(f"{self.name}:stop({interrupted})")
        self.stopped_at = time.monotonic()
        self.stopped.set()

    def play_on(self, target: ModelAudioTrack | Peer, clip: Clip) -> Any:
        method = target.play if isinstance(target, ModelAudioTrack) else target.speak
        return method(clip, on_start=self.on_start, on_stop=self.on_stop)


async def levels(track: ModelAudioTrack, count: int) -> list[float]:
    return [rms_dbfs(frame_to_mono(await track.recv())) for _ in range(count)]


@pytest.fixture
async def track() -> AsyncIterator[ModelAudioTrack]:
    model_track = ModelAudioTrack()
    yield model_track
    model_track.stop()


# ---- ModelAudioTrack -----------------------------------------------------------------


async def test_idle_frames_are_silent_20ms_s16_mono_48k(track: ModelAudioTrack) -> None:
    frames = [await track.recv() for _ in range(3)]
    for index, frame in enumerate(frames):
        assert frame.samples == FRAME
        assert frame.sample_rate == 48000
        assert frame.format.name == "s16"
        assert frame.layout.name == "mono"
        assert frame.pts == index * FRAME
        assert frame.time_base == fractions.Fraction(1, 48000)
        assert rms_dbfs(frame_to_mono(frame)) < SILENT
    assert track.kind == "audio"
    assert not track.playing


async def test_frames_are_paced_in_real_time(track: ModelAudioTrack) -> None:
    began = time.monotonic()
    for _ in range(11):
        await track.recv()
    assert 0.18 <= time.monotonic() - began < 1.0  # the first frame is immediate


async def test_play_starts_on_the_first_frame_and_stops_after_the_last(
    track: ModelAudioTrack,
) -> None:
    """on_start comes with the first clip frame; on_stop(False) once, after the last one."""
    recorder = Recorder()
    assert await levels(track, 2) == [-120.0, -120.0]
    recorder.play_on(track, clip_of(5))
    assert track.playing and recorder.calls == []
    heard = []
    for _ in range(5):
        heard.append(rms_dbfs(frame_to_mono(await track.recv())))
        assert recorder.calls == ["clip:start"]
    assert all(level > -20 for level in heard)
    assert await levels(track, 1) == [-120.0]
    assert recorder.calls == ["clip:start", "clip:stop(False)"]
    assert not track.playing
    assert await levels(track, 3) == [-120.0] * 3
    assert recorder.calls == ["clip:start", "clip:stop(False)"]


async def test_a_partial_last_frame_is_padded_with_silence(track: ModelAudioTrack) -> None:
    clip = Clip(clip_of(2).samples[: FRAME + 100], "tone")
    recorder = Recorder()
    recorder.play_on(track, clip)
    first, second = [frame_to_mono(await track.recv()) for _ in range(2)]
    assert np.array_equal(first, clip.samples[:FRAME])
    assert np.array_equal(second[:100], clip.samples[FRAME:])
    assert not second[100:].any()
    await track.recv()
    assert recorder.calls == ["clip:start", "clip:stop(False)"]


async def test_clear_mid_clip_stops_now_then_silence(track: ModelAudioTrack) -> None:
    recorder = Recorder()
    recorder.play_on(track, clip_of(20))
    assert all(level > -20 for level in await levels(track, 3))
    assert track.clear() is True
    assert recorder.calls == ["clip:start", "clip:stop(True)"]
    assert not track.playing
    assert await levels(track, 3) == [-120.0] * 3
    assert track.clear() is False
    assert recorder.calls == ["clip:start", "clip:stop(True)"]


async def test_clear_before_the_first_frame_stops_without_starting(
    track: ModelAudioTrack,
) -> None:
    """A clip cleared before it played gets on_stop(True) and never on_start."""
    recorder = Recorder()
    recorder.play_on(track, clip_of(5))
    assert track.clear() is True
    assert recorder.calls == ["clip:stop(True)"]
    assert await levels(track, 2) == [-120.0] * 2
    assert recorder.calls == ["clip:stop(True)"]


async def test_play_while_playing_replaces_the_clip(track: ModelAudioTrack) -> None:
    old, new = Recorder("old"), Recorder("new")
    old.play_on(track, clip_of(20))
    await levels(track, 2)
    new.play_on(track, clip_of(2, level=2000))
    assert old.calls == ["old:start", "old:stop(True)"]
    assert new.calls == []
    quieter = await levels(track, 2)
    assert new.calls == ["new:start"]
    assert all(-30 < level < -20 for level in quieter)  # the new clip's level, not the old
    await track.recv()
    assert new.calls == ["new:start", "new:stop(False)"]
    assert old.calls == ["old:start", "old:stop(True)"]


async def test_an_empty_clip_starts_and_stops_on_the_next_frame(track: ModelAudioTrack) -> None:
    recorder = Recorder()
    recorder.play_on(track, Clip(np.zeros(0, dtype=np.int16), "tone"))
    assert recorder.calls == []
    assert await levels(track, 1) == [-120.0]
    assert recorder.calls == ["clip:start", "clip:stop(False)"]
    assert not track.playing


async def test_a_raising_callback_is_logged_and_playback_goes_on(
    track: ModelAudioTrack, caplog: pytest.LogCaptureFixture
) -> None:
    stops: list[bool] = []

    def explode() -> None:
        raise RuntimeError("boom")

    track.play(clip_of(2), on_start=explode, on_stop=stops.append)
    with caplog.at_level(logging.ERROR, logger="emulator.audio.track"):
        assert all(level > -20 for level in await levels(track, 2))
    await track.recv()
    assert stops == [False]
    assert "playback callback raised" in caplog.text


async def test_stop_drops_the_clip_without_callbacks() -> None:
    track = ModelAudioTrack()
    recorder = Recorder()
    recorder.play_on(track, clip_of(10))
    await track.recv()
    track.stop()
    assert recorder.calls == ["clip:start"]
    assert not track.playing
    with pytest.raises(MediaStreamError):
        await track.recv()
    recorder.play_on(track, clip_of(1))  # an ended track ignores new clips
    assert not track.playing
    assert track.clear() is False
    assert recorder.calls == ["clip:start"]


# ---- frame_to_mono -------------------------------------------------------------------


def make_frame(array: NDArray[Any], fmt: str, layout: str) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(array, format=fmt, layout=layout)
    frame.sample_rate = 48000
    return frame


@pytest.mark.parametrize(
    ("array", "fmt", "layout", "expected"),
    [
        (np.array([[100, -200, 300]], dtype=np.int16), "s16", "mono", [100, -200, 300]),
        (np.array([[100, 300, -200, -400]], dtype=np.int16), "s16", "stereo", [200, -300]),
        (np.array([[100, -200], [300, -400]], dtype=np.int16), "s16p", "stereo", [200, -300]),
        (np.array([[0.5, -0.25]], dtype=np.float32), "flt", "mono", [16384, -8192]),
        (np.array([[0.5, -1.0], [0.0, -1.0]], dtype=np.float32), "fltp", "stereo", [8192, -32768]),
        (np.array([[65536 * 100, -65536 * 7]], dtype=np.int32), "s32", "mono", [100, -7]),
        (np.array([[128, 0, 255]], dtype=np.uint8), "u8", "mono", [0, -32768, 32512]),
    ],
)
def test_frame_to_mono(array: NDArray[Any], fmt: str, layout: str, expected: list[int]) -> None:
    mono = frame_to_mono(make_frame(array, fmt, layout))
    assert mono.dtype == np.int16
    assert mono.tolist() == expected


# ---- Peer over a real aiortc connection ----------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Poll ``condition`` (state owned by aiortc's tasks has no event to wait on)."""
    async with asyncio.timeout(timeout):
        for _ in range(int(timeout / 0.02) + 1):
            if condition():
                return
            await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


@asynccontextmanager
async def connected_peer(
    browser: FakeBrowser,
    on_audio: Callable[[NDArray[np.int16], int], None] | None = None,
) -> AsyncIterator[Peer]:
    peer = Peer(
        "test-call",
        on_channel_open=lambda: None,
        on_channel_message=lambda _message: None,
        on_audio=on_audio,
    )
    try:
        async with asyncio.timeout(10):
            answer = await peer.answer(await browser.create_offer())
            await browser.accept_answer(answer)
            await browser.wait_connection_state("connected")
        yield peer
    finally:
        await peer.close()
        await browser.close()


async def test_peer_hands_inbound_mic_audio_to_on_audio() -> None:
    """Scripted speech from the browser's mic reaches on_audio as loud mono int16."""
    received: list[tuple[float, float, int, int]] = []

    def on_audio(samples: NDArray[np.int16], rate: int) -> None:
        assert samples.dtype == np.int16 and samples.ndim == 1
        received.append((time.monotonic(), rms_dbfs(samples), samples.size, rate))

    mic = ScriptedMicTrack([silence(0.4), speech_like_signal(0.6), silence(0.4)])
    async with connected_peer(FakeBrowser(mic=mic), on_audio=on_audio):
        await wait_until(lambda: mic.finished.is_set() and len(received) > 60)
        speech_at = mic.segment_started[1]
        assert speech_at is not None
        loud = [at for at, level, _, _ in received if level > -30]
        assert loud, "no loud frame arrived"
        assert speech_at <= loud[0] < speech_at + 0.5
        assert {(size, rate) for _, _, size, rate in received} == {(FRAME, 48000)}


async def test_on_audio_errors_are_logged_once_and_the_drain_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def on_audio(samples: NDArray[np.int16], rate: int) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad consumer")

    with caplog.at_level(logging.ERROR, logger="emulator.peer"):
        async with connected_peer(FakeBrowser(), on_audio=on_audio):
            await wait_until(lambda: calls >= 10)
    assert sum("on_audio failed" in r.getMessage() for r in caplog.records) == 1


async def test_peer_speaks_to_the_browser() -> None:
    """Audible while the clip plays, silent before and after; callbacks bracket it."""
    browser = FakeBrowser()
    async with connected_peer(browser) as peer:
        await wait_until(lambda: len(browser.inbound_audio) >= 10)
        recorder = Recorder()
        assert peer.has_audio
        asked_at = time.monotonic()
        assert recorder.play_on(peer, tone_clip("hello there my friend")) is True
        assert peer.speaking
        async with asyncio.timeout(5):
            await recorder.stopped.wait()
        assert recorder.calls == ["clip:start", "clip:stop(False)"]
        assert not peer.speaking
        await wait_until(lambda: browser.inbound_audio[-1][0] > asked_at + 1.6)
    assert recorder.started_at is not None and recorder.stopped_at is not None
    before = browser.inbound_levels_between(asked_at - 0.5, asked_at)
    during = browser.inbound_levels_between(recorder.started_at + 0.15, recorder.stopped_at)
    after = browser.inbound_levels_between(recorder.stopped_at + 0.3, recorder.stopped_at + 0.6)
    assert before and max(before) < -60
    assert during and max(during) > -25
    assert sum(level > -40 for level in during) > len(during) / 2
    assert after and max(after) < -60


async def test_stop_speaking_cuts_the_clip() -> None:
    browser = FakeBrowser()
    async with connected_peer(browser) as peer:
        recorder = Recorder()
        recorder.play_on(peer, tone_clip("one two three four five six seven eight"))
        await wait_until(lambda: recorder.started_at is not None)
        await asyncio.sleep(0.2)
        assert peer.stop_speaking() is True
        assert recorder.calls == ["clip:start", "clip:stop(True)"]
        assert peer.stop_speaking() is False
        stopped_at = recorder.stopped_at
        assert stopped_at is not None
        await wait_until(lambda: browser.inbound_audio[-1][0] > stopped_at + 0.6)
    assert max(browser.inbound_levels_between(stopped_at + 0.3, stopped_at + 0.6)) < -60


async def test_speak_is_refused_without_an_audio_sender_or_after_close() -> None:
    """No audio m-line in the offer (or a closed peer): speak is False, no callbacks."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("oai-events")
    peer = Peer("no-audio", on_channel_open=lambda: None, on_channel_message=lambda _m: None)
    recorder = Recorder()
    try:
        async with asyncio.timeout(10):
            await pc.setLocalDescription(await pc.createOffer())
            await peer.answer(pc.localDescription.sdp)
        assert not peer.has_audio
        assert recorder.play_on(peer, clip_of(1)) is False
        assert not peer.speaking
    finally:
        await peer.close()
        await pc.close()

    browser = FakeBrowser()
    async with connected_peer(browser) as peer:
        pass
    assert recorder.play_on(peer, clip_of(1)) is False
    assert recorder.calls == []


async def test_close_drops_a_playing_clip_without_callbacks() -> None:
    browser = FakeBrowser()
    recorder = Recorder()
    async with connected_peer(browser) as peer:
        recorder.play_on(peer, tone_clip("one two three four five six"))
        await wait_until(lambda: recorder.started_at is not None)
    assert recorder.calls == ["clip:start"]
    assert not peer.speaking
