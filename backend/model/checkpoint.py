"""Checkpoint I/O: official MonoNPHM experiment folders and the project's own format.

Safety: every file goes through `torch.load(..., map_location='cpu', weights_only=True)`, so nothing stored
in a checkpoint is ever executed; anything else (corrupt file, missing key, wrong shape, config mismatch)
raises `CheckpointError` with a message and a hint.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .config import MonoNPHMConfig
from .encoders import ArkitRegressor, CodeEncoders
from .mononphm import MonoNPHM

PathLike = Union[str, os.PathLike]

PROJECT_WEIGHTS = "model.pt"
PROJECT_CONFIG = "config.json"
ENCODERS_FILE = "encoders.pt"  # optional: CodeEncoders + ArkitRegressor of a trained model
FORMAT_NAME = "mononphm-blender/model"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint could not be used. `message` says what is wrong, `hint` what to do about it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message if not hint else f"{message} (hint: {hint})")
        self.message = message
        self.hint = hint


# ---------------------------------------------------------------------------------------------- low level
def safe_torch_load(path: PathLike) -> Any:
    """torch.load restricted to tensors/containers/numbers; wraps every failure into CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}", "check the path / --ckpt epoch number")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every loader failure becomes a CheckpointError
        text = str(e)
        # torch says "Weights only load failed" for any bytes it cannot unpickle; only a named global is code
        if "GLOBAL" in text or "Unsupported global" in text or "Unsupported class" in text:
            raise CheckpointError(
                f"{p.name} contains Python objects/code beyond plain tensors and containers; refusing to unpickle it",
                "only checkpoints holding tensors, dicts, lists and numbers are accepted (official MonoNPHM "
                "checkpoints and this project's model.pt are); re-save the state dicts with torch.save",
            ) from None
        raise CheckpointError(
            f"{p.name} is not a readable PyTorch checkpoint ({type(e).__name__}: {text.splitlines()[0][:200] if text else ''})",
            "the file may be truncated or corrupt; download/copy it again",
        ) from None


