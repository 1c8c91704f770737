from pathlib import Path

import pytest

from k2core.config import ConfigError, PipelineConfig, load_config, parse_override


def test_tiny_is_the_default_profile():
    cfg = load_config()
    assert cfg.profile == "tiny"
    assert cfg.ingest.max_docs == 2000 and cfg.ingest.source == "stdlib"


def test_profiles_change_sections():
    assert load_config("h200").ingest.max_docs is None
    assert load_config("cluster").ingest.shard_docs == 50_000


def test_yaml_then_set_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("profile: h200\ningest:\n  shard_docs: 7\n  max_docs: 9\n")
    cfg = load_config(config_file=f, overrides=["ingest.max_docs=11", "seed=3"])
    assert (cfg.profile, cfg.ingest.shard_docs, cfg.ingest.max_docs, cfg.seed) == ("h200", 7, 11, 3)
    assert load_config(overrides=["ingest.max_docs=null"]).ingest.max_docs is None


def test_typed_values_beat_everything():
    cfg = load_config(overrides=["ingest.source=a.jsonl"], values={"ingest": {"source": "123"}})
    assert cfg.ingest.source == "123"


def test_invalid_value_names_field_value_and_rule():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["ingest.shard_docs=abc"])
    msg = str(e.value)
    assert "ingest.shard_docs" in msg and "'abc'" in msg and "valid integer" in msg
    with pytest.raises(ConfigError, match=r"ingest.max_reject_fraction = 2: .*less than or equal to 1"):
        load_config(overrides=["ingest.max_reject_fraction=2"])


def test_unknown_field_lists_allowed():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["ingest.shrd_docs=5"])
    assert "ingest.shrd_docs: unknown field" in str(e.value)
    assert "shard_docs" in str(e.value) and "max_docs" in str(e.value)


def test_unknown_profile_and_bad_set_syntax(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile; allowed: tiny, h200, cluster"):
        load_config("huge")
    with pytest.raises(ConfigError, match="--set expects dotted.key=value"):
        parse_override("ingest.max_docs")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_file=tmp_path / "missing.yaml")
    (tmp_path / "l.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(config_file=tmp_path / "l.yaml")


def test_store_section_reads_environment(monkeypatch):
    monkeypatch.setenv("K2_STORE", "s3://bucket/p")
    monkeypatch.setenv("K2_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    cfg = PipelineConfig()
    assert cfg.store.uri == "s3://bucket/p" and cfg.store.s3_endpoint_url == "http://127.0.0.1:9000"


def test_shipped_launch_configs_load_and_keep_the_global_batch():
    """infra/launch/*.yaml are valid configs; the 2-GPU one keeps h200's global batch and its
    per-GPU forward size (the setting measured in docs/benchmarks.md)."""
    root = Path(__file__).resolve().parents[2] / "infra" / "launch"
    one = load_config(config_file=root / "h200.yaml").pretrain
    two = load_config(config_file=root / "h200x2.yaml").pretrain
    assert (one.nproc, two.nproc) == (1, 2) and one.preset == two.preset == "h200"
    assert one.micro_batch * one.grad_accum == two.micro_batch * two.grad_accum
    assert two.micro_batch // two.nproc == one.micro_batch


def test_the_tool_calls_cpu_config_is_the_demo_with_twice_the_pretraining_and_recall():
    """infra/launch/tool-calls-cpu.yaml: the tiny profile, 2,400 pre-training steps with recall
    rows, 450 SFT steps (the budget docs/benchmarks.md measured at 0.81 exact calls on 2 cores)."""
    root = Path(__file__).resolve().parents[2] / "infra" / "launch"
    cfg, tiny = load_config(config_file=root / "tool-calls-cpu.yaml"), load_config(profile="tiny")
    assert cfg.profile == "tiny" and cfg.pretrain.steps == 2400 > tiny.pretrain.steps
    assert cfg.pretrain.recall.fraction == 1.0 and cfg.pretrain.recall.per_1k_tokens == 8
    assert cfg.sft.steps == 450 and cfg.pretrain.long_context == tiny.pretrain.long_context
    assert cfg.tokenize == tiny.tokenize and cfg.synthesize == tiny.synthesize
