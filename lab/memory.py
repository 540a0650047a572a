"""What each worker of a server holds in memory: its resident set, and how much of it is its own.

    workers = worker_memory(master_pid)    # the master's children, after the load
    workers[0].private_bytes, workers[0].rss_bytes

*Private* is Private_Clean + Private_Dirty of ``/proc/<pid>/smaps_rollup`` (psutil's
``uss``, which it reads from there): the pages no other process maps. The rest of the RSS
is shared, with the master and the other workers: with the app loaded before the fork it is
the app's code and data, copy-on-write, until a worker writes to them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class WorkerMemory:
    pid: int
    rss_bytes: int
    #: Private_Clean + Private_Dirty: pages only this process maps.
    private_bytes: int

    @property
    def private_share(self) -> float:
        return self.private_bytes / self.rss_bytes if self.rss_bytes else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"private_share": self.private_share}


def worker_memory(master_pid: int) -> list[WorkerMemory]:
    """Each child of ``master_pid``'s memory, by pid; those that exit meanwhile are left out."""
    workers = []
    for child in psutil.Process(master_pid).children():
        try:
            info = child.memory_full_info()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        workers.append(WorkerMemory(child.pid, info.rss, info.uss))
    return sorted(workers, key=lambda worker: worker.pid)
