"""``streamtrain init-model --arch NAME --out DIR [--seed N]``: a random Whisper of a published architecture."""

from __future__ import annotations

import argparse

from streamtrain.train.whisper_tokenizer import WhisperTokenizerError

ERRORS = (WhisperTokenizerError, FileExistsError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from streamtrain.train.init_model import ARCHITECTURES

    parser.add_argument("--arch", required=True, choices=list(ARCHITECTURES), help="the published architecture")
    parser.add_argument("--out", required=True, help="the model folder to write (empty or absent)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")


def run(args: argparse.Namespace) -> int:
    from streamtrain.train.init_model import init_model

    model = init_model(args.arch, args.out, args.seed)
    config = model.config
    print(f"{args.out}: random {args.arch} ({model.num_parameters() / 1e6:.1f} M parameters, {config.vocab_size} "
          f"tokens, {config.num_mel_bins} mel bins) with Whisper's tokenizer and generation settings")
    return 0
