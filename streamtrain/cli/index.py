"""``streamtrain index upgrade DATASET``: index maintenance."""

from __future__ import annotations

import argparse

from streamtrain.format.index import DatasetIndexError
from streamtrain.format.tar_layout import ShardError

ERRORS = (DatasetIndexError, ShardError, OSError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="convert a format 1 index.json to format 2 (binary columns), in place")
    upgrade.add_argument("dataset", help="a packed dataset folder")


def run(args: argparse.Namespace) -> int:
    from streamtrain.format.upgrade import upgrade_index

    index, converted = upgrade_index(args.dataset)
    if converted:
        print(f"{args.dataset}: index upgraded to format 2 ({index.samples} samples, {len(index.shards)} shards; "
              f"fingerprint {index.fingerprint} unchanged)")
    else:
        print(f"{args.dataset}: already format {index.format_version}, nothing to do")
    return 0
