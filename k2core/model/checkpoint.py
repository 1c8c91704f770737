"""Hugging Face-format checkpoints: ``config.json`` + safetensors with DeepSeek-V3 parameter names.

The state-dict adapter is the only place that knows k2's layout differs from Hugging Face's: the
routed experts are one 3-D tensor per projection here and per-expert matrices there
(``mlp.experts.{j}.gate_proj.weight``). transformers' ``DeepseekV3ForCausalLM`` and vLLM load
what ``save_checkpoint`` writes; ``load_checkpoint`` reads their checkpoints (sharded or not).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from k2core.errors import K2Error
from k2core.model.config import ModelConfig
from k2core.model.k2 import K2ForCausalLM, rope_inv_freq

_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)$")
_HF_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
FP32_KEYS = ("e_score_correction_bias",)   # kept in fp32 whatever the checkpoint dtype (as HF does)


class CheckpointError(K2Error, ValueError):
    """A checkpoint that cannot be read: names the file and what is wrong."""


def to_hf_state_dict(model: K2ForCausalLM, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if dtype is not None and t.is_floating_point() and not name.endswith(FP32_KEYS):
            t = t.to(dtype)
        m = _EXPERT.match(name)
        if m:
            for j in range(t.shape[0]):
                out[f"{m.group(1)}.{j}.{m.group(2)}.weight"] = t[j].contiguous()
        else:
            out[name] = t.contiguous()
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for name, t in sd.items():
        m = _HF_EXPERT.match(name)
        if m:
            experts.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = t
        elif re.match(rf"^model\.layers\.(\d+)\.", name) and int(name.split(".")[2]) >= cfg.num_hidden_layers:
            continue   # multi-token-prediction layers (num_nextn_predict_layers) are not used
        else:
            out[name] = t
    for (prefix, proj), per in experts.items():
        missing = sorted(set(range(cfg.n_routed_experts)) - set(per))
        if missing:
            raise CheckpointError(f"{prefix}: experts {missing[:5]}… missing for {proj}")
        out[f"{prefix}.{proj}"] = torch.stack([per[j] for j in range(cfg.n_routed_experts)])
    return out


def save_checkpoint(model: K2ForCausalLM, out_dir: str | Path, dtype: torch.dtype | None = None,
                    extra_files: dict[str, bytes] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (a temp dir renamed into place)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        sd = {k: v.cpu() for k, v in to_hf_state_dict(model, dtype).items()}
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        hf = model.config.to_hf()
        hf["torch_dtype"] = str(dtype or next(model.parameters()).dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id,
             "do_sample": False}, indent=2) + "\n")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)            # mkdtemp and safetensors create owner-only modes
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as e:   # truncated / corrupt files surface as opaque Rust errors
        raise CheckpointError(f"{path}: cannot read safetensors ({e})") from None


def load_state_dict_files(ckpt: Path) -> dict[str, torch.Tensor]:
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(_read_safetensors(ckpt / f))
        return sd
    single = ckpt / "model.safetensors"
    if not single.exists():
        raise CheckpointError(f"{ckpt}: no model.safetensors or model.safetensors.index.json")
    return _read_safetensors(single)


def load_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> K2ForCausalLM:
    """A K2ForCausalLM from a Hugging Face-format directory (k2's own or a DeepSeek-V3 one)."""
    ckpt = Path(ckpt_dir)
    if not (ckpt / "config.json").exists():
        raise CheckpointError(f"{ckpt}: not a checkpoint directory (no config.json)")
    cfg = ModelConfig.load(ckpt / "config.json")
    sd = from_hf_state_dict(load_state_dict_files(ckpt), cfg)
    with torch.device("meta"):
        model = K2ForCausalLM(cfg)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    expected = set(shapes)
    if cfg.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = expected - set(sd), set(sd) - expected
    if missing or unexpected:
        raise CheckpointError(f"{ckpt}: state dict does not match config.json — missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for k, t in sd.items():
        want = shapes[k]
        if t.shape != want:
            raise CheckpointError(f"{ckpt}: {k} has shape {tuple(t.shape)}, config.json implies {tuple(want)}")
    if dtype is not None:
        sd = {k: (v if k.endswith(FP32_KEYS) else v.to(dtype)) for k, v in sd.items()}
    model.load_state_dict(sd, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # non-persistent buffers were left on the meta device: rebuild them
    inv_freq, model.rope_scale = rope_inv_freq(cfg)
    model.inv_freq = inv_freq
    for _, moe in model.moe_layers():
        moe.load = torch.zeros(cfg.n_routed_experts)
    return model.to(device)


def init_checkpoint(preset: str, seed: int, out_dir: str | Path, dtype: torch.dtype | None = None,
                    **overrides) -> Path:
    """``k2 model init``: a randomly initialised model of a preset, written as a checkpoint."""
    cfg = ModelConfig.preset(preset, **overrides)
    model = K2ForCausalLM(cfg).init_weights(seed)
    return save_checkpoint(model, out_dir, dtype)
