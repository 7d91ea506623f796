"""A checkpoint's recorded sha256 is looked up in its own manifest entry only: another entry this
code would not accept (a manifest edited or written by another tool) must not stop using it."""
import json

import pytest

from common.rundir import RunFileCorrupt
from worker.training.checkpoints import manifest_sha256


def test_the_named_entry_is_read_and_the_others_are_not_validated(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"checkpoints": [
        {"name": "best.pt", "sha256": "ab" * 32}, {"name": "epoch_0001.pt"}, "not an entry"]}))
    assert manifest_sha256(tmp_path / "best.pt") == "ab" * 32
    assert manifest_sha256(tmp_path / "epoch_0001.pt") is None  # recorded without a digest
    assert manifest_sha256(tmp_path / "last.pt") is None        # not recorded


def test_no_manifest_is_no_digest_and_a_damaged_one_is_an_error(tmp_path):
    assert manifest_sha256(tmp_path / "best.pt") is None
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RunFileCorrupt, match="manifest.json"):
        manifest_sha256(tmp_path / "best.pt")
