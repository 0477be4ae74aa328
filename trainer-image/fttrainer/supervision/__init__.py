"""Watching the run from beside it, on every rank: a stalled process stopped with its stacks
(watchdog), non-finite losses caught before the optimizer applies them and loss spikes flagged
(divergence), each rank's own liveness and speed (ranks), and the faults the tests inject to
drive exactly these paths (faults)."""
