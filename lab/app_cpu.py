"""The CPU time an app server has used: its master, its workers and the workers it reaped.

    before = process_tree_cpu_seconds(master_pid)
    ...                                            # a measured run
    (process_tree_cpu_seconds(master_pid) - before) / requests    # app CPU per request

User + system time of every thread of the master and of its live children, plus what the
master's reaped children used (``/proc/<pid>/stat``'s cutime/cstime, psutil's
``children_user``/``children_system``): a worker recycled during a run still counts. The
load generator and nginx are other processes and are not counted, so the figure is what
serving the requests cost the app, however busy the rest of the machine is.
"""

from __future__ import annotations

import psutil


def process_tree_cpu_seconds(master_pid: int) -> float:
    """CPU seconds used so far by ``master_pid`` and its children, live or reaped."""
    master = psutil.Process(master_pid)
    times = master.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in master.children():
        try:
            child_times = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # reaped meanwhile: the master's children_* hold it (or will)
        total += child_times.user + child_times.system
    return total
