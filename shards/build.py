"""Build the bundled default dataset: shards/train, shards/validation, shards/test.

Spoken digit strings (3-7 of the words "zero" .. "nine") synthesized by
espeak-ng with six voices and random speeds (130-190 wpm) and pitches (35-70),
then packed with ``streamtrain.pack``. Every text is used once, so the three
splits have disjoint texts (checked). Seeded: the same arguments and the same
packer rebuild the same bytes.

Why the codec: the bundle lives in the repository, so it should stay near
20 MB. The script measures both codecs on the first 200 training utterances
and extrapolates. Measured for the default 2200 utterances (1800 train, 1.24 h,
mean 2.0 s): FLAC at 16 kHz (lossless) takes 38.6 kB per utterance, about 85
MB, far over; Opus at 16 kHz (then libsndfile's encoder, about 28 kb/s; the
bundle was written with it) takes 8.8 kB per utterance, tar headers included:
19.6 MB in all. Today's packer (libopus at complexity 4) writes about 10 % less
for the same audio, so a rebuild now gives other bytes than the bundle's.
Opus is the smaller of the two codecs streamtrain writes, so the default build
is opus. With smaller ``--train`` counts flac fits and is chosen.

    .venv/bin/python shards/build.py            # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/support holds the corpus makers and servers

from tests.support.corpus import utterances, write_jsonl  # noqa: E402
from tests.support.speech import digit_text  # noqa: E402
from streamtrain.pack.inspect import format_summary, summarize
from streamtrain.pack import pack

SPLITS = ("train", "validation", "test")
SAMPLE_FOR_CODEC = 200
SHARD_SIZE = 10**6  # ~20 training shards, so the loader has blocks of shards to shuffle


def split_texts(counts: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Distinct digit strings for each split, so no text is in two splits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    texts: list[str] = []
    while len(texts) < sum(counts.values()):
        text = digit_text(rng, 3, 7)
        if text not in seen:
            seen.add(text)
            texts.append(text)
    splits, start = {}, 0
    for split, count in counts.items():
        splits[split] = texts[start : start + count]
        start += count
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            if set(splits[a]) & set(splits[b]):
                raise RuntimeError(f"splits {a} and {b} share texts")
    return splits


def choose_codec(manifest: Path, scratch: Path, total: int, budget: int, workers: int) -> str:
    """flac if the extrapolated total size fits ``budget`` bytes, else opus."""
    lines = manifest.read_text().splitlines(keepends=True)[:SAMPLE_FOR_CODEC]
    sample = manifest.with_name("codec-sample.jsonl")
    sample.write_text("".join(lines))
    estimates = {}
    for codec in ("flac", "opus"):
        summary = pack(sample, scratch / codec, codec=codec, shard_size=SHARD_SIZE, workers=workers, progress=False)
        estimates[codec] = summary.bytes * total / len(lines)
        print(f"{codec}: {summary.bytes / len(lines) / 1e3:.1f} kB per utterance -> about {estimates[codec] / 1e6:.1f} MB")
    return "flac" if estimates["flac"] <= budget else "opus"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="default: shards/")
    parser.add_argument("--train", type=int, default=1800)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--budget-mb", type=float, default=20.0, help="size the bundle must stay under")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    counts = {"train": args.train, "validation": args.validation, "test": args.test}
    texts = split_texts(counts, args.seed)
    with tempfile.TemporaryDirectory(prefix="streamtrain-build-") as scratch:
        scratch = Path(scratch)
        corpora = {}
        for offset, split in enumerate(SPLITS):
            utts = utterances(counts[split], seed=args.seed + 1 + offset, prefix=f"{split}-", texts=texts[split])
            corpora[split] = write_jsonl(scratch / split, utts)
            print(f"synthesized {len(utts)} {split} utterances")
        codec = choose_codec(corpora["train"].source, scratch / "measure", sum(counts.values()),
                             int(args.budget_mb * 1e6), args.workers)
        print(f"codec: {codec}")
        for split in SPLITS:
            pack(corpora[split].source, args.out / split, codec=codec, sample_rate=16000, shard_size=SHARD_SIZE,
                 workers=args.workers, overwrite=True)
    total = 0
    for split in SPLITS:
        summary = summarize(args.out / split)
        total += summary["bytes"]
        print(f"\n{format_summary(summary)}")
    print(f"\ntotal {total / 1e6:.2f} MB under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
