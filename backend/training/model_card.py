"""Write MODEL_CARD.md for an exported model from measured files (no hand-typed numbers).

    python -m backend.training.model_card --model backend/models/builtin --eval runs/builtin/eval_final.json \
        [--quality runs/builtin/quality.json] [--speed runs/builtin/speed.jsonl] [--log runs/builtin/log.jsonl] \
        [--base-model DIR] [--expression-response resp.json [--expression-response-base resp_base.json]] \
        [--hair-benchmark hair_bench.json]

A model trained with hair (``extra["hair"]`` in config.json) gets the hair coverage, data and results; with
``--base-model`` (the model it was warm-started from) the card lists both training stages.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from .. import BUILTIN_MODEL_DIR
from ..tracking.region_image import load_regressors
from .data import CORR_EMPHASIS, EXPR_EMPHASIS


def _f(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def image_readers_line(model_dir) -> str | None:
    """The card's line on the model folder's image readers (``tracking.region_image``), None without one."""
    readers = load_regressors(model_dir)
    if not readers:
        return None
    read = "; ".join(f"around the {r.region.name} (`{r.region.file_name}`, {len(r.net.members)} networks averaged): "
                     f"{', '.join(r.channels)}" for r in readers.values())
    return ("- **Channels from the image**: neither the fit nor MediaPipe's points return frowns, a rolled lower lip, "
            "press, dimple, jaw sideways/forward or squints, and the points read the brows compressed; the tracker "
            f"reads the ICT channels listed here from patches of the frame ({read}), trained on renders of ICT-FaceKit "
            "heads with MakeHuman skin detail (`backend/training/region_image.py`; which of them ship: *ARKit output "
            "per channel*).")


def arkit_output_line(model_dir) -> str | None:
    """The card's line on the model folder's ARKit output tables (``arkit_channels.json`` and the presets' own),
    None without one."""
    from ..contracts.track_config import PRESET_NAMES
    from ..tracking.channel_table import BASE_PRESET, FILE_NAME, ChannelTable, table_file

    if not (Path(model_dir) / FILE_NAME).is_file():
        return None
    own = [p for p in PRESET_NAMES if p != BASE_PRESET and (Path(model_dir) / table_file(p)).is_file()]
    files = f"`{FILE_NAME}` for {BASE_PRESET}" + "".join(f", `{table_file(p)}` for {p}" for p in own)

    def listed(names):
        return ", ".join(f"`{n}`" for n in names)

    zeroed = ChannelTable.load(model_dir).zeroed()
    others = ""
    for p in own:
        z = ChannelTable.load(model_dir, p).zeroed()
        others += f"; in the {p} preset's table " + ("the same" if z == zeroed else f"{len(z)}: {listed(z)}")
    return (f"- **ARKit output per channel** ({files}; `backend/tracking/channel_table.py`): which reading each "
            "channel ships (the fit, the landmarks, the mouth, jaw, eye or brow image, or a blend) and its response, "
            "chosen by cross-validation on the tuning clips tracked with the table's preset "
            f"(`backend.training.arkit_channels`; a preset without its own table uses {BASE_PRESET}'s). "
            f"{len(zeroed)} of 52 channels are always 0, because no reading tracked them better than zeros or the "
            f"model has none (gaze, tongue): {listed(zeroed)}{others}.")


def write_card(model_dir, eval_json, quality_json=None, speed_jsonl=None, log_jsonl=None, notes=None,
               base_model=None, response_json=None, response_base_json=None, hair_bench_json=None):
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "config.json").read_text())
    cfg, extra = meta["config"], meta["extra"]
    hair = extra.get("hair")
    base_tr = json.loads((Path(base_model) / "config.json").read_text())["extra"].get("training", {}) \
        if base_model else None
    ev = json.loads(Path(eval_json).read_text())
    tr = extra.get("training", {})
    size_mb = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file() and p.suffix in (".pt", ".json")) / 1e6
    import torch
    n_par = sum(v.numel() for v in torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True).values())

    steps_s = None
    if log_jsonl and Path(log_jsonl).exists():
        rows = [json.loads(l) for l in Path(log_jsonl).read_text().splitlines() if l.strip()]
        if rows:
            last = rows[-1]
            steps_s = last["step"] / max(1.0, last["elapsed"])

    L = []
    L.append("# Built-in head model: compact MonoNPHM trained on synthetic ICT-FaceKit heads"
             + (" with procedural hair\n" if hair else "\n"))
    L.append("This is the model `python -m backend` uses when no other model is given. It is the MonoNPHM "
             "architecture of `backend/model` (65 anchors with the official semantics, local MLP ensemble with "
             "mirror-pair weight sharing, colour field on geometry features, backward deformation with 2 hyper "
             "dimensions) at a compact size, trained from scratch on CPU. It does not contain or need the "
             "official MonoNPHM weights.\n")
    L.append("## Coverage (what the model represents)\n")
    L.append("- **Head, face and neck** (ICT-FaceKit light head: face, head and neck, mouth socket).")
    if hair:
        L.append("- **Hair volume** (procedural, `backend/training/hair.py`): closed hair volumes over the scalp "
                 "(hairline, thickness, length from above the ears to the shoulders, parting, bangs, side volume, "
                 "asymmetry), beards and moustaches, with hair colour and streaks. The identity input is `[100 ICT "
                 "weights, " + f"{len(hair['params'])} hair parameters]`; all hair parameters 0 = bald. Real hair "
                 "detail (strands, curls, flyaways) is not represented: the volumes are smooth.")
    else:
        L.append("- **Bald scalp**: no hair geometry; hair/stubble appears only as albedo colour.")
    L.append("- **Static eyes**: front hemispheres of the eyeballs, no gaze (ARKit `eyeLook*` are never driven and "
             "stay 0)." + (" Eyelid and brow motion: see *Expression response* below; the tracker also reads "
                          "blinks, squints, wide eyes and brows from the landmarks (`expression_init.npz`; which of them ship: "
                          "*ARKit output per channel*)." if hair
                          else " The eyelids and brows barely deform (a full blink moves the upper lid by 0.2 mm, "
                          "ICT-FaceKit by 8 mm: backend/evaluation/README.md); the tracker reads blinks, squints, "
                          "wide eyes and brows from the landmarks (`expression_init.npz`; which of them ship: *ARKit output "
                          "per channel*)."))
    L += [line for line in (image_readers_line(model_dir), arkit_output_line(model_dir)) if line]
    L.append("- **No teeth, no tongue** (`tongueOut` stays 0); the mouth interior is the ICT mouth socket.")
    L.append("- Not covered: " + ("" if hair else "hair volume, ") + "glasses, accessories, ears beyond the ICT "
             "template's detail, torso/shoulders.\n")
    L.append("## Data\n")
    L.append("- ICT-FaceKit light head model (MIT licence, ICT-VGL/ICT-FaceKit): 100 PCA identity modes (weights "
             "~N(0,1)), 53 ARKit-named expression blendshapes. Read from a path at training time; this folder "
             "holds no training data (only derived numbers: the anchor vertex table and the mean anchors).")
    L.append("- Fresh random samples every step: identity weights N(0,1) over all 100 modes; sparse realistic "
             "expressions (presets: symmetric/asymmetric smiles, wide jaw opening, blinks, winks, speech shapes, "
             "frowns, brow raises, puckers, cheek puffs, sneers; plus 0–3 random channels; 12 % neutral); "
             "procedural albedo in the mesh's UV space (skin tone, lips, brows, scalp stubble/hair colour, iris, "
             "cheek redness, UV-space noise).")
    if hair:
        L.append("- Hair: 80 % of samples get scalp hair (thickness 5 mm-4 cm, hairline, bangs 35 %, length "
                 "ear..shoulders with a hanging curtain below the skull, parting 50 %, volume, asymmetry 50 %), 20 % "
                 "a beard, 20 % a moustache. Each is a signed-distance bound around the posed head (shells cropped "
                 "by planes, a capsule keeping the lips free, smooth unions); head + hair targets are their union: "
                 "head surface points under the hair are replaced by hair points (half of the non-face surface "
                 "points), near/off/far targets are the minimum of head and hair distances, hair points carry the "
                 "hair colour with streaks.")
        L.append(f"- Eyelids and brows: their triangles are sampled {1 + EXPR_EMPHASIS:.0f}x as densely (surface, "
                 f"near-surface, correspondences) and their correspondences weigh {1 + CORR_EMPHASIS:.0f}x; an eye "
                 "closing (blink + squint/2 > 0.3) drops its eyeball from the posed supervision (the lid slides "
                 "over it).")
    L.append("- Head placed in NPHM space: `x = (v_cm + (0, -3, -6)) / 25` (y up, z forward, 1 unit = 0.25 m).")
    L.append("- Supervision per sample: 500 face + 200 other surface points with normals and colours, 500 "
             "near-surface points with signed-distance targets (offset along the normal, sigma 1.5 mm, bounded by "
             "a KD-tree distance), 150 off-surface and 160 far points with approximate signed distances, 250 "
             "neutral<->posed correspondences (face + mouth), ground-truth anchors (the 65 anchor vertices of the "
             "identity's neutral mesh).")
    L.append("- Held out, never trained on: validation identities from a separate seed stream, and 5 expression "
             "combinations (`HELDOUT_COMBOS` in `backend/training/data.py`) that the training sampler rejects.\n")
    L.append("## Anchors\n")
    L.append("The official mean anchors (`anchors_65.npy`, NPHM space) were similarity-aligned to the ICT mean head "
             "(nearest-vertex ICP), snapped to its surface and symmetrised (odd pair member = mirror vertex of the "
             "even one; midline anchors on x = 0), keeping the official order. `config.json` → `extra` stores "
             "`anchor_ict_vertex` (the ICT vertex index of each anchor) and `mean_anchors` (their positions on the "
             "mean head, NPHM units; also the model's `mean_anchors` buffer).\n")
    L.append("## Conditioning encoders and ARKit regressor (`encoders.pt`)\n")
    L.append("- `z_geo = Linear(100 ICT identity weights" + (f" + {len(hair['params'])} hair parameters: "
                                                         + ", ".join(hair["params"]) if hair else "")
             + ")`, `z_app = Linear(16 appearance parameters)`, "
             "`z_exp = Linear(53 ICT expression weights)` (no bias: zero weights give z_exp = 0 = neutral). The "
             "tracker can optimise in these low-dimensional spaces; `encode_*(zeros)` are the mean codes.")
    L.append("- ARKit regressor: MLP z_exp → 52 ARKit weights (`backend.contracts.arkit.ARKIT_NAMES` order).\n")
    L.append("## Configuration\n")
    L.append(f"- Config name `{cfg['name']}`: {cfg['n_anchors']} anchors ({cfg['n_symm_pairs']} mirror pairs), "
             f"{cfg['n_neighbors']} nearest anchors per query + global, geometry MLP {cfg['n_layers_geo']}×"
             f"{cfg['hidden_dim_geo']}, colour MLP {cfg['n_layers_app']}×{cfg['hidden_dim_app']}, codes: global "
             f"{cfg['lat_dim_glob']}, local {cfg['lat_dim_loc_geo']}/{cfg['lat_dim_loc_app']} per anchor "
             f"(z_geo {cfg['lat_dim_glob'] + cfg['lat_dim_loc_geo'] * (cfg['n_anchors'] + 1)}-d), z_exp "
             f"{cfg['lat_dim_exp']}-d, deformation MLP {cfg['n_layers_ex']}×{cfg['hidden_dim_ex']}, "
             f"{cfg['n_hyper']} hyper dims.")
    lo, hi = cfg["mesh_box"]
    L.append(f"- Mesh box (the tracker's marching cubes, NPHM units): x {lo[0]}..{hi[0]}, y {lo[1]}..{hi[1]}, "
             f"z {lo[2]}..{hi[2]}" + (" (the neck down to the tracker's neck line, and shoulder-length hair: "
                                      "`backend/training/hair.py` MESH_BOX)." if hair else "."))
    L.append(f"- Parameters: {n_par:,} (model) ; files {size_mb:.1f} MB (float32).")
    L.append("- Weights: exponential moving average (decay 0.999" + ("; 0.995 in stage 2" if base_tr else "")
             + ") of the training weights.\n")
    L.append("## Training\n")
    if base_tr:
        L.append(f"- Stage 1 (the bald model): {base_tr.get('step')} steps from scratch, {base_tr.get('minutes')} min "
                 "(hyper-parameters below). Stage 2 (this model): warm-started from it with `--init-from` (new hair "
                 "columns of the identity encoder at zero, so stage 1's heads are reproduced at step 0), eyelid/brow "
                 "expression columns rescaled to the median (`--boost-weak-expressions`), then fine-tuned on the "
                 "data with hair with lr 5e-4 / 1e-3 (encoders), 50 warm-up steps, cosine over the stage, EMA 0.995, "
                 "correspondences at full weight throughout; the numbers below are stage 2's.")
    L.append(f"- Steps: {tr.get('step')} (batch 8 fresh heads), training time {tr.get('minutes')} min"
             + (f" (~{steps_s:.2f} steps/s average)" if steps_s else "") + ".")
    L.append(f"- Hardware: {platform.machine()} CPU, 2 cores shared with 3 other engineers' jobs (load average "
             "5–7 most of the time), 1 torch thread; no GPU.")
    L.append("- Losses (reference §3.4 weights): surface |SDF| 1, near-surface SDF regression 1, off/far signed "
             "distance 0.3, normals 0.3 and eikonal 0.15 (on a 96-point surface subset + off/far subsets, double "
             "backward), space 0.01, colour L1 1, code L2 (0.01 / 0.005 / 0.05), symmetry 0.01 / 1e-4, anchors 7.5, "
             "correspondences 1000 (x0.25 after 30 %), zero deformation 0.0025, neutral-zero 0.001, hyper 0.05; "
             "ARKit regressor MSE on detached codes.")
    L.append("- AdamW (lr 1e-3, weight decay 5e-4, grad clip 1) for the networks; Adam (lr 2e-3) for the encoders "
             "and the regressor; 200 warm-up steps then cosine decay to 2 % over the planned length "
             "(`--total-steps`).")
    L.append("- Reproduce / resume: `python -m backend.training.train --out runs/builtin --total-steps N` (the same "
             "command resumes exactly from `runs/builtin/ckpt_last.pt`), then `python -m backend.training.export "
             "runs/builtin/ckpt_last.pt` and `python -m backend.training.evaluate backend/models/builtin`.\n")
    L.append("## Held-out quality\n")
    L.append(f"Protocol: {ev['n_shapes']} shapes = held-out identities × (neutral, 2 held-out expression combos, 1 "
             f"random expression, 1 wide jaw opening). Codes are fitted to 6,000 GT surface points per shape "
             f"({ev['fit_steps']} Adam steps, shared identity, networks frozen, no images). Metric: distance from "
             f"{ev['n_eval_points']} GT face-region (ICT region 0) surface points to the model's zero level set "
             "along the SDF gradient (Newton projection), mm.\n")
    L.append("| | mean | median | p90 |")
    L.append("|---|---|---|---|")
    L.append(f"| all held-out shapes | **{_f(ev['mean_mm'])}** | {_f(ev['median_mm'])} | {_f(ev['p90_mm'])} |")
    L.append(f"| neutral | {_f(ev['neutral_mean_mm'])} | | |")
    L.append(f"| expressions | {_f(ev['expr_mean_mm'])} | | |")
    L.append(f"| held-out expression combos | {_f(ev['heldout_combo_mean_mm'])} | | |")
    L.append(f"| wide jaw opening | {_f(ev['jaw_open_mean_mm'])} | | |")
    L.append(f"| worst shape | {_f(ev['max_shape_mean_mm'])} | | |")
    L.append(f"| mean-template baseline (ICT mean head) | {_f(ev['baseline_mean_mm'])} | | |\n")
    per = ev.get("per_shape", [])
    if per:
        L.append("Per shape (mean mm): " + ", ".join(f"id{r['id']}/{r['expr']} {r['mean_mm']:.2f}" for r in per)
                 + ".\n")
    if ev.get("mesh_check"):
        L.append("Cross-check against marching-cubes meshes (grid spacing "
                 f"{ev['mesh_check'][0]['mesh_voxel_mm']:.2f} mm, finer than 256³ over the head): "
                 + ", ".join(f"id{r['id']}/{r['expr']}: projection {r['mean_mm']:.2f} mm vs mesh "
                             f"{r['mesh_mean_mm']:.2f} mm" for r in ev["mesh_check"]) + ".\n")
    L.append(f"ARKit regressor on the held-out shapes (mean absolute error over the 43 channels the model drives, "
             f"weights in [0,1]): {_f(ev['arkit_mae_fitted'], 3)} from the fitted codes, "
             f"{_f(ev['arkit_mae_encoded'], 3)} from the encoded ground-truth codes; predicting all zeros gives "
             f"{_f(ev['arkit_mae_zero_baseline'], 3)}"
             + (f"; the fitted ICT weights mapped with `backend.contracts.arkit.ict_to_arkit` give "
                f"{_f(ev['arkit_mae_fitted_weights'], 3)}" if "arkit_mae_fitted_weights" in ev else "")
             + ". Codes fitted to surface points alone are ambiguous for expressions that barely move the "
             "surface, which bounds the fitted-code numbers.\n")
    if ev.get("hair"):
        h = ev["hair"]
        L.append("### Heads with hair (held out)\n")
        L.append(f"{h['n_shapes']} shapes: held-out identities with hair styles (`data.hair_validation_params`, beards "
                 "and moustaches allowed) × (neutral, one random expression). Identity and hair parameters are "
                 "fitted to surface points of head + hair as above; distances from the union's face-region points "
                 "and hair points to the zero level set (mm).\n")
        L.append("| | face mean | hair mean | hair p90 |")
        L.append("|---|---|---|---|")
        L.append(f"| this model | {_f(h['face_mean_mm'])} | **{_f(h['hair_mean_mm'])}** | {_f(h['hair_p90_mm'])} |")
        if h.get("baseline"):
            b = h["baseline"]
            L.append(f"| {b.get('label', 'baseline')} | {_f(b['face_mean_mm'])} | {_f(b['hair_mean_mm'])} | "
                     f"{_f(b['hair_p90_mm'])} |")
        L.append("")
    if response_json and Path(response_json).exists():
        r = json.loads(Path(response_json).read_text())["groups"]
        base = json.loads(Path(response_base_json).read_text())["groups"] \
            if response_base_json and Path(response_base_json).exists() else None
        L.append("### Expression response (`python -m backend.training.expression_response`)\n")
        L.append("Mean head, one full ICT channel group at a time: the ICT vertices it moves by > 1 mm are warped "
                 "forward by the model with that expression's code; mean displacement (mm) against ICT-FaceKit's"
                 + (" and the base model's" if base else "") + ".\n")
        L.append("| channel group | ICT-FaceKit | this model |" + (" base model |" if base else ""))
        L.append("|---|---|---|" + ("---|" if base else ""))
        for name, g in r.items():
            L.append(f"| {name} | {_f(g['ict_mm'])} | {_f(g['model_mm'])} |"
                     + (f" {_f(base[name]['model_mm'])} |" if base else ""))
        if "lid_ict_mm" in r.get("blink", {}):
            b = r["blink"]
            L.append(f"| blink, upper-lid landmarks | {_f(b['lid_ict_mm'])} | {_f(b['lid_model_mm'])} |"
                     + (f" {_f(base['blink']['lid_model_mm'])} |" if base else ""))
        L.append("")
    if hair_bench_json and Path(hair_bench_json).exists():
        hb = json.loads(Path(hair_bench_json).read_text())
        L.append("### Tracking rendered clips of held-out heads with hair (`benchmarks/hair_accuracy.py`)\n")
        L.append("| model | clips | face Chamfer-L1 mm | hair Chamfer-L1 mm (placed / shape) | silhouette IoU (min) |")
        L.append("|---|---|---|---|---|")
        for label, m in hb["models"].items():
            for kind in ("hair_clips", "bald_clips"):
                k = m[kind]
                L.append(f"| {label} | {kind.replace('_', ' ')} | {_f(k.get('face_chamfer_l1_mm'))} | "
                         f"{_f(k.get('hair_placed_chamfer_l1_mm'))} / {_f(k.get('hair_icp_chamfer_l1_mm'))} | "
                         f"{_f(k.get('silhouette_iou'))} ({_f(k.get('silhouette_iou_min'))}) |")
        L.append("")
    if quality_json and Path(quality_json).exists():
        q = json.loads(Path(quality_json).read_text())
        q = sorted(q, key=lambda r: (r.get("step") or 0))
        L.append("### Quality vs training time\n")
        L.append("| step | training min | held-out mean mm | median mm | p90 mm | ARKit MAE (fitted, joint regressor) |")
        L.append("|---|---|---|---|---|---|")
        for r in q:
            L.append(f"| {r['step']} | {r['train_minutes']:.0f} | {r['mean_mm']:.2f} | {r['median_mm']:.2f} | "
                     f"{r['p90_mm']:.2f} | {r['arkit_mae_fitted']:.3f} |")
        L.append("")
    if speed_jsonl and Path(speed_jsonl).exists():
        L.append("### Size / speed trade-off (1 thread, contended 2-core CPU)\n")
        L.append("| preset | params | MB | SDF no-grad pts/s | SDF+backward pts/s | with normals pts/s | train s/step |")
        L.append("|---|---|---|---|---|---|---|")
        for line in Path(speed_jsonl).read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            L.append(f"| {r['preset']} | {r['params']:,} | {r['mb_float32']} | {r['sdf_nograd_pts_s']:,} | "
                     f"{r['first_order_pts_s']:,} | {r['with_normals_pts_s']:,} | {r['train_s_per_step_B8']} |")
        L.append("")
    if notes:
        L.append("## Notes\n")
        L.append(notes.strip() + "\n")
    (model_dir / "MODEL_CARD.md").write_text("\n".join(L))
    return model_dir / "MODEL_CARD.md"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m backend.training.model_card")
    ap.add_argument("--model", default=str(BUILTIN_MODEL_DIR))
    ap.add_argument("--eval", required=True)
    ap.add_argument("--quality", default=None)
    ap.add_argument("--speed", default=None)
    ap.add_argument("--log", default=None)
    ap.add_argument("--notes", default=None, help="markdown file appended as Notes")
    ap.add_argument("--base-model", default=None, help="the model this one was warm-started from")
    ap.add_argument("--expression-response", default=None, help="expression_response --json of this model")
    ap.add_argument("--expression-response-base", default=None, help="... of the base model")
    ap.add_argument("--hair-benchmark", default=None, help="benchmarks/hair_accuracy.py --json output")
    a = ap.parse_args(argv)
    notes = Path(a.notes).read_text() if a.notes else None
    print(write_card(a.model, a.eval, a.quality, a.speed, a.log, notes, a.base_model, a.expression_response,
                     a.expression_response_base, a.hair_benchmark))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
