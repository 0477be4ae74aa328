"""The cyclic garbage collector's settings for a process whose heap is its watch caches.

CPython collects generation 0 whenever the tracked objects allocated since its last
collection, less those freed, exceed 700; every 10th of those also collects generation 1,
and every 10th of those is a full collection, which visits every tracked object (when a
quarter of the oldest generation is new). The operator's heap is mostly its informers'
caches (the JSON of every job's pods, Jobs and FineTuneJob as dicts and lists), and
every watch event replaces one object there. At CPython's thresholds the collector is a
real share of the operator's CPU at scale: full collections walk the whole cache, and the
young ones catch a pass's or a decoded event's objects in flight, which a moment later
reference counting would have freed, and promote them to be visited again in generation 1.
Hardly any of that memory is cyclic: decoded JSON is freed when the next event replaces it.

So, once the operator has imported everything:
- `gc.freeze()`: what the imports made (kubernetes' models, kopf, pydantic's schemas) is
  moved to the permanent generation and never visited again;
- generation 0 is collected after a net 10,000 allocations instead of 700: what a pass
  allocates and drops is freed before a collection sees it, and the older generations
  follow at CPython's ratios (10 and 10), so a full collection comes after 1,000,000.
  Short-lived cycles (exceptions' tracebacks, asyncio's and aiohttp's objects) are still
  collected, a little later.
Together they cut the collector's CPU several-fold, at the same peak RSS
(docs/results/history.md, "The garbage collector at 3000 jobs").

What the collector costs is the metric finetune_operator_gc_seconds_total{generation}.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

YOUNG = 10_000  # net allocations between two collections of generation 0 (CPython: 700)
MIDDLE, OLDEST = 10, 10  # CPython's own ratios for generations 1 and 2


def tune() -> None:
    """Apply the settings above. Call once, after the imports and before the caches fill."""
    gc.collect()  # what the imports left as garbage is not frozen with the rest
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLDEST)


def observe(record: Callable[[int, float], None]) -> Callable[[str, dict[str, Any]], None]:
    """Call `record(generation, seconds)` after every collection; returns the callback, for
    `gc.callbacks.remove`. The seconds are the CPU time of the thread that collected (a
    collection holds the GIL throughout): on a busy node its wall time also counts the
    moments the OS ran something else."""
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            record(int(info["generation"]), time.thread_time() - started[0])

    gc.callbacks.append(callback)
    return callback
