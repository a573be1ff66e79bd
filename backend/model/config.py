"""Model configuration: every size of the MonoNPHM networks lives here.

The same code builds the official size (reference §1) and the compact built-in size; nothing in the
network modules hard-codes a dimension.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

# Official tracking marching-cubes box (reference §4.9), posed NPHM space.
OFFICIAL_MESH_BOX: Tuple[Tuple[float, float, float], Tuple[float, float, float]] = (
    (-0.55, -0.5, -0.95),
    (0.55, 0.75, 0.4),
)


@dataclass
class MonoNPHMConfig:
    """All sizes and constants of a MonoNPHM model.

    Field names follow the paper/reference; the official yaml keys are mapped in `from_official_yaml`.
    """

    # --- anchors / ensemble (reference §1.4) ---
    n_anchors: int = 65                # real anchors; a virtual (global) anchor is added at the origin
    n_symm_pairs: int = 30             # anchors (2i, 2i+1), i < n_symm_pairs, share one MLP (x-flip for 2i+1)
    n_neighbors: int = 12              # kNN anchors per query (+ the virtual anchor)
    sigma_neighbor: int = 8            # sigma = d_(sigma_neighbor) / blend_std (official hard-codes the 8th)
    blend_std: float = 3.75
    global_anchor_dist: float = 0.75   # constant distance assigned to the virtual anchor
    # --- identity codes ---
    lat_dim_glob: int = 64             # shared size of g_geo and g_app
    lat_dim_loc_geo: int = 32
    lat_dim_loc_app: int = 32
    pos_mlp_dim: int = 64              # hidden width of the anchor predictor (hard-coded 64 officially)
    # --- geometry / colour ensembles ---
    hidden_dim_geo: int = 200
    n_layers_geo: int = 4              # hidden Linear layers (softplus beta=100); plus one output Linear
    hidden_dim_app: int = 200
    n_layers_app: int = 4              # hidden Linear layers (ReLU); plus one output Linear
    bottleneck_dim: int = 16           # communication bottleneck geo -> colour (hard-coded 16 officially)
    softplus_beta: float = 100.0
    # --- deformation network (reference §1.6) ---
    lat_dim_exp: int = 100
    lat_dim_id_compressed: int = 16
    hidden_dim_ex: int = 400
    n_layers_ex: int = 6               # lin0..lin{n}, skip into lin{n//2}
    n_hyper: int = 2
    # --- inference defaults ---
    prune_mass: float = 1e-3           # max blend mass dropped per point on the fast (non-exact) path;
                                       # SDF/colour error <= prune_mass * max_edge |f_edge| (see ensemble.prune_mask)
    mesh_box: Tuple[Tuple[float, float, float], Tuple[float, float, float]] = field(
        default_factory=lambda: OFFICIAL_MESH_BOX
    )
    name: str = "official"

    # ------------------------------------------------------------------ presets
    @classmethod
    def official(cls) -> "MonoNPHMConfig":
        """The released MonoNPHM size (`scripts/configs/mononphm.yaml`)."""
        return cls()

    @classmethod
    def builtin(cls) -> "MonoNPHMConfig":
        """Compact CPU-friendly size, same anchor semantics (65 anchors / 30 mirror pairs)."""
        return cls(
            n_neighbors=8,
            sigma_neighbor=8,
            lat_dim_glob=32,
            lat_dim_loc_geo=16,
            lat_dim_loc_app=16,
            hidden_dim_geo=64,
            n_layers_geo=4,
            hidden_dim_app=64,
            n_layers_app=3,
            lat_dim_exp=32,
            lat_dim_id_compressed=16,
            hidden_dim_ex=128,
            n_layers_ex=5,
            name="builtin",
        )

    @classmethod
    def from_official_yaml(cls, cfg: Dict[str, Any]) -> "MonoNPHMConfig":
        """Build from an official experiment `configs.yaml` (already parsed into a dict).

        Only the keys the official model code actually reads are used (reference §1.2, §1.6).
        """
        try:
            dec = cfg["decoder"]
            idc = dec["id"]
            gnn = idc["gnn"]
            ex = dec["ex"]
            c = cls(
                n_anchors=int(idc["nloc"]),
                n_symm_pairs=int(idc["nsymm_pairs"]),
                n_neighbors=int(idc["nneigh"]),
                blend_std=float(idc["blend_std"]),
                lat_dim_glob=int(idc["lat_dim_glob"]),
                lat_dim_loc_geo=int(idc["lat_dim_loc_geo"]),
                lat_dim_loc_app=int(idc["lat_dim_loc_app"]),
                hidden_dim_geo=int(gnn["hidden_dim_geo"]),
                n_layers_geo=int(gnn["nlayers_geo"]),
                hidden_dim_app=int(gnn["hidden_dim_app"]),
                n_layers_app=int(gnn["nlayers_app"]),
                lat_dim_exp=int(ex["lat_dim_ex"]),
                lat_dim_id_compressed=int(ex["lat_dim_id"]),
                hidden_dim_ex=int(ex["hidden_dim"]),
                n_layers_ex=int(ex["nlayers"]),
                n_hyper=int(ex["nhyper"]),
                name="official-yaml",
            )
        except (KeyError, TypeError, ValueError) as e:  # malformed yaml -> caller wraps into CheckpointError
            raise ValueError(f"configs.yaml lacks or has a malformed key: {e!r}") from e
        for key in ("nfreq_bands_geo", "nfreq_bands_app"):
            if int(gnn.get(key, 0) or 0) != 0:
                raise ValueError(f"decoder.id.gnn.{key} != 0 (positional encoding) is not supported")
        if ex.get("mode", "compress") != "compress":
            raise ValueError(f"decoder.ex.mode={ex.get('mode')!r} is not supported (only 'compress')")
        c.validate()
        return c

    # ------------------------------------------------------------------ derived sizes
    @property
    def n_types(self) -> int:
        """Number of distinct local MLPs: one per mirror pair, one per unpaired anchor, one global."""
        return self.n_anchors - self.n_symm_pairs + 1

    @property
    def n_codes_local(self) -> int:
        """Local code blocks: one per anchor plus one for the virtual/global anchor."""
        return self.n_anchors + 1

    @property
    def dim_geo(self) -> int:
        return self.lat_dim_glob + self.lat_dim_loc_geo * self.n_codes_local

    @property
    def dim_app(self) -> int:
        return self.lat_dim_glob + self.lat_dim_loc_app * self.n_codes_local

    @property
    def dim_exp(self) -> int:
        return self.lat_dim_exp

    @property
    def dim_canonical(self) -> int:
        """Canonical query dimension: xyz + hyper."""
        return 3 + self.n_hyper

    @property
    def geo_in_dim(self) -> int:
        return self.lat_dim_glob + self.lat_dim_loc_geo + self.dim_canonical

    @property
    def app_in_dim(self) -> int:
        return self.lat_dim_glob + self.lat_dim_loc_app + self.bottleneck_dim

    @property
    def ex_in_dim(self) -> int:
        return 3 + self.lat_dim_id_compressed + self.lat_dim_exp

    @property
    def compressor_in_dim(self) -> int:
        return self.dim_geo + 3 * self.n_anchors

    @property
    def ex_skip_layer(self) -> int:
        return self.n_layers_ex // 2

    def validate(self) -> None:
        if self.n_anchors < 1 or not (0 <= 2 * self.n_symm_pairs <= self.n_anchors):
            raise ValueError("need 0 <= 2*n_symm_pairs <= n_anchors")
        if not (1 <= self.n_neighbors <= self.n_anchors):
            raise ValueError("n_neighbors must be in [1, n_anchors]")
        if not (1 <= self.sigma_neighbor):
            raise ValueError("sigma_neighbor must be >= 1")
        if self.n_layers_geo < 1 or self.n_layers_app < 1 or self.n_layers_ex < 2:
            raise ValueError("too few layers")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mesh_box"] = [list(self.mesh_box[0]), list(self.mesh_box[1])]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "MonoNPHMConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        d = dict(d)
        if "mesh_box" in d:
            lo, hi = d["mesh_box"]
            d["mesh_box"] = (tuple(float(v) for v in lo), tuple(float(v) for v in hi))
        c = cls(**d)
        c.validate()
        return c

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "MonoNPHMConfig":
        return cls.from_dict(json.loads(s))
