import gzip
import hashlib
import json
import os
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from k2core.config import load_config
from k2core.data import ingest
from k2core.sources import SourceError, _docstrings, list_source
from k2core.stage import StageContext
from tests.conftest import write_jsonl


def run_ingest(tmp_path, source, *sets, **store_kw):
    cfg = load_config(overrides=[f"ingest.source={source}", *sets], values={"store": store_kw} if store_kw else None)
    wd = tmp_path / "out"
    wd.mkdir(exist_ok=True)
    ctx = StageContext("ingest", "test", cfg.ingest, cfg, wd, {}, None)
    metrics = ingest.run(ctx)
    docs = pq.read_table(sorted((wd / "data").glob("*.parquet"))).to_pylist() if (wd / "data").exists() else []
    rej = pq.read_table(sorted((wd / "rejects").glob("*.parquet"))).to_pylist() if (wd / "rejects").exists() else []
    return metrics, docs, rej


def test_bad_records_land_in_rejects_with_reasons(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [
        {"text": "good one"}, "not json {", "[1, 2]", {"title": "no text"}, {"text": None},
        {"text": 42}, {"text": " \n\t "}, {"text": "good one"}, "", {"text": "second good", "id": "s2"},
    ])
    m, docs, rej = run_ingest(tmp_path, src)
    assert [d["text"] for d in docs] == ["good one", "second good"]
    assert {(r["locator"], r["reason"]) for r in rej} == {
        ("line 2", "invalid_json"), ("line 3", "not_an_object"), ("line 4", "missing_text"),
        ("line 5", "missing_text"), ("line 6", "non_string_text"), ("line 7", "empty_text"),
        ("line 8", "duplicate")}
    by_line = {r["locator"]: r for r in rej}
    assert by_line["line 2"]["raw"] == "not json {"          # the raw record is kept
    assert "is a int" in by_line["line 6"]["detail"]
    assert by_line["line 8"]["detail"] == f"same text as document {docs[0]['id']}"
    assert m["rejects_by_reason"] == {"duplicate": 1, "empty_text": 1, "invalid_json": 1, "missing_text": 2,
                                      "non_string_text": 1, "not_an_object": 1}
    assert (m["records_read"], m["docs"], m["rejected"], m["blank_lines"]) == (9, 2, 7, 1)
    assert m["reject_fraction"] == pytest.approx(7 / 9)
    assert json.loads(docs[1]["meta"]) == {"id": "s2"}


def test_normalisation_and_stable_ids(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [
        {"text": "cafe\u0301 ok"},                 # NFD -> NFC
        {"text": "a\x00b\x07c\u0085d\r\ne\rf"},    # controls removed, CRLF/CR -> LF
        b'{"text": "bad \xff\xfe bytes"}',         # invalid UTF-8 -> U+FFFD, counted
        '{"text": "lone \\ud800 surrogate"}',      # JSON escape of a lone surrogate
    ])
    m, docs, _ = run_ingest(tmp_path, src)
    texts = [d["text"] for d in docs]
    assert texts == ["caf\u00e9 ok", "abcd\ne\nf", "bad \ufffd\ufffd bytes", "lone \ufffd surrogate"]
    assert (m["nfc_changed"], m["control_chars_removed"], m["invalid_utf8"], m["invalid_unicode"]) == (1, 1, 1, 1)
    for d in docs:
        assert d["id"] == hashlib.sha256(d["text"].encode()).hexdigest()[:32]
        assert d["n_chars"] == len(d["text"]) and d["source"] == str(src.resolve())
    _, again, _ = run_ingest(tmp_path, src)
    assert [d["id"] for d in again] == [d["id"] for d in docs]


