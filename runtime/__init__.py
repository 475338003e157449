"""Lean inference side: reads exported artifacts, never imports torch (nor the export, engines or
calibration side). The public API:

    from covo_edge.runtime import Assistant, Model
    assistant = Assistant.load("artifacts/")          # one model, one conversation
    reply = assistant.reply(wav, sample_rate)
    model = Model.load("artifacts/")                  # one model, many conversations (a server)
    alice, bob = model.conversation(), model.conversation()
"""

from .assistant import MODES, Assistant, Cancel, Chunk, Conversation, Debug, Mode, Model, Reply
from .backends import BACKENDS, DEVICES, Backend, BackendName, Device
from .errors import (
    ArtifactsError, AudioError, CodesError, ContextFullError, CovoEdgeError, DeviceError, InputError, OptionError,
    OutputError,
)
from .frontend import check_audio
from .manifest import Manifest
from .sampling import Sampling
from .token2wav import Token2Wav, Voice

__all__ = [
    "Assistant", "Model", "Conversation", "Cancel", "Reply", "Chunk", "Debug", "Mode", "MODES", "Backend", "BackendName", "BACKENDS", "Device", "DEVICES",
    "Sampling", "Voice", "check_audio", "Token2Wav", "Manifest", "CovoEdgeError", "ArtifactsError", "AudioError", "CodesError",
    "ContextFullError", "DeviceError", "InputError", "OptionError", "OutputError",
]
