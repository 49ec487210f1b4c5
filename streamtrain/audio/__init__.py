"""Audio in and out: decoding (soundfile), resampling, encoding (flac, wav, opus)."""

from streamtrain.audio.decoding import AUDIO_EXTENSIONS, AudioError, AudioInfo, decode, decode_segment, probe
from streamtrain.audio.encoding import (
    CODECS,
    DEFAULT_OPUS_COMPLEXITY,
    OPUS_BITRATES,
    OPUS_RATES,
    encode,
    opus_complexity,
    opus_compression_level,
    quantize16,
)
from streamtrain.audio.resampling import resample

__all__ = ["AUDIO_EXTENSIONS", "CODECS", "DEFAULT_OPUS_COMPLEXITY", "OPUS_BITRATES", "OPUS_RATES", "AudioError",
           "AudioInfo", "decode", "decode_segment", "encode", "opus_complexity", "opus_compression_level", "probe",
           "quantize16", "resample"]
