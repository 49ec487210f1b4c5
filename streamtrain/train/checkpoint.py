"""Checkpoints: atomic directories in ``<run>/checkpoints/``, verified before loading.

A checkpoint is written under ``.tmp-step-N`` and renamed to ``step-N`` when
complete, so a crash mid-write leaves only a temporary folder, which the next
run removes. ``manifest.json``, written last, lists every file's sha256; a
checkpoint whose files do not match is damaged and skipped with a warning.

In a run folder at a URL (``RunFolder``) the checkpoint is written so in the
local staging folder, then uploaded file by file, ``manifest.json`` last, and
removed locally: a ``step-N`` without its manifest is an upload that stopped
midway, not listed, and removed by the next run. Rotation removes a manifest
first. Resuming downloads the chosen checkpoint and verifies it locally.
Tensors load with ``weights_only=True``; the counters, loader state and recipe
are JSON (``trainer.json``), readable with ``python -m json.tool``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from streamtrain.storage.atomic import fsync_dir
from streamtrain.train.run_folder import RunFolder

log = logging.getLogger("streamtrain.train")

TENSORS = "state.pt"
TRAINER = "trainer.json"
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that is incomplete or damaged."""


CHECKPOINTS = "checkpoints"

Run = RunFolder | str | os.PathLike


def checkpoint_root(run_dir: Run) -> Path:
    """The local folder of the checkpoints (at a URL: where they are staged and fetched)."""
    return RunFolder.of(run_dir).local / CHECKPOINTS


def save_checkpoint(run_dir: Run, step: int, tensors: dict, trainer: dict, keep: int) -> Path:
    """Write atomically; then remove all but the newest ``keep`` checkpoints.

    A write that fails (a full disk, say) removes what it wrote and raises a
    ``CheckpointError`` naming the checkpoint and the reason; the previous
    checkpoints stay.
    """
    run = RunFolder.of(run_dir)
    root = checkpoint_root(run)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _save_tensors(tensors, tmp / TENSORS)
        (tmp / TRAINER).write_text(json.dumps(trainer, indent=1))
        manifest = {name: _sha256(tmp / name) for name in (TENSORS, TRAINER)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for name in (TENSORS, TRAINER, MANIFEST):
            _fsync(tmp / name)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {error.strerror or error}") from None
    if final.exists():  # a step saved twice (resumed exactly at a checkpoint): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    if not run.is_local:
        run.publish_folder(f"{CHECKPOINTS}/{final.name}", last=MANIFEST)
        shutil.rmtree(final)  # the store holds it now
    for old in list_checkpoints(run)[:-keep]:
        run.remove_folder(f"{CHECKPOINTS}/{old.name}", first=MANIFEST)
    return final


class _RecordingWriter(io.RawIOBase):
    """A file for ``torch.save`` that keeps the OSError behind its write failures: torch itself
    reports them as "enforce fail at inline_container.cc", which says nothing of a full disk."""

    def __init__(self, file):
        self.file = file
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise


def _save_tensors(tensors: dict, path: Path) -> None:
    with open(path, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(tensors, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def list_checkpoints(run_dir: Run) -> list[Path]:
    """Complete-looking checkpoints, oldest first (temporary folders are not listed); at a URL, those with
    their manifest, as the local paths ``fetch_checkpoint`` downloads them to.

    Names are zero-padded, so they sort in step order; the step itself is read
    from each checkpoint's trainer.json, never from its name.
    """
    run = RunFolder.of(run_dir)
    root = checkpoint_root(run)
    if not run.is_local:
        return [root / name for name in _uploads(run) if MANIFEST in run.names(f"{CHECKPOINTS}/{name}")]
    if not root.is_dir():
        return []
    return sorted(path for path in root.glob("step-*") if path.is_dir())


def remove_partial_checkpoints(run_dir: Run) -> None:
    run = RunFolder.of(run_dir)
    if not run.is_local:
        for name in _uploads(run):
            if MANIFEST not in run.names(f"{CHECKPOINTS}/{name}"):
                log.warning("removing incomplete checkpoint %s/%s/%s (a run stopped while uploading it)",
                            run, CHECKPOINTS, name)
                run.remove_folder(f"{CHECKPOINTS}/{name}")
        return
    root = checkpoint_root(run)
    if root.is_dir():
        for path in root.glob(".tmp-step-*"):
            log.warning("removing incomplete checkpoint %s (a run stopped while writing it)", path)
            shutil.rmtree(path, ignore_errors=True)


def _uploads(run: RunFolder) -> list[str]:
    return [name for name in run.names(CHECKPOINTS) if name.startswith("step-")]


def fetch_checkpoint(run_dir: Run, name: str) -> Path:
    """The local path of the checkpoint ``name``; at a URL, downloaded there first (unless a verified copy
    is there already)."""
    run = RunFolder.of(run_dir)
    path = checkpoint_root(run) / name
    if run.is_local:
        return path
    try:
        verify_checkpoint(path)
        return path
    except CheckpointError:
        shutil.rmtree(path, ignore_errors=True)
    run.fetch_folder(f"{CHECKPOINTS}/{name}")
    return path


def verify_checkpoint(path: Path) -> None:
    """CheckpointError if a file is missing or does not match the manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: no readable {MANIFEST}: {error}") from error
    for name, digest in manifest.items():
        if not (path / name).is_file() or _sha256(path / name) != digest:
            raise CheckpointError(f"{path}: {name} is missing or does not match its checksum")


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """(tensors, trainer JSON) of a verified checkpoint; CheckpointError if damaged."""
    verify_checkpoint(path)
    trainer = json.loads((path / TRAINER).read_text())
    tensors = torch.load(path / TENSORS, map_location="cpu", weights_only=True)
    return tensors, trainer


def newest_valid_checkpoint(run_dir: Run) -> Path | None:
    """The newest checkpoint whose files match their manifest; damaged ones are skipped with a warning.

    None when the run has no checkpoint. A CheckpointError when it has some and every one is damaged:
    starting over from step 0 would silently throw the run away (and rotation would then delete the
    damaged checkpoints, which a person may still repair), so that takes ``--no-resume``.
    """
    checkpoints = list_checkpoints(run_dir)
    for path in reversed(checkpoints):
        try:
            verify_checkpoint(fetch_checkpoint(run_dir, path.name))
        except CheckpointError as error:
            log.warning("skipping damaged checkpoint: %s", error)
            continue
        return path
    if checkpoints:
        raise CheckpointError(f"all {len(checkpoints)} checkpoints in {run_dir}/{CHECKPOINTS} are damaged; "
                              "nothing was deleted: repair or restore one, or start over with --no-resume")
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


