"""``streamtrain audit RUN_DIR``: prove (or refute) exactly-once delivery on a real run."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from streamtrain.data.remote import ShardReadError, is_local, local_path, read_url
from streamtrain.data.sources import open_source
from streamtrain.dataset.index import DatasetIndexError
from streamtrain.dataset.shard import list_shard_keys, read_shard
from streamtrain.train.audit import audit_run

ERRORS = (DatasetIndexError, ShardReadError, FileNotFoundError)
SHOWN = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run folder written by streamtrain train")
    parser.add_argument("--dataset", help="the training dataset (default: data.train of the run's recipe.yaml)")


def dataset_keys(url: str) -> dict[str, str]:
    """``"<dataset>/<shard>#<index>"`` -> key, for every sample of the dataset."""
    source = open_source(url)
    keys = {}
    for shard in source.index.shards:
        shard_url = source.shard_url(shard)
        if is_local(shard_url):
            names = list_shard_keys(local_path(shard_url))
        else:
            names = [s.key for s in read_shard(read_url(shard_url, shard.bytes, shard.sha256), shard.name)]
        for index, key in enumerate(names):
            keys[f"{source.display}/{shard.name}#{index}"] = key
    return keys


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    recipe_file = run_dir / "recipe.yaml"
    if args.dataset is None and not recipe_file.is_file():
        raise FileNotFoundError(f"{recipe_file}: not a run folder (no recipe.yaml); pass --dataset")
    dataset = args.dataset or yaml.safe_load(recipe_file.read_text())["data"]["train"]
    report = audit_run(run_dir, dataset_keys(dataset))
    print(f"{run_dir}: {report.sessions} session(s), {report.steps} optimizer steps"
          + (f", {report.torn_frames} torn log frame(s) from killed runs ignored" if report.torn_frames else ""))
    for epoch in report.epochs:
        state = "complete" if epoch.complete else "in progress"
        print(f"epoch {epoch.epoch} ({state}): {epoch.seen} samples seen, {len(epoch.duplicates)} duplicates, "
              f"{len(epoch.missing)} {'missing' if epoch.complete else 'not yet seen'}, "
              f"{len(epoch.dropped)} dropped to equalize ranks, {len(epoch.filtered)} filtered by duration, "
              f"{len(epoch.skipped)} skipped as bad, {len(epoch.unknown)} not in the dataset")
        for label, keys in (("duplicate", epoch.duplicates), ("unknown", epoch.unknown),
                            ("missing", epoch.missing if epoch.complete else []),
                            ("dropped", epoch.dropped), ("skipped", epoch.skipped)):
            for key in keys[:SHOWN]:
                print(f"  {label}: {key}")
            if len(keys) > SHOWN:
                print(f"  ... and {len(keys) - SHOWN} more {label}")
    print("audit: OK" if report.ok else "audit: FAILED")
    return 0 if report.ok else 1
