"""Packing: read a SOURCE, write tar shards and an index (``streamtrain pack``)."""

from streamtrain.pack.packer import PackError, PackSummary, merge, pack
from streamtrain.pack.sources import SourceError, SourceItem, read_source

__all__ = ["PackError", "PackSummary", "SourceError", "SourceItem", "merge", "pack", "read_source"]
