"""The ``streamtrain`` command: parses arguments and calls the module that owns each command.

A command is a module with ``add_arguments(parser)``, ``run(args) -> exit code``
and ``ERRORS``, the exception types it raises for user errors (bad input, bad
options), which are printed as one line and exit 2. A module that also defines
``take_extra_arguments(args, extra, parser)`` receives the words argparse did
not recognise (e.g. ``key=value`` overrides after options). Only the module of
the command being run is imported, so a light command never pays for a heavy one.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from streamtrain.pack.progress import on_terminal

#: command name -> (module defining add_arguments, run and ERRORS; one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pack": ("streamtrain.cli.pack", "pack a manifest, folder, LibriSpeech or Kaldi dir, or WebDataset shards"),
    "inspect": ("streamtrain.cli.inspect", "summarize a packed dataset, or verify every shard"),
    "index": ("streamtrain.cli.index", "index maintenance: upgrade a format 1 index.json to format 2"),
    "featurize": ("streamtrain.cli.featurize", "cache features as a fingerprinted sidecar column"),
    "stats": ("streamtrain.cli.stats", "global CMVN statistics of a featurizer's output"),
    "train": ("streamtrain.cli.train", "train from a recipe, resuming automatically"),
    "eval": ("streamtrain.cli.eval", "WER/CER and per-utterance hypotheses of a model on a dataset"),
    "init-model": ("streamtrain.cli.init_model", "a randomly initialised Whisper of a published architecture"),
    "audit": ("streamtrain.cli.audit", "check exactly-once delivery on a finished or killed run"),
    "label": ("streamtrain.cli.label", "pseudo-label a dataset with a teacher, once"),
    "make-student": ("streamtrain.cli.make_student", "initialize a smaller student from a teacher"),
}

USER_ERROR_EXIT = 2
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe's reader left


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if hasattr(sys.stdout, "reconfigure"):  # a log (`> log 2>&1`) keeps stdout's lines in order with stderr's
        sys.stdout.reconfigure(line_buffering=True)
    if not on_terminal():
        _no_library_bars()
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    module = importlib.import_module(COMMANDS[command][0]) if command in COMMANDS else None
    parser, subparser = build_parser(command, module)
    if module is not None and hasattr(module, "take_extra_arguments"):
        args, extra = parser.parse_known_args(argv)
        module.take_extra_arguments(args, extra, subparser)
    else:
        args = parser.parse_args(argv)
    try:
        return module.run(args)
    except module.ERRORS as error:
        print(f"streamtrain: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("streamtrain: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return BROKEN_PIPE_EXIT


def _no_library_bars() -> None:
    """Off a terminal, the bars of transformers and huggingface_hub (weights loaded or written) go too."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def build_parser(
    command: str | None = None, module: ModuleType | None = None
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The top-level parser, and the subparser of ``command`` filled in by ``module``."""
    parser = argparse.ArgumentParser(prog="streamtrain", description="Streaming-first trainer for speech models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None
    for name, (_, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module.add_arguments(subparser)
            chosen = subparser
    return parser, chosen
