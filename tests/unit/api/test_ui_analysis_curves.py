"""An analysis's report page carries the job page's curves: the per-epoch series stored with
the analysis and the flagged points, as JSON data blocks (never run), and the loss/accuracy PNGs
as the fallback without scripts. In a real browser: tests/system/test_ui_browser.py."""
from __future__ import annotations

import html as htmllib
import io
import json
import re

from tests.unit.api.test_ui_pages import _incident_file, _upload, app, signed_in  # noqa: F401 - app: a fixture

FORM = {"num_classes": "12", "mixup": "", "ema": "", "pretrained": "", "accuracy_unit": "", "label_smoothing": "",
        "pattern": ""}


def data_block(page: str, block_id: str) -> object:
    match = re.search(rf'<script type="application/json" id="{block_id}">(.*?)</script>', page, re.S)
    assert match, page[:2000]
    return json.loads(htmllib.unescape(match.group(1)))


def upload_incident(client, tmp_path) -> str:  # type: ignore[no-untyped-def]
    r = _upload(client, {**FORM, "files": (io.BytesIO(_incident_file(tmp_path)), "history.json")})
    assert r.status_code == 302, r.text
    return r.headers["Location"].rsplit("/", 1)[1]


def test_the_report_page_carries_one_point_per_epoch_and_the_flagged_epochs(client, alice, tmp_path):
    signed_in(client, alice)
    analysis_id = upload_incident(client, tmp_path)
    page = client.get(f"/ui/analyses/{analysis_id}").text
    series = data_block(page, "analysis-series")
    assert [e["epoch"] for e in series] == [1, 2, 3, 4]
    assert [e["train"]["loss"] for e in series] == [0.0] * 4  # the incident: train loss 0.0 throughout
    assert [e["val"]["loss"] for e in series] == [9.5393] * 4
    flags = data_block(page, "analysis-flags")
    assert {"id": "dead_metric", "status": "fail", "metric": "train.loss", "epochs": [1, 2, 3, 4]} in flags
    for script in ("vendor/uplot/uPlot.iife.min.js", "curves.js", "analysis.js"):
        assert f'src="/ui/static/{script}"' in page
    # with scripts the curves replace the loss and accuracy PNGs; the others stay
    assert re.search(r'plots/loss\.png"[^>]*class="fallback"', page)
    assert re.search(r'plots/lr\.png"[^>]*>', page) and not re.search(r'plots/lr\.png"[^>]*class="fallback"', page)


def test_an_analysis_without_stored_series_shows_the_pngs_only(app, client, alice, tmp_path):  # noqa: F811
    from common.analysis.service import SERIES
    from common.analysis.uploads import OUT

    signed_in(client, alice)
    analysis_id = upload_incident(client, tmp_path)
    folder = next(app.extensions["teacher"].settings.analyses_dir.glob(f"*/{analysis_id}"))
    (folder / OUT / SERIES).unlink()  # as an analysis made before the series were stored
    page = client.get(f"/ui/analyses/{analysis_id}").text
    assert 'id="analysis-series"' not in page and "analysis.js" not in page and 'class="fallback"' not in page
    assert "plots/loss.png" in page and "dead_metric" in page
