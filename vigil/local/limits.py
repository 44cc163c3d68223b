"""Every limit of this node's local sockets, in one place (documented in docs/security.md,
"The local sockets"). Each one bounds what one local user, however hostile, can make the
daemon spend: threads, descriptors, memory, log lines. None of them is reached by the CLI,
/ha, :mod:`vigil.api` or a well-behaved script.

Memory they allow the daemon to hold for clients, at most (kernel socket buffers aside):

* control socket: ``CONTROL_CONNECTIONS * MAX_REQUEST`` of requests being read (4 MiB) plus
  the answers being written (one status tree each);
* event socket: ``EVENT_CONNECTIONS * EVENT_BACKLOG`` of notifications waiting for their
  readers (64 MiB; one reader that never reads holds at most ``EVENT_BACKLOG``, 2 MiB).
"""

from __future__ import annotations

from typing import Final

# ---- both sockets ----------------------------------------------------------------------

#: Connections of root held back from the others: however many users fill a socket, root
#: (``vigil status`` run by an operator, /ha) still gets in.
ROOT_RESERVED: Final = 8

#: Connections the kernel queues until the daemon's thread accepts them (it accepts at once,
#: and refuses the excess at once).
LISTEN_BACKLOG: Final = 128

#: Refusal and drop warnings a socket logs per :data:`LOG_INTERVAL` seconds; the rest are
#: counted and the count said ("... (N more suppressed)").
LOG_BURST: Final = 5
LOG_INTERVAL: Final = 10.0

# ---- the control socket ----------------------------------------------------------------

#: Connections open at once, in total (root's reserve included) and per user other than root.
CONTROL_CONNECTIONS: Final = 64
CONTROL_CONNECTIONS_PER_UID: Final = 8
#: Threads that answer requests (asking the coordinator; a diagnosis waits for its agent).
#: Reading and writing is one thread's for every connection.
CONTROL_WORKERS: Final = 8
#: Seconds from connect until the whole request line is in (one deadline for the request,
#: not per read: a client trickling a byte at a time is cut off); also the clients' default
#: wait for an answer.
REQUEST_TIMEOUT: Final = 10.0
#: Seconds a client has to take its whole answer once it is ready.
ANSWER_TIMEOUT: Final = 10.0
#: The longest request line, newline included, checked before parsing.
MAX_REQUEST: Final = 64 * 1024
#: The deepest nesting of JSON arrays and objects in a request (a request uses 2), checked
#: before parsing.
MAX_JSON_DEPTH: Final = 8

# ---- the event socket ------------------------------------------------------------------

#: Subscribers connected at once, in total (root's reserve included) and per user other
#: than root.
EVENT_CONNECTIONS: Final = 32
EVENT_CONNECTIONS_PER_UID: Final = 8
#: Seconds a subscriber has, from connect, to complete the ZMTP handshake.
HANDSHAKE_TIMEOUT: Final = 10.0
#: The largest frame a subscriber may send (greeting properties, subscriptions); a larger
#: one, or one declared larger, disconnects it before its body is read.
MAX_SUBSCRIBER_FRAME: Final = 1024
#: Subscriptions one subscriber may hold (Vigil's clients hold one: everything).
MAX_SUBSCRIPTIONS: Final = 16
#: The largest notification sent; a larger one goes out with its text shortened.
MAX_EVENT_MESSAGE: Final = 64 * 1024
#: Notifications, and bytes, waiting for one subscriber; past either, that subscriber's
#: notifications are dropped (it sees the gap as ``Missed``) and the daemon logs it.
SEND_HWM: Final = 10_000
EVENT_BACKLOG: Final = 2 * 1024 * 1024