def _check_state(state: Any, expected: Dict[str, torch.Tensor], what: str, cfg_hint: str) -> None:
    """Compare a loaded state dict against the expected names/shapes, naming every mismatch."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} is a {type(state).__name__}, expected a state dict", cfg_hint)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    bad = [
        f"{k}: checkpoint {tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__}"
        f" vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and (not torch.is_tensor(state[k]) or tuple(state[k].shape) != tuple(v.shape))
    ]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if bad:
            parts.append(f"shape mismatch {_short(bad)}")
        raise CheckpointError(f"{what} does not match the config: " + "; ".join(parts), cfg_hint)
    for k, v in state.items():
        if not torch.is_floating_point(v) or not torch.isfinite(v).all():
            raise CheckpointError(f"{what}: tensor {k} is not finite floating point", "the checkpoint is corrupt")


def _short(items, n=6):
    s = ", ".join(items[:n])
    return f"[{s}{', ...' if len(items) > n else ''}] ({len(items)})"


# ---------------------------------------------------------------------------------------------- official
_GEO = re.compile(r"deepSDFensemble\.layers\.(\d+)\.layers\.(\d+)\.(weight|bias)$")
_APP = re.compile(r"aggr_app\.layers\.(\d+)\.layers\.(\d+)\.(weight|bias)$")


def official_id_shapes(cfg: MonoNPHMConfig) -> Dict[str, torch.Tensor]:
    """Expected official id_decoder names -> meta tensors of the right shape (reference §2.2)."""
    out: Dict[str, torch.Tensor] = {}
    T = cfg.n_types

    def stack(prefix, dims):
        for t in range(T):
            for li, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
                out[f"{prefix}.{t}.layers.{2 * li}.weight"] = torch.empty(dout, din, device="meta")
                out[f"{prefix}.{t}.layers.{2 * li}.bias"] = torch.empty(dout, device="meta")

    stack("deepSDFensemble.layers", [cfg.geo_in_dim] + [cfg.hidden_dim_geo] * cfg.n_layers_geo + [1])
    out["communcation_bottleneck1.weight"] = torch.empty(cfg.bottleneck_dim, cfg.hidden_dim_geo, device="meta")
    out["communcation_bottleneck1.bias"] = torch.empty(cfg.bottleneck_dim, device="meta")
    out["communcation_bottleneck2.weight"] = torch.empty(cfg.bottleneck_dim, cfg.bottleneck_dim, device="meta")
    out["communcation_bottleneck2.bias"] = torch.empty(cfg.bottleneck_dim, device="meta")
    stack("aggr_app.layers", [cfg.app_in_dim] + [cfg.hidden_dim_app] * cfg.n_layers_app + [3])
    P = cfg.pos_mlp_dim
    for i, (din, dout) in enumerate([(cfg.lat_dim_glob, P), (P, P), (P, 3 * cfg.n_anchors)]):
        out[f"mlp_pos.{2 * i}.weight"] = torch.empty(dout, din, device="meta")
        out[f"mlp_pos.{2 * i}.bias"] = torch.empty(dout, device="meta")
    return out


def official_ex_shapes(cfg: MonoNPHMConfig) -> Dict[str, torch.Tensor]:
    """Expected official ex_decoder names -> meta tensors (reference §2.3)."""
    out = {
        "compressor.0.weight": torch.empty(cfg.lat_dim_id_compressed, cfg.compressor_in_dim, device="meta"),
        "compressor.0.bias": torch.empty(cfg.lat_dim_id_compressed, device="meta"),
    }
    H, L, din = cfg.hidden_dim_ex, cfg.n_layers_ex, cfg.ex_in_dim
    for i in range(L + 1):
        i_in = din if i == 0 else H
        if i == cfg.ex_skip_layer:
            i_in = H + din
        o = H if i < L else 3 + cfg.n_hyper
        out[f"defDeepSDF.lin{i}.weight"] = torch.empty(o, i_in, device="meta")
        out[f"defDeepSDF.lin{i}.bias"] = torch.empty(o, device="meta")
    return out


def official_to_project_state(id_state: Dict[str, torch.Tensor], ex_state: Dict[str, torch.Tensor],
                              cfg: MonoNPHMConfig) -> Dict[str, torch.Tensor]:
    """Map official id_decoder / ex_decoder state dicts to `MonoNPHM.state_dict()` names (stacking types)."""
    T = cfg.n_types
    out: Dict[str, torch.Tensor] = {}
    for prefix, mine, n_lin in (("deepSDFensemble.layers", "id_model.geo", cfg.n_layers_geo + 1),
                                ("aggr_app.layers", "id_model.app", cfg.n_layers_app + 1)):
        for li in range(n_lin):
            for kind, dst in (("weight", "weights"), ("bias", "biases")):
                out[f"{mine}.{dst}.{li}"] = torch.stack(
                    [id_state[f"{prefix}.{t}.layers.{2 * li}.{kind}"] for t in range(T)]).float()
    for i in (1, 2):
        for kind in ("weight", "bias"):
            out[f"id_model.bottleneck{i}.{kind}"] = id_state[f"communcation_bottleneck{i}.{kind}"].float()
    for i in (0, 2, 4):
        for kind in ("weight", "bias"):
            out[f"id_model.mlp_pos.{i}.{kind}"] = id_state[f"mlp_pos.{i}.{kind}"].float()
    for kind in ("weight", "bias"):
        out[f"ex_model.compressor.{kind}"] = ex_state[f"compressor.0.{kind}"].float()
        for i in range(cfg.n_layers_ex + 1):
            out[f"ex_model.lins.{i}.{kind}"] = ex_state[f"defDeepSDF.lin{i}.{kind}"].float()
    return out


def project_to_official_state(model: MonoNPHM) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Inverse of `official_to_project_state` (used by tests and for exporting)."""
    cfg = model.cfg
    sd = model.state_dict()
    idd: Dict[str, torch.Tensor] = {}
    for prefix, mine, n_lin in (("deepSDFensemble.layers", "id_model.geo", cfg.n_layers_geo + 1),
                                ("aggr_app.layers", "id_model.app", cfg.n_layers_app + 1)):
        for t in range(cfg.n_types):
            for li in range(n_lin):
                idd[f"{prefix}.{t}.layers.{2 * li}.weight"] = sd[f"{mine}.weights.{li}"][t].clone()
                idd[f"{prefix}.{t}.layers.{2 * li}.bias"] = sd[f"{mine}.biases.{li}"][t].clone()
        if prefix.startswith("deep"):
            for i in (1, 2):
                for kind in ("weight", "bias"):
                    idd[f"communcation_bottleneck{i}.{kind}"] = sd[f"id_model.bottleneck{i}.{kind}"].clone()
    for i in (0, 2, 4):
        for kind in ("weight", "bias"):
            idd[f"mlp_pos.{i}.{kind}"] = sd[f"id_model.mlp_pos.{i}.{kind}"].clone()
    exd: Dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        exd[f"compressor.0.{kind}"] = sd[f"ex_model.compressor.{kind}"].clone()
    for i in range(cfg.n_layers_ex + 1):
        for kind in ("weight", "bias"):
            exd[f"defDeepSDF.lin{i}.{kind}"] = sd[f"ex_model.lins.{i}.{kind}"].clone()
    return idd, exd


