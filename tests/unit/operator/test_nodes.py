"""ftoperator.nodes: which nodes count as lost (their attempts restart, NodeLost)."""

from __future__ import annotations

from ftoperator.nodes import NodeHealth


def _cluster(ready: int, lost_after: float = 60.0) -> NodeHealth:
    health = NodeHealth(lost_after=lost_after)
    for i in range(ready):
        health.observe(f"n{i}", True, now=0.0)
    return health


def test_a_node_notready_is_lost_only_after_the_grace_and_a_deleted_one_at_once() -> None:
    health = _cluster(10)
    assert health.observe("n1", False, now=100.0)  # readiness changed
    assert not health.observe("n1", False, now=130.0)  # still NotReady: no change
    assert health.lost(now=159.9) == frozenset()
    assert health.lost(now=160.0) == {"n1"}  # since its first NotReady, not its last event
    assert health.observe("n2", None, now=161.0)  # deleted
    assert health.lost(now=161.0) == {"n1", "n2"}


def test_a_node_ready_again_within_the_grace_is_never_lost_and_starts_over() -> None:
    health = _cluster(10)
    health.observe("n1", False, now=100.0)
    assert health.observe("n1", True, now=150.0)
    assert health.lost(now=1000.0) == frozenset()
    health.observe("n1", False, now=1000.0)  # a new NotReady: a new grace
    assert health.lost(now=1059.0) == frozenset() and health.lost(now=1060.0) == {"n1"}
    # A deleted node whose name comes back Ready is a node again.
    health.observe("n3", None, now=1060.0)
    health.observe("n3", True, now=1061.0)
    assert health.lost(now=1061.0) == {"n1"}


def test_most_nodes_notready_at_once_is_the_control_planes_trouble_not_theirs() -> None:
    health = _cluster(10)
    for i in range(5):  # 5 of 10: below 55 %
        health.observe(f"n{i}", False, now=0.0)
    assert not health.disrupted() and len(health.lost(now=60.0)) == 5
    health.observe("n5", False, now=0.0)  # 6 of 10
    assert health.disrupted() and health.lost(now=600.0) == frozenset()
    health.observe("n9", None, now=600.0)  # deleted nodes are lost all the same
    assert health.lost(now=600.0) == {"n9"}
    for i in range(3):  # most come back: the ones still NotReady are lost, by their own time
        health.observe(f"n{i}", True, now=601.0)
    assert not health.disrupted()
    assert health.lost(now=601.0) == {"n3", "n4", "n5", "n9"}


def test_a_lone_node_notready_is_lost_but_two_of_two_are_a_disruption() -> None:
    lone = _cluster(1)
    lone.observe("n0", False, now=0.0)
    assert lone.lost(now=60.0) == {"n0"}  # one node down is not "most nodes" evidence
    pair = _cluster(2)
    pair.observe("n0", False, now=0.0)
    assert pair.lost(now=60.0) == {"n0"}  # 1 of 2
    pair.observe("n1", False, now=0.0)
    assert pair.lost(now=60.0) == frozenset()
