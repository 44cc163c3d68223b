"""Membership: who is alive, heartbeats, the quorum lease.

A node is *alive* while it was heard (any message, on any link) within ``dead_time``. A node
keeps groups in service only while it holds a *lease*: heartbeat echoes from nodes in the same
promised epoch that, with itself, make a quorum. An echo proves the peer heard *our*
heartbeat number ``n``; the support it gives lasts ``lease_time`` from when we *sent* ``n``
(never from when the echo arrived), so a slow network or a paused receiver can only shorten
a lease, never stretch it. A node cut off from the quorum therefore loses its lease within
``lease_time`` of the last heartbeat the others heard, and stops everything; the silence
fencer waits for exactly that (docs/protocol.md, "The lease").
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from vigil.cluster.quorum import Quorum
from vigil.cluster.wire import NO_EPOCH, Accepted, Bye, Echo, Epoch, Heartbeat, RequestRef
from vigil.config import ClusterConfig


@dataclass(slots=True)
class PeerInfo:
    """What the latest heartbeat of a peer said."""

    incarnation: int = 0
    hb: int = 0
    promised: Epoch = NO_EPOCH
    groups: Mapping[str, str] = field(default_factory=dict)  # active group -> local state
    failures: int = 0  # the peer's count of failures reported (see LocalGroups.failures)
    requests: tuple[RequestRef, ...] = ()
    received_at: float = -math.inf
    digest: str = ""  # of the configuration it runs
    next: str = ""  # of the configuration it staged ("" none)


class Heard(enum.Enum):
    """What a heartbeat changed."""

    NOTHING = "nothing"  # old, reordered, or from a previous life
    MISMATCH = "mismatch"  # another configuration: kept out
    UPDATED = "updated"
    NEW_LIFE = "new life"  # first heartbeat of a peer, or of its new incarnation
    RESTARTED = "restarted"  # a known peer's incarnation changed


class Membership:
    """Liveness and lease of one node. ``advance(now)`` moves its clock; every question is
    answered for that time."""

    def __init__(self, config: ClusterConfig, name: str, now: float) -> None:
        self.name = name
        self.timing = config.timing
        self.digest = config.digest
        self.next = ""  # the digest of the configuration staged here (vigil.cluster.reconfig)
        self.nodes = frozenset(config.nodes)
        self.quorum = Quorum({n: c.votes for n, c in config.nodes.items()},
                             two_node=config.two_node, wait_for_all=config.wait_for_all)
        self._one_vote_each = all(v == 1 for v in self.quorum.votes.values())
        self.now = now
        self.started = now
        self.last_heard: dict[str, float] = {}
        self.link_heard: dict[tuple[str, str], float] = {}
        self.peers: dict[str, PeerInfo] = {}
        self.seen_all = False
        self.mismatched: set[str] = set()
        #: what each node kept out runs and staged, and whether it is ahead of us in epoch,
        #: as last said (a change is news again)
        self.mismatch_digests: dict[str, tuple[str, str, bool]] = {}
        self.departed: dict[str, int] = {}  # node -> incarnation that said goodbye
        # heartbeats and lease
        self.hb_counter = 0
        self.next_hb = now
        self.hb_sent_at: dict[int, float] = {}
        self.support: dict[str, float] = {}  # peer -> until when its echo supports us
        # Liveness is asked many times per event and changes rarely: a node or link comes
        # back (heard after dead_time), falls silent (at a known time), or is kept out.
        self.changed = True  # since the last look_done(): something above may differ
        self._flip_at = math.inf  # the next time a node or link falls silent
        self._looked_at = -math.inf  # when look_done() last ran
        self._alive: tuple[float, frozenset[str]] | None = None

    # ---- questions -----------------------------------------------------------------------

    def alive(self) -> frozenset[str]:
        """Nodes heard within ``dead_time`` (and ourselves), minus config mismatches. Written
        ``now < heard + dead_time``, the very sum :meth:`deadlines` gives: ``now - heard <
        dead_time`` rounds otherwise, and a node could outlive its deadline by a rounding
        error, noticed only at the next event (a heartbeat a moment later, or one interval)."""
        if self._alive is not None and self._alive[0] == self.now and not self.changed:
            return self._alive[1]
        dead_time = self.timing.dead_time
        heard = {n for n, t in self.last_heard.items()
                 if self.now < t + dead_time and n not in self.mismatched
                 and n not in self.departed}
        alive = frozenset(heard | {self.name})
        self._alive = (self.now, alive)
        return alive

    def compatible(self, digest: str, staged: str) -> bool:
        """Whether a peer running ``digest`` (and staged ``staged``) belongs with us: it runs
        our configuration, or one of us runs what the other staged (a switch under way, or
        a node started with the file the cluster is about to switch to)."""
        return digest == self.digest or bool({digest, staged} & {self.digest, self.next}
                                             - {""})

    def unswitched(self) -> frozenset[str]:
        """Live peers that run another configuration than ours (compatible with it: see
        :meth:`compatible`): no master counts them in a view, since they would place the
        groups by another file, until they switch."""
        return frozenset(n for n in self.alive() if n in self.peers
                         and self.peers[n].digest != self.digest)

    def reconfigure(self, config: ClusterConfig) -> None:
        """Switch to ``config``: the nodes and the quorum are the same (reconfig refuses
        otherwise); the timings and the digest are the new ones."""
        self.timing = config.timing
        self.digest = config.digest
        self.next = ""
        self._touch()

    def _touch(self) -> None:
        self.changed = True
        self._alive = None

    def look_done(self) -> None:
        """Whoever watches for changes has looked: until a node or link comes back, is kept
        out, or the next one falls silent, the answers stay the same."""
        self.changed = False
        self._looked_at = self.now
        self._flip_at = self._next_silence(self.now)

    def _next_silence(self, since: float) -> float:
        dead_time = self.timing.dead_time
        return min((t + dead_time for t in (*self.last_heard.values(),
                                            *self.link_heard.values())
                    if t + dead_time > since), default=math.inf)

    def in_doubt(self) -> bool:
        """A node counted alive was last heard more than dead_time minus a heartbeat
        interval ago: it may be declared dead within a heartbeat interval."""
        limit = self.timing.dead_time - self.timing.heartbeat_interval
        return any(self.last_heard[n] + limit <= self.now for n in self.alive()
                   if n != self.name)

    def silent_for(self, node: str) -> float:
        """Seconds since ``node`` was last heard; for a node never heard in this life, this
        life's age (a previous life can only have heard it before this one began)."""
        return self.now - self.last_heard.get(node, self.started)

    def link_silent_for(self, node: str, link: str, now: float | None = None) -> float:
        """Seconds since ``node`` was last heard on ``link`` (at ``now``, default the core's
        time); infinite if never in this life."""
        return (self.now if now is None else now) - self.link_heard.get((node, link), -math.inf)

    def link_state(self) -> dict[str, dict[str, bool]]:
        """node -> link -> heard on that link within dead_time."""
        out: dict[str, dict[str, bool]] = {}
        for (node, link), t in self.link_heard.items():
            out.setdefault(node, {})[link] = self.now < t + self.timing.dead_time
        return out

    def quorate(self) -> bool:
        return self.quorum.quorate(self.alive(), seen_all=self.seen_all)

    def lease_until(self) -> float:
        """Until when a quorum (ourselves included) is known to support us."""
        return self._lease_at(self.now)

    def _lease_at(self, at: float) -> float:
        """:meth:`lease_until` as it is at time ``at`` with the support known now.

        It is the end of the support that completes a quorum counted from the longest, so
        a support that runs out before it changes nothing: only the lease's own end is a
        time at which it changes (:meth:`deadlines`)."""
        if self.quorum.quorate([self.name], seen_all=self.seen_all):
            return math.inf
        votes = self.quorum.votes
        weight = votes.get(self.name, 0)
        total = self.quorum.total
        if self._one_vote_each:  # the common case, asked at every heartbeat: no sort by key
            need = total // 2 + 1 - weight  # supporters whose echoes make a majority with us
            live = sorted((t for t in self.support.values() if t > at), reverse=True)
            return live[need - 1] if len(live) >= need else -math.inf
        for node, expiry in sorted(self.support.items(), key=lambda kv: -kv[1]):
            if expiry <= at:
                break
            weight += votes.get(node, 0)
            if 2 * weight > total:
                return expiry
        return -math.inf

    def lease_valid(self) -> bool:
        return self.lease_until() > self.now

    def lease_thin(self) -> bool:
        """Our lease needs the support of every live peer (one more loss and it is gone), or
        we are not quorate at all: our heartbeats then ask for an :class:`Echo` at once.

        An echo inside a heartbeat reaches us up to a heartbeat interval after the peer
        heard us, so each renewal is for a heartbeat up to ``heartbeat_interval + 2 x
        delay`` old and arrives up to an interval after the previous one: the lease may have
        only ``lease_time - 2 x heartbeat_interval`` left (100 ms at the defaults) before a
        renewal, which one late peer eats. With two supporters that slack rarely matters;
        with one it cost new holders their lease within a second of a takeover. Asking only
        then keeps a healthy cluster at one message per node per interval."""
        if self.quorum.quorate([self.name], seen_all=self.seen_all):
            return False
        alive = self.alive()
        votes = self.quorum.votes
        largest = max((votes.get(n, 0) for n in alive if n != self.name), default=0)
        return 2 * (self.quorum.weight(alive) - largest) <= self.quorum.total

    def on_echo(self, sender: str, echo: Echo, promised: Epoch, incarnation: int) -> None:
        """``sender`` answered our heartbeat at once: the support of an echo in a heartbeat,
        under the same conditions (same promised epoch, a heartbeat of this life that we
        still remember sending)."""
        if (echo.promised != promised or echo.incarnation != incarnation
                or sender in self.mismatched or sender in self.departed):
            return
        self._support(sender, echo.n)

    def _support(self, sender: str, mine: int) -> None:
        sent = self.hb_sent_at.get(mine)
        if sent is not None and sent + self.timing.lease_time > self.support.get(
                sender, -math.inf):
            self.support[sender] = sent + self.timing.lease_time

    def deadlines(self) -> list[float]:
        """Times at which an answer above may change (only the future ones matter): our
        next heartbeat, each node's silence, the lease's end. Not each peer's support
        running out: one that ends before the lease changes no answer (:meth:`_lease_at`),
        and in a calm 3-node cluster a node woke 97 times in 10 s, 70 without them."""
        dead_time = self.timing.dead_time
        lease = self.lease_until()
        return ([self.next_hb] + [h + dead_time for h in self.last_heard.values()]
                + ([lease] if math.isfinite(lease) else []))

    # ---- time and input --------------------------------------------------------------------

    def advance(self, now: float) -> None:
        if now > self.now:
            self.now = now
            self._alive = None
            if now >= self._flip_at:
                self._touch()
        if not self.seen_all and self.alive() == self.nodes:
            self.seen_all = True
            self._touch()
        for node in [n for n, t in self.support.items() if t <= self.now]:
            del self.support[node]
        horizon = self.now - self.timing.lease_time - self.timing.heartbeat_interval
        for n in [n for n, t in self.hb_sent_at.items() if t < horizon]:
            del self.hb_sent_at[n]

    def heard(self, sender: str, link: str) -> None:
        """Any message is proof of life: a node we can hear is not dead, whatever channel
        carried it (it also stops two would-be masters fighting over an asymmetric link)."""
        dead_time = self.timing.dead_time
        if self.last_heard.get(sender, -math.inf) + dead_time <= self.now:
            self._touch()
        self.last_heard[sender] = self.now
        if link:
            if self.link_heard.get((sender, link), -math.inf) + dead_time <= self.now:
                self._touch()
            self.link_heard[(sender, link)] = self.now

    def on_heartbeat(self, sender: str, hb: Heartbeat, promised: Epoch,
                     incarnation: int) -> Heard:
        """Record ``sender``'s heartbeat; ``promised`` is the epoch we promised (only echoes
        from a peer in the same epoch support our lease), ``incarnation`` our life (only
        echoes of its heartbeats do)."""
        if not self.compatible(hb.digest, hb.next):
            # news when it starts, and whenever the peer runs or stages another file or moves
            # ahead of us: the cluster may have switched to a file we have too, without us
            # (NodeCore re-reads ours then)
            seen = (hb.digest, hb.next, hb.promised > promised)
            new = self.mismatch_digests.get(sender) != seen
            self.mismatched.add(sender)
            self.mismatch_digests[sender] = seen
            self._touch()
            return Heard.MISMATCH if new else Heard.NOTHING
        if sender in self.mismatched:
            self.mismatched.discard(sender)
            del self.mismatch_digests[sender]
            self._touch()
        peer = self.peers.get(sender)
        what = Heard.UPDATED
        if peer is None or hb.incarnation != peer.incarnation:
            if peer is not None and hb.incarnation < peer.incarnation:
                return Heard.NOTHING  # a late heartbeat of a previous life
            what = Heard.RESTARTED if peer is not None else Heard.NEW_LIFE
            if self.departed.get(sender, hb.incarnation) != hb.incarnation:
                del self.departed[sender]
                self._touch()
            peer = self.peers[sender] = PeerInfo(incarnation=hb.incarnation)
        elif hb.n <= peer.hb:
            return Heard.NOTHING  # reordered: an older heartbeat says nothing new
        peer.hb = hb.n
        peer.promised = hb.promised
        peer.groups = hb.groups
        peer.failures = hb.failures
        peer.requests = hb.requests
        peer.received_at = self.now
        if (peer.digest, peer.next) != (hb.digest, hb.next):
            peer.digest, peer.next = hb.digest, hb.next
            self._touch()
        mine = hb.echo.get(self.name)
        if hb.promised == promised and mine is not None and mine[1] == incarnation:
            self._support(sender, mine[0])
        return what

    def running(self, digest: str) -> set[str]:
        """The nodes heard within dead_time whose last heartbeat said they run ``digest``,
        those kept out for it included (and ourselves, if we do)."""
        out = {self.name} if digest == self.digest else set()
        for n, t in self.last_heard.items():
            if self.now < t + self.timing.dead_time and n not in self.departed and (
                    self.mismatch_digests[n][0] == digest if n in self.mismatched
                    else n in self.peers and self.peers[n].digest == digest):
                out.add(n)
        return out

    def quiet(self, now: float) -> bool:
        """Nothing changed since the last look and no node or link falls silent by ``now``:
        every answer of this class is the same then, bar times.

        The silence the last look foresaw may have been put off by heartbeats since (on the
        short path, which does not look): then the look is brought up to date here, as the
        full path's would be (it would find nothing new: every node and link heard since
        the last look within dead_time is still heard), and it stays quiet."""
        if self.changed:
            return False
        if now < self._flip_at:
            return True
        # what fell silent by the last look was seen then; one silent since is news
        flip = self._next_silence(self._looked_at)
        if flip <= now:
            return False
        self._flip_at = flip
        return True

    def expiring(self, since: float, now: float) -> bool:
        """The lease ran out, or a node fell silent, after ``since`` and by ``now``: what
        only the full path may handle (liveness changes, or the lease is gone)."""
        dead_time = self.timing.dead_time
        return (since < self._lease_at(since) <= now
                or any(since < t + dead_time <= now for t in self.last_heard.values()))

    def routine(self, sender: str, link: str, now: float, hb: Heartbeat | None,
                echo: Echo | None, promised: Epoch, incarnation: int) -> bool:
        """Record a heartbeat (or an echo) that changes nothing but times, and say so (True);
        anything else (False) is left untouched for the full path. Routine means: a peer
        alive and not in doubt, heard on this link within dead_time, in the same life, in
        our epoch, with the same groups, failures, requests and configuration as its last
        heartbeat, and our lease valid (an echo can then only lengthen it). Then no answer of this
        class changes, bar times, and what the node decides from them cannot either. ``now``
        must be before every deadline this class gave (the caller's last deadline)."""
        t = self.timing
        if (sender in self.mismatched or sender in self.departed or not self.quiet(now)
                or self.last_heard.get(sender, -math.inf)
                + (t.dead_time - t.heartbeat_interval) <= now
                or (link and self.link_heard.get((sender, link), -math.inf) + t.dead_time
                    <= now)):
            return False
        peer = self.peers.get(sender)
        if hb is not None and (
                peer is None or hb.incarnation != peer.incarnation or hb.n <= peer.hb
                or hb.promised != peer.promised or hb.promised != promised
                or hb.failures != peer.failures
                or hb.digest != peer.digest or hb.next != peer.next
                or hb.groups != peer.groups or hb.requests != peer.requests):
            return False
        # lease_until() at our last time equals it at ``now`` unless the lease ends between
        # them (its end is a deadline, and a support that ends before it changes nothing)
        if self.lease_until() <= now:
            return False
        self.now = now
        self.last_heard[sender] = now
        if link:
            self.link_heard[(sender, link)] = now
        if hb is not None:
            assert peer is not None
            peer.hb, peer.received_at = hb.n, now
            mine = hb.echo.get(self.name)
            if hb.promised == promised and mine is not None and mine[1] == incarnation:
                self._support(sender, mine[0])
        elif echo is not None and echo.promised == promised and echo.incarnation == incarnation:
            self._support(sender, echo.n)
        return True

    def on_bye(self, sender: str, bye: Bye) -> bool:
        """A peer left cleanly (True), unless the goodbye is from a previous life or was
        heard already (a guardian repeats it)."""
        peer = self.peers.get(sender)
        if peer is not None and peer.incarnation != bye.incarnation:
            return False
        if self.departed.get(sender) == bye.incarnation:
            return False
        self.departed[sender] = bye.incarnation
        self._touch()
        self.support.pop(sender, None)
        return True

    def in_view(self, view: tuple[str, ...]) -> None:
        """We promised an epoch whose view has these nodes: whatever goodbye we heard from
        one of them is of a life that is over (its new life may be one we never heard,
        over a link that fails one way), and must not exempt it from fencing later."""
        for node in view:
            if self.departed.pop(node, None) is not None:
                self._touch()

    # ---- output -------------------------------------------------------------------------

    def heartbeat_due(self) -> bool:
        return self.now >= self.next_hb

    def heartbeat(self, *, incarnation: int, promised: Epoch, accepted: Accepted, closed: bool,
                  groups: Mapping[str, str], failures: int,
                  requests: tuple[RequestRef, ...]) -> Heartbeat:
        self.hb_counter += 1
        self.hb_sent_at[self.hb_counter] = self.now
        self.next_hb = self.now + self.timing.heartbeat_interval
        echo = {n: (self.peers[n].hb, self.peers[n].incarnation) for n in self.alive()
                if n != self.name and n in self.peers}
        return Heartbeat(n=self.hb_counter, incarnation=incarnation, promised=promised,
                         accepted=accepted.epoch, closed=closed, echo=echo, groups=groups,
                         failures=failures, digest=self.digest, requests=requests,
                         ask=self.lease_thin(), next=self.next)
