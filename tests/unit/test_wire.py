"""The protocol messages: every valid message reads back as itself, and a peer's malformed
message is one RemoteProtocolError that names what is wrong."""

from __future__ import annotations

import hashlib

import hypothesis.strategies as st
import pytest
from hypothesis import given

from vigil.cluster.mirrors import CopyFact
from vigil.cluster.wire import (
    Accept,
    Accepted,
    AcceptedReply,
    Ack,
    Body,
    Bye,
    Cleanup,
    CostReply,
    CostRequest,
    Declare,
    Echo,
    Heartbeat,
    Reload,
    RemoteProtocolError,
    Report,
    ReportRequest,
    RequestRef,
    Start,
    Started,
    Stopped,
    StopRequest,
    decode,
    fmt_epoch,
    to_message,
)
from vigil.messages import Message

names = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
epochs = st.tuples(st.integers(1, 10**6), names) | st.just((0, ""))
admin = st.frozensets(names | names.map(lambda n: f"off:{n}") | names.map(lambda n: f"kill:{n}")
                      | st.just("maintenance"), max_size=4)
placements = st.dictionaries(names, st.none() | names, max_size=4)
accepted = st.builds(Accepted, epochs, placements, admin)
states = st.sampled_from(["starting", "running", "stopping", "unclean"])
costs = st.floats(min_value=0, allow_nan=False)
requests = st.builds(RequestRef, names.map(lambda n: f"{n}-1-2"),
                     st.sampled_from(["move", "standby", "maintenance", "kill"]),
                     st.just("") | names, st.just("") | names)
copies = st.builds(CopyFact, st.integers(0, 10**12),
                   st.floats(min_value=0, max_value=4e9, allow_nan=False), names, st.booleans(),
                   st.floats(min_value=0, max_value=1e6, allow_nan=False))

#: configuration digests: sha256 in hex, or none
digests = st.one_of(st.just(""), st.binary(min_size=1, max_size=8).map(
    lambda b: hashlib.sha256(b).hexdigest()))

bodies: st.SearchStrategy[Body] = st.one_of(
    st.builds(Heartbeat, n=st.integers(1, 10**9), incarnation=st.integers(1, 10**9),
              promised=epochs, accepted=epochs, closed=st.booleans(),
              echo=st.dictionaries(names, st.tuples(st.integers(0, 10**9),
                                                    st.integers(0, 10**9)), max_size=4),
              groups=st.dictionaries(names, states, max_size=4),
              failures=st.integers(0, 10**6),
              digest=st.from_regex(r"[0-9a-f]{0,16}", fullmatch=True),
              requests=st.lists(requests, max_size=3).map(tuple), ask=st.booleans(),
              next=digests),
    st.builds(Echo, st.integers(1, 10**9), st.integers(1, 10**9), epochs),
    st.builds(Bye, st.integers(1, 10**9), st.booleans()),
    st.builds(Cleanup, names),
    st.builds(Reload, digests.filter(bool)),
    st.builds(Declare, epochs, st.lists(names, min_size=1, max_size=5).map(tuple),
              st.text(alphabet="abc ;:,.()", max_size=30)),
    st.builds(ReportRequest, epochs, st.frozensets(epochs.map(fmt_epoch), max_size=3)),
    st.builds(CostRequest, epochs, admin, digests),
    st.builds(StopRequest, epochs, st.lists(names, max_size=4).map(tuple)),
    st.builds(Accept, epochs, placements, admin, st.lists(names, max_size=3).map(tuple),
              digests),
    st.builds(Report, epochs, st.dictionaries(names, states, max_size=4),
              st.lists(accepted, max_size=3).map(tuple)),
    st.builds(CostReply, epochs, st.dictionaries(names, costs, max_size=4),
              st.dictionaries(names, st.none() | copies, max_size=3)),
    st.builds(Stopped, epochs, st.lists(names, max_size=3).map(tuple),
              st.lists(names, max_size=3).map(tuple)),
    st.builds(Ack, epochs, st.dictionaries(names, st.integers(0, 10**9), max_size=4)),
    *(st.builds(cls, epochs) for cls in (Start, AcceptedReply, Started)),
)


@given(bodies, names)
def test_every_message_reads_back_as_itself(body: Body, sender: str) -> None:
    envelope = decode(to_message(body, sender))
    assert envelope.sender == sender
    assert envelope.body == body
    assert type(envelope.body) is type(body)


