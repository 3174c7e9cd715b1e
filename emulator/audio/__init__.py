"""The emulator's audio layer: voice-activity detection in, model speech out.

Everything here is independent of calls and events: :class:`EnergyVad` turns inbound
samples into speech start/stop times, :func:`synthesize` turns text into a :class:`Clip`,
and :class:`ModelAudioTrack` plays clips to the browser.
"""

from .speech import SAMPLE_RATE, Clip, espeak_available, synthesize, tone_clip
from .track import ModelAudioTrack, PacedAudioTrack, frame_to_mono
from .vad import EnergyVad, SpeechStarted, SpeechStopped, VadConfig, VadEvent, level_dbfs

__all__ = [
    "Clip",
    "EnergyVad",
    "ModelAudioTrack",
    "PacedAudioTrack",
    "SAMPLE_RATE",
    "SpeechStarted",
    "SpeechStopped",
    "VadConfig",
    "VadEvent",
    "espeak_available",
    "frame_to_mono",
    "level_dbfs",
    "synthesize",
    "tone_clip",
]
