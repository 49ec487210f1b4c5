"""``streamtrain train RECIPE [key=value ...]``: train from a recipe, resuming automatically.

This command sits above the train and distill layers: it hands the trainer the
objective the recipe asks for (``streamtrain.distill.objective.objective_for``).
SIGTERM / SIGINT are caught from the moment it starts, so a job preempted while
it imports and sets up stops cleanly too.
"""

from __future__ import annotations

import argparse
import logging

from streamtrain.train.signals import StopRequest


def __getattr__(name: str):
    """``ERRORS`` is imported on first use: importing this module must stay light, so that the
    signal handler is in place before torch and the rest load (see ``run``)."""
    if name != "ERRORS":
        raise AttributeError(name)
    from streamtrain.loader.state import LoaderStateError
    from streamtrain.loader.stream_loader import EmptyEpochError
    from streamtrain.loader.worker import DATA_ERRORS
    from streamtrain.format.index import DatasetIndexError
    from streamtrain.features.feature_cache import FeatureCacheError
    from streamtrain.train.checkpoint import CheckpointError
    from streamtrain.train.config import RecipeError
    from streamtrain.storage.output import OutputError

    return (RecipeError, DatasetIndexError, LoaderStateError, FeatureCacheError, CheckpointError, FileNotFoundError,
            EmptyEpochError, OutputError, *DATA_ERRORS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a recipe file, or the name of one in recipes/ (tiny, whisper-finetune, ...)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-4")
    parser.add_argument("--output-dir", help="the run folder (train.output_dir)")
    parser.add_argument("--max-steps", type=int, help="train.max_steps")
    parser.add_argument("--checkpoint-every", type=int, help="train.checkpoint_every")
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if an accelerator is present")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over: remove the run folder's checkpoints and audit log instead of resuming")


def take_extra_arguments(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> None:
    """Overrides may come after the options too: ``train tiny --max-steps 5 optim.lr=1e-4``."""
    unknown = [word for word in extra if word.startswith("-") or "=" not in word]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = list(args.overrides) + extra


def run(args: argparse.Namespace) -> int:
    with StopRequest() as stop:
        return _train(args, stop)


def recipe_of(args: argparse.Namespace):
    """The recipe with its overrides, then the flags: a flag's value is already typed by argparse
    (``--output-dir "run #1"`` is that folder, ``--output-dir 2024`` a folder named 2024), never YAML."""
    from streamtrain.train.config import load_recipe

    flags = {
        "train.output_dir": args.output_dir,
        "train.max_steps": args.max_steps,
        "train.checkpoint_every": args.checkpoint_every,
        "train.seed": args.seed,
        "train.cpu": True if args.cpu else None,
    }
    return load_recipe(args.recipe, args.overrides, {k: v for k, v in flags.items() if v is not None})


def configure_logging() -> None:
    """Our INFO lines on the console; other libraries' only from WARNING (aiobotocore says at INFO
    where it found credentials, on every start)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("streamtrain").setLevel(logging.INFO)


def _train(args: argparse.Namespace, stop: StopRequest) -> int:
    configure_logging()
    from streamtrain.distill.objective import objective_for
    from streamtrain.train.loop import train

    recipe = recipe_of(args)
    result = train(recipe, resume=not args.no_resume, objective_for=objective_for, stop=stop)
    evaluations = result.progress.evaluations
    if evaluations and not result.stopped_by_signal and result.main_process:  # once, not once per rank
        first, last = evaluations[0], evaluations[-1]
        print(f"validation WER: {100 * first['wer']:.2f}% at step {first['step']} -> "
              f"{100 * last['wer']:.2f}% at step {last['step']}")
    return 0
