"""One module-level flow per registered stage (`ingest`, `curate`, `rephrase`, `tokenize`,
`pretrain`, and any stage added later): the entrypoints `flows/stages.py:<stage>` of the per-stage
deployments."""
from __future__ import annotations

from flows.stage import stage_flow
from k2core.pipeline import stages

for _spec in stages():
    globals()[_spec.name] = stage_flow(_spec.name)
