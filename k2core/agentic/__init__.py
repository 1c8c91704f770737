"""Agentic data: the tool repository, executable domains, tasks, the rollout loop, judges, synthesis."""
