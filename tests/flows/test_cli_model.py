"""`k2 model info | init` and `k2 generate` as a user runs them."""
from __future__ import annotations

import json

import pytest

from flows.cli import main
from k2core.infer import Engine, SamplingParams
from k2core.model.checkpoint import load_checkpoint


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_model_info_k2_1t(capsys):
    rc, out, _ = run(capsys, "model", "info", "--preset", "k2-1t")
    assert rc == 0
    assert "k2-1t: 1.03T total / 32.9B activated" in out
    assert "1,026,408,209,408" in out and "published: 1.04T total / 32.6B activated" in out
    rc, out, _ = run(capsys, "model", "info", "--preset", "h200", "--json")
    info = json.loads(out)
    assert info["total"] == 813_389_824 and info["config"]["n_routed_experts"] == 64


def test_model_info_overrides_and_errors(capsys):
    rc, out, _ = run(capsys, "model", "info", "--preset", "tiny", "--set", "num_hidden_layers=4", "--json")
    assert json.loads(out)["moe_layers"] == 3
    rc, _, err = run(capsys, "model", "info", "--preset", "tiny", "--set", "hidden_size=many")
    assert rc == 2 and "hidden_size" in err
    rc, _, err = run(capsys, "model", "info", "--preset", "nope")
    assert rc == 2 and "unknown model preset 'nope'" in err


def test_init_then_generate(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    rc, out, _ = run(capsys, "model", "init", "--preset", "tiny", "--seed", "4", "--out", str(ckpt))
    assert rc == 0 and (ckpt / "config.json").exists() and (ckpt / "model.safetensors").exists()
    rc, out, _ = run(capsys, "generate", "--checkpoint", str(ckpt), "--prompt-ids", "1,2,3",
                     "--max-tokens", "7", "--greedy", "--device", "cpu")
    result = json.loads(out)
    expected = Engine(load_checkpoint(ckpt)).generate([[1, 2, 3]], SamplingParams(max_tokens=7, temperature=0))
    assert result["token_ids"] == expected[0].token_ids and len(result["token_ids"]) == 7
    assert result["finish_reason"] == "length" and result["prompt_ids"] == [1, 2, 3]
    # sampling with a seed is reproducible from the command line too
    args = ["generate", "--checkpoint", str(ckpt), "--prompt-ids", "1,2,3", "--max-tokens", "7",
            "--temperature", "0.8", "--seed", "3", "--device", "cpu"]
    assert json.loads(run(capsys, *args)[1]) == json.loads(run(capsys, *args)[1])


def test_generate_errors_are_one_line(tmp_path, capsys):
    rc, _, err = run(capsys, "generate", "--checkpoint", str(tmp_path), "--prompt-ids", "1")
    assert rc == 1 and "no config.json" in err
    ckpt = tmp_path / "c"
    run(capsys, "model", "init", "--out", str(ckpt))
    with pytest.raises(SystemExit, match="outside the vocabulary"):
        main(["generate", "--checkpoint", str(ckpt), "--prompt-ids", "99999", "--device", "cpu"])
    with pytest.raises(SystemExit, match="comma-separated integers"):
        main(["generate", "--checkpoint", str(ckpt), "--prompt-ids", "a,b", "--device", "cpu"])
    rc, _, err = run(capsys, "generate", "--checkpoint", str(ckpt), "--prompt", "hello", "--device", "cpu")
    assert rc == 1 and "has no tokenizer.json: use --prompt-ids" in err
