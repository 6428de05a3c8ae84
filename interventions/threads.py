"""How many CPU threads torch uses: a default that does not oversubscribe a shared machine.

torch starts one intra-op thread per core whatever else runs. When other processes already keep those cores busy,
the threads of each parallel region wait for one another while the scheduler runs someone else (OpenMP
spin-waiting): on a 2-core machine one SmolLM2 forward went from 0.39 s to 5.6 s when another job ran two torch
threads beside it. So the first time a process loads a model for the CPU
(:meth:`lmscope.interventions.model.HookedModel.from_pretrained`, and so every CLI command), lmscope sets torch to
at most the cores that other processes leave free (measured over 0.1 s, at least 1), never more than torch's own
count, and says so in one line on stderr when that is fewer. The thread count changes only the order of float
sums (results agree to float rounding), never what is computed.

Choosing it yourself, in order of precedence: ``torch.set_num_threads(n)`` (after importing lmscope: before or after
loading), or ``--threads N`` on the command line; ``LMSCOPE_THREADS=N`` (that many threads) or
``LMSCOPE_THREADS=torch`` (torch's own choice, untouched); ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (torch already
follows them, so lmscope leaves it alone).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import torch

from .errors import InputError

#: Environment variable: a number of threads, or ``torch`` to leave torch's own choice.
ENV = "LMSCOPE_THREADS"
#: Variables torch itself reads for its thread count: when one is set, lmscope keeps out.
TORCH_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Seconds over which the other processes' CPU use is measured.
WINDOW = 0.1

_lock = threading.Lock()
_chosen = False
#: torch's count when lmscope was imported: a different count at the first load is the user's own choice.
_at_import = torch.get_num_threads()


def usable_cores() -> int:
    """CPUs this process may run on: its affinity set, capped by a cgroup CPU quota (a container's ``cpu.max``)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _machine_ticks() -> tuple[int, int, int]:
    """``(busy, total, cpus)`` of ``/proc/stat``: busy and all clock ticks of every CPU so far, and the CPU count."""
    lines = Path("/proc/stat").read_text().splitlines()
    fields = [int(x) for x in lines[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    cpus = sum(1 for line in lines[1:] if line.startswith("cpu"))
    return busy, busy + idle + iowait, max(1, cpus)


def _own_ticks() -> int:
    """Clock ticks this process has used (user + system, all its threads), from ``/proc/self/stat``."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def busy_cores(window: float = WINDOW) -> tuple[float, int]:
    """``(busy, cpus)``: how many of the machine's ``cpus`` other processes kept busy over ``window`` seconds (this
    process's own use left out). ``(0.0, usable_cores())`` where ``/proc`` cannot be read (not Linux)."""
    try:
        busy0, total0, cpus = _machine_ticks()
        own0 = _own_ticks()
        time.sleep(window)
        busy1, total1, _ = _machine_ticks()
        own1 = _own_ticks()
    except (OSError, ValueError, IndexError):
        return 0.0, usable_cores()
    total = total1 - total0
    if total <= 0:
        return 0.0, cpus
    return max(0.0, (busy1 - busy0 - (own1 - own0)) / total * cpus), cpus


def default_threads() -> tuple[int, str]:
    """``(threads, why)``: lmscope's choice for this process now (see the module docstring for the rules)."""
    current = torch.get_num_threads()
    value = os.environ.get(ENV, "").strip()
    if value:
        if value.lower() == "torch":
            return current, f"{ENV}=torch"
        if not value.isdigit() or int(value) < 1:
            raise InputError(f"{ENV} must be a number of threads (1 or more) or 'torch' (torch's own choice), "
                             f"got {value!r}.")
        return int(value), f"{ENV}={value}"
    given = [v for v in TORCH_ENVS if os.environ.get(v, "").strip()]
    if given:
        return current, f"{given[0]} is set"
    if current != _at_import:
        return current, "torch.set_num_threads was called"
    busy, cpus = busy_cores()
    free = int(cpus - busy + 0.5)
    return max(1, min(current, usable_cores(), free)), f"other processes keep {busy:.1f} of the {cpus} cores busy"


def apply_default_threads() -> int:
    """Set torch's thread count to :func:`default_threads` once per process (later calls, and calls after
    :func:`use_threads`, change nothing); returns the count in use. One line on stderr when it lowers torch's."""
    global _chosen
    with _lock:
        if _chosen:
            return torch.get_num_threads()
        before = torch.get_num_threads()
        n, why = default_threads()  # a bad LMSCOPE_THREADS raises here, and again at the next load
        _chosen = True
        if n != before:
            torch.set_num_threads(n)
        if n < before and not os.environ.get(ENV, "").strip():
            print(f"lmscope: using {n} torch thread{'s' if n > 1 else ''}, not {before}: {why}, and more threads "
                  "than free cores slow every forward down many times over. LMSCOPE_THREADS=N (or "
                  "torch.set_num_threads(N) after loading; --threads N on the command line) chooses.",
                  file=sys.stderr, flush=True)
        return n


def use_threads(n: int) -> None:
    """Use ``n`` torch threads from now on (``--threads``); lmscope's default then stays out for this process."""
    global _chosen
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"The number of torch threads (--threads N, LMSCOPE_THREADS=N) must be at least 1, got {n!r}.")
    with _lock:
        _chosen = True
        torch.set_num_threads(n)
