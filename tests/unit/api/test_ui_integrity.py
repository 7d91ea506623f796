"""The job page's integrity section, in process: rendered with the page (no script needed) and
served again by integrity.json for job.js to put in place while the job trains, with an ETag
that changes when an epoch finishes or the status changes (and only then). In a real browser,
with a real faulty run: tests/system/test_ui_keyboard.py."""
from __future__ import annotations

import re

from tests.support.ui import XSS, incident_history
from tests.unit.api.test_ui_pages import app, signed_in, submit_api  # noqa: F401  (app: the dashboard's fixture)


def integrity(client, job_id: str, etag: str | None = None):  # type: ignore[no-untyped-def]
    return client.get(f"/ui/jobs/{job_id}/integrity.json", headers={"If-None-Match": etag} if etag else {})


def test_integrity_json_needs_a_session_and_is_404_for_another_users_job(client, alice, bob):
    job_id = submit_api(client, alice)
    r = integrity(client, job_id)
    assert r.status_code == 401 and r.json["message"] == "signed out"  # a poll: no sign-in page in its place
    signed_in(client, bob)
    assert integrity(client, job_id).status_code == 404


def test_the_section_is_served_again_when_an_epoch_finishes_and_only_then(client, alice, settings):
    job_id = submit_api(client, alice)
    signed_in(client, alice)
    page = client.get(f"/ui/jobs/{job_id}").text
    etag = re.search(r'id="integrity" data-url="[^"]+"\s+data-etag="&#34;([0-9a-f]+)&#34;"', page).group(1)
    assert "Checked after the first finished epoch." in page
    before = integrity(client, job_id)
    assert before.status_code == 200 and before.headers["ETag"] == f'"{etag}"'  # the page's own ETag
    assert before.json["verdict"] is None and before.json["checks"] == [] and before.json["flags"] == []
    assert integrity(client, job_id, f'"{etag}"').status_code == 304  # nothing new: not analysed again

    incident_history(settings.jobs_root / job_id / "run")  # four epochs of the original incident
    after = integrity(client, job_id, f'"{etag}"')
    assert after.status_code == 200 and after.headers["ETag"] != before.headers["ETag"]
    body = after.json
    assert body["verdict"] == "fail" and body["last_epoch"] == 4
    assert {"id": "dead_metric", "status": "fail"} in body["checks"]
    assert {"id": "dead_metric", "status": "fail", "metric": "train.loss", "epochs": [1, 2, 3, 4]} in body["flags"]
    # the same HTML as a fresh render of the page: one template, with or without scripts
    fresh = client.get(f"/ui/jobs/{job_id}").text
    section = fresh.split('<div id="integrity-body">', 1)[1].split("</section>", 1)[0]
    assert body["html"].strip() in section
    assert re.search(r'<tr class="chk-fail"><td data-label="Check"><code>dead_metric</code>', body["html"])
    assert 'id="flag-note"' in body["flag_note_html"] and "dead_metric" in body["flag_note_html"]
    assert integrity(client, job_id, after.headers["ETag"]).status_code == 304


def test_a_status_change_serves_the_section_again(client, alice, settings):
    job_id = submit_api(client, alice)
    incident_history(settings.jobs_root / job_id / "run")
    signed_in(client, alice)
    page = client.get(f"/ui/jobs/{job_id}")
    first = integrity(client, job_id)
    from tests.support.ui import csrf_of

    client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": csrf_of(page.text)})
    again = integrity(client, job_id, first.headers["ETag"])
    assert again.status_code == 200 and again.json["finished"] is True


def test_the_sections_html_is_escaped(client, alice, monkeypatch):
    """Whatever a check's message or id says is text in the served HTML (Jinja's autoescape in
    render_template_string and in the imported macros)."""
    from api.ui import views

    report = {"verdict": "fail", "last_epoch": 1, "counts": {"fail": 1},
              "checks": [{"id": XSS, "status": "fail", "message": XSS, "metric": "train.loss", "epochs": [1], "values": [0.0]}]}
    monkeypatch.setattr(views, "_report", lambda row, paths: report)
    job_id = submit_api(client, alice)
    signed_in(client, alice)
    body = integrity(client, job_id).json
    assert body["flags"] == [{"id": XSS, "status": "fail", "metric": "train.loss", "epochs": [1]}]
    for html in (body["html"], body["flag_note_html"]):
        assert "&lt;script&gt;" in html and "<script" not in html and "<img" not in html


def test_one_check_against_several_sources_is_one_mark_per_metric():
    from api.ui.present import flagged_points

    report = {"checks": [
        {"id": "cross_source", "status": "fail", "metric": "train.loss", "epochs": [1, 3]},  # vs steps.jsonl
        {"id": "cross_source", "status": "fail", "metric": "train.loss", "epochs": [2, 1]},  # vs the log
        {"id": "cross_source", "status": "fail", "metric": "train.top1", "epochs": [1]},
        {"id": "constant_series", "status": "warn", "metric": "val.loss", "epochs": [1, 2]},
        {"id": "nonfinite", "status": "pass", "metric": "train.loss", "epochs": [1]},  # passed: no mark
        {"id": "init_loss", "status": "fail", "metric": None, "epochs": [1]},  # no metric: nothing to mark
    ]}
    assert flagged_points(report) == [
        {"id": "cross_source", "status": "fail", "metric": "train.loss", "epochs": [1, 2, 3]},
        {"id": "cross_source", "status": "fail", "metric": "train.top1", "epochs": [1]},
        {"id": "constant_series", "status": "warn", "metric": "val.loss", "epochs": [1, 2]}]


def test_the_note_tells_marked_metrics_from_those_not_drawn(client, alice, monkeypatch):
    from api.ui import views

    report = {"verdict": "fail", "last_epoch": 1, "checks": [
        {"id": "dead_metric", "status": "fail", "message": "zeros", "metric": "train.loss", "epochs": [1], "values": [0.0]},
        {"id": "accuracy_range", "status": "fail", "message": "over 100", "metric": "train.top5", "epochs": [1], "values": [101.0]}]}
    monkeypatch.setattr(views, "_report", lambda row, paths: report)
    job_id = submit_api(client, alice)
    signed_in(client, alice)
    note = integrity(client, job_id).json["flag_note_html"]
    marked, _, other = note.partition("Flagged on metrics not drawn here:")
    assert "dead_metric" in marked and "accuracy_range" not in marked  # train.top5 has no curve on the page
    assert "accuracy_range" in other and "train.top5" in other
    assert note == client.get(f"/ui/jobs/{job_id}").text.split('<div id="flag-note-box">', 1)[1].split("</div>", 1)[0]
