"""A worker's devices: what it reports with its beat (``worker_beats.devices``), how that reads
("2 × NVIDIA H100 80GB", "CPU (16 cores)"), and the GPUs a job asks for.

The worker probes once at start, in a subprocess (``python -c``, the training interpreter), so
that a broken CUDA driver that hangs or crashes ``import torch`` / CUDA initialisation costs a
timeout and an error in the report, never the worker itself; and so that CUDA is never
initialised in the worker's own process (worker/supervisor.py). A failed probe reports 0 GPUs
and the error: such a worker takes no job that asks for GPUs.

``TEACHER_FAKE_DEVICES`` is test-only (like common/faults.py's ``TEACHER_FAULT``): a JSON
report that replaces the probe, e.g. ``{"gpus": [{"name": "Fake H100", "memory_mb": 81559}]}``,
so that system tests on a CPU host can run a worker that claims 2 GPUs. Never set it in a
deployment: a worker then believes in GPUs it does not have (its jobs fail for lack of CUDA).

Torch-free: the API, the doctor and the worker's parent process import it.
"""
from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

FAKE_ENV = "TEACHER_FAKE_DEVICES"
PROBE_TIMEOUT_S = 60.0  # a cold `import torch` + CUDA init on a loaded host; a hung driver stops here

# Prints one JSON line; every failure is reported in it, never raised (exit 0).
PROBE = r"""
import json
out = {"gpus": []}
try:
    import torch
    out["torch"] = torch.__version__
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"name": p.name, "memory_mb": int(p.total_memory) // (1 << 20)})
    out["gpus"] = gpus
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


class DevicesError(ValueError):
    """A device report that is not one (bad TEACHER_FAKE_DEVICES, garbled probe output)."""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mb: int


@dataclass(frozen=True)
class Devices:
    """What one worker host offers: its GPUs (none on a CPU host), its CPU cores, and why the
    probe failed, if it did (then ``gpus`` is empty)."""

    gpus: tuple[Gpu, ...] = ()
    cpus: int = 1
    error: str | None = None
    source: str = "probe"  # or FAKE_ENV: a test's stand-in, shown as such

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def to_json(self) -> dict[str, Any]:
        return {"gpus": [{"name": g.name, "memory_mb": g.memory_mb} for g in self.gpus], "cpus": self.cpus,
                "error": self.error, "source": self.source}

    @classmethod
    def from_json(cls, raw: Any, *, cpus: int | None = None, source: str = "probe") -> "Devices":
        """From a stored or reported mapping; ``cpus``/``source`` fill in what it lacks.
        DevicesError for anything else."""
        if not isinstance(raw, Mapping):
            raise DevicesError(f"a device report must be a JSON object, got {type(raw).__name__}")
        gpus_raw = raw.get("gpus", [])
        if not isinstance(gpus_raw, list):
            raise DevicesError("'gpus' must be a list of {name, memory_mb}")
        gpus = []
        for g in gpus_raw:
            if not (isinstance(g, Mapping) and isinstance(g.get("name"), str)
                    and isinstance(g.get("memory_mb", 0), int) and not isinstance(g.get("memory_mb", 0), bool)):
                raise DevicesError(f"each GPU must be {{\"name\": str, \"memory_mb\": int}}, got {g!r}")
            gpus.append(Gpu(g["name"], int(g.get("memory_mb", 0))))
        n_cpus = raw.get("cpus", cpus if cpus is not None else 1)
        if not isinstance(n_cpus, int) or isinstance(n_cpus, bool) or n_cpus < 0:
            raise DevicesError(f"'cpus' must be a non-negative integer, got {n_cpus!r}")
        error = raw.get("error")
        return cls(tuple(gpus), n_cpus, str(error) if error else None, str(raw.get("source") or source))


def host_cpus() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def parse_probe(stdout: str, returncode: int, stderr: str = "", *, cpus: int) -> Devices:
    """The probe's report from its output; a probe that printed no report (crashed, killed by a
    signal in the driver) is 0 GPUs and the reason."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    try:
        report = json.loads(lines[-1])
        return Devices.from_json(report, cpus=cpus)
    except (IndexError, ValueError):
        tail = (stderr.strip().splitlines() or ["no output"])[-1][:300]
        return Devices(cpus=cpus, error=f"device probe failed (exit {returncode}): {tail}")


def fake_devices(env: Mapping[str, str]) -> Devices | None:
    """The test-only report of TEACHER_FAKE_DEVICES, or None when unset. A bad value raises
    (DevicesError): a test that set it wants to know at once."""
    raw = env.get(FAKE_ENV)
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise DevicesError(f"{FAKE_ENV} is not JSON: {exc}") from None
    try:
        return Devices.from_json(parsed, cpus=host_cpus(), source=FAKE_ENV)
    except DevicesError as exc:
        raise DevicesError(f"{FAKE_ENV}: {exc}") from None


def probe(python: str, timeout: float = PROBE_TIMEOUT_S, env: Mapping[str, str] | None = None) -> Devices:
    """This host's devices as ``python`` (the training interpreter) sees them, or the fake
    report of TEACHER_FAKE_DEVICES. Never hangs past ``timeout`` and never raises for a probe
    that fails (only for a bad fake)."""
    env = os.environ if env is None else env
    fake = fake_devices(env)
    if fake is not None:
        return fake
    cpus = host_cpus()
    try:
        proc = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=dict(env))
    except subprocess.TimeoutExpired:
        return Devices(cpus=cpus, error=f"device probe did not finish within {timeout:g}s (a hung CUDA driver?)")
    except OSError as exc:
        return Devices(cpus=cpus, error=f"cannot run {python} for the device probe: {exc}")
    return parse_probe(proc.stdout, proc.returncode, proc.stderr, cpus=cpus)


def describe(devices: Devices) -> str:
    """One line: "2 × NVIDIA H100 80GB" (mixed models: "1 × A, 1 × B"), "CPU (16 cores)"."""
    if not devices.gpus:
        return f"CPU ({devices.cpus} core{'' if devices.cpus == 1 else 's'})"
    counts = Counter(g.name for g in devices.gpus)
    return ", ".join(f"{n} × {name}" for name, n in counts.items())


def stored(raw: Any) -> Devices | None:
    """A beat's ``devices`` column as Devices; None when the worker did not report (an older
    worker) or the value is unreadable."""
    if raw is None:
        return None
    try:
        return Devices.from_json(raw)
    except DevicesError:
        return None


def gpus_asked(config: Mapping[str, Any]) -> int | None:
    """``resources.gpus`` of a (validated) job config; None: not set (one process, on the
    worker's GPU if it has one). A job stored before the resources section has none."""
    resources = config.get("resources")
    gpus = resources.get("gpus") if isinstance(resources, Mapping) else None
    return gpus if isinstance(gpus, int) and not isinstance(gpus, bool) else None


__all__ = ["Devices", "DevicesError", "Gpu", "FAKE_ENV", "PROBE", "PROBE_TIMEOUT_S", "describe", "fake_devices",
           "gpus_asked", "host_cpus", "parse_probe", "probe", "stored"]
