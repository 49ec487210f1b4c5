"""Bytes in and out: local files and object-store URLs, atomic writes, retries, the shard cache.

The lowest layer above audio: it knows nothing of datasets, shards or training.
"""
