"""``python kill_after_publish.py N -- COMMAND ...``: SIGKILL this process once N shards are published
at an output location (uploaded and verified, for a URL)."""

import os
import signal
import sys

from streamtrain.cli import main
from streamtrain.storage.output import Output

limit = int(sys.argv[1])
published = {"shards": 0}
real_publish = Output.publish


def publish_then_maybe_die(self, name):
    real_publish(self, name)
    published["shards"] += name.endswith(".tar")
    if published["shards"] == limit:
        os.kill(os.getpid(), signal.SIGKILL)


Output.publish = publish_then_maybe_die
sys.exit(main(sys.argv[3:]))
