"""``python kill_after_shards.py N -- label ...``: SIGKILL this process once N label shards are complete."""

import os
import signal
import sys

import streamtrain.format.shard as shard
from streamtrain.cli import main

limit = int(sys.argv[1])
closed = {"count": 0}
real_close = shard.ShardWriter.close


def close_then_maybe_die(self):
    result = real_close(self)
    closed["count"] += 1
    if closed["count"] == limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


shard.ShardWriter.close = close_then_maybe_die
sys.exit(main(sys.argv[3:]))
