"""The garbage collector's settings (gc_policy.py): what `tune` changes, and that every
collection's time reaches the metric."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap

from prometheus_client import generate_latest

from ftoperator import gc_policy
from ftoperator.observability import Metrics


def test_tune_freezes_what_is_loaded_and_collects_the_young_generation_less_often() -> None:
    # In a child: freezing and the thresholds are the whole process's.
    script = textwrap.dedent("""
        import gc, json
        import ftoperator.main  # everything the operator imports
        from ftoperator import gc_policy
        before = gc.get_threshold()
        gc_policy.tune()
        print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count(),
                          len(gc.get_objects())]))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after, frozen, left = json.loads(run.stdout)
    # CPython's own: if they change, gc_policy's reasoning must be measured again.
    assert tuple(before) == (700, 10, 10)
    assert tuple(after) == (gc_policy.YOUNG, gc_policy.MIDDLE, gc_policy.OLDEST) == (10_000, 10, 10)
    # The imports' objects (about 88,000: kubernetes' models, kopf, pydantic's schemas) are
    # frozen: a full collection no longer visits them.
    assert frozen > 50_000 and left < 1_000, (frozen, left)


def test_every_collection_is_recorded_with_its_generation_and_time() -> None:
    seen: list[tuple[int, float]] = []
    callback = gc_policy.observe(lambda generation, seconds: seen.append((generation, seconds)))
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        gc.callbacks.remove(callback)
    assert [generation for generation, _ in seen] == [2, 0]
    assert all(seconds >= 0 for _, seconds in seen)
    assert seen[0][1] > 0  # a full collection of this process takes measurable time


def test_the_metric_adds_the_seconds_by_generation() -> None:
    metrics = Metrics()
    # Each generation's series exists before its first collection (a rate over a window
    # that begins at 0 needs the 0).
    assert 'finetune_operator_gc_seconds_total{generation="1"} 0.0' in (
        generate_latest(metrics.registry).decode()
    )
    metrics.observe_gc(2, 0.25)
    metrics.observe_gc(2, 0.5)
    metrics.observe_gc(0, 0.001)
    text = generate_latest(metrics.registry).decode()
    assert 'finetune_operator_gc_seconds_total{generation="2"} 0.75' in text
    assert 'finetune_operator_gc_seconds_total{generation="0"} 0.001' in text
