"""The SNN files convert writes for the bundled models (plain, --bsr --ssc, the SSC guard) are
bit for bit the recorded ones (tests/snn_hashes.py)."""
import json

import pytest

import snn_hashes


@pytest.fixture(scope="module")
def record():
    rec = json.loads(snn_hashes.RECORD.read_text())
    if rec["cpu"] != snn_hashes.cpu_kind():
        pytest.skip(f"hashes recorded on a {rec['cpu']} CPU; this one is {snn_hashes.cpu_kind()} "
                    "(onnxruntime's convolutions sum in another order there)")
    return rec["hashes"]


@pytest.mark.parametrize("name", list(snn_hashes.CASES))
def test_snn_file_unchanged(name, record, tmp_path, monkeypatch):
    monkeypatch.chdir(snn_hashes.ROOT)
    assert snn_hashes.convert_hash(name, tmp_path) == record[name]


def test_hash_changes_with_the_file(tmp_path, monkeypatch):
    """The check can fail: another T gives another file."""
    monkeypatch.chdir(snn_hashes.ROOT)
    monkeypatch.setitem(snn_hashes.CASES, "other", [a if a != "8" else "7" for a in snn_hashes.CASES["vgg_T8"]])
    assert snn_hashes.convert_hash("other", tmp_path) != json.loads(snn_hashes.RECORD.read_text())["hashes"]["vgg_T8"]
