"""Wall time per pipeline stage: where a run's time goes (report.json "stages"; report.py renders it).

A stage is named "group" or "group: what" (e.g. "compile: openvino-int8"); the report sums each group in its one
line. pipeline.run puts all of its work inside stages, so they add up to the run's wall time.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class Stages:
    """Seconds per stage in the order the stages first ran; a stage timed again adds to its time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        """Time the block under `name`, also when it raises (a failed peer's time was spent too)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> float:
        return sum(self.seconds.values())

    def to_list(self) -> list[dict]:
        return [{"stage": name, "seconds": round(s, 2)} for name, s in self.seconds.items()]