def test_gzip_parquet_directory_and_glob(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    with gzip.open(d / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": "from gzip"}) + "\n")
    pq.write_table(pa.table({"body": ["from parquet", None], "lang": ["en", "en"]}), d / "sub" / "b.parquet")
    (d / "ignored.txt").write_text("not a source format")
    m, docs, rej = run_ingest(tmp_path, d, "ingest.text_field=body")
    assert sorted(x["text"] for x in docs) == ["from gzip", "from parquet"]
    assert [r["reason"] for r in rej] == ["missing_text"] and rej[0]["locator"] == "row 1"
    assert json.loads(next(x for x in docs if x["text"] == "from parquet")["meta"]) == {"lang": "en"}
    m2, docs2, _ = run_ingest(tmp_path, f"{d}/**/*.parquet", "ingest.text_field=body")
    assert [x["text"] for x in docs2] == ["from parquet"]


def test_truncated_gzip_is_reported_and_keeps_what_was_read(tmp_path):
    raw = gzip.compress(b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(2000)))
    (tmp_path / "t.jsonl.gz").write_bytes(raw[: len(raw) // 2])
    m, docs, rej = run_ingest(tmp_path, tmp_path / "t.jsonl.gz")
    assert 0 < len(docs) < 2000
    assert rej[-1]["reason"] == "unreadable_file" and "EOFError" in rej[-1]["detail"]


def test_missing_and_empty_sources_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(SourceError, match="unsupported format"):
        list_source(str(tmp_path / "x.csv"))
    with pytest.raises(SourceError, match="no files ending in"):
        list_source(str(tmp_path))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SourceError, match="holds no records"):
        run_ingest(tmp_path, tmp_path / "empty.jsonl")


def test_shards_rotate_and_max_docs_stops(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": f"document number {i}"} for i in range(25)])
    m, docs, _ = run_ingest(tmp_path, src, "ingest.shard_docs=10", "ingest.max_docs=23")
    assert (m["docs"], m["shards"], m["stopped_at_max_docs"]) == (23, 3, True)
    assert len(list((tmp_path / "out" / "data").glob("*.parquet"))) == 3


def test_s3_sources(s3_endpoint, bucket, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="raw/a.jsonl.gz",
                      Body=gzip.compress(b'{"text": "s3 one"}\nbroken\n'))
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["s3 two"]}), buf)
    client.put_object(Bucket=bucket, Key="raw/b.parquet", Body=buf.getvalue().to_pybytes())
    client.put_object(Bucket=bucket, Key="rawother/c.jsonl", Body=b'{"text": "not under raw/"}\n')
    m, docs, rej = run_ingest(tmp_path, f"s3://{bucket}/raw", s3_endpoint_url=s3_endpoint)
    assert sorted(d["text"] for d in docs) == ["s3 one", "s3 two"]
    assert docs[0]["source"] == f"s3://{bucket}/raw/a.jsonl.gz"
    assert [(r["reason"], r["locator"]) for r in rej] == [("invalid_json", "line 2")]
    with pytest.raises(SourceError, match="no objects"):
        list_source(f"s3://{bucket}/nothing-here", s3_endpoint)


def test_stdlib_source_gives_code_and_docstrings(tmp_path):
    m, docs, _ = run_ingest(tmp_path, "stdlib", "ingest.max_docs=60")
    kinds = {json.loads(d["meta"])["kind"] for d in docs}
    assert kinds == {"code", "docstring"} and m["docs"] == 60
    code = next(d for d in docs if json.loads(d["meta"])["kind"] == "code")
    assert code["source"].startswith("stdlib:") and code["source"].endswith(".py")
    assert list_source("stdlib")[0].uri.startswith("stdlib:")


def test_docstring_walker_matches_ast_walk():
    import ast
    import inspect
    import json as mod

    tree = ast.parse(inspect.getsource(mod.decoder))
    expected = [ast.get_docstring(n, clean=True) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and ast.get_docstring(n)]
    assert sorted(_docstrings(tree)) == sorted(expected) and len(expected) > 3


@pytest.mark.slow
def test_streaming_keeps_memory_bounded(tmp_path):
    """40 MB of JSONL through ingest with a Python-heap peak far below the source size."""
    src = tmp_path / "big.jsonl"
    with open(src, "w") as f:
        for i in range(20_000):
            f.write(json.dumps({"text": f"{i} " + "lorem ipsum dolor sit amet " * 75}) + "\n")
    assert os.path.getsize(src) > 40e6
    cfg = load_config(overrides=[f"ingest.source={src}", "ingest.shard_docs=2000", "ingest.max_docs=null"])
    ctx = StageContext("ingest", "test", cfg.ingest, cfg, tmp_path, {}, None)
    tracemalloc.start()
    m = ingest.run(ctx)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert m["docs"] == 20_000 and m["shards"] == 10
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in (tmp_path / "data").glob("*.parquet")) == 20_000
    assert peak < 16e6, f"python heap peak {peak / 1e6:.1f} MB"


def test_ascii_shortcut_normalises_as_the_general_rule():
    """ASCII text takes one bytes.translate instead of the regex scans; text and counters equal
    the general rule's (CR/CRLF, C0/DEL removal, surrogates, NFC) on random strings."""
    import random
    import unicodedata
    from collections import Counter

    from k2core.data.ingest import _CONTROL, _SURROGATE, normalize

    def general(t: str, flags: Counter) -> str:
        t = t.replace("\r\n", "\n").replace("\r", "\n")
        if _CONTROL.search(t):
            flags["control_chars_removed"] += 1
            t = _CONTROL.sub("", t)
        if _SURROGATE.search(t):
            flags["invalid_unicode"] += 1
            t = _SURROGATE.sub("\ufffd", t)
        if not unicodedata.is_normalized("NFC", t):
            flags["nfc_changed"] += 1
            t = unicodedata.normalize("NFC", t)
        return t

    rng = random.Random(0)
    for i in range(3000):
        t = "".join(chr(rng.choice([rng.randrange(128), rng.randrange(128), rng.randrange(0x300)]))
                    for _ in range(rng.randrange(40)))
        if i % 2:
            t = "".join(c for c in t if ord(c) < 128)
        a, b = Counter(), Counter()
        assert (normalize(t, a), a) == (general(t, b), b), repr(t)
