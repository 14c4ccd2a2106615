"""Machine information for the report header, and CPU steal over a run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

__all__ = ["CpuTimes", "machine_info"]

_LIBRARIES = ("netconn", "aioquic", "qh3", "websockets", "uvloop", "cryptography", "matplotlib")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str | None:
    if name == "netconn":
        import netconn

        return str(netconn.__version__)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model and cores, kernel, Python, OpenSSL and library versions, load."""
    import ssl

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "openssl": ssl.OPENSSL_VERSION,
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "argv": [os.path.basename(sys.executable), *sys.argv],
    }


class CpuTimes:
    """Aggregate CPU times from ``/proc/stat``, to report steal and busy share over a run."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> list[int]:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return []
        return [int(x) for x in fields]

    def summary(self) -> dict[str, float]:
        """Percent of CPU time since creation that was stolen, and that was busy."""
        end = self._read()
        if not end or not self._start:
            return {}
        delta = [b - a for a, b in zip(self._start, end, strict=False)]
        total = sum(delta[:8]) or 1
        idle = delta[3] + delta[4]
        steal = delta[7] if len(delta) > 7 else 0
        return {
            "steal_percent": round(100 * steal / total, 1),
            "busy_percent": round(100 * (total - idle) / total, 1),
        }
