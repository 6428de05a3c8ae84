"""Peak-RSS measurement shared by the benchmarks (Linux: /proc/self/status and clear_refs)."""

from __future__ import annotations

import gc
from typing import Callable


def rss_kb(field: str = "VmRSS") -> int:
    """A memory field of this process in KiB (``VmRSS`` now, ``VmHWM`` the high-water mark)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_mb(fn: Callable[[], object]) -> dict[str, float]:
    """Run ``fn`` once to warm up, then again; return the process peak RSS during the second call and
    its growth over the RSS just before it (MiB). The peak includes the loaded model."""
    fn()
    gc.collect()
    before = rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
        f.write("5")
    keep = fn()
    after = rss_kb("VmHWM")
    del keep
    return {"peak": after / 1024, "growth": (after - before) / 1024, "before": before / 1024}
