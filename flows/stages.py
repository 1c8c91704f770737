"""One module-level flow per built-in stage: the entrypoints of the per-stage deployments
(`flows/stages.py:<stage>`). A stage added to the registry gets its flow here too."""
from __future__ import annotations

from flows.stage import stage_flow
from k2core.stage import stages

ingest = stage_flow("ingest")
curate = stage_flow("curate")
tokenize = stage_flow("tokenize")
rephrase = stage_flow("rephrase")
pretrain = stage_flow("pretrain")

# stages registered after these (later issues) get a flow by name as well
for _spec in stages():
    globals().setdefault(_spec.name, stage_flow(_spec.name))
