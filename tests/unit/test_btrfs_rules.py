"""The pure parts of vigil.resources.btrfs: reading ``btrfs subvolume list`` and the start of a
send stream (on output captured from btrfs-progs 6.2 and kernel 6.18), and the rule that says
which snapshots have diverged. The real filesystems are in tests/system/test_btrfs.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from vigil.resources.btrfs import (
    BtrfsError,
    Snapshot,
    Subvolume,
    Volume,
    common,
    diverged,
    parse_subvolume_list,
    read_stream_start,
)

# `btrfs subvolume list -c -u -q -R` on a source (a data subvolume, two snapshots), then
# `btrfs subvolume list -r` on the same filesystem.
SOURCE_LIST = """\
ID 256 gen 8 cgen 7 top level 5 parent_uuid -                                    received_uuid -                                    uuid 3c8a6394-005a-3045-a894-812622ec946e path data
ID 257 gen 7 cgen 7 top level 5 parent_uuid 3c8a6394-005a-3045-a894-812622ec946e received_uuid -                                    uuid 58893937-5192-fc4d-8946-64449fc74e15 path .snapshots/data.alpha.1
ID 258 gen 8 cgen 8 top level 5 parent_uuid 3c8a6394-005a-3045-a894-812622ec946e received_uuid -                                    uuid cb58d8ac-f499-b742-98d3-863c5d5a5816 path .snapshots/data.alpha.2
"""  # noqa: E501
SOURCE_READ_ONLY = """\
ID 257 gen 7 top level 5 path .snapshots/data.alpha.1
ID 258 gen 8 top level 5 path .snapshots/data.alpha.2
"""
# On the receiver: a full receive, an incremental one (its parent UUID is the local copy of
# its parent), and a subvolume whose path has spaces and the word " path " in it.
RECEIVER_LIST = """\
ID 256 gen 10 cgen 7 top level 5 parent_uuid -                                    received_uuid 2be77673-c98a-3846-9647-001c7b44b55f uuid df6788cf-bf40-fd40-b4a6-ad508dc94cfa path recv/data.n1.1
ID 257 gen 11 cgen 10 top level 5 parent_uuid df6788cf-bf40-fd40-b4a6-ad508dc94cfa received_uuid c0465092-5af3-0344-9e73-0673fb09f387 uuid 614475b2-4ad8-ea4d-ad86-05d9552ba301 path recv/data.n1.2
ID 262 gen 16 cgen 16 top level 5 parent_uuid -                                    received_uuid -                                    uuid e7fc8f19-1acd-1840-9c81-7bcf35c70351 path .s/sp ace/x path y
"""  # noqa: E501

# The first command of `btrfs send -p data.alpha.1 data.alpha.2`, and of `btrfs send
# data.alpha.1`, from the filesystem listed in SOURCE_LIST.
INCREMENTAL_START = bytes.fromhex(
    "62747266732d73747265616d00010000005000000002006b6ab3da0f000c00646174612e616c7068612e3201"
    "001000cb58d8acf499b74298d3863c5d5a581602000800080000000000000014001000588939375192fc4d89"
    "4664449fc74e15150008000700000000000000")
FULL_START = bytes.fromhex(
    "62747266732d73747265616d00010000003000000001006885be900f000c00646174612e616c7068612e3101"
    "001000588939375192fc4d894664449fc74e15020008000700000000000000")


def test_subvolume_list_is_read_by_key_with_read_only_flags() -> None:
    read_only = {257, 258}
    data, first, second = parse_subvolume_list(SOURCE_LIST, read_only)
    assert data == Subvolume(id=256, generation=8, created=7, path="data",
                             uuid="3c8a6394-005a-3045-a894-812622ec946e", parent_uuid=None,
                             received_uuid=None, read_only=False)
    assert (first.name, first.read_only, first.parent_uuid) == (
        "data.alpha.1", True, data.uuid)
    assert first.ident == first.uuid == "58893937-5192-fc4d-8946-64449fc74e15"
    assert (second.generation, second.created) == (8, 8)


def test_received_subvolumes_are_identified_by_their_received_uuid() -> None:
    full, incremental, odd = parse_subvolume_list(RECEIVER_LIST)
    assert full.received_uuid == full.ident == "2be77673-c98a-3846-9647-001c7b44b55f"
    assert full.uuid == "df6788cf-bf40-fd40-b4a6-ad508dc94cfa" and full.parent_uuid is None
    assert incremental.parent_uuid == full.uuid  # the local parent, not the sender's
    assert incremental.ident == "c0465092-5af3-0344-9e73-0673fb09f387"
    assert odd.path == ".s/sp ace/x path y" and odd.name == "x path y"
    assert not any(s.read_only for s in (full, incremental, odd))


def test_lines_that_are_not_subvolumes_are_skipped() -> None:
    text = "ERROR: something\nID x gen 1 path y\n" + SOURCE_LIST.splitlines()[0] + "\n"
    assert [s.id for s in parse_subvolume_list(text)] == [256]
    assert parse_subvolume_list(SOURCE_READ_ONLY) == []  # no UUIDs: not a full listing


def test_the_start_of_a_stream_names_the_snapshot_and_its_parent() -> None:
    incremental = read_stream_start(io.BytesIO(INCREMENTAL_START + b"rest").read)
    assert incremental.name == "data.alpha.2"
    assert incremental.ident == "cb58d8ac-f499-b742-98d3-863c5d5a5816"
    assert incremental.parent == "58893937-5192-fc4d-8946-64449fc74e15"
    assert incremental.raw == INCREMENTAL_START  # nothing beyond the first command is read
    full = read_stream_start(io.BytesIO(FULL_START).read)
    assert (full.name, full.parent, full.ctransid) == ("data.alpha.1", None, 7)


class Trickle(io.RawIOBase):
    """Gives one byte per read, as a slow socket may."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        chunk, self.data = self.data[:1], self.data[1:]
        return chunk


