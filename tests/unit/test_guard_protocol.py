"""The guardian's local protocol and holdings (vigil/guard/protocol.py, holdings.py): every
message survives a round trip; a malformed line is refused with a sentence that says what is
wrong, never half-read; and where no cgroup v2 is mounted, the cgroup helper says so."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vigil.guard.cgroups import NodeCgroups, find_cgroup2_mount
from vigil.guard.holdings import Address, Holdings, MountHolding, ResourceHolding
from vigil.guard.protocol import (
    MAX_LINE,
    Bye,
    Error,
    Fenced,
    FenceReport,
    Hello,
    Killed,
    LineReader,
    Message,
    ProtocolError,
    Report,
    Welcome,
    decode,
    encode,
)

HELD = Holdings((
    ResourceHolding("web-app", pgids=(4242, 4250), cgroup="/sys/fs/cgroup/vigil-a/web-app"),
    ResourceHolding("web-ip", addresses=(Address("eth0", "198.18.0.10/24"),
                                         Address("eth0", "2001:2::10/64"))),
    ResourceHolding("web-fs", mounts=(MountHolding("/srv/data", "/dev/loop3"),)),
    ResourceHolding("web-state"),
))

MESSAGES: list[Message] = [
    Hello("alpha", 4242),
    Report(1234.5, HELD),
    Report(math.inf, HELD),
    Report(-math.inf, Holdings()),
    Bye(),
    Welcome("alpha", 77, 0.1, "kill", "cgroup v2: /sys/fs/cgroup/vigil-alpha"),
    Fenced(FenceReport(at=12.0, took=0.012, reason="lease ran out", resources=HELD.names,
                       killed=(Killed("cgroup", "vigil-alpha", 3), Killed("pgid", "4242", 1)),
                       removed=(Address("eth0", "198.18.0.10/24"),),
                       unmounted=(MountHolding("/srv/data", "/dev/loop3"),),
                       problems=("x",), remaining=Holdings((ResourceHolding("web-app",
                                                                            pgids=(4242,)),)),
                       reboot=True)),
    Error("dropped: report before hello"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_round_trip_on_one_line(message: Message) -> None:
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["v"] == 1
    assert decode(line) == message


def test_the_lease_is_a_number_inf_or_null_on_the_wire() -> None:
    assert json.loads(encode(Report(5.5, Holdings())))["lease_until"] == 5.5
    assert json.loads(encode(Report(math.inf, Holdings())))["lease_until"] == "inf"
    assert json.loads(encode(Report(-math.inf, Holdings())))["lease_until"] is None


def line(**body: object) -> bytes:
    return json.dumps({"v": 1, **body}).encode()


@pytest.mark.parametrize(("raw", "expected"), [
    (b"hello", "not JSON"),
    (b"[1, 2]", "a message is a JSON object"),
    (b'{"type": "bye"}', "protocol version None is not spoken here"),
    (b'{"v": 2, "type": "bye"}', "run the same Vigil on both sides"),
    (line(type="goodbye"), "unknown message type 'goodbye'"),
    (line(type="hello", node="a"), "hello: missing field 'pid'"),
    (line(type="hello", node="a", pid="12"), "'pid' must be an integer"),
    (line(type="hello", node="a", pid=0), "'pid' must be > 0"),
    (line(type="report", holdings=[]), "missing field 'lease_until'"),
    (line(type="report", lease_until=1), "missing field 'holdings'"),
    (line(type="report", lease_until="soon", holdings=[]), "'lease_until' must be a monotonic"),
    (line(type="report", lease_until=1, holdings={}), "holdings must be a JSON array"),
    (line(type="report", lease_until=1, holdings=[{"pgids": [5]}]),
     "holdings[0].name must be a non-empty string"),
    (line(type="report", lease_until=1, holdings=[{"name": "a", "pgids": [1]}]),
     "pgid 1 is not a process group of a resource"),
    (line(type="report", lease_until=1, holdings=[{"name": "a", "pgids": [True]}]),
     "pgid True"),
    (line(type="report", lease_until=1, holdings=[{"name": "a", "cgroup": "rel/x"}]),
     "cgroup must be an absolute path"),
    (line(type="report", lease_until=1, holdings=[{"name": "a", "colour": "red"}]),
     "unknown fields colour"),
    (line(type="report", lease_until=1, holdings=[
        {"name": "a", "addresses": [{"ifname": "eth0", "address": "198.18.0.10"}]}]),
     "needs its prefix length"),
    (line(type="report", lease_until=1, holdings=[
        {"name": "a", "addresses": [{"ifname": "eth0:1", "address": "198.18.0.10/24"}]}]),
     "not a Linux interface name"),
    (line(type="report", lease_until=1, holdings=[
        {"name": "a", "mounts": [{"mountpoint": "/", "device": "/dev/sda"}]}]),
     "mountpoint must not be '/'"),
    (line(type="report", lease_until=1, holdings=[{"name": "a"}, {"name": "a"}]),
     "resources listed twice: a"),
    (line(type="fenced", at=1, took=0, reason="r", resources=[], reboot="yes"),
     "'reboot' must be true or false"),
])
def test_malformed_lines_are_refused_with_the_reason(raw: bytes, expected: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(raw)
    assert expected in str(caught.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "pgids", "cgroup", "addresses", "mounts", "ifname", "address",
                         "mountpoint", "device", "x"]), inner, max_size=4),
    max_leaves=12)


@given(st.binary(max_size=100) | st.builds(
    lambda kind, fields: json.dumps({"v": 1, "type": kind, **fields}).encode(),
    st.sampled_from(["hello", "report", "bye", "welcome", "fenced", "error", "x"]),
    st.dictionaries(st.sampled_from(["node", "pid", "lease_until", "holdings", "at", "took",
                                     "reason", "resources", "killed", "removed", "unmounted",
                                     "problems", "remaining", "reboot", "message"]),
                    json_values, max_size=6)))
def test_no_line_crashes_the_decoder(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):  # a message, or a sentence; nothing else
        decode(raw)


def test_the_line_reader_splits_joins_and_drops_lines_too_long() -> None:
    reader = LineReader(limit=10)
    assert reader.feed(b"abc") == [] and reader.pending == 3
    assert reader.feed(b"d\n\nef\n") == [b"abcd", b"ef"]
    out = reader.feed(b"x" * 11)
    assert len(out) == 1 and isinstance(out[0], ProtocolError)
    assert reader.feed(b"yyyy") == []  # still inside the long line
    assert reader.feed(b"yy\nok\n") == [b"ok"]
    assert LineReader().limit == MAX_LINE


def test_holdings_collect_what_the_guardian_removes() -> None:
    assert HELD.names == ("web-app", "web-ip", "web-fs", "web-state")
    assert HELD.pgids == (4242, 4250)
    assert HELD.cgroups == ("/sys/fs/cgroup/vigil-a/web-app",)
    assert [str(a) for a in HELD.addresses] == ["198.18.0.10/24 on eth0", "2001:2::10/64 on eth0"]
    assert HELD and not Holdings() and Holdings().empty
    assert str(Holdings()) == "nothing"
    assert "web-state (nothing the guardian can remove)" in str(HELD)


def test_the_fence_summary_is_one_sentence() -> None:
    report = FenceReport(at=0.0, took=0.012, reason="", resources=("a",),
                         killed=(Killed("cgroup", "vigil-alpha", 3),),
                         removed=(Address("eth0", "198.18.0.10/24"),),
                         unmounted=(MountHolding("/srv/data", "/dev/sdb1"),))
    assert report.summary() == ("killed cgroup vigil-alpha (3 processes), removed "
                                "198.18.0.10/24 from eth0, unmounted /srv/data in 12 ms")
    empty = FenceReport(at=0.0, took=0.0, reason="", resources=("a",), problems=("p",),
                        reboot=True)
    assert empty.summary() == ("found nothing left to kill, remove or unmount in 0 ms; "
                               "PROBLEMS: p; rebooting")


# ---- finding cgroup v2 ----------------------------------------------------------------------


HYBRID = (
    "25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
    "26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
    "27 25 0:24 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu\n")
UNIFIED = "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
LEGACY = "27 25 0:24 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu\n"


@pytest.mark.parametrize(("mountinfo", "expected"), [
    (HYBRID, Path("/sys/fs/cgroup/unified")),
    (UNIFIED + HYBRID.splitlines(keepends=True)[1], Path("/sys/fs/cgroup")),
    (LEGACY, None),
])
def test_the_cgroup2_mount_is_found_hybrid_or_unified(tmp_path: Path, mountinfo: str,
                                                       expected: Path | None) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(mountinfo)
    assert find_cgroup2_mount(str(info)) == expected


def test_without_cgroup_v2_the_helper_says_what_is_lost(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(LEGACY)
    cgroups = NodeCgroups("alpha", mountinfo=str(info))
    assert cgroups.path is None and cgroups.pids() == [] and cgroups.kill() is None
    problem = cgroups.problem()
    assert problem is not None and "process group only" in problem
    assert cgroups.describe() == problem


def test_cgroup_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid node name"):
        NodeCgroups("../etc", root=tmp_path)
    with pytest.raises(ValueError, match="invalid resource name"):
        NodeCgroups("alpha", root=tmp_path).resource_path("a/../../b")
    wrapped = NodeCgroups("alpha", root=tmp_path).wrap("web-app", ["sleep", "1"])
    assert wrapped[:2] == ["/bin/sh", "-c"]
    assert wrapped[3:] == [str(tmp_path / "vigil-alpha" / "web-app" / "cgroup.procs"),
                           "sleep", "1"]