@pytest.mark.parametrize(("mtype", "fields", "says"), [
    ("declare", {"epoch": "3.Alpha", "view": "alpha"}, "bad epoch"),
    ("declare", {"epoch": "3.alpha"}, "declare without field 'view'"),
    ("stop", {"epoch": "3.alpha", "groups": "web,;rm"}, "bad name"),
    ("accept", {"epoch": "3.alpha", "placement": "web=NODE"}, "bad node"),
    ("accept", {"epoch": "3.alpha", "placement": "web=a", "standby": "shut:web"},
     "bad administrative state"),
    ("cost", {"epoch": "3.alpha", "costs": "web=nan"}, "cost is NaN"),
    ("cost", {"epoch": "3.alpha", "costs": "web=cheap"}, "bad cost"),
    ("report", {"epoch": "3.alpha", "active": "", "hist": "1.alpha|web=a"}, "bad history"),
    *(("cost", {"epoch": "3.alpha", "costs": "", "copies": copy}, says) for copy, says in [
        ("db=12:1.5:alpha", "bad copy of db"),
        ("db=x:1.5:alpha:0", "bad copy number of db"),
        ("db=-3:1.5:alpha:0", "bad copy number of db"),
        ("db=3:nan:alpha:0", "bad copy time of db"),
        ("db=3:inf:alpha:0", "bad copy time of db"),
        ("db=3:-1.0:alpha:0", "bad copy time of db"),
        ("db=3:soon:alpha:0", "bad copy time of db"),
        ("db=3:1.5:ALPHA:0", "bad copy source of db"),
        ("db=3:1.5:alpha:yes", "bad copy liveness of db"),
        ("db=3:1.5:alpha:0:-2", "bad copy lag of db"),
        ("db=3:1.5:alpha:0:nan", "bad copy lag of db"),
        ("db=3:1.5:alpha:0:1:2", "bad copy of db"),
        ("DB=-", "bad pair"),
    ]),
    ("hb", {"n": "-1", "inc": "1", "epoch": "0", "acc": "0", "echo": "", "groups": "",
            "want": "0", "reqs": ""}, "bad heartbeat number"),
    *(("hb", {"n": "1", "inc": "1", "epoch": "0", "acc": "0", "echo": echo, "groups": "",
             "want": "0", "reqs": ""}, "bad echo list") for echo in [
        "alpha:3", "alpha:3:x", "Alpha:1:2", "alpha:1:2,", ",alpha:1:2", "alpha:1:2:3",
        "alpha:\u00b2:1", "alpha:1:2;beta:1:2"]),
    ("echo", {"n": "7", "inc": "1"}, "echo without field 'epoch'"),
    ("echo", {"n": "7", "inc": "x", "epoch": "0"}, "bad incarnation"),
    ("bye", {"inc": "\u00b2"}, "bad incarnation"),
    ("bye", {"inc": "5", "by": "somebody"}, "bad bye sender"),  # a digit to isdigit(), not to int()
    ("start", {"epoch": "\u00b3.alpha"}, "bad epoch"),
    ("ack", {"epoch": "3.alpha", "silent": "beta:-5"}, "bad silence"),
    ("ack", {"epoch": "3.alpha", "silent": "BETA:5"}, "bad node"),
    ("teleport", {}, "unknown message type"),
    ("reload", {"digest": "abc"}, "bad configuration digest"),
    ("reload", {"digest": "G" * 64}, "bad configuration digest"),
    ("accept", {"epoch": "3.alpha", "placement": "", "config": "x" * 64},
     "bad configuration digest"),
])
def test_a_malformed_message_is_one_remote_protocol_error(mtype: str, fields: dict[str, str],
                                                          says: str) -> None:
    with pytest.raises(RemoteProtocolError, match=says):
        decode(Message(type=mtype, sender="beta", fields=fields))


def test_a_cost_reply_without_copies_parses_and_carries_none() -> None:
    """An older member's reply (no ``copies`` field) still parses; a reply with copies
    carries each mirror resource's copy, or that the member has none."""
    old = decode(Message(type="cost", sender="beta", fields={"epoch": "3.alpha",
                                                              "costs": "db=1.0"}))
    assert old.body == CostReply((3, "alpha"), {"db": 1.0})
    new = decode(Message(type="cost", sender="beta", fields={
        "epoch": "3.alpha", "costs": "db=1.0", "copies": "data=57:1700000000.25:alpha:1,logs=-"}))
    assert isinstance(new.body, CostReply)
    assert new.body.copies == {"data": CopyFact(57, 1700000000.25, "alpha", True), "logs": None}
    assert "copies" not in to_message(CostReply((3, "alpha"), {"db": 1.0}), "beta").fields
