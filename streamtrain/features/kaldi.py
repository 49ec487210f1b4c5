"""Kaldi filterbank features, batched on the device.

Per sample, the numbers are those of ``torchaudio.compliance.kaldi.fbank`` (itself
Kaldi's compute-fbank-feats) with the same options: frames cut from the sample's
own audio (``snip_edges=True``: only whole frames; ``False``: frames every shift,
the ends reflected), optional dither, DC offset removal, pre-emphasis, window,
power spectrum through an FFT of the next power of two, Kaldi's mel banks, log
with a floor at float32 epsilon, optional log energy in front, and an optional
global CMVN (``GlobalCMVN``) on top.

Shape legend: B batch, T samples (padded width), F frames (the longest sample's),
W window samples, K frequency bins (FFT size // 2 + 1), D feature bins
(``num_mel_bins``, plus one with ``use_energy``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from streamtrain.features.padding import check_audio_batch, length_mask, zero_padding
from streamtrain.features.cmvn import GlobalCMVN

_EPSILON = torch.finfo(torch.float32).eps  # Kaldi's floor on energies before the log
_BLACKMAN_COEFF = 0.42


def _blackman(size: int) -> Tensor:
    """Kaldi's generalized Blackman window (not torch.blackman_window's coefficients)."""
    phase = 2 * math.pi / (size - 1) * torch.arange(size, dtype=torch.float32)
    return _BLACKMAN_COEFF - 0.5 * torch.cos(phase) + (0.5 - _BLACKMAN_COEFF) * torch.cos(2 * phase)


#: Kaldi's window functions (symmetric), by the names Kaldi and torchaudio use.
WINDOWS = {
    "povey": lambda size: torch.hann_window(size, periodic=False).pow(0.85),
    "hanning": lambda size: torch.hann_window(size, periodic=False),
    "hamming": lambda size: torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46),
    "rectangular": lambda size: torch.ones(size),
    "blackman": _blackman,
}


class KaldiFbank(nn.Module):
    """Kaldi log-mel filterbank features of a zero-padded audio batch.

    forward(audio: B x T float, lengths: B int) -> (features: B x F x D float32,
    frame_lengths: B int64). Frames past a sample's frame length are zero.
    ``cmvn``: a stats JSON file or mapping with "mean" and "std" (from
    ``compute_cmvn_stats``), applied to the real frames.
    """

    #: The features' time axis (B x F x D).
    time_dim = 1

    def __init__(
        self,
        num_mel_bins: int = 80,
        sample_rate: int = 16000,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        dither: float = 0.0,
        preemphasis: float = 0.97,
        window_type: str = "povey",
        remove_dc_offset: bool = True,
        round_to_power_of_two: bool = True,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        energy_floor: float = 1.0,
        raw_energy: bool = True,
        use_energy: bool = False,
        use_power: bool = True,
        snip_edges: bool = True,
        cmvn: str | Path | Mapping | None = None,
    ) -> None:
        super().__init__()
        # Canonical types, so equal settings give equal configs and fingerprints.
        frame_length_ms, frame_shift_ms = float(frame_length_ms), float(frame_shift_ms)
        dither, preemphasis, energy_floor = float(dither), float(preemphasis), float(energy_floor)
        low_freq, high_freq = float(low_freq), float(high_freq)
        remove_dc_offset, round_to_power_of_two = bool(remove_dc_offset), bool(round_to_power_of_two)
        raw_energy, use_energy = bool(raw_energy), bool(use_energy)
        use_power, snip_edges = bool(use_power), bool(snip_edges)
        window_size, window_shift, fft_size = _frame_sizes(
            num_mel_bins, sample_rate, frame_length_ms, frame_shift_ms, round_to_power_of_two, snip_edges)
        _check_settings(num_mel_bins, sample_rate, window_type, preemphasis, energy_floor, dither, low_freq, high_freq)

        self.num_mel_bins = num_mel_bins
        self.sample_rate = sample_rate
        self.frame_length_ms = frame_length_ms
        self.frame_shift_ms = frame_shift_ms
        self.dither = dither
        self.preemphasis = preemphasis
        self.window_type = window_type
        self.remove_dc_offset = remove_dc_offset
        self.round_to_power_of_two = round_to_power_of_two
        self.low_freq = low_freq
        self.high_freq = high_freq
        self.energy_floor = energy_floor
        self.raw_energy = raw_energy
        self.use_energy = use_energy
        self.use_power = use_power
        self.snip_edges = snip_edges
        self.window_size = window_size
        self.window_shift = window_shift
        self.fft_size = fft_size
        self.dim = num_mel_bins + int(use_energy)

        self.register_buffer("mel_banks", _mel_banks(num_mel_bins, fft_size, sample_rate, low_freq, high_freq),
                             persistent=False)
        self.register_buffer("window", WINDOWS[window_type](window_size).to(torch.float32), persistent=False)
        self.cmvn = _load_cmvn(cmvn, self.dim)

    def config(self) -> dict:
        """Constructor arguments; ``KaldiFbank(**config())`` is the same featurizer.

        CMVN appears as its statistics (mean and std), not as a file path, so the
        config is self-contained and its fingerprint follows the numbers.
        """
        return {
            "num_mel_bins": self.num_mel_bins,
            "sample_rate": self.sample_rate,
            "frame_length_ms": self.frame_length_ms,
            "frame_shift_ms": self.frame_shift_ms,
            "dither": self.dither,
            "preemphasis": self.preemphasis,
            "window_type": self.window_type,
            "remove_dc_offset": self.remove_dc_offset,
            "round_to_power_of_two": self.round_to_power_of_two,
            "low_freq": self.low_freq,
            "high_freq": self.high_freq,
            "energy_floor": self.energy_floor,
            "raw_energy": self.raw_energy,
            "use_energy": self.use_energy,
            "use_power": self.use_power,
            "snip_edges": self.snip_edges,
            "cmvn": None if self.cmvn is None else self.cmvn.stats(),
        }

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Filterbank features of each sample; see the class docstring for shapes.

        Dither (when non-zero) draws from the device's default generator, as
        torchaudio does.
        """
        lengths = check_audio_batch(audio, lengths)
        with torch.autocast(audio.device.type, enabled=False):
            audio = zero_padding(audio.float(), lengths)
            frame_lengths = self._frame_lengths(lengths)
            n_frames = int(frame_lengths.max())
            if not self.snip_edges:
                audio = self._reflect_ends(audio, lengths)
            if n_frames == 0:
                return audio.new_zeros(audio.shape[0], 0, self.dim), frame_lengths
            frames = audio.unfold(1, self.window_size, self.window_shift)[:, :n_frames]  # B x F x W
            features = self._fbank(frames)
            features = features.masked_fill(~length_mask(frame_lengths, n_frames).unsqueeze(2), 0.0)
            if self.cmvn is not None:
                features = self.cmvn(features, frame_lengths)
        return features, frame_lengths

    def _frame_lengths(self, lengths: Tensor) -> Tensor:
        if self.snip_edges:
            whole = 1 + (lengths - self.window_size).div(self.window_shift, rounding_mode="floor")
            return torch.where(lengths >= self.window_size, whole, torch.zeros_like(lengths))
        return (lengths + self.window_shift // 2) // self.window_shift

    def _reflect_ends(self, audio: Tensor, lengths: Tensor) -> Tensor:
        """Each sample mirrored around both of its ends, as Kaldi's snip_edges=False reads it.

        Returns B x (pad + T + W) where sample index i sits at column pad + i, with
        pad = W // 2 - shift // 2 reflected samples in front ([2, 1, 0 | 0, 1, 2])
        and W reflected samples after each sample's own end.
        """
        pad = self.window_size // 2 - self.window_shift // 2
        audio = nnf.pad(audio, (0, max(pad - audio.shape[1], 0)))
        tail = torch.arange(self.window_size, device=audio.device)
        source = (lengths.unsqueeze(1) - 1 - tail).clamp(min=0)  # B x W: index L-1-k, mirrored after the end
        extended = torch.cat(
            [audio[:, :pad].flip(1), audio, audio.new_zeros(audio.shape[0], self.window_size)], dim=1
        )
        rows = torch.arange(audio.shape[0], device=audio.device).unsqueeze(1)
        # index_put (not scatter): deterministic on CUDA under torch.use_deterministic_algorithms
        return extended.index_put_((rows, pad + lengths.unsqueeze(1) + tail), audio.gather(1, source))

    def _fbank(self, frames: Tensor) -> Tensor:
        """B x F x W frames -> B x F x D log mel energies (log energy first with use_energy)."""
        if self.dither != 0.0:
            frames = frames + self.dither * torch.randn_like(frames)
        if self.remove_dc_offset:
            frames = frames - frames.mean(dim=2, keepdim=True)
        if self.use_energy and self.raw_energy:
            energy = self._log_energy(frames)
        if self.preemphasis != 0.0:
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)
            frames = frames - self.preemphasis * previous
        frames = frames * self.window
        if self.use_energy and not self.raw_energy:
            energy = self._log_energy(frames)
        spectrum = torch.fft.rfft(frames, n=self.fft_size).abs()
        if self.use_power:
            spectrum = spectrum.pow(2.0)
        features = torch.clamp(spectrum @ self.mel_banks, min=_EPSILON).log()
        if self.use_energy:
            features = torch.cat([energy.unsqueeze(2), features], dim=2)
        return features

    def _log_energy(self, frames: Tensor) -> Tensor:
        energy = torch.clamp(frames.pow(2).sum(2), min=_EPSILON).log()
        if self.energy_floor == 0.0:
            return energy
        return torch.clamp(energy, min=math.log(self.energy_floor))


