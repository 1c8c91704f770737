"""`curate`: ingested documents -> quality-filtered, deduplicated, domain-tagged Parquet shards.

Two passes over units of work — the ingest shards, cut into row ranges of similar size when
several workers share them — each unit a Dask task (a LocalCluster with one worker per core by
default, or the cluster at `curate.dask_address`; in this process, with no cluster to start, when
only one worker would have work):

1. filter: tag each document's domain (prose / code / math), run the domain's filter chain
   (prose: length, binary, English, Gopher repetition, Gopher quality, C4 line cleaning, FineWeb;
   code: length, binary, code; math: length, binary, Gopher repetition), write kept documents with
   their exact-dedup key and MinHash-LSH band keys, and rejects with `filter:reason`.
2. dedup: the driver joins documents sharing an exact key or a band key across the whole corpus
   (union-find); each cluster keeps its smallest id. Each unit then drops its duplicates
   (rejected as `dedup:exact_duplicate` / `dedup:near_duplicate`, naming the kept id).

Shards stream in record batches; a document over `length.max_chars` is rejected before it is
tokenised, so one huge document costs no more memory than its own text.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from k2core.text.dedup import MinHasher, clusters, exact_key
from k2core.text.filters import Doc, tag_domain
from k2core.errors import K2Error
from k2core.stage import StageContext
from schemas.documents import CURATED_SCHEMA, REJECT_SCHEMA

STAGE1 = pa.schema(list(CURATED_SCHEMA) + [pa.field("bands", pa.list_(pa.uint64()))])


def chains(cfg) -> dict[str, list]:
    """The filter chain of each domain, built from the typed config."""
    prose = [cfg.length, cfg.binary]
    if cfg.english_enabled:
        prose.append(cfg.english)
    prose += [cfg.gopher_repetition, cfg.gopher_quality, cfg.c4, cfg.fineweb]
    return {"prose": prose,
            "code": [cfg.length, cfg.binary, cfg.code],
            "math": [cfg.length, cfg.binary, cfg.gopher_repetition]}


def _hasher(cfg) -> MinHasher:
    return MinHasher(cfg.minhash_ngram, cfg.minhash_bands, cfg.minhash_rows, cfg.minhash_seed)


def filter_shard(src: str, out_dir: str, part: int, cfg, rows: tuple[int, int] | None = None) -> dict[str, Any]:
    """Pass 1 on one unit of work — an input shard, or rows [a, b) of one (on a Dask worker or here)."""
    t0 = time.perf_counter()
    chain_of = chains(cfg)
    hasher = _hasher(cfg) if cfg.dedup_fuzzy else None
    kept_rows: list[dict] = []
    rejects: list[dict] = []
    drops: Counter = Counter()
    domains: Counter = Counter()
    n_in = bytes_in = 0
    out = Path(out_dir)
    kept_w = pq.ParquetWriter(out / f"stage1-{part:05d}.parquet", STAGE1, compression="zstd")
    rej_w = pq.ParquetWriter(out / f"rejects-{part:05d}.parquet", REJECT_SCHEMA, compression="zstd")

    def flush(force: bool = False):
        if kept_rows and (force or len(kept_rows) >= 500):
            kept_w.write_table(pa.Table.from_pylist(kept_rows, STAGE1))
            kept_rows.clear()
        if rejects and (force or len(rejects) >= 500):
            rej_w.write_table(pa.Table.from_pylist(rejects, REJECT_SCHEMA))
            rejects.clear()

    start, stop = rows if rows is not None else (0, None)
    seen = 0
    for batch in pq.ParquetFile(src).iter_batches(batch_size=64):
        first, seen = seen, seen + batch.num_rows
        if seen <= start:
            continue
        if stop is not None and first >= stop:
            break
        lo, hi = max(start - first, 0), batch.num_rows if stop is None else min(stop - first, batch.num_rows)
        for row in batch.slice(lo, hi - lo).to_pylist():
            n_in += 1
            bytes_in += row["n_chars"]
            domain = tag_domain(row["text"][:20_000], row["source"])
            doc = Doc(row["text"], domain)
            reason = None
            for f in chain_of[domain]:
                r = f(doc)
                if r:
                    reason = f"{f.name}:{r}"
                    break
            if reason is None and not doc.text.strip():
                reason = "c4:empty_after_cleaning"
            if reason:
                drops[reason] += 1
                rejects.append({"source": row["source"], "locator": row["locator"], "reason": reason,
                                "detail": f"id {row['id']}, domain {domain}", "raw": row["text"]})
            else:
                domains[domain] += 1
                kept_rows.append({**row, "text": doc.text, "n_chars": len(doc.text), "domain": domain,
                                  "exact_key": f"{exact_key(doc.text):016x}",
                                  "bands": hasher.band_keys(doc.text).tolist() if hasher else []})
            flush()
    flush(force=True)
    kept_w.close()
    rej_w.close()
    return {"part": part, "docs_in": n_in, "bytes_in": bytes_in, "drops": dict(drops), "domains": dict(domains),
            "seconds": time.perf_counter() - t0}


def dedup_shard(part: int, out_dir: str, drop_rows: dict[int, tuple[str, str]]) -> dict[str, Any]:
    """Pass 2 on one filtered shard: drop the rows the driver marked, write the final shard."""
    out = Path(out_dir)
    table = pq.read_table(out / f"stage1-{part:05d}.parquet")
    keep = np.ones(table.num_rows, bool)
    rejects = []
    if drop_rows:
        rows = table.select(["id", "source", "locator", "text"]).to_pylist()
        for r, (kept_id, why) in drop_rows.items():
            keep[r] = False
            x = rows[r]
            rejects.append({"source": x["source"], "locator": x["locator"], "reason": f"dedup:{why}",
                            "detail": f"id {x['id']} duplicates kept id {kept_id}", "raw": x["text"]})
    final = table.filter(pa.array(keep)).drop_columns(["bands"])
    (out / "data").mkdir(exist_ok=True)
    pq.write_table(final.cast(CURATED_SCHEMA), out / "data" / f"part-{part:05d}.parquet", compression="zstd")
    if rejects:
        pq.write_table(pa.Table.from_pylist(rejects, REJECT_SCHEMA),
                       out / f"rejects-dedup-{part:05d}.parquet", compression="zstd")
    os.remove(out / f"stage1-{part:05d}.parquet")
    return {"part": part, "docs_out": int(keep.sum()),
            "domains": dict(Counter(final.column("domain").to_pylist()))}


def _warm() -> None:
    import pandas  # noqa: F401  (the filters' n-gram statistics use it)

    import k2core.data.curate  # noqa: F401


def units_of(shards: list[Path], workers: int, per_worker: int = 3) -> list[tuple[str, tuple[int, int], float]]:
    """Units of work: every shard whole, or — with several workers — large shards cut into row
    ranges, so that there are ~`per_worker` units per worker of similar size (a corpus in one shard
    still uses every core). Each unit: (shard, row range, estimated bytes)."""
    import pyarrow.parquet as pq

    sizes = [p.stat().st_size for p in shards]
    rows = [pq.ParquetFile(p).metadata.num_rows for p in shards]
    target = sum(sizes) / max(1, workers * per_worker) if workers > 1 else float("inf")
    out = []
    for path, size, n in zip(shards, sizes, rows):
        k = max(1, min(n, int(-(-size // target)) if target != float("inf") else 1))
        out += [(str(path), (i * n // k, (i + 1) * n // k), size / k) for i in range(k)]
    return out


class _InProcess:
    """The Dask client's `submit` / `as_completed` shape, run here, one task after another (no
    cluster to start when one worker is all the work can use)."""

    def submit(self, fn, *args, pure=False, priority=0):
        return _Done(fn(*args))

    def run(self, fn):
        fn()

    def close(self):
        pass


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _as_completed(futures):
    if all(isinstance(f, _Done) for f in futures):
        return iter(futures)
    from dask.distributed import as_completed

    return as_completed(futures)


_DASK_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED",
             "__DASK_PARENT_PID")   # what the nanny writes into os.environ for its workers


def _local_cluster(workers: int):
    from dask.distributed import LocalCluster

    # Dask's nanny writes OMP_NUM_THREADS=1 (and MKL / OpenBLAS) into this process's environment
    # for the workers it spawns, and leaves it there: torch imported later in the run would then
    # train on one thread (and compute different bits). The workers keep it; we do not.
    # Its MALLOC_TRIM_THRESHOLD_=65536 (trim memory back to the OS on every free over 64 KiB) makes
    # the filters, which allocate and free many small strings, ~25% slower than in a plain process
    # (bench/curation.py); workers that live for one stage need no trimming.
    import dask

    saved = {k: os.environ.get(k) for k in _DASK_ENV}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                dashboard_address=None, silence_logs=40)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Prestart:
    """A LocalCluster starting in a background thread (its workers boot on the other cores while
    an earlier stage runs); `take` hands it over, `discard` closes it unused."""

    def __init__(self, workers: int):
        import threading

        self.workers, self.cluster, self.error = workers, None, None
        self.thread = threading.Thread(target=self._start, name="k2-dask-prestart", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.cluster = _local_cluster(self.workers)
        except Exception as e:         # noqa: BLE001 — the stage starts its own and reports then
            self.error = e

    def take(self, workers: int):
        self.thread.join()
        if self.cluster is not None and self.workers == workers:
            return self.cluster
        self.discard()
        return None

    def discard(self) -> None:
        self.thread.join()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


_prestarted: _Prestart | None = None


def prepare(cfg) -> None:
    """Called when a run that will compute `curate` begins: start its LocalCluster now."""
    global _prestarted
    workers = cfg.curate.dask_workers or os.cpu_count() or 1
    if _prestarted is None and not cfg.curate.dask_address and workers > 1:
        _prestarted = _Prestart(workers)


def _client(cfg, units: int):
    """A Dask client (an existing cluster, or a LocalCluster of one worker per core), or — when
    only one worker would have work — this process."""
    global _prestarted
    if cfg.dask_address:
        from dask.distributed import Client

        return Client(cfg.dask_address), None, f"dask {cfg.dask_address}"
    workers = min(cfg.dask_workers or os.cpu_count() or 1, units)
    pre, _prestarted = _prestarted, None
    if workers <= 1:
        if pre is not None:
            pre.discard()
        return _InProcess(), None, "in process"
    from dask.distributed import Client

    cluster = (pre.take(workers) if pre is not None else None) or _local_cluster(workers)
    return Client(cluster), cluster, f"LocalCluster of {workers}"


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg
    src = ctx.inputs["ingest"]
    shards = [src.path(f) for f in src.files("data/") if f.endswith(".parquet")]
    out = ctx.workdir
    t0 = time.perf_counter()
    units = units_of(shards, cfg.dask_workers or os.cpu_count() or 1)
    client, cluster, executor = _client(cfg, len(units))
    t_cluster = time.perf_counter() - t0
    client.run(_warm)                      # imports on every worker before the clock starts
    t_start = time.perf_counter()          # filter time excludes the cluster's start-up
    t_warm = t_start - t0 - t_cluster
    try:
        with ctx.progress(len(units), "curate: filter", "part") as bar:
            # largest units first: the last tasks to finish are small ones (better balance)
            order = sorted(range(len(units)), key=lambda i: -units[i][2])
            futures = [client.submit(filter_shard, units[i][0], str(out), i, cfg, units[i][1], pure=False,
                                     priority=len(units) - rank) for rank, i in enumerate(order)]
            stats = []
            for fut in _as_completed(futures):
                stats.append(fut.result())
                bar.update(1)
        t_filter = time.perf_counter() - t_start
        t_dedup = time.perf_counter()
        # pass 2: clusters across the whole corpus (only ids and keys come to the driver)
        keys = [pq.read_table(out / f"stage1-{i:05d}.parquet", columns=["id", "exact_key", "bands"])
                for i in range(len(units))]
        part_of = np.concatenate([np.full(k.num_rows, i) for i, k in enumerate(keys)]) if keys else np.zeros(0, int)
        row_of = np.concatenate([np.arange(k.num_rows) for k in keys]) if keys else np.zeros(0, int)
        ids = [x for k in keys for x in k.column("id").to_pylist()]
        exact = np.array([int(x, 16) for k in keys for x in k.column("exact_key").to_pylist()], np.uint64) \
            if cfg.dedup_exact else np.arange(len(ids), dtype=np.uint64)
        bands = None
        if cfg.dedup_fuzzy and ids:
            bands = np.array([b for k in keys for b in k.column("bands").to_pylist()], np.uint64)
        dups = clusters(ids, exact, bands) if ids else {}
        per_part: dict[int, dict[int, tuple[str, str]]] = {i: {} for i in range(len(units))}
        why = Counter()
        for r, (keep, reason) in dups.items():
            per_part[int(part_of[r])][int(row_of[r])] = (ids[keep], reason)
            why[reason] += 1
        with ctx.progress(len(units), "curate: dedup", "part") as bar:
            futures = [client.submit(dedup_shard, i, str(out), per_part[i], pure=False) for i in range(len(units))]
            finals = []
            for fut in _as_completed(futures):
                finals.append(fut.result())
                bar.update(1)
        t_dedup = time.perf_counter() - t_dedup
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    _gather_rejects(out)
    docs_in = sum(s["docs_in"] for s in stats)
    drops = Counter()
    for s in stats:
        drops.update(s["drops"])
    docs_out = sum(f["docs_out"] for f in finals)
    domains = Counter()
    for f in finals:
        domains.update(f["domains"])
    by_filter = Counter()
    for reason, n in drops.items():
        by_filter[reason.split(":")[0]] += n
    metrics = {
        "docs_in": docs_in, "docs_out": docs_out, "bytes_in": sum(s["bytes_in"] for s in stats),
        "drop_fraction": 1 - docs_out / docs_in if docs_in else 1.0,
        "dropped_by_filter": dict(sorted(by_filter.items())), "dropped_by_reason": dict(sorted(drops.items())),
        "exact_duplicates": why.get("exact_duplicate", 0), "near_duplicates": why.get("near_duplicate", 0),
        "domains": dict(sorted(domains.items())), "shards": len(shards), "parts": len(units),
        "filter_seconds": round(t_filter, 2), "seconds": round(time.perf_counter() - t0, 2),
        "warm_seconds": round(t_warm, 2), "dedup_seconds": round(t_dedup, 2),
        "cluster_start_seconds": round(t_cluster, 2), "workers": cfg.dask_workers or os.cpu_count(),
        "filter_task_seconds": round(sum(x["seconds"] for x in stats), 2),
        "filter_slowest_task_seconds": round(max((x["seconds"] for x in stats), default=0.0), 2),
        "dask": executor,
    }
    (out / "stats.json").write_text(json.dumps(metrics, indent=2))
    if docs_in == 0:
        raise K2Error("curate: the ingest artifact holds no documents")
    return metrics


def _gather_rejects(out: Path) -> None:
    """Move the per-shard reject files under rejects/ (kept even when empty: counts are zero)."""
    (out / "rejects").mkdir(exist_ok=True)
    for f in sorted(out.glob("rejects-*.parquet")):
        f.rename(out / "rejects" / f.name)
