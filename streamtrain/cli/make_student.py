"""``streamtrain make-student --teacher MODEL_DIR --decoder-layers N --out DIR``."""

from __future__ import annotations

import argparse

ERRORS = (ValueError, OSError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="the teacher model folder (Hugging Face format)")
    parser.add_argument("--decoder-layers", type=int, required=True, help="decoder layers the student keeps")
    parser.add_argument("--out", required=True, help="where to write the student")


def run(args: argparse.Namespace) -> int:
    from streamtrain.distill.student import make_student

    layers = make_student(args.teacher, args.decoder_layers, args.out)
    print(f"{args.out}: student with the teacher's encoder and decoder layers {layers}")
    return 0
