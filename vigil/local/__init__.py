"""This node's local interfaces without the actor system: who may use them
(:mod:`vigil.local.access`) and the client side of the control socket
(:mod:`vigil.local.protocol`). The CLI, /ha and :mod:`vigil.api` use these and never import
Pykka; the daemon's socket actors apply the same rules."""
