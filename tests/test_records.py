"""Action records are typed and versioned: a record this engine cannot read is a miss with a reason, never a crash."""
from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from conftest import copy_store, run_pipeline
from pipeline.store.records import ActionRecord, Records, RecordUnusable

DOC = {
    "stage": "compile", "pass": "compile_ort", "role": "model", "model": "tiny", "key": "k" * 64,
    "ingredients": {"pass": "compile_ort"}, "digest": "d" * 64, "materialized": True,
    "files": {"program.json": ["a" * 64, 10], "run.sh": ["b" * 64 + ".x", 5]}, "seconds": 0.5,
    "peak_rss_bytes": None, "created": "2025-01-01T00:00:00+0000", "result": {}, "why": "no earlier build",
}


def test_a_record_reads_back_as_it_was_written_with_its_version(tmp_path):
    rec = ActionRecord.from_json(DOC)  # no "version": written before records had one, read as 1
    assert rec.version == 1 and rec.pass_name == "compile_ort" and rec.files["run.sh"] == ("b" * 64 + ".x", 5)
    assert rec.bytes == 15
    assert rec.to_json() == {**DOC, "version": 1}
    records = Records(tmp_path)
    records.write(rec)
    assert json.loads(records.path(rec.key).read_text()) == {**DOC, "version": 1}
    assert records.read(rec.key) == rec and records.latest("model", "tiny", "compile") == rec


@pytest.mark.parametrize("change,reason", [
    ({"version": 7}, "version 7 is not one this engine reads (1)"),
    ({"version": "1"}, "version '1' is not one this engine reads (1)"),
    ({"files": [["program.json", ["a" * 64, 10]]]}, "field 'files' is a list, not a mapping"),
    ({"files": {"program.json": ["a" * 64, -1]}}, "files entry 'program.json' is not [file id, size]"),
    ({"materialized": 1}, "field 'materialized' is an integer, not a boolean"),
    ({"digest": None}, "field 'digest' is null, not a string"),
    ({"paths": {}}, "unknown fields ['paths']"),
])
def test_a_record_of_another_version_or_shape_is_unusable_with_a_reason(change, reason):
    with pytest.raises(RecordUnusable) as e:
        ActionRecord.from_json({**DOC, **change})
    assert e.value.reason == reason


def test_records_read_a_bad_file_as_absent_and_keep_why(tmp_path):
    records = Records(tmp_path)
    records.path("k" * 64).parent.mkdir(parents=True)
    records.path("k" * 64).write_text(json.dumps(DOC)[:40])
    assert records.read("k" * 64) is None and records.unusable["k" * 64].startswith("not JSON: ")
    missing = {k: v for k, v in DOC.items() if k != "digest"}
    records.path("k" * 64).write_text(json.dumps(missing))
    assert records.read("k" * 64) is None and records.unusable["k" * 64] == "field 'digest' is missing"
    records.path("e" * 64).write_text(json.dumps(DOC))  # a record under another key's name
    assert records.read("e" * 64) is None and records.unusable["e" * 64].startswith("it holds key kkkk")
    assert records.all() == []
    records.write(ActionRecord.from_json(DOC))
    assert "k" * 64 not in records.unusable and [r.key for r in records.all()] == ["k" * 64]


def edit_records(store, stages: dict[str, Callable[[dict], Any]]) -> None:
    for path in (store / "ac").glob("*.json"):
        doc = json.loads(path.read_text())
        if doc["stage"] in stages:
            path.chmod(0o644)
            path.write_text(json.dumps(stages[doc["stage"]](doc)))


def test_a_record_the_engine_cannot_read_is_rebuilt_and_the_run_says_why(tmp_path, built_store):
    store = copy_store(built_store, tmp_path / "store")
    edit_records(store, {
        "export": lambda d: {**d, "version": 7},
        "package": lambda d: {**d, "files": list(d["files"].items())},
        "compile": lambda d: {k: v for k, v in d.items() if k != "version"},  # older than versions: still read
    })
    r = run_pipeline(store)
    assert r.rc == 0, r.out + r.err
    assert r.status()["export"] == "ran" and r.status()["package"] == "ran" and r.status()["compile"] == "cached"
    assert r.stage("export")["why"] == "record unusable (version 7 is not one this engine reads (1)): rebuilt"
    assert r.stage("package")["why"] == "record unusable (field 'files' is a list, not a mapping): rebuilt"
    assert "export: running (record unusable (version 7" in r.out
    assert r.summary["validation"]["passed"]
    again = run_pipeline(store)  # rewritten whole: every stage hits
    assert again.rc == 0 and set(again.status().values()) == {"cached"}, again.out


def test_a_remote_record_that_does_not_validate_is_not_used(tmp_path, built_store):
    remote = copy_store(built_store, tmp_path / "remote")  # a folder remote has a store's ac/ and cas/
    edit_records(remote, {"compile": lambda d: {**d, "version": 7}})
    b = run_pipeline(tmp_path / "b", f"store.remote={remote}")
    assert b.rc == 0, b.out + b.err
    assert b.stage("export")["status"] == "cached" and b.stage("export")["source"] == "remote"
    compile_ = b.stage("compile")
    assert compile_["status"] == "ran", compile_
    assert compile_["note"] == "remote not used: its record is unusable (version 7 is not one this engine reads (1))"
