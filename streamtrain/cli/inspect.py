"""``streamtrain inspect``: summarize a packed dataset, or verify every shard."""

from __future__ import annotations

import argparse
import json

from streamtrain.format.index import DatasetIndexError
from streamtrain.format.tar_layout import ShardError
from streamtrain.pack.inspect import format_summary, summarize, verify

ERRORS = (DatasetIndexError, ShardError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="a packed dataset folder or URL (with index.json)")
    parser.add_argument("--verify", action="store_true", help="re-read every shard and check it against the index")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    """Print the summary (and problems); 1 when verification finds any."""
    summary = summarize(args.dataset)
    problems = verify(args.dataset) if args.verify else []
    if args.json:
        print(json.dumps({**summary, **({"problems": problems} if args.verify else {})}, indent=1))
    else:
        print(format_summary(summary))
        if args.verify:
            print("\n".join(problems) if problems else f"verified {summary['shards']} shards: OK")
    return 1 if problems else 0
