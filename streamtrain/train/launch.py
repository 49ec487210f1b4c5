"""What a launch must settle before training starts: the device, the pretrained folder, the global batch.

- ``use_cpu``: a recipe without ``train.cpu`` started as several processes
  (``torchrun``, ``accelerate launch``) on a machine without a GPU. accelerate
  would then see one process while torch.distributed sees all of them, and the
  ranks fail at their first collective; here they run on the CPU (gloo), as
  ``train.cpu=true`` asks, and say so.
- ``resolve_pretrained``: ``model.pretrained`` as a folder to load. A hub id is
  used from the local Hugging Face cache when it is there; otherwise the hub is
  asked once, with a short timeout, so an unreachable hub is one line naming
  ``model.pretrained`` within seconds, not a minute of retries ending in an
  error about the tokenizer.
- ``keep_global_batch``: at a resume with another number of processes, the
  optimizer step keeps its number of loader batches (processes x
  ``train.grad_accum``) by changing the accumulation where it divides; where it
  cannot, the change of the global batch is announced. The learning-rate schedule
  counts steps, so a silently halved batch would change the training.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from streamtrain.train.config import RecipeError

log = logging.getLogger("streamtrain.train")

HUB_TIMEOUT = 5.0  # seconds


def launched_processes() -> int:
    """The processes the launcher started (torchrun and accelerate launch set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_cpu(cpu: bool) -> bool:
    """Whether to train on the CPU: ``train.cpu``, or several processes and no accelerator."""
    if cpu or launched_processes() == 1 or torch.accelerator.is_available():
        return cpu
    log.warning("train.cpu is false, but %d processes were launched on a machine without a GPU: they train on the "
                "CPU (gloo), as train.cpu=true says", launched_processes())
    return True


def resolve_pretrained(name: str, offline: bool | None = None, endpoint: str | None = None,
                       timeout: float = HUB_TIMEOUT) -> str:
    """The folder (or hub id, for transformers to download) to load ``model.pretrained`` from."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    if Path(name).is_dir():
        return name
    try:
        return snapshot_download(name, local_files_only=True)  # the Hugging Face cache's copy
    except HFValidationError:
        raise RecipeError(f"model.pretrained: {name!r} is neither a folder nor a Hugging Face hub id") from None
    except LocalEntryNotFoundError:
        pass
    offline = constants.HF_HUB_OFFLINE if offline is None else offline
    if offline:
        raise RecipeError(f"model.pretrained: {name!r} is not a folder, and the hub is off (HF_HUB_OFFLINE) with no "
                          f"cached copy: download it where the hub is reachable (huggingface-cli download {name} "
                          f"--local-dir DIR) and set model.pretrained=DIR")
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    try:
        urllib.request.urlopen(f"{endpoint}/api/models/{name}", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # the hub answered: transformers names what is wrong (no such model, a gated one)
    except OSError as error:
        raise RecipeError(f"model.pretrained: {name!r} is not a folder, and the hub ({endpoint}) did not answer "
                          f"within {timeout:g} s ({getattr(error, 'reason', error)}): download it where the hub is "
                          f"reachable (huggingface-cli download {name} --local-dir DIR) and set "
                          f"model.pretrained=DIR, or set HF_HUB_OFFLINE=1 to use the cache only") from None
    return name


def keep_global_batch(saved_processes: int, saved_accum: int, saved_recipe_accum: int, processes: int,
                      accum: int) -> tuple[int, str | None]:
    """(loader batches to accumulate a step, a line to print, or None) at a resume onto ``processes``.

    The checkpoint's steps took ``saved_processes`` x ``saved_accum`` loader batches, its recipe said
    ``train.grad_accum=saved_recipe_accum``; the recipe now says ``accum``. A recipe that changed
    ``train.grad_accum`` itself gets what it asks for.
    """
    batches = saved_processes * saved_accum
    if accum == saved_recipe_accum and batches % processes == 0:
        kept = batches // processes
        said = None if kept == accum else (
            f"{processes} processes (the checkpoint's steps: {saved_processes} x {saved_accum} loader batches): "
            f"accumulating {kept} loader batches a step, not train.grad_accum={accum}, keeps the global batch")
        return kept, said
    if processes * accum == batches:
        return accum, None
    why = f"{batches} is not a multiple of {processes}" if accum == saved_recipe_accum else \
        f"the recipe changed it from {saved_recipe_accum}"
    return accum, (f"{saved_processes} -> {processes} processes: the global batch changes from {batches} to "
                   f"{processes * accum} loader batches a step (train.grad_accum={accum}: {why})")
