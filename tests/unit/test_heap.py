"""The garbage-collector tuning the ingest and worker processes apply once they are ready."""

from __future__ import annotations

import gc

from propagator.heap import YOUNG_THRESHOLD, freeze_startup_heap


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    threshold = gc.get_threshold()
    try:
        survivor = [object() for _ in range(100)]  # alive now: it must end up frozen
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count()
        assert frozen >= len(survivor)
        assert YOUNG_THRESHOLD == gc.get_threshold()[0]
        assert threshold[1:] == gc.get_threshold()[1:]
        assert not any(obj is survivor for obj in gc.get_objects())  # out of the collector's sight
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
