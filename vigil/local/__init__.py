"""This node's local interfaces without the actor system: who may use them
(:mod:`vigil.local.access`), the client side of the control socket
(:mod:`vigil.local.protocol`), and the daemon's side of both sockets, bounded whatever
clients do: their limits (:mod:`vigil.local.limits`), one thread serving every connection
of a socket (:mod:`vigil.local.server`), the event socket's ZMTP (:mod:`vigil.local.zmtp`).
The CLI, /ha and :mod:`vigil.api` use these and never import Pykka; the daemon's socket
actors apply the same rules."""
