"""``streamtrain label DATASET --teacher MODEL_DIR --out COLUMN_DIR``: pseudo-label a dataset once."""

from __future__ import annotations

import argparse

from streamtrain.storage.output import OutputError
from streamtrain.storage.remote import ReadError, redact
from streamtrain.format.index import DatasetIndexError
from streamtrain.distill.label import LabelError
from streamtrain.train.config import RecipeError

ERRORS = (LabelError, RecipeError, DatasetIndexError, ReadError, OutputError, ValueError, OSError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a packed dataset folder or URL")
    parser.add_argument("--teacher", required=True, help="the teacher model folder (Hugging Face format)")
    parser.add_argument("--out", required=True, help="the label column folder or URL (an interrupted run continues)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="teacher weights: fp32, bf16, or int8 weight-only quantization")
    parser.add_argument("--max-wer", type=float, help="mark labels whose WER against the ground truth exceeds this")
    parser.add_argument("--prompt", help="the teacher's prompt tokens, space-separated (default: the teacher's own, "
                                         "for a Whisper checkpoint '<|startoftranscript|> <|en|> <|transcribe|> "
                                         "<|notimestamps|>'); the student's recipe should use the same")
    parser.add_argument("--max-tokens", type=int, help="longest label, prompt and end token included "
                                                       "(default: the teacher's own limit, 448 for Whisper)")
    parser.add_argument("--fill-windows", action="store_true",
                        help="join each batch's consecutive samples into the teacher's window, generate once per "
                             "window with timestamps and give each timestamped segment back to its sample (the "
                             "teacher needs timestamp tokens; see docs/distillation.md)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2,
                        help="processes that read and decode the audio while this one generates (0: this one does)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def run(args: argparse.Namespace) -> int:
    from streamtrain.distill.label import LabelSettings, label_dataset

    settings = LabelSettings(args.precision, args.max_wer, args.max_tokens, args.prompt, args.fill_windows)
    summary = label_dataset(args.dataset, args.teacher, args.out, settings,
                            batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                            overwrite=args.overwrite, progress=not args.no_progress)
    filtered = summary.samples - summary.kept
    print(f"{redact(args.out)}: {summary.samples} samples labelled ({summary.shards_written} shards written, "
          f"{summary.shards_skipped} already complete); label WER {100 * summary.wer:.2f}%"
          + (f"; {filtered} labels over --max-wer {args.max_wer} marked keep=false" if args.max_wer is not None else "")
          + (f"; labelled from windows {summary.labelled.get('window', 0)}, alone in a window "
             f"{summary.labelled.get('alone', 0)}, alone after their window gave them no segment "
             f"{summary.labelled.get('fallback', 0)}" if args.fill_windows else "")
          + f"; waited for data {100 * summary.data_wait:.0f}% of the time"
          + (f" ({summary.ranks} processes; this one's share)" if summary.ranks > 1 else ""))
    return 0
