"""Whisper's log-mel spectrogram, batched on the device.

The numbers are those of transformers' ``WhisperFeatureExtractor`` (with its
``do_normalize``; ``padding_value=0.0`` and ``dither=0.0``, its defaults): every sample is
cut or zero-padded to ``chunk_seconds`` using its own length, then a centred STFT
(reflect padding, periodic Hann window), power spectrum, last frame dropped,
Slaney mel filters, ``log10(max(x, 1e-10))``, a floor at the sample's maximum
minus 8, and ``(x + 4) / 4``. The frame lengths returned are the feature
extractor's ``attention_mask`` summed per sample (``return_attention_mask=True``).

Frames that lie wholly in a sample's zero padding are all-zero windows whose
value is known in advance (``log10(1e-10)``, then the same floor and scaling), so
by default the STFT and the log run only over the frames that touch the batch's
longest real audio and the rest are filled in (see ``WhisperLogMel._span``).
Nothing is approximated; the mel matmul may pick another BLAS kernel for another
frame count (MKL does under 12 frames on an AMD EPYC; a GPU may too), so the two
agree to float32 rounding, and bit for bit where the kernel is the same.

Shape legend: B batch, T samples (padded width), N chunk samples
(``chunk_seconds * sample_rate``), K frequency bins (``n_fft // 2 + 1``),
M mel bins, F frames (``N // hop_length``, 3000 for 30 s).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from streamtrain.features.padding import check_audio_batch, length_mask, zero_padding

#: transformers' WhisperFeatureExtractor fixes the top of the mel filters at 8 kHz.
_MEL_MAX_FREQUENCY = 8000.0
_LOG_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0
_NORMALIZE_EPSILON = 1e-7  # transformers' zero_mean_unit_var_norm


class WhisperLogMel(nn.Module):
    """Whisper log-mel features of a zero-padded audio batch.

    forward(audio: B x T float, lengths: B int) -> (features: B x M x F float32,
    frame_lengths: B int64 = ceil(min(length, N) / hop_length)).
    """

    #: The features' time axis (B x M x F).
    time_dim = 2

    def __init__(
        self,
        n_mels: int = 80,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        chunk_seconds: int = 30,
        do_normalize: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("n_mels", n_mels),
            ("sample_rate", sample_rate),
            ("n_fft", n_fft),
            ("hop_length", hop_length),
            ("chunk_seconds", chunk_seconds),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        chunk_samples = chunk_seconds * sample_rate
        if n_fft // 2 >= chunk_samples:
            raise ValueError(f"n_fft={n_fft} is too long for a {chunk_seconds} s chunk")
        self.n_mels = n_mels
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.chunk_seconds = chunk_seconds
        self.do_normalize = bool(do_normalize)
        self.chunk_samples = chunk_samples
        self.n_frames = chunk_samples // hop_length

        # transformers' own filter bank (float64, K x M), so the filters are the same numbers.
        from transformers.audio_utils import mel_filter_bank

        filters = mel_filter_bank(
            num_frequency_bins=1 + n_fft // 2,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=_MEL_MAX_FREQUENCY,
            sampling_rate=sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer(
            "mel_filters", torch.from_numpy(filters.T).to(torch.float32).contiguous(), persistent=False
        )  # M x K
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    def config(self) -> dict:
        """Constructor arguments; ``WhisperLogMel(**config())`` is the same featurizer."""
        return {
            "n_mels": self.n_mels,
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "chunk_seconds": self.chunk_seconds,
            "do_normalize": self.do_normalize,
        }

    def forward(self, audio: Tensor, lengths: Tensor, skip_padding: bool = True) -> tuple[Tensor, Tensor]:
        """Log-mel features of each sample's first ``chunk_seconds``.

        audio: B x T, zero-padded (what lies past a length is ignored). lengths: B.
        skip_padding=False runs the STFT over all F frames (same result, slower).
        Returns features B x M x F (float32, also under autocast) and frame lengths B.
        """
        lengths = check_audio_batch(audio, lengths).clamp(max=self.chunk_samples)
        with torch.autocast(audio.device.type, enabled=False):
            audio = zero_padding(audio[:, : self.chunk_samples].float(), lengths)
            if self.do_normalize:
                audio = _zero_mean_unit_var(audio, lengths)
            full = (self.n_frames, self.chunk_samples)
            frames, samples = self._span(int(lengths.max())) if skip_padding else full
            mel = self.mel_filters @ self._power_spectrum(audio, frames, samples)  # B x M x frames
            log_spec = mel.clamp(min=_LOG_FLOOR).log10()
            peak = log_spec.amax(dim=(1, 2), keepdim=True)  # B x 1 x 1
            silent = self.n_frames - frames  # frames left out: they read only zeros
            if silent:
                silence = mel.new_zeros(1, 1, 1).clamp(min=_LOG_FLOOR).log10()  # their value, as computed
                peak = torch.maximum(peak, silence)
            floor = peak - _DYNAMIC_RANGE
            features = (torch.maximum(log_spec, floor) + 4.0) / 4.0
            if silent:
                tail = (torch.maximum(silence, floor) + 4.0) / 4.0
                features = torch.cat([features, tail.expand(-1, self.n_mels, silent)], dim=2)
        frame_lengths = ((lengths + self.hop_length - 1) // self.hop_length).clamp(max=self.n_frames)
        return features, frame_lengths

    def _span(self, longest: int) -> tuple[int, int]:
        """(frames, samples): the leading frames that can be non-zero when no sample
        is longer than ``longest``, and the leading samples they read.

        Frame f reads samples [f*hop - n_fft//2, f*hop - n_fft//2 + n_fft) of the
        chunk, the ends reflected. Frames from the first one starting at or after
        ``longest`` read only zeros, unless the reflection at the chunk's end brings
        real audio back in (a sample near or over the chunk length): then every
        frame is computed, from the whole chunk.
        """
        frames = max((longest + self.n_fft // 2 + self.hop_length - 1) // self.hop_length, 1)
        samples = max((frames - 1) * self.hop_length + self.n_fft - self.n_fft // 2, self.n_fft // 2 + 1)
        last_read = (self.n_frames - 1) * self.hop_length - self.n_fft // 2 + self.n_fft - 1
        reflected_from = 2 * (self.chunk_samples - 1) - last_read  # lowest index the end reflection reads
        if (
            frames >= self.n_frames
            or samples > self.chunk_samples
            or (last_read >= self.chunk_samples and longest > reflected_from)
        ):
            return self.n_frames, self.chunk_samples
        return frames, samples

    def _power_spectrum(self, audio: Tensor, frames: int, samples: int) -> Tensor:
        """|STFT|^2 of the first ``frames`` frames, from the first ``samples`` samples: B x K x frames.

        When ``samples`` is less than the chunk, the frames kept read no sample at
        or past it, so the reflection at this shorter end never reaches them.
        re^2 + im^2 (not |z|^2 through hypot) keeps every value independent of how
        many frames are computed.
        """
        audio = nnf.pad(audio[:, :samples], (0, samples - min(audio.shape[1], samples)))
        stft = torch.stft(
            audio,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        stft = stft[..., :frames]
        return stft.real.square() + stft.imag.square()


def _zero_mean_unit_var(audio: Tensor, lengths: Tensor) -> Tensor:
    """transformers' do_normalize: each sample's real part to zero mean and unit variance, padding zero."""
    mask = length_mask(lengths, audio.shape[1])
    count = lengths.clamp(min=1).unsqueeze(1).to(audio.dtype)
    mean = audio.sum(1, keepdim=True) / count
    centered = (audio - mean).masked_fill(~mask, 0.0)
    variance = centered.square().sum(1, keepdim=True) / count
    return centered / torch.sqrt(variance + _NORMALIZE_EPSILON)
