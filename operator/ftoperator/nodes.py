"""Which nodes the operator gives up on: their running attempts restart elsewhere (NodeLost).

A node is lost when it is deleted, or when it has been NotReady (or Unknown) for
`--node-lost-seconds`. Not at its first NotReady: a kubelet restart, a slow heartbeat or an
API server too busy to take one turns a node NotReady for seconds, and restarting every
attempt there would throw away their steps since the last checkpoint for nothing (as a
benchmark's late kwok heartbeats once made it do: docs/results/history.md).

Nor while most nodes are NotReady at once: then the trouble is the control plane's or the
network's, not the nodes', and the node lifecycle controller stops evicting for the same
reason (`--unhealthy-zone-threshold`, 0.55). Only deleted nodes count as lost meanwhile.
The grace still ends well before the lifecycle controller's own eviction of such pods
(`node.kubernetes.io/not-ready` and `unreachable`, tolerated 300 s by default), and before a
blocked collective's timeout would end the other ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNHEALTHY_SHARE = 0.55  # kube-controller-manager's --unhealthy-zone-threshold


@dataclass
class NodeHealth:
    lost_after: float = 60.0
    """Seconds a node must be NotReady before it counts as lost (`--node-lost-seconds`)."""
    ready: set[str] = field(default_factory=set)
    not_ready_since: dict[str, float] = field(default_factory=dict)
    """NotReady nodes, with the monotonic time they were first seen so."""
    gone: set[str] = field(default_factory=set)
    """Deleted nodes (lost at once); forgotten if one of that name comes back."""

    def observe(self, name: str, ready: bool | None, now: float) -> bool:
        """A node's event (`ready` None: deleted); whether its readiness changed."""
        before = self._state(name)
        self.ready.discard(name)
        if ready is None:
            self.not_ready_since.pop(name, None)
            self.gone.add(name)
        elif ready:
            self.not_ready_since.pop(name, None)
            self.gone.discard(name)
            self.ready.add(name)
        else:
            self.gone.discard(name)
            self.not_ready_since.setdefault(name, now)
        return self._state(name) != before

    def lost(self, now: float) -> frozenset[str]:
        if not self.not_ready_since or self.disrupted():
            return frozenset(self.gone)
        late = {n for n, since in self.not_ready_since.items() if now - since >= self.lost_after}
        return frozenset(self.gone | late)

    def disrupted(self) -> bool:
        """Most known nodes NotReady at once (at least two)."""
        down = len(self.not_ready_since)
        return down >= 2 and down >= UNHEALTHY_SHARE * (down + len(self.ready))

    def _state(self, name: str) -> str:
        if name in self.gone:
            return "gone"
        return "not-ready" if name in self.not_ready_since else "ready"
