"""``train.output_dir``: a local folder, or a folder at an object-store URL (s3://, gs://, az://...).

Several nodes need no shared filesystem when the run folder is a URL. Writers
still write into a real local folder, ``local``: the run folder itself when it
is local, else a private staging folder of this process, made on first use and
removed by ``close`` or, at the latest, when the process exits (paths returned
into it stay valid until then). ``publish`` then makes
a written file visible at the URL with ``Output``'s atomic publish (uploaded
whole, read back and checked by size and sha256); ``fetch`` brings one back
for reading. Locally both do nothing, so the local run folder works as it
always did.

What lives where at a URL, and who writes it:

- ``checkpoints/step-N/``: rank 0; its ``manifest.json`` is uploaded last and
  is what makes a checkpoint complete (``checkpoint.py``);
- ``audit/session-K-rank-R.jsonl.zst``: every rank its own file, sent whole
  again at every flush (an object cannot be appended to; the log is a few
  bytes a sample);
- ``model/``: the export, rank 0, ``config.json`` last;
- ``recipe.yaml``, ``metrics.png`` and the tensorboard logs: rank 0;
- ``.lock``: the lease of the running trainer (``store_lock.py``).
"""

from __future__ import annotations

import atexit
import functools
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

from streamtrain.storage.output import Output
from streamtrain.storage.remote import child_url, local_path


class RunFolder:
    """A run folder, local or at a URL; ``close`` drops the local staging (a context manager)."""

    def __init__(self, location: str | os.PathLike, storage_options: dict | None = None):
        self.output = Output(location, storage_options)
        self.url = self.output.url
        self.is_local = self.output.is_local
        self.storage_options = storage_options
        self._drop_staging: functools.partial | None = None

    @functools.cached_property
    def local(self) -> Path:
        """Where writers write: the run folder itself, or this object's staging folder (made now)."""
        if self.is_local:
            return Path(local_path(self.url))
        staging = tempfile.mkdtemp(prefix="streamtrain-run-")
        self._drop_staging = functools.partial(shutil.rmtree, staging, ignore_errors=True)
        atexit.register(self._drop_staging)
        return Path(staging)

    @classmethod
    def of(cls, run: "RunFolder | str | os.PathLike") -> "RunFolder":
        """``run`` itself, or the local folder (or URL) it names."""
        return run if isinstance(run, RunFolder) else cls(run)

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __str__(self) -> str:
        return self.output.display

    def close(self) -> None:
        if self._drop_staging is not None:
            atexit.unregister(self._drop_staging)
            self._drop_staging()
            self._drop_staging = None

    def folder(self, relative: str) -> Output:
        """The sub-folder ``relative`` ("": the run folder itself) as an ``Output``."""
        return Output(child_url(self.url, relative), self.storage_options) if relative else self.output

    def names(self, relative: str) -> list[str]:
        """The names in the sub-folder ``relative`` (at the URL, if one), sorted; [] when it is not there."""
        return self.folder(relative).names()

    def publish(self, relative: str) -> None:
        """Upload ``local/relative`` to the URL (whole, verified); the local file stays. Nothing locally."""
        if not self.is_local:
            self.output.upload(self.local / relative, relative)

    def publish_folder(self, relative: str, last: str | None = None) -> None:
        """Upload every file under ``local/relative`` (none if it is not there), the file named ``last`` after
        all the others: a reader that finds ``last`` finds the whole folder."""
        root = self.local / relative
        if self.is_local or not root.is_dir():
            return
        files = sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
        for name in sorted(files, key=lambda name: name == last):
            self.output.upload(root / name, f"{relative}/{name}")

    def fetch(self, relative: str) -> Path:
        """``local/relative``, downloaded from the URL first (FileNotFoundError naming it if it is not there)."""
        if not self.is_local:
            self.output.download(relative, self.local / relative)
        return self.local / relative

    def fetch_folder(self, relative: str) -> Path:
        """The files of the sub-folder ``relative`` ("": the run folder itself; not its sub-folders),
        downloaded from the URL first."""
        if not self.is_local:
            for name in self.names(relative):
                self.fetch(posixpath.join(relative, name))
        return self.local / relative

    def remove_folder(self, relative: str, first: str | None = None) -> None:
        """Remove the sub-folder ``relative``, the file ``first`` before the others (at the URL: a reader
        that still finds ``first`` finds the whole folder)."""
        shutil.rmtree(self.local / relative, ignore_errors=True)
        if not self.is_local:
            if first is not None:
                self.output.remove(f"{relative}/{first}")
            self.folder(relative).clear()
