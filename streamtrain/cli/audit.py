"""``streamtrain audit RUN_DIR``: prove (or refute) exactly-once delivery on a real run.

Reads the run's audit log and the datasets' indexes (and, to name a few
samples, their keys columns); never a shard. A run folder at a URL is read
with the store's credentials and endpoint from the environment (e.g.
``AWS_ENDPOINT_URL``); its log is downloaded to a temporary folder first.
"""

from __future__ import annotations

import argparse

import yaml

from streamtrain.format.dataset import Dataset, open_dataset
from streamtrain.format.index import DatasetIndexError
from streamtrain.storage.remote import ReadError
from streamtrain.storage.location import LocationError
from streamtrain.storage.output import OutputError
from streamtrain.train.audit import AUDIT_DIR, AuditLogError, audit_run
from streamtrain.train.run_folder import RunFolder

ERRORS = (DatasetIndexError, ReadError, FileNotFoundError, AuditLogError, OutputError, LocationError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run folder written by streamtrain train (a path or a URL)")
    parser.add_argument("--dataset", action="append", default=[],
                        help="a training dataset the log names (default: data.train of the run's recipe.yaml); "
                             "repeatable, e.g. for a dataset that has moved")


class Datasets:
    """Opens the datasets the log names, matching them by fingerprint, not by URL."""

    def __init__(self, urls: list[str], storage_options: dict | None = None):
        self.candidates = urls
        self.storage_options = storage_options
        self.opened: dict[str, Dataset] = {}

    def __call__(self, fingerprint: str, logged_url: str) -> Dataset:
        if fingerprint not in self.opened:
            for url in self.candidates:
                dataset = open_dataset(url, self.storage_options)
                self.opened[dataset.index.fingerprint] = dataset
            self.candidates = []
        if fingerprint not in self.opened:  # e.g. a dataset a mixture change removed from the recipe
            try:
                dataset = open_dataset(logged_url, self.storage_options)
            except (DatasetIndexError, ReadError, FileNotFoundError):
                dataset = None
            if dataset is not None:
                self.opened[dataset.index.fingerprint] = dataset
        if fingerprint not in self.opened:
            raise FileNotFoundError(
                f"the run trained on {logged_url} (fingerprint {fingerprint}), which is not among the datasets "
                "given; pass it with --dataset URL"
            )
        return self.opened[fingerprint]


def recipe_datasets(run: RunFolder) -> tuple[list[str], dict | None]:
    try:
        recipe_file = run.fetch("recipe.yaml")
    except FileNotFoundError:
        recipe_file = None
    if recipe_file is None or not recipe_file.is_file():
        raise FileNotFoundError(f"{run}/recipe.yaml: not a run folder (no recipe.yaml); pass --dataset")
    data = yaml.safe_load(recipe_file.read_text())["data"]
    train = data["train"]
    urls = list(train) if isinstance(train, dict) else [train]
    return urls, data.get("storage_options")


def run(args: argparse.Namespace) -> int:
    with RunFolder(args.run_dir) as run_dir:
        urls, storage_options = recipe_datasets(run_dir) if not args.dataset else (args.dataset, None)
        run_dir.fetch_folder(AUDIT_DIR)
        report = audit_run(run_dir.local, Datasets(urls, storage_options))
    print(f"{run_dir}: {report.sessions} session(s), {report.steps} optimizer steps"
          + (f", {report.torn_frames} torn log frame(s) from killed runs ignored" if report.torn_frames else ""))
    for epoch in report.epochs:
        state = "complete" if epoch.complete else "in progress"
        table = " in its last table" if epoch.mixture_changes else ""
        print(f"epoch {epoch.epoch} ({state}): {epoch.samples} samples{table}, {epoch.seen} seen, "
              f"{epoch.duplicates} duplicates, {epoch.missing} {'missing' if epoch.complete else 'not yet seen'}, "
              f"{epoch.dropped} dropped to equalize ranks, {epoch.filtered} filtered by duration, "
              f"{epoch.filtered_by_label} filtered by label (keep=false), "
              f"{epoch.skipped} skipped as bad, {epoch.unknown} not in the epoch's table")
        if epoch.mixture_changes:
            print(f"  the data mixture changed {epoch.mixture_changes} time(s) in this epoch; {epoch.left_out} samples "
                  f"not yet delivered were left out by the change; {epoch.repeated} samples delivered more often "
                  "than their weight in any of the epoch's mixtures asks")
        for problem in epoch.problems:
            print(f"  problem: {problem}")
        for label, named in epoch.examples.items():
            for name in named:
                print(f"  {label}: {name}")
    print("audit: OK" if report.ok else "audit: FAILED")
    return 0 if report.ok else 1
