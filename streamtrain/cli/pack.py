"""``streamtrain pack``: argument parsing for pack() and merge()."""

from __future__ import annotations

import argparse
import re

from streamtrain.audio import DEFAULT_OPUS_COMPLEXITY, AudioError
from streamtrain.format.index import DatasetIndexError
from streamtrain.format.tar_layout import ShardError
from streamtrain.pack.packer import PACK_CODECS, PackError, merge, pack
from streamtrain.pack.sources import FORMS, SourceError
from streamtrain.storage.location import LocationError
from streamtrain.storage.output import OutputError
from streamtrain.storage.remote import ReadError, redact

ERRORS = (SourceError, PackError, AudioError, DatasetIndexError, ShardError, LocationError, OutputError, ReadError)

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """``"256MB"`` -> 256000000; KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use bytes or a number with KB, MB, GB, KiB, MiB, GiB")
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, not {text!r}")
    return size


def parse_sample_rate(text: str) -> int | None:
    """A rate in Hz, or ``keep`` (None) to keep each item's own rate."""
    if text == "keep":
        return None
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"invalid sample rate {text!r}; use a positive integer (Hz) or 'keep'")
    return int(text)


def parse_bitrate(text: str) -> int:
    """'24k', '24000' -> bit/s."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kK]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid bitrate {text!r}; use bits per second, e.g. 24k or 24000")
    return round(float(match.group(1)) * (1000 if match.group(2) else 1))


def parse_part(text: str) -> tuple[int, int]:
    """``"3/8"`` -> (3, 8): the 4th of 8 slices (0-based, for job array indexes)."""
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise argparse.ArgumentTypeError(f"invalid part {text!r}; use I/N with 0 <= I < N, e.g. 0/8")
    return int(match.group(1)), int(match.group(2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s SOURCE OUT_DIR [options]\n       %(prog)s --merge OUT_DIR"
    parser.add_argument("source", nargs="?", metavar="SOURCE",
                        help="JSONL or CSV manifest (a path or URL), folder of audio + .txt, LibriSpeech or Kaldi "
                             "data dir, or a folder of WebDataset shards (*.tar)")
    parser.add_argument("out_dir", nargs="?", metavar="OUT_DIR", help="folder or URL (s3://, gs://, ...) for the shards and index.json")
    parser.add_argument("--merge", metavar="OUT_DIR", help="join the part indexes written by --part into index.json")
    parser.add_argument("--codec", choices=PACK_CODECS, default="flac",
                        help="flac (lossless 16-bit), opus, pcm16 (wav), or copy (keep source files where possible)")
    parser.add_argument("--bitrate", type=parse_bitrate, metavar="BITS",
                        help="opus target bitrate, e.g. 24k (6k to 256k; default: the encoder's choice, ~25k at 16 kHz)")
    parser.add_argument("--opus-complexity", type=int, metavar="0-10",
                        help=f"libopus complexity: lower encodes faster (default {DEFAULT_OPUS_COMPLEXITY}; "
                             "soundfile's own encoder uses 10)")
    parser.add_argument("--sample-rate", type=parse_sample_rate, default=16000, metavar="HZ|keep",
                        help="resample to this rate (default 16000), or 'keep'")
    parser.add_argument("--shard-size", type=parse_size, default="256MB", metavar="SIZE",
                        help="largest shard, e.g. 256MB or 1GiB (default 256MB)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="decode/encode processes (default 1)")
    parser.add_argument("--part", type=parse_part, metavar="I/N", help="pack only slice I of N (0-based); then --merge")
    parser.add_argument("--source-form", choices=FORMS, help="the SOURCE's form, when its name does not tell")
    parser.add_argument("--kaldi-pipes", action="store_true",
                        help="run the 'cmd |' entries of a Kaldi wav.scp (in the shell, from the current folder)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad items and list them in rejects.jsonl")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous pack in OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def run(args: argparse.Namespace) -> int:
    if args.merge is not None:
        if args.source is not None:
            raise PackError("--merge takes only the output folder: streamtrain pack --merge OUT_DIR")
        index = merge(args.merge)
        print(f"merged {len(index.shards)} shards, {index.samples} samples ({index.seconds / 3600:.3f} h), "
              f"rejected {index.rejected} -> {redact(args.merge)}/index.json")
        return 0
    if args.source is None or args.out_dir is None:
        raise PackError("pack needs SOURCE and OUT_DIR (or --merge OUT_DIR)")
    summary = pack(
        args.source,
        args.out_dir,
        codec=args.codec,
        sample_rate=args.sample_rate,
        shard_size=args.shard_size,
        workers=args.workers,
        part=args.part,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        source_form=args.source_form,
        kaldi_pipes=args.kaldi_pipes,
        bitrate=args.bitrate,
        opus_complexity=args.opus_complexity,
    )
    print(summary)
    return 0
