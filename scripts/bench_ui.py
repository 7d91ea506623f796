"""Benchmark (not a test): the dashboard's server time with 1,000 jobs in the store (SQLite, in
process, no network): the jobs list page, its polled rows (200 and 304), a name filter, and the
job page's live view answered 304. Run from the project root: .venv/bin/python scripts/bench_ui.py
The issue's bar: the list renders in < 300 ms; a poll of an unchanged job is one cheap 304."""
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests.support from the project root

from api import create_app
from common.settings import Settings
from common.store import transaction
from common.store.jobs import create_job
from tests.support.api import mint, CFG
from tests.support.ui import csrf_of
from worker.training.synthetic import SyntheticSpec, make_dataset
d = pathlib.Path(tempfile.mkdtemp())
make_dataset(d/'data'/'synthetic', SyntheticSpec(num_classes=4, train_per_class=1, val_per_class=1))
s = Settings(database_url=f'sqlite:///{d}/t.db', jobs_root=d/'jobs', data_root=d/'data', state_root=d/'state')
app = create_app({'TEACHER_SETTINGS': s, 'TEACHER_ENQUEUE': lambda *a: None})
hdr = mint(app, 'alice')
from sqlalchemy import select
from common.store import User
svc = app.extensions['teacher']
with transaction(svc.sessions) as ss:
    u = ss.scalar(select(User).where(User.name == 'alice'))
    for i in range(1000):
        job = create_job(ss, user=u, config=dict(CFG, name=f'job-{i}'), name=f'job-{i}', queue='default', priority=5,
                         max_attempts=3, after_id=None, init_from=None, idempotency=None)
        job.progress = {"status": "running", "epoch": 2, "epochs": 6, "percent": 33.3, "eta_s": 120.0,
                        "latest": {"val.top1": 50.0}, "integrity": {"verdict": "warn", "failed": [], "warnings": ["x"]}}
c = app.test_client()
page = c.get('/ui/signin')
c.post('/ui/signin', data={'token': hdr['Authorization'].split()[1], 'csrf_token': csrf_of(page.text)})
for path in ('/ui/jobs', '/ui/jobs/rows', '/ui/jobs?name=job-99', '/ui/jobs?name=nomatch'):
    times = []
    for _ in range(15):
        t0 = time.perf_counter(); r = c.get(path); times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.status_code
    print(f"{path:28s} median {statistics.median(times):6.1f} ms  max {max(times):6.1f} ms")
r = c.get('/ui/jobs/rows'); etag = r.headers['ETag']
times = []
for _ in range(15):
    t0 = time.perf_counter(); r2 = c.get('/ui/jobs/rows', headers={'If-None-Match': etag}); times.append((time.perf_counter()-t0)*1000)
print(f"rows 304: {r2.status_code} median {statistics.median(times):.1f} ms")
jid = c.get('/ui/jobs').text.split('data-job="')[1].split('"')[0]
r = c.get(f'/ui/jobs/{jid}/live.json'); etag = r.headers['ETag']
times = []
for _ in range(30):
    t0 = time.perf_counter(); r2 = c.get(f'/ui/jobs/{jid}/live.json', headers={'If-None-Match': etag}); times.append((time.perf_counter()-t0)*1000)
print(f"live.json 304: {r2.status_code} median {statistics.median(times):.1f} ms")
