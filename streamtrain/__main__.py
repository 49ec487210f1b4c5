"""``python -m streamtrain``: the same as the ``streamtrain`` command."""

import sys

from streamtrain.cli import main

if __name__ == "__main__":  # guarded: spawned pack workers import this module too
    sys.exit(main())
