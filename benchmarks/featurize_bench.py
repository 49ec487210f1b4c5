"""Featurization speed: transformers' WhisperFeatureExtractor vs streamtrain's WhisperLogMel.

    python benchmarks/featurize_bench.py [--device cpu|cuda] [--batch 16] [--repeats 7] [--threads N]

Table 1: time per 30 s clip for a batch of 30 s clips, for the feature extractor's
numpy path, its torch path (on --device) and WhisperLogMel (audio already on
--device, as after the loader's transfer). Table 2: WhisperLogMel by utterance
length, the padding shortcut against the full STFT over all 3000 frames.
Audio is real espeak-ng speech. Times are the fastest of --repeats runs after a
warm-up (the least disturbed by other work on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/support holds the corpus makers and servers

from tests.support.speech import speech_of_duration  # noqa: E402
from streamtrain.features import WhisperLogMel  # noqa: E402
from streamtrain.loader.batch import pad_waveforms  # noqa: E402

SAMPLE_RATE = 16000
LENGTHS_SECONDS = (2, 5, 10, 20, 30)


def best_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    def timed() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()  # warm-up: allocations, kernels, FFT plans
    return min(timed() for _ in range(repeats))


def clips_of(seconds: float, batch: int, speech: np.ndarray) -> list[np.ndarray]:
    """``batch`` different clips of ``seconds`` cut from one long recording at shifted offsets."""
    size = int(seconds * SAMPLE_RATE)
    return [np.roll(speech, 7919 * row)[:size] for row in range(batch)]


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import WhisperFeatureExtractor

    speech = speech_of_duration(30.0, SAMPLE_RATE, seed=0)
    featurizer = WhisperLogMel().to(device)
    per_clip_ms = 1000.0 / args.batch

    clips = clips_of(30, args.batch, speech)
    audio, lengths = (part.to(device) for part in pad_waveforms(clips))
    extractor = WhisperFeatureExtractor()
    numpy_extractor = WhisperFeatureExtractor()
    # __call__ takes the torch path whenever torch is installed; point it at the numpy one.
    numpy_extractor._torch_extract_fbank_features = numpy_extractor._np_extract_fbank_features

    def run_extractor(which: WhisperFeatureExtractor, on: str) -> Callable[[], object]:
        return lambda: which(clips, sampling_rate=SAMPLE_RATE, return_tensors="np", device=on)

    rows = [
        ("transformers WhisperFeatureExtractor, numpy", "cpu", run_extractor(numpy_extractor, "cpu")),
        ("transformers WhisperFeatureExtractor, torch", args.device, run_extractor(extractor, args.device)),
        ("streamtrain WhisperLogMel", args.device, lambda: featurizer(audio, lengths)),
    ]
    timings = [(name, on, best_seconds(run, device, args.repeats)) for name, on, run in rows]
    ours = timings[-1][2]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}, batch {args.batch}\n")
    print(
        table(
            f"Whisper log-mel, batch of {args.batch} clips of 30 s",
            ("featurizer", "device", "ms per clip", "x WhisperLogMel"),
            [(name, on, f"{seconds * per_clip_ms:.2f}", f"{seconds / ours:.1f}") for name, on, seconds in timings],
        )
    )

    rows = []
    for seconds in LENGTHS_SECONDS:
        audio, lengths = (part.to(device) for part in pad_waveforms(clips_of(seconds, args.batch, speech)))
        fast = best_seconds(lambda: featurizer(audio, lengths), device, args.repeats)
        full = best_seconds(lambda: featurizer(audio, lengths, skip_padding=False), device, args.repeats)
        rows.append((f"{seconds}", f"{fast * per_clip_ms:.2f}", f"{full * per_clip_ms:.2f}", f"{full / fast:.1f}"))
    print()
    print(
        table(
            f"WhisperLogMel by utterance length ({device}, batch of {args.batch})",
            ("seconds", "shortcut ms per clip", "full ms per clip", "full / shortcut"),
            rows,
        )
    )


if __name__ == "__main__":
    main()