def test_the_start_of_a_stream_is_read_however_it_trickles_in() -> None:
    assert read_stream_start(Trickle(FULL_START).read).name == "data.alpha.1"


@pytest.mark.parametrize(("data", "message"), [
    (b"", "ended after 0 bytes"),
    (FULL_START[:30], "ended after 30 bytes"),
    (b"tar-stream\0\0\0\1\0\0\0" + FULL_START[17:], "not a btrfs send stream"),
    (FULL_START[:13] + b"\x09\0\0\0" + FULL_START[17:], "version 9 is not supported"),
    (FULL_START[:21] + b"\x03\0" + FULL_START[23:], "does not start with a subvolume"),
    (FULL_START[:27] + b"\x01\0\x10\0" + FULL_START[31:], "first command is malformed"),
])
def test_what_is_not_a_send_stream_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(BtrfsError, match=message):
        read_stream_start(io.BytesIO(data).read)


# -- the divergence rule ----------------------------------------------------------------------


def snap(name: str, ident: str, created: int = 0) -> Snapshot:
    _, node, seq = name.split(".")
    return Snapshot(name, node, int(seq), Path("/x") / name,
                    Subvolume(id=300 + int(seq), generation=created, created=created,
                              path=f".snapshots/{name}", uuid=f"local-{name}",
                              parent_uuid=None, received_uuid=ident))


def names(snapshots: list[Snapshot]) -> list[str]:
    return [s.name for s in snapshots]


def test_the_old_sources_own_snapshots_after_the_last_common_one_have_diverged() -> None:
    # a took 1..5; b had received 1..3 when it took over, then took 4 and 5 of its own.
    mine = [snap(f"d.a.{i}", f"a{i}") for i in range(1, 6)]
    source = {"a1", "a2", "a3", "b4", "b5"}
    assert names(diverged(mine, source)) == ["d.a.4", "d.a.5"]
    last = common(mine, source)
    assert last is not None and last.name == "d.a.3"


def test_ancestors_the_source_pruned_have_not_diverged() -> None:
    mine = [snap(f"d.a.{i}", f"a{i}") for i in range(1, 6)]
    assert names(diverged(mine, {"a3", "b4", "b9"})) == ["d.a.4", "d.a.5"]
    assert diverged(mine, {"a5", "b6"}) == []


def test_without_a_common_snapshot_everything_is_diverged() -> None:
    mine = [snap("d.a.2", "a2"), snap("d.a.1", "a1")]
    assert names(diverged(mine, {"b40", "b41"})) == ["d.a.1", "d.a.2"]
    assert common(mine, {"b40"}) is None
    assert diverged([], {"b1"}) == []


def test_a_received_snapshot_the_source_lacks_has_diverged_too() -> None:
    # c received a's 4 before b took over from 3: a's 4 is on no branch b follows.
    mine = [snap("d.a.3", "a3"), snap("d.a.4", "a4")]
    assert names(diverged(mine, {"a3", "b4", "b5"})) == ["d.a.4"]


def test_a_snapshot_with_the_last_common_ones_number_from_another_branch_has_diverged() -> None:
    mine = [snap("d.a.1", "a1"), snap("d.a.2", "a2", created=9), snap("d.b.2", "b2", created=8)]
    assert names(diverged(mine, {"a1", "b2"})) == ["d.a.2"]


def test_the_parent_of_the_next_send_is_the_newest_snapshot_the_receiver_has() -> None:
    mine = [snap(f"d.a.{i}", f"a{i}") for i in range(1, 6)]
    parent = common(mine, {"a1", "a3"})
    assert parent is not None and parent.name == "d.a.3"
    assert common(mine, set()) is None


@pytest.mark.parametrize("bad", ["", "a.b", "a/b", ".hidden", "-x", "é", "a b"])
def test_subvolume_and_node_names_are_plain_words(bad: str) -> None:
    with pytest.raises(ValueError, match="no dots"):
        Volume("/srv/m", bad, "n1")
    with pytest.raises(ValueError, match="no dots"):
        Volume("/srv/m", "data", bad)
    with pytest.raises(ValueError, match="timeout must be positive"):
        Volume("/srv/m", "data", "n1", timeout=0)
