"""What a core says: every decision in words (Patroni's habit) and as a typed notification.

The core's parts write here instead of returning notes up the call chain; the core hands the
notifications of one ``handle()`` call out with its :class:`~vigil.cluster.events.Output`.
Times are the core's clock (the shell's ``time.monotonic()``); the shell turns them into wall
clock time before anyone outside the daemon sees them.
"""

from __future__ import annotations

from vigil.notifications import Decision, Notification


class Journal:
    def __init__(self, node: str, now: float) -> None:
        self.node = node
        self.now = now
        self.decisions: list[tuple[float, str]] = []  # (core time, why): the last 200
        self.pending: list[Notification] = []  # of the current handle() call

    def note(self, topic: str, text: str, **fields: str) -> None:
        """A decision without a notification type of its own."""
        self.emit(Decision(node=self.node, time=self.now, text=text, topic=topic,
                           fields=tuple(sorted(fields.items()))))

    def warn(self, topic: str, text: str, **fields: str) -> None:
        """A decision an operator should act on (logged as a warning)."""
        self.emit(Decision(node=self.node, time=self.now, text=text, topic=topic,
                           fields=tuple(sorted(fields.items())), severity="warning"))

    def emit(self, notification: Notification) -> None:
        self.decisions.append((self.now, notification.text))
        del self.decisions[:-200]
        self.pending.append(notification)

    def take(self) -> list[Notification]:
        out, self.pending = self.pending, []
        return out
