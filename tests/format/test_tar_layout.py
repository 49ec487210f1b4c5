"""The streaming tar layout reader agrees with tarfile on any tar, fed in chunks of any size."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtrain.format.tar_layout import LayoutReader, ShardError

names = st.text(alphabet="abcdefghij_-0123456789", min_size=1, max_size=150)
members = st.lists(
    st.tuples(names, st.sampled_from(["flac", "json", "feat.zst"]), st.binary(max_size=1500), st.booleans()),
    min_size=0, max_size=8,
)


def make_tar(entries, fmt) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for key, ext, data, with_dir in entries:
            if with_dir:
                directory = tarfile.TarInfo(f"dir-{key}")
                directory.type = tarfile.DIRTYPE
                tar.addfile(directory)
            info = tarfile.TarInfo(f"some/folder/{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def expected_layout(data: bytes):
    keys, layout = [], []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
            if not keys or keys[-1] != key:
                keys.append(key)
                layout.append([])
            layout[-1].append((ext, member.offset_data, member.size))
    return keys, layout


def read_in_chunks(data: bytes, sizes: list[int]):
    reader, position, turn = LayoutReader("test.tar"), 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        reader.feed(data[position : position + size])
        position, turn = position + size, turn + 1
    return reader.result()


@settings(max_examples=150, deadline=None)
@given(entries=members, fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
       sizes=st.lists(st.integers(1, 2000), min_size=1, max_size=5))
def test_the_layout_is_tarfiles_whatever_the_format_names_and_chunks(entries, fmt, sizes):
    if fmt == tarfile.USTAR_FORMAT:
        entries = [(key[:90], ext, data, d) for key, ext, data, d in entries]  # ustar alone cannot hold long names
    data = make_tar(entries, fmt)
    assert read_in_chunks(data, sizes) == expected_layout(data)


def test_a_shard_cut_inside_a_member_is_an_error_naming_it():
    data = make_tar([("a", "flac", b"x" * 3000, False), ("b", "flac", b"y" * 3000, False)], tarfile.PAX_FORMAT)
    with pytest.raises(ShardError, match=r"test\.tar: corrupt or truncated tar: it ends inside a member"):
        read_in_chunks(data[:4000], [1000])


def test_a_damaged_header_is_an_error_naming_it():
    data = bytearray(make_tar([("a", "flac", b"x" * 600, False), ("b", "json", b"{}", False)], tarfile.PAX_FORMAT))
    data[1536 + 10] ^= 0xFF  # the second member's name
    with pytest.raises(ShardError, match=r"test\.tar: corrupt tar: bad header checksum at byte 1536"):
        read_in_chunks(bytes(data), [512])


def test_a_member_without_an_extension_is_an_error():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("folder/noextension")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ShardError, match=r"test\.tar: member 'folder/noextension' has no extension"):
        read_in_chunks(out.getvalue(), [10**6])
