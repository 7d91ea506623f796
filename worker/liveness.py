"""Is a claimant ("host:pid", as a claim records it) a dead process of this host? Kept free of
Celery imports: the reconciler asks it on the path that re-sends a dead worker's job."""
from __future__ import annotations

import os
import socket
from pathlib import Path


def claimant_is_dead_here(worker: str | None) -> bool:
    """Whether ``worker`` ("host:pid", as the claim records it) is a process of this host that is
    gone (no such pid, or a zombie). False when it cannot tell: another host, or this process."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"  # exited, not yet reaped