def find_official_checkpoint(exp_dir: PathLike, epoch: Optional[int] = None) -> Path:
    """`<exp>/checkpoints/checkpoint_epoch_<N>.tar`; the highest N when epoch is None."""
    ck = Path(exp_dir) / "checkpoints"
    if epoch is not None:
        return ck / f"checkpoint_epoch_{int(epoch)}.tar"
    found = []
    for p in ck.glob("checkpoint_epoch_*.tar") if ck.is_dir() else []:
        m = re.fullmatch(r"checkpoint_epoch_(\d+)\.tar", p.name)
        if m:
            found.append((int(m.group(1)), p))
    if not found:
        raise CheckpointError(f"no checkpoints/checkpoint_epoch_<N>.tar in {exp_dir}",
                              "point at the official experiment folder (the one holding configs.yaml)")
    return max(found)[1]


def load_mean_anchors(path: PathLike, n_anchors: int) -> torch.Tensor:
    """Read the user's `anchors_65.npy` (float64 (n,3)); rounded to float32 exactly as the official code does."""
    p = Path(path)
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read mean anchors {p}: {type(e).__name__}: {e}",
                              "supply the official assets/anchors_65.npy") from None
    if a.shape != (n_anchors, 3) or not np.isfinite(a).all():
        raise CheckpointError(f"mean anchors {p.name} have shape {a.shape}, expected ({n_anchors}, 3)",
                              "supply assets/anchors_65.npy from the official MonoNPHM repository")
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


def load_official(exp_dir: PathLike, mean_anchors: Union[PathLike, torch.Tensor, np.ndarray, None] = None,
                  epoch: Optional[int] = None, dtype: torch.dtype = torch.float32) -> MonoNPHM:
    """Build a `MonoNPHM` from an official experiment folder (configs.yaml + checkpoints/checkpoint_epoch_N.tar).

    mean_anchors: path to the official `assets/anchors_65.npy` or an array; default `<exp>/anchors_65.npy`.
    """
    import yaml  # local: the yaml dependency is only needed for official folders

    exp = Path(exp_dir)
    cfg_path = exp / "configs.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} not found", "point at the official experiment folder (it holds configs.yaml)")
    try:
        raw = yaml.safe_load(cfg_path.read_text())
        cfg = MonoNPHMConfig.from_official_yaml(raw)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"configs.yaml is not a valid MonoNPHM experiment config: {e}",
                              "use the configs.yaml written next to the checkpoints by the official trainer") from None
    if mean_anchors is None:
        mean_anchors = exp / "anchors_65.npy"
    if isinstance(mean_anchors, (str, os.PathLike)):
        A = load_mean_anchors(mean_anchors, cfg.n_anchors)
    else:
        A = torch.as_tensor(np.asarray(mean_anchors), dtype=torch.float32).reshape(cfg.n_anchors, 3)
    ck_path = find_official_checkpoint(exp, epoch)
    ck = safe_torch_load(ck_path)
    if not isinstance(ck, dict) or "id_decoder" not in ck or "ex_decoder" not in ck:
        keys = sorted(ck.keys()) if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(f"{ck_path.name} lacks 'id_decoder'/'ex_decoder' (found {keys})",
                              "this does not look like an official MonoNPHM training checkpoint")
    hint = f"the checkpoint and {cfg_path.name} disagree: use the configs.yaml from the same experiment folder"
    _check_state(ck["id_decoder"], official_id_shapes(cfg), "id_decoder", hint)
    _check_state(ck["ex_decoder"], official_ex_shapes(cfg), "ex_decoder", hint)
    model = MonoNPHM(cfg, A)
    state = official_to_project_state(ck["id_decoder"], ck["ex_decoder"], cfg)
    state["id_model.mean_anchors"] = A
    model.load_state_dict(state, strict=True)
    # Mean anchors were rounded to float32 above (as officially), so a float64 model keeps those values.
    return model.to(dtype).eval()


