"""Ogg Opus encoding through libopus itself, so that its complexity can be chosen.

libsndfile's opus encoder (what ``soundfile.write`` uses) fixes libopus's
complexity at 10 (``ogg_opus.c`` calls ``OPUS_SET_COMPLEXITY (10)``; no
``sf_command`` reaches it, and ``SFC_SET_COMPRESSION_LEVEL`` sets the bitrate), and
the libopus inside soundfile's wheels encodes 2-3x slower than a distribution's
build. This module calls the system's libopus through cffi, as soundfile calls
libsndfile, and writes the Ogg pages itself (RFC 7845) in the layout libsndfile
writes: an OpusHead page, an OpusTags page, 20 ms packets from the multistream
encoder (so the default bitrate is libsndfile's too), a page per second of audio,
and the last page's granule position trimming the padding. The serial number is a
checksum of the audio, not a random number, so the same audio gives the same bytes.
"""

from __future__ import annotations

import ctypes.util
import struct
import zlib
from functools import lru_cache

import numpy as np

_CDEF = """
typedef struct OpusMSEncoder OpusMSEncoder;
OpusMSEncoder *opus_multistream_encoder_create(int32_t Fs, int channels, int streams, int coupled_streams,
                                               const unsigned char *mapping, int application, int *error);
void opus_multistream_encoder_destroy(OpusMSEncoder *st);
int opus_multistream_encoder_ctl(OpusMSEncoder *st, int request, ...);
int32_t opus_multistream_encode_float(OpusMSEncoder *st, const float *pcm, int frame_size,
                                      unsigned char *data, int32_t max_data_bytes);
const char *opus_get_version_string(void);
const char *opus_strerror(int error);
"""
# From opus_defines.h.
_APPLICATION_AUDIO = 2049
_SET_BITRATE = 4002
_SET_COMPLEXITY = 4010
_SET_SIGNAL = 4024
_GET_LOOKAHEAD = 4027
_SIGNAL_VOICE = 3001

_PACKETS_PER_PAGE = 50  # 1 s of 20 ms packets, libsndfile's page latency
_MAX_PACKET = 4000  # bytes; libopus packets are at most 1275 x 3 + 7
_BOS, _EOS = 2, 4  # Ogg page flags: first and last page of the stream
_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


class OpusError(RuntimeError):
    """libopus refused a setting or a frame."""


@lru_cache(maxsize=1)
def libopus():
    """(ffi, lib) for the system's libopus, or None where there is none."""
    name = ctypes.util.find_library("opus")
    if name is None:
        return None
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(_CDEF)
    try:
        return ffi, ffi.dlopen(name)
    except OSError:
        return None


def encode_opus(waveform: np.ndarray, sample_rate: int, complexity: int, bitrate: int | None = None) -> bytes:
    """An Ogg Opus file of a mono float32 waveform (T,) at an opus rate.

    ``complexity`` is libopus's 0-10; ``bitrate`` (bit/s) its target, None for its
    default. The encoder is told the signal is speech: below complexity 7 libopus
    skips the analysis that finds this out, and codes speech as music (CELT) otherwise.
    """
    ffi, lib = libopus()
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    error = ffi.new("int *")
    mapping = ffi.new("unsigned char[]", [0])  # the one channel is stream 0
    state = lib.opus_multistream_encoder_create(sample_rate, 1, 1, 0, mapping, _APPLICATION_AUDIO, error)
    if error[0] != 0:
        raise OpusError(f"libopus cannot encode at {sample_rate} Hz: {_message(error[0])}")
    try:
        _control(state, _SET_COMPLEXITY, complexity, "complexity")
        _control(state, _SET_SIGNAL, _SIGNAL_VOICE, "signal")
        if bitrate is not None:
            _control(state, _SET_BITRATE, bitrate, "bitrate")
        lookahead = ffi.new("int32_t *")
        lib.opus_multistream_encoder_ctl(state, _GET_LOOKAHEAD, lookahead)
        packets = _packets(state, waveform, sample_rate // 50, lookahead[0])
    finally:
        lib.opus_multistream_encoder_destroy(state)
    return _ogg_opus(packets, len(waveform), sample_rate, lookahead[0], zlib.crc32(waveform))


def _control(state, request: int, value: int, name: str) -> None:
    ffi, lib = libopus()
    code = lib.opus_multistream_encoder_ctl(state, request, ffi.cast("int32_t", value))
    if code != 0:
        raise OpusError(f"libopus refused {name} {value}: {_message(code)}")


def _message(code: int) -> str:
    ffi, lib = libopus()
    return ffi.string(lib.opus_strerror(code)).decode()


def _packets(state, waveform: np.ndarray, frame: int, lookahead: int) -> list[bytes]:
    """20 ms packets covering the waveform and the encoder's lookahead, zero-padded."""
    ffi, lib = libopus()
    count = -(-(len(waveform) + lookahead) // frame)
    pcm = np.zeros(count * frame, dtype=np.float32)
    pcm[: len(waveform)] = waveform
    samples = ffi.from_buffer("float[]", pcm)
    out = ffi.new("unsigned char[]", _MAX_PACKET)
    packets = []
    for i in range(count):
        size = lib.opus_multistream_encode_float(state, samples + i * frame, frame, out, _MAX_PACKET)
        if size < 0:
            raise OpusError(f"libopus cannot encode: {_message(size)}")
        packets.append(ffi.buffer(out, size)[:])
    return packets


def _ogg_opus(packets: list[bytes], frames: int, sample_rate: int, lookahead: int, serial: int) -> bytes:
    """The Ogg stream: header pages, then the packets a second per page. Granule
    positions count 48 kHz samples from the start of the encoder's output; the
    last one, lookahead + frames, tells the decoder where the audio ends."""
    to_48k = 48000 // sample_rate
    frame = sample_rate // 50 * to_48k
    ffi, lib = libopus()
    vendor = ffi.string(lib.opus_get_version_string())
    head = struct.pack("<8sBBHIhB", b"OpusHead", 1, 1, lookahead * to_48k, sample_rate, 0, 0)
    tags = struct.pack("<8sI", b"OpusTags", len(vendor)) + vendor + struct.pack("<I", 0)
    pages = [_ogg_page([head], 0, serial, 0, _BOS), _ogg_page([tags], 0, serial, 1, 0)]
    first = 0
    while first < len(packets):
        last = _page_end(packets, first)
        done = last == len(packets)
        granule = (lookahead + frames) * to_48k if done else last * frame
        pages.append(_ogg_page(packets[first:last], granule, serial, len(pages), _EOS if done else 0))
        first = last
    return b"".join(pages)


def _page_end(packets: list[bytes], first: int) -> int:
    """One past the last packet of the page that starts at ``first``: a second of
    packets, or fewer where their lacing values would pass a page's 255."""
    lacing, last = 0, first
    while last < len(packets) and last - first < _PACKETS_PER_PAGE:
        lacing += len(packets[last]) // 255 + 1
        if lacing > 255:
            break
        last += 1
    return last


def _ogg_page(packets: list[bytes], granule: int, serial: int, sequence: int, flags: int) -> bytes:
    lacing = b"".join(b"\xff" * (len(p) // 255) + bytes([len(p) % 255]) for p in packets)
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing))
    page = b"".join([header, lacing, *packets])
    return page[:22] + struct.pack("<I", ogg_crc(page)) + page[26:]


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04c11db7, most significant bit first, no inversion).

    zlib computes the bit-reflected CRC of that polynomial: fed the bytes with their
    bits reversed, it gives the Ogg CRC with its bits reversed.
    """
    reflected = zlib.crc32(data.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)
