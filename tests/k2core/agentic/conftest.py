"""A store with a small real pretrain model (the tools / synthesize stages' input), built once per
test process: ingest -> curate -> tokenize -> pretrain on a generated corpus, 12 steps."""
from __future__ import annotations

import pytest

from tests.conftest import write_jsonl
from tests.k2core.train.stages import corpus_rows, run

UPSTREAM = ["ingest", "curate", "rephrase", "tokenize", "pretrain"]


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agentic")
    src = write_jsonl(tmp / "c.jsonl", corpus_rows(n_prose=40, n_code=6))
    sets = [f"ingest.source={src}"]
    outs, store = run(str(tmp / "store"), UPSTREAM, sets)
    return {"store": str(tmp / "store"), "sets": sets, "tmp": tmp,
            "pins": {o.stage: o.version for o in outs}}


def run_stage(pre, stage: str, sets: list[str], pins: dict[str, str] | None = None, log=lambda *_: None):
    """Plan `stage` against the fixture's upstream (and `pins`), execute it; the outcome and store."""
    from k2core.config import load_config
    from k2core.pipeline import plan
    from k2core.stage import execute
    from k2core.store import open_store
    from tests.k2core.train.stages import SMALL

    cfg = load_config(overrides=[*SMALL, f"store.uri={pre['store']}", *pre["sets"], *sets])
    store = open_store(pre["store"])
    [p] = plan(cfg, store, [stage], pinned={**pre["pins"], **(pins or {})})
    return execute(p, cfg, store, force=True, log=log), store
