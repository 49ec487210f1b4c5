"""Whether a dataset or output location is a local path or a URL fsspec knows.

Every command that takes a location checks it here first, so that a slip
such as ``s3:/bucket`` (one slash), ``s3:bucket`` or a misspelt scheme
(``s4://x``) is an error naming it, never a local folder with a colon in its
name.
"""

from __future__ import annotations

import os
import re

from streamtrain.storage.remote import redact

#: ``scheme:`` at the start of a location; one letter is a Windows drive (``C:\\data``).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")


class LocationError(ValueError):
    """A location that is neither a local path nor a URL of a known scheme."""


def check_location(location: str | os.PathLike) -> str:
    """``location`` as a string, if it is a local path or a URL of a scheme fsspec knows; else LocationError."""
    text = os.fspath(location)
    match = _SCHEME.match(text)
    if match is None:
        return text
    scheme = match.group(1).lower()
    if not text[match.end():].startswith("//"):
        raise LocationError(
            f"{redact(text)!r} is neither a local path nor a URL (a URL is {scheme}://...; "
            f"for a local folder whose name has a colon write ./{text})"
        )
    if scheme not in _known_schemes():
        raise LocationError(f"{redact(text)}: unknown URL scheme {scheme!r} (fsspec knows no such storage)")
    return text


def _known_schemes() -> set[str]:
    import fsspec

    return set(fsspec.available_protocols())
