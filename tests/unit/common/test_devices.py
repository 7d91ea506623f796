"""common/devices.py: the probe's report and its failures, the test-only TEACHER_FAKE_DEVICES,
how a report reads, and the GPUs a config asks for. The real probe runs once (this host)."""
from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from common.devices import (FAKE_ENV, Devices, DevicesError, Gpu, describe, fake_devices, gpus_asked, parse_probe,
                            probe, stored)

H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559}


def test_a_gpu_report_parses_and_reads_as_a_count_of_each_model():
    out = "some warning\n" + json.dumps({"torch": "2.5.1", "gpus": [H100, H100]}) + "\n"
    devices = parse_probe(out, 0, cpus=16)
    assert devices == Devices((Gpu("NVIDIA H100 80GB HBM3", 81559),) * 2, cpus=16)
    assert devices.gpu_count == 2 and describe(devices) == "2 × NVIDIA H100 80GB HBM3"
    mixed = Devices((Gpu("A", 1), Gpu("B", 2), Gpu("A", 1)), cpus=8)
    assert describe(mixed) == "2 × A, 1 × B"


def test_a_cpu_host_reads_as_its_cores():
    devices = parse_probe(json.dumps({"gpus": []}), 0, cpus=16)
    assert devices.gpu_count == 0 and describe(devices) == "CPU (16 cores)"
    assert describe(Devices(cpus=1)) == "CPU (1 core)"


def test_a_probe_that_failed_reports_no_gpus_and_why():
    raised = parse_probe(json.dumps({"gpus": [], "error": "RuntimeError: CUDA driver initialization failed"}), 0, cpus=4)
    assert raised.gpu_count == 0 and raised.error == "RuntimeError: CUDA driver initialization failed"
    crashed = parse_probe("", -11, "loading libcuda\nSegmentation fault\n", cpus=4)
    assert crashed.gpu_count == 0 and crashed.error == "device probe failed (exit -11): Segmentation fault"
    garbled = parse_probe("{not json", 1, "", cpus=4)
    assert garbled.gpu_count == 0 and "device probe failed (exit 1): no output" == garbled.error


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_hung_probe_times_out_instead_of_hanging_the_worker(tmp_path):
    devices = probe(_script(tmp_path, "sleep 30\n"), timeout=0.5, env={})
    assert devices.gpu_count == 0 and devices.error == "device probe did not finish within 0.5s (a hung CUDA driver?)"
    missing = probe(str(tmp_path / "nope"), env={})
    assert missing.gpu_count == 0 and missing.error.startswith("cannot run ")


def test_the_real_probe_on_this_host():
    devices = probe(sys.executable, env={"PATH": "/usr/bin:/bin"})
    assert devices.error is None and devices.cpus >= 1 and devices.source == "probe"
    assert all(g.memory_mb > 0 for g in devices.gpus)


def test_fake_devices_replace_the_probe_and_say_so(tmp_path):
    env = {FAKE_ENV: json.dumps({"gpus": [{"name": "Fake H100", "memory_mb": 81559}] * 2})}
    devices = probe(_script(tmp_path, "exit 99\n"), env=env)  # the interpreter is never run
    assert devices.gpu_count == 2 and devices.source == FAKE_ENV and devices.error is None
    assert fake_devices({}) is None and fake_devices({FAKE_ENV: ""}) is None
    assert fake_devices({FAKE_ENV: '{"gpus": [], "cpus": 16}'}) == Devices(cpus=16, source=FAKE_ENV)


@pytest.mark.parametrize("raw, message", [
    ("{gpus", "is not JSON"),
    ("[]", "must be a JSON object"),
    ('{"gpus": 2}', "'gpus' must be a list"),
    ('{"gpus": [{"memory_mb": 1}]}', "each GPU must be"),
    ('{"gpus": [{"name": "x", "memory_mb": "80G"}]}', "each GPU must be"),
    ('{"gpus": [], "cpus": -1}', "'cpus' must be a non-negative integer"),
])
def test_a_bad_fake_is_refused_loudly(raw, message):
    with pytest.raises(DevicesError, match=message):
        fake_devices({FAKE_ENV: raw})


def test_stored_reports_round_trip_and_unreadable_ones_are_not_reported():
    devices = Devices((Gpu("X", 10),), cpus=3, error=None, source=FAKE_ENV)
    assert stored(devices.to_json()) == devices
    assert stored(None) is None and stored({"gpus": "two"}) is None and stored([1]) is None


def test_gpus_asked():
    assert gpus_asked({"resources": {"gpus": 4, "processes": 1}}) == 4
    assert gpus_asked({"resources": {"gpus": None, "processes": 2}}) is None
    assert gpus_asked({}) is None  # a job stored before the resources section
    assert gpus_asked({"resources": {"gpus": True}}) is None


def test_doctor_names_each_live_workers_devices_and_warns_for_a_failed_probe(tmp_path):
    import datetime as dt

    from common.apps.doctor import FAIL, OK, WARN, check_workers
    from common.store import WorkerBeat, make_engine, make_sessionmaker, transaction, upgrade, utcnow

    url = f"sqlite:///{tmp_path / 'teacher.db'}"
    engine = make_engine(url)
    upgrade(engine)
    broken = Devices(cpus=4, error="RuntimeError: CUDA driver initialization failed")
    with transaction(make_sessionmaker(engine)) as s:
        s.add(WorkerBeat(name="big:1", queues="gpu", seen_at=utcnow(), devices=Devices((Gpu("H100", 81559),) * 2, cpus=32).to_json()))
        s.add(WorkerBeat(name="fake:1", queues="gpu", seen_at=utcnow(), devices=Devices((Gpu("Fake H100", 1),), source=FAKE_ENV).to_json()))
        s.add(WorkerBeat(name="old:1", queues="gpu", seen_at=utcnow(), devices=None))
        s.add(WorkerBeat(name="broken:1", queues="default", seen_at=utcnow(), devices=broken.to_json()))
        s.add(WorkerBeat(name="gone:1", queues="default", seen_at=utcnow() - dt.timedelta(hours=1), devices=broken.to_json()))
    engine.dispose()
    checks = {c.check: (c.status, c.message) for c in check_workers(url, ["default", "gpu"], 10.0, 5.0)}
    assert checks["workers[gpu]"][0] == OK
    message = checks["workers[gpu]"][1]
    assert "big:1 (seen 0s ago; 2 × H100)" in message and "fake:1 (seen 0s ago; 1 × Fake H100 [TEACHER_FAKE_DEVICES])" in message
    assert "old:1 (seen 0s ago; devices not reported)" in message
    assert checks["workers[default]"] == (OK, "queue 'default': 1 live worker(s): broken:1 (seen 0s ago; CPU (4 cores))")
    status, message = checks["devices[broken:1]"]
    assert status == WARN and "device probe failed (RuntimeError: CUDA driver initialization failed)" in message
    assert "devices[gone:1]" not in checks and FAIL not in {s for s, _ in checks.values()}  # gone: not its business
