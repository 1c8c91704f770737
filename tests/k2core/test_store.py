import json

import pytest

from k2core.store import IntegrityError, S3Store, StoreError, check_key, open_store
from tests.conftest import SECRET


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "a/../b", "a//b", "a/./b", "a b", "a/b;rm",
                                 "a\\b", "", "a/", "ünï/x", ".hidden/x"])
def test_bad_keys_are_rejected(key):
    with pytest.raises(StoreError, match="invalid store key"):
        check_key(key)


def test_good_keys_pass():
    for key in ["artifacts/ingest/abc123/data/part-00000.parquet", "runs/2026-x.json", "a=b/c+d.txt"]:
        assert check_key(key) == key


def test_bytes_roundtrip_and_listing(store):
    store.put_bytes("runs/a.json", b"{}")
    store.put_json("runs/b.json", {"x": 1})
    assert store.exists("runs/a.json") and not store.exists("runs/c.json")
    assert store.get_json("runs/b.json") == {"x": 1}
    assert store.list("runs/") == ["runs/a.json", "runs/b.json"]
    with pytest.raises(StoreError):
        store.get_bytes("runs/c.json")
    with pytest.raises(StoreError, match="invalid store key"):
        store.put_bytes("../x", b"")


def _build(wd, payload=b"hello"):
    (wd / "data").mkdir()
    (wd / "data" / "part-0.txt").write_bytes(payload)
    (wd / "notes.json").write_text("{}")


def test_commit_records_sha256_and_verifies_on_read(store):
    import hashlib

    with store.workdir("demo", "v1") as wd:
        _build(wd)
        assert not store.has_artifact("demo", "v1")  # nothing visible while building
        art = store.commit("demo", "v1", wd, {"metrics": {"n": 1}})
    assert store.has_artifact("demo", "v1") and store.artifacts() == [("demo", "v1")]
    files = {f["path"]: f for f in art.manifest["files"]}
    assert files["data/part-0.txt"]["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert files["data/part-0.txt"]["size"] == 5
    assert art.path("data/part-0.txt").read_bytes() == b"hello"
    art.verify()
    assert store.artifact("demo", "v1").metrics == {"n": 1}


def test_tampered_file_fails_verification(store, tmp_path):
    with store.workdir("demo", "v1") as wd:
        _build(wd)
        store.commit("demo", "v1", wd, {})
    if isinstance(store, S3Store):
        store.client.put_object(Bucket=store.bucket, Key=store._k("artifacts/demo/v1/data/part-0.txt"), Body=b"HELLO")
    else:
        (store.root / "artifacts/demo/v1/data/part-0.txt").write_bytes(b"HELLO")
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        store.artifact("demo", "v1").path("data/part-0.txt")


def test_crash_before_manifest_leaves_nothing_visible(store, monkeypatch):
    """S3: data objects uploaded, manifest never written. Local: the rename never happened."""
    real_put = type(store).put_bytes

    def crash(self, key, data):
        if key.endswith("manifest.json"):
            raise RuntimeError("killed")
        return real_put(self, key, data)

    if isinstance(store, S3Store):
        monkeypatch.setattr(type(store), "put_bytes", crash)
    else:
        monkeypatch.setattr("os.rename", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        with store.workdir("demo", "v1") as wd:
            _build(wd)
            store.commit("demo", "v1", wd, {})
    monkeypatch.undo()
    assert not store.has_artifact("demo", "v1") and store.artifacts() == []
    with store.workdir("demo", "v1") as wd:  # the rerun completes
        _build(wd)
        store.commit("demo", "v1", wd, {})
    assert store.artifact("demo", "v1").path("data/part-0.txt").read_bytes() == b"hello"


def test_workdir_is_exclusive_and_wipes_stale_leftovers(store):
    with store.workdir("demo", "v1") as wd:
        (wd / "half-written").write_text("x")
        with pytest.raises(StoreError, match="being built by another process"):
            with store.workdir("demo", "v1"):
                pass
    stale = store.scratch_root() / "demo" / "v1"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("from a crashed run")
    with store.workdir("demo", "v1") as wd:
        assert list(wd.iterdir()) == []


def test_replace_swaps_content(store):
    with store.workdir("demo", "v1") as wd:
        _build(wd)
        store.commit("demo", "v1", wd, {})
    with store.workdir("demo", "v1") as wd:
        _build(wd, b"second")
        assert store.commit("demo", "v1", wd, {}).path("data/part-0.txt").read_bytes() == b"hello"
    with store.workdir("demo", "v1") as wd:
        _build(wd, b"second")
        store.commit("demo", "v1", wd, {}, replace=True)
    assert store.artifact("demo", "v1").path("data/part-0.txt").read_bytes() == b"second"


def test_reject_keeps_output_aside(store):
    with store.workdir("demo", "v1") as wd:
        _build(wd)
        where = store.reject("demo", "v1", wd, {"quality": {"success": False}})
    assert "rejected/demo/v1-" in where
    assert not store.has_artifact("demo", "v1")
    keys = store.list("rejected/demo/")
    assert any(k.endswith("data/part-0.txt") for k in keys) and any(k.endswith("manifest.json") for k in keys)


def test_s3_manifest_holds_no_credentials(s3_endpoint, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("K2_CACHE", str(tmp_path / "cache"))
    store = open_store(f"s3://{bucket}/p", endpoint_url=s3_endpoint, region="us-east-1")
    with store.workdir("demo", "v1") as wd:
        _build(wd)
        store.commit("demo", "v1", wd, {})
    raw = store.get_bytes("artifacts/demo/v1/manifest.json").decode()
    assert SECRET not in raw and "k2-test-key" not in raw
    assert json.loads(raw)["files"][0]["path"] == "data/part-0.txt"
    obj = store.client.list_objects_v2(Bucket=bucket, Prefix="p/")["Contents"]
    assert {o["Key"] for o in obj} >= {"p/artifacts/demo/v1/manifest.json", "p/artifacts/demo/v1/notes.json"}


def test_bad_store_uris():
    with pytest.raises(StoreError, match="invalid S3 URI"):
        open_store("s3://Bad_Bucket/x")
    with pytest.raises(StoreError, match="unsupported store URI"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="invalid store key"):
        open_store("s3://bucket/../x")
