"""The feature cache: a sidecar column of precomputed features, stamped with a fingerprint.

Only worth it for featurizers that are really expensive (log-mel on the device
is cheaper than reading cached features). The column's shards align with the
dataset's (same names, keys and order); each sample gets ``<key>.feat.zst``
(float16, zstandard: ``streamtrain.format.feature_codec``) and ``<key>.json`` (its frame count). The
column's index holds the featurizer's name, configuration and fingerprint; the
trainer refuses a column whose fingerprint differs from its featurizer's, and
the loader one made from another dataset's content (``base_fingerprint``), so
stale features are never used.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from streamtrain.loader.shard_chunks import DecodedChunk, write_column_shard
from streamtrain.format.columns import publish_index
from streamtrain.format.dataset import Dataset, open_dataset
from streamtrain.format.index import DatasetIndex, ShardList
from streamtrain.format.feature_codec import encode_features
from streamtrain.format.sidecar import FEATURES_COLUMN, FEATURES_EXT, base_identity
from streamtrain.pack.progress import ProgressReport
from streamtrain.features.registry import FEATURIZER_VERSION, featurizer_fingerprint
from streamtrain.storage.output import Output


class FeatureCacheError(ValueError):
    """A feature column that does not belong to this featurizer or dataset."""


def write_feature_column(
    dataset: str,
    out_dir: str | Path,
    featurizer: nn.Module,
    name: str,
    *,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    storage_options: dict | None = None,
) -> DatasetIndex:
    """Featurize every sample of ``dataset`` (on the featurizer's device) into a column at ``out_dir``
    (a folder or URL): each shard is published when complete, the index last."""
    source = open_dataset(dataset, storage_options)
    with Output(out_dir, storage_options) as out:
        out.check_writable()
        if out.names():
            if not overwrite:
                raise FeatureCacheError(f"{out.display}: not empty (use --overwrite to replace it)")
            out.clear()
        out.create()
        device = next(featurizer.buffers()).device
        index = DatasetIndex(
            codec="column",
            sample_rate=None,
            created_by="streamtrain featurize",
            column={
                "name": FEATURES_COLUMN,
                "kind": "features",
                "featurizer": name,
                "config": featurizer.config(),
                "featurizer_version": FEATURIZER_VERSION,
                "fingerprint": featurizer_fingerprint(featurizer),
                **base_identity(source),
            },
        )
        report = ProgressReport("featurize", source.index.samples, "samples", enabled=progress)

        def members_for(chunk: DecodedChunk) -> list[dict[str, bytes]]:
            with torch.inference_mode():
                features, frames = featurizer(chunk.audio, chunk.lengths)
            return [
                {FEATURES_EXT: encode_features(features[row]), "json": json.dumps({"frames": int(frames[row])}).encode()}
                for row in range(len(chunk.keys))
            ]

        infos, keys = [], []
        with report:
            for shard in range(len(source.index.shards)):
                info, shard_keys = write_column_shard(
                    source, shard, out, sample_rate=featurizer.sample_rate, batch_size=batch_size,
                    device=device, members_for=members_for, on_chunk=report.update,
                )
                infos.append(info)
                keys += shard_keys
        index.shards = ShardList.of(infos)
        return publish_index(out, index, source.durations, keys)


def check_feature_column(column: Dataset, featurizer: nn.Module) -> None:
    """Refuse a column made by another featurizer (or another version of it)."""
    info = column.index.column or {}
    expected = featurizer_fingerprint(featurizer)
    if info.get("kind") != "features":
        raise FeatureCacheError(f"{column.display}: not a feature column")
    if info.get("fingerprint") != expected:
        raise FeatureCacheError(
            f"{column.display}: stale feature cache: made by {info.get('featurizer')} {info.get('config')} "
            f"(fingerprint {str(info.get('fingerprint'))[:12]}), but the recipe's featurizer is "
            f"{type(featurizer).__name__} {featurizer.config()} (fingerprint {expected[:12]}); "
            "re-run `streamtrain featurize` or drop features.cache"
        )


def cached_features(batch, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(features B x M x F float32, frame lengths B) from a batch's feature column."""
    column = batch.columns[FEATURES_COLUMN]
    features = torch.stack([sample[FEATURES_EXT] for sample in column]).to(device, torch.float32)
    frames = torch.tensor([sample["json"]["frames"] for sample in column], device=device)
    return features, frames