# ---------------------------------------------------------------------------------------------- project format
def save_model(path_dir: PathLike, model: MonoNPHM, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write `<dir>/model.pt` (plain float32 state dict incl. mean anchors) and `<dir>/config.json`."""
    d = Path(path_dir)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    tmp = d / (PROJECT_WEIGHTS + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, d / PROJECT_WEIGHTS)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": model.cfg.to_dict(), "extra": extra or {}}
    tmpj = d / (PROJECT_CONFIG + ".tmp")
    tmpj.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmpj, d / PROJECT_CONFIG)
    return d


def read_project_config(path: PathLike) -> Tuple[MonoNPHMConfig, Dict[str, Any]]:
    d = Path(path)
    if d.is_file():
        d = d.parent
    cj = d / PROJECT_CONFIG
    try:
        meta = json.loads(cj.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{cj} not found", f"a project model folder holds {PROJECT_WEIGHTS} and {PROJECT_CONFIG}") from None
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{cj.name} is not valid JSON: {e}", "the file is corrupt; re-export the model") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{cj.name} is not a {FORMAT_NAME} config", "expected the config.json written by save_model")
    if int(meta.get("version", -1)) > FORMAT_VERSION:
        raise CheckpointError(f"{cj.name} has format version {meta.get('version')} > {FORMAT_VERSION}",
                              "update the add-on/backend")
    try:
        cfg = MonoNPHMConfig.from_dict(meta["config"])
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{cj.name} has an invalid model config: {e}", "re-export the model") from None
    return cfg, meta.get("extra", {}) or {}


def load_model(path: PathLike, dtype: torch.dtype = torch.float32) -> MonoNPHM:
    """Load a project model folder (or its model.pt). The JSON `extra` dict is attached as `model.extra`."""
    d = Path(path)
    if d.is_file():
        d = d.parent
    cfg, extra = read_project_config(d)
    state = safe_torch_load(d / PROJECT_WEIGHTS)
    model = MonoNPHM(cfg)
    expected = {k: v for k, v in model.state_dict().items()}
    _check_state(state, expected, PROJECT_WEIGHTS, f"{PROJECT_WEIGHTS} and {PROJECT_CONFIG} must come from the same save_model call")
    model.load_state_dict(state, strict=True)
    model.extra = extra
    return model.to(dtype).eval()


def represents_hair(model) -> bool:
    """Whether a loaded model represents hair volume (its ``extra`` has a ``hair`` entry: trained with hair)."""
    return bool((getattr(model, "extra", None) or {}).get("hair"))


def load_encoders(path: PathLike) -> Tuple[Optional[CodeEncoders], Optional[ArkitRegressor]]:
    """(CodeEncoders, ArkitRegressor) of a project model folder, or (None, None) when it has none."""
    d = Path(path)
    cfg, extra = read_project_config(d)
    f = d / extra.get("encoders_file", ENCODERS_FILE)
    if not f.exists():
        return None, None
    state = safe_torch_load(f)
    # identity inputs: ICT weights (+ hair style parameters in models trained with hair)
    enc = CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp, n_id=state["encoders"]["geo.weight"].shape[1])
    enc.load_state_dict(state["encoders"])
    reg = ArkitRegressor(cfg.dim_exp)
    reg.load_state_dict(state["arkit_regressor"])
    return enc.eval(), reg.eval()