def _frame_sizes(num_mel_bins, sample_rate, frame_length_ms, frame_shift_ms, round_to_power_of_two,
                 snip_edges) -> tuple[int, int, int]:
    """(window size, window shift, FFT size) in samples, with torchaudio's arithmetic, so they agree to the sample."""
    if not isinstance(num_mel_bins, int) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"num_mel_bins and sample_rate must be integers, got {num_mel_bins!r} and {sample_rate!r}")
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    fft_size = 1 << (window_size - 1).bit_length() if round_to_power_of_two else window_size
    if window_size < 2 or window_shift < 1:
        raise ValueError(
            f"frame_length_ms={frame_length_ms} and frame_shift_ms={frame_shift_ms} give "
            f"{window_size} and {window_shift} samples at {sample_rate} Hz; need at least 2 and 1"
        )
    if fft_size % 2:
        raise ValueError(f"the FFT size {fft_size} must be even: use round_to_power_of_two or another frame length")
    if not snip_edges and window_size // 2 < window_shift // 2:
        raise ValueError("snip_edges=False needs a frame at least as long as the shift")
    return window_size, window_shift, fft_size


def _check_settings(num_mel_bins, sample_rate, window_type, preemphasis, energy_floor, dither, low_freq,
                    high_freq) -> None:
    nyquist = 0.5 * sample_rate
    top = high_freq + nyquist if high_freq <= 0.0 else high_freq
    if window_type not in WINDOWS:
        raise ValueError(f"unknown window_type {window_type!r}; expected one of {sorted(WINDOWS)}")
    if num_mel_bins <= 3:
        raise ValueError(f"num_mel_bins must be more than 3, got {num_mel_bins}")
    if not 0.0 <= preemphasis <= 1.0:
        raise ValueError(f"preemphasis must lie in [0, 1], got {preemphasis}")
    if energy_floor < 0.0:
        raise ValueError(f"energy_floor must not be negative, got {energy_floor}")
    if dither < 0.0:
        raise ValueError(f"dither must not be negative, got {dither}")
    if not (0.0 <= low_freq < nyquist and 0.0 < top <= nyquist and low_freq < top):
        raise ValueError(f"bad mel range: low_freq={low_freq}, high_freq={high_freq} with Nyquist at {nyquist} Hz")


def _mel_banks(num_mel_bins: int, fft_size: int, sample_rate: int, low_freq: float, high_freq: float) -> Tensor:
    """The mel filterbank as (fft_size // 2 + 1) x num_mel_bins, for a matmul with power spectra."""
    from torchaudio.compliance.kaldi import get_mel_banks

    # VTLN off: warp factor 1.0 (the cut-offs are then unused).
    banks, _ = get_mel_banks(num_mel_bins, fft_size, float(sample_rate), low_freq, high_freq, 100.0, -500.0, 1.0)
    banks = nnf.pad(banks, (0, 1))  # Kaldi's banks leave out the Nyquist bin: num_mel_bins x K
    return banks.T.to(torch.float32).contiguous()


def _load_cmvn(cmvn: str | Path | Mapping | None, dim: int) -> GlobalCMVN | None:
    if cmvn is None:
        return None
    module = GlobalCMVN.from_stats(cmvn) if isinstance(cmvn, Mapping) else GlobalCMVN.from_file(cmvn)
    if module.mean.shape[0] != dim:
        raise ValueError(f"CMVN statistics have {module.mean.shape[0]} bins, the features have {dim}")
    return module
