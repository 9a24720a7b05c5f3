"""Wall-clock timing shared by the benchmark scripts: the median of repeated runs after a warm-up call."""

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall seconds of `fn()` over `repeats` runs, after one untimed warm-up run (compiles, caches)."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)
