"""Resumable trainer for the built-in compact MonoNPHM.

    python -m backend.training.train --out runs/builtin [--data PATH] [--total-steps N] [--minutes M] ...
    python -m backend train --out runs/builtin ...            (same, through the backend CLI)

Fresh synthetic ICT-FaceKit samples every step; codes come from small encoders of the known ICT coefficients
(see encoders.py). Checkpoints (model, optimisers, RNG states, step) are written atomically every
``--ckpt-minutes`` and on SIGTERM/SIGINT; running the same command again resumes exactly.
Outputs in --out: ckpt_last.pt, snapshots/step_XXXXXXX.pt (weights only, for the quality-vs-time curve),
log.jsonl (losses), val.jsonl (held-out losses), losses.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data as D
from ..contracts.landmark_tables import MM_PER_UNIT
from ..model.parallel import set_threads
from ..model.encoders import N_ID, ArkitRegressor, CodeEncoders
from .hair import N_HAIR
from .losses import LOSS_WEIGHTS, OFF_CLAMP, symm_dist

WEAK_SHARE = 0.5  # expression channels with an encoder column below this share of the median are "weak"
from .modelwrap import build_model, model_config, query


# ---------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m backend.training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/builtin", help="run folder (checkpoints, logs, plots)")
    p.add_argument("--data", default=None, help="ICT-FaceKit npz or folder (default: shared data)")
    p.add_argument("--anchors", default=None, help="official anchors_65.npy (used once to place the anchors)")
    p.add_argument("--preset", default="builtin", choices=["builtin", "tiny"], help="model size")
    p.add_argument("--init-from", default=None, metavar="MODEL_DIR",
                   help="warm start a new run from an exported model folder (e.g. backend/models/builtin); identity "
                        "encoder inputs it lacks (the hair parameters) start at zero, so its heads are reproduced "
                        "at step 0. Ignored when the run resumes from its own checkpoint")
    p.add_argument("--total-steps", type=int, default=60000, help="length of the LR schedule (steps)")
    p.add_argument("--minutes", type=float, default=0.0, help="stop this sitting after M minutes (0 = no limit)")
    p.add_argument("--max-steps", type=int, default=0, help="stop this sitting at this global step (0 = total)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="network LR (AdamW)")
    p.add_argument("--lr-enc", type=float, default=2e-3, help="encoder / code LR (Adam)")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is best on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-minutes", type=float, default=4.0)
    p.add_argument("--snapshot-minutes", type=float, default=15.0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--grad-sub", type=int, default=96, help="surface points per shape with normal/eikonal terms")
    p.add_argument("--color-frac", type=float, default=0.45, help="fraction of surface points with colour loss")
    p.add_argument("--exact", action="store_true", help="no blend-weight pruning in training")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights")
    p.add_argument("--bald", action="store_true",
                   help="heads without hair only, and an identity encoder of the 100 ICT weights alone: the shipped "
                        "bald built-in model's form (a hair model's identity input adds the hair parameters)")
    p.add_argument("--boost-weak-expressions", action="store_true",
                   help="with --init-from: rescale the expression encoder columns of channels the model barely "
                        "drives to the median column norm (see Trainer.boost_weak_expression_columns)")
    p.add_argument("--corresp-decay-at", type=float, default=0.3,
                   help="fraction of the schedule after which the correspondence weight drops to 1/4 (1 = never)")
    p.add_argument("--lip-emphasis", type=float, default=0.0,
                   help="sample the lips (1 + E)x as densely (SampleSizes.lip_emphasis; 0 = as the shipped model)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def sizes_for(preset: str, lip_emphasis: float = 0.0) -> D.SampleSizes:
    if preset == "tiny":
        return D.SampleSizes(n_face=120, n_other=60, n_near=150, n_off=60, n_far=30, n_corr=60, n_kd=3000,
                             lip_emphasis=lip_emphasis)
    return D.SampleSizes(lip_emphasis=lip_emphasis)


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))


# ---------------------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        random.seed(args.seed)
        self.ict = D.ICTModel(args.data)
        anchors_path = Path(args.anchors) if args.anchors else D.default_anchor_path()
        self.anchor_vertices = D.derive_anchor_vertices(self.ict, np.load(anchors_path))
        self.mean_anchors = self.ict.neutral[self.anchor_vertices].astype(np.float32)
        self.cfg = model_config(args.preset)
        self.model = build_model(self.cfg, torch.from_numpy(self.mean_anchors))
        # identity = ICT identity weights (100) + hair style (N_HAIR; zeros = bald), or the ICT weights alone (--bald)
        n_id = N_ID if args.bald else N_ID + N_HAIR
        self.enc = CodeEncoders(self.cfg.dim_geo, self.cfg.dim_app, self.cfg.dim_exp, n_id=n_id)
        self.reg = ArkitRegressor(self.cfg.dim_exp)
        self.opt_net = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=5e-4)
        self.opt_enc = torch.optim.Adam(list(self.enc.parameters()) + list(self.reg.parameters()), lr=args.lr_enc)
        self.gen = D.Generator(self.ict, self.anchor_vertices, seed=args.seed,
                               sizes=sizes_for(args.preset, args.lip_emphasis), bald=args.bald)
        self.ema_params = [p.detach().clone() for p in self._ema_sources()]
        self.step = 0
        self.elapsed = 0.0
        self.last_snapshot = 0.0
        self.val_batch = self._make_val_batch()
        self.stop_requested = False

    # ---------------------------------------------------------------- EMA of weights (exported model)
    def _ema_sources(self):
        return list(self.model.parameters()) + list(self.enc.parameters()) + list(self.reg.parameters())

    @torch.no_grad()
    def update_ema(self):
        d = min(self.args.ema, (1.0 + self.step) / (10.0 + self.step))
        torch._foreach_lerp_(self.ema_params, [p.detach() for p in self._ema_sources()], 1.0 - d)

    def ema_state(self):
        """(model, encoders, regressor) state dicts with the EMA weights."""
        import copy
        m, e, r = copy.deepcopy(self.model), copy.deepcopy(self.enc), copy.deepcopy(self.reg)
        with torch.no_grad():
            for dst, src in zip(list(m.parameters()) + list(e.parameters()) + list(r.parameters()),
                                self.ema_params):
                dst.copy_(src)
        return m.state_dict(), e.state_dict(), r.state_dict()

    # ---------------------------------------------------------------- state
    def state_dict(self):
        return {
            "version": 1,
            "step": self.step,
            "elapsed": self.elapsed,
            "last_snapshot": self.last_snapshot,
            "config": self.cfg.to_dict(),
            "args": vars(self.args),
            "model": self.model.state_dict(),
            "encoders": self.enc.state_dict(),
            "arkit_regressor": self.reg.state_dict(),
            "ema": [t.clone() for t in self.ema_params],
            "opt_net": self.opt_net.state_dict(),
            "opt_enc": self.opt_enc.state_dict(),
            "gen_rng": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "np_rng": np.random.get_state(),
            "py_rng": random.getstate(),
            "anchor_vertices": self.anchor_vertices.tolist(),
            "mean_anchors": self.mean_anchors.tolist(),
        }

    def load_state_dict(self, st):
        self.step = int(st["step"])
        self.elapsed = float(st["elapsed"])
        self.last_snapshot = float(st.get("last_snapshot", 0.0))
        self.model.load_state_dict(st["model"])
        self.enc.load_state_dict(st["encoders"])
        self.reg.load_state_dict(st["arkit_regressor"])
        with torch.no_grad():
            for dst, src in zip(self.ema_params, st["ema"]):
                dst.copy_(src)
        self.opt_net.load_state_dict(st["opt_net"])
        self.opt_enc.load_state_dict(st["opt_enc"])
        self.gen.set_state(st["gen_rng"])
        torch.set_rng_state(st["torch_rng"])
        np.random.set_state(st["np_rng"])
        random.setstate(st["py_rng"])
        if list(st["anchor_vertices"]) != self.anchor_vertices.tolist():
            raise RuntimeError("anchor placement differs from the checkpoint's (different data?)")

    def save(self, path=None):
        path = Path(path) if path else self.out / "ckpt_last.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def init_from(self, model_dir):
        """Warm start from an exported model folder: network, encoders and ARKit regressor; identity-encoder
        columns the folder lacks are zero. Optimiser state and EMA start fresh from these weights."""
        from .evaluate import load_exported
        model, enc, reg, _ = load_exported(model_dir)
        self.model.load_state_dict(model.state_dict())  # strict: raises when the architecture differs
        self.reg.load_state_dict(reg.state_dict())
        src = enc.state_dict()
        n_src = src["geo.weight"].shape[1]
        with torch.no_grad():
            for k, v in self.enc.state_dict().items():
                if k == "geo.weight":
                    v.zero_()
                    v[:, :n_src] = src[k]
                else:
                    v.copy_(src[k])
            for dst, p in zip(self.ema_params, self._ema_sources()):
                dst.copy_(p)

    @torch.no_grad()
    def boost_weak_expression_columns(self) -> list:
        """Rescale the expression encoder's columns of driven channels whose norm is < WEAK_SHARE x the median to
        the median norm (direction kept), in the weights and their EMA. A channel the model barely drives (the
        original built-in model's eyelids and brows) maps to a near-zero code that the deformation network cannot
        tell from neutral, so the correspondences hardly pull it out; a code of typical size lets them.
        Returns the boosted ICT channel names."""
        from ..contracts import arkit
        w = self.enc.exp.weight                       # (D_exp, n_ex)
        col = w.norm(dim=0)
        driven = torch.tensor([i for i, n in enumerate(arkit.ICT_NAMES) if n not in D.STATIC_CHANNELS])
        med = col[driven].median()
        weak = [int(i) for i in driven if col[i] < WEAK_SHARE * med]
        params = self._ema_sources()
        k = next(i for i, p in enumerate(params) if p is w)
        for t in (w, self.ema_params[k]):
            t[:, weak] *= med / t[:, weak].norm(dim=0).clamp_min(1e-8)
        return [arkit.ICT_NAMES[i] for i in weak]

    def try_resume(self) -> bool:
        path = self.out / "ckpt_last.pt"
        if not path.exists():
            return False
        st = torch.load(path, map_location="cpu", weights_only=False)
        self.load_state_dict(st)
        return True

    def snapshot(self):
        snap = self.out / "snapshots"
        snap.mkdir(exist_ok=True)
        full = self.state_dict()
        st = {k: v for k, v in full.items()
              if k in ("step", "elapsed", "config", "anchor_vertices", "mean_anchors", "version", "args")}
        st["model"], st["encoders"], st["arkit_regressor"] = self.ema_state()
        tmp = snap / f"step_{self.step:07d}.tmp"
        torch.save(st, tmp)
        os.replace(tmp, snap / f"step_{self.step:07d}.pt")

    # ---------------------------------------------------------------- data
    def _make_val_batch(self):
        rng = np.random.default_rng(D.VAL_SEED + 7)
        samples = [D.make_sample(self.ict, self.anchor_vertices, w_id, w_ex, app, ns, rng, self.gen.sizes)
                   for (_, w_id, w_ex, app, ns, _) in D.validation_params(n_ids=2)]
        return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}

    def next_batch(self):
        b = self.gen.batch(self.args.batch)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}

    # ---------------------------------------------------------------- losses
    def losses(self, b, train=True):
        cfg = self.cfg
        model, enc = self.model, self.enc
        B = b["w_id"].shape[0]
        exact = self.args.exact
        z_geo = enc.encode_geo(torch.cat([b["w_id"], b["hair"]], -1)[:, :enc.geo.in_features])  # --bald: ICT only
        z_app = enc.encode_app(b["app"])
        z_exp = enc.encode_exp(b["w_ex"])
        anchors = model.anchors(z_geo)
        L = {}
        neutral = b["is_neutral"].view(B, 1)

        # --- first-order pass: surface (colour on a subset), near, off, far
        surf = b["surf"]
        nf = int(b["surf_is_face"][0].sum())
        ns = surf.shape[1]
        nfc = max(1, int(round(self.args.color_frac * nf)))
        noc = max(1, int(round(self.args.color_frac * (ns - nf))))
        cidx = torch.cat([torch.arange(0, nfc), torch.arange(nf, nf + noc)])
        ridx = torch.cat([torch.arange(nfc, nf), torch.arange(nf + noc, ns)])
        o = query(model, surf[:, cidx], z_geo, z_app, z_exp, anchors, with_color=True, exact=exact)
        L["color"] = (o["color"] - (b["surf_color"][:, cidx] * 2 - 1)).abs().mean()
        xs = torch.cat([surf[:, ridx], b["near"], b["off"], b["far"]], 1)
        o2 = query(model, xs, z_geo, None, z_exp, anchors, with_color=False, exact=exact)
        nr = len(ridx)
        s_all = o2["sdf"][..., 0]
        L["surf_sdf"] = torch.cat([o["sdf"][..., 0], s_all[:, :nr]], 1).abs().mean()
        s2 = s_all[:, nr:]
        nn_, no = b["near"].shape[1], b["off"].shape[1]
        L["near_sdf"] = (s2[:, :nn_] - b["near_sdf"]).abs().mean()
        tgt = torch.cat([b["off_sdf"], b["far_sdf"]], 1)
        pred = s2[:, nn_:]
        # approximate targets: exact where |target| < clamp, else only push |sdf| beyond the clamp
        inside = tgt.abs() < OFF_CLAMP
        err = torch.where(inside, (pred - tgt).abs(),
                          torch.relu(OFF_CLAMP - pred * torch.sign(tgt)))
        L["off_sdf"] = err.mean()
        L["space_sdf"] = torch.exp(-10 * s2[:, nn_ + no:].abs()).mean()
        surf_off = torch.cat([o["offsets"], o2["offsets"][:, :nr]], 1)
        surf_hyp = torch.cat([o["hyper"], o2["hyper"][:, :nr]], 1)
        off_o = o2["offsets"][:, nr + nn_:nr + nn_ + no]
        hyp_o = o2["hyper"][:, nr + nn_:nr + nn_ + no]

        # --- gradient pass on subsets (normals, eikonal)
        k = min(self.args.grad_sub, surf.shape[1])
        kf = max(8, k // 4)
        xg = torch.cat([surf[:, :k], b["off"][:, :kf], b["far"][:, :kf]], 1).detach().requires_grad_(train)
        if train:
            og = query(model, xg, z_geo, None, z_exp, anchors, with_color=False, exact=exact)
            g = torch.autograd.grad(og["sdf"].sum(), xg, create_graph=True)[0]
            L["normals"] = torch.linalg.vector_norm(g[:, :k] - b["surf_normal"][:, :k], dim=-1).mean()
            L["eikonal"] = (torch.linalg.vector_norm(g, dim=-1) - 1).abs().mean()
            hyp_g = og["hyper"]
        else:
            with torch.enable_grad():
                xg = xg.detach().requires_grad_(True)
                og = query(model, xg, z_geo, None, z_exp, anchors, with_color=False, exact=exact)
                g = torch.autograd.grad(og["sdf"].sum(), xg)[0]
            L["normals"] = torch.linalg.vector_norm(g[:, :k] - b["surf_normal"][:, :k], dim=-1).mean()
            L["eikonal"] = (torch.linalg.vector_norm(g, dim=-1) - 1).abs().mean()
            hyp_g = og["hyper"]

        # --- deformation terms
        cp = b["corr_posed"]
        off_c, hyp_c = query(model, cp, z_geo, None, z_exp, anchors, deformation_only=True)
        L["corresp"] = (((cp + off_c - b["corr_neutral"]) ** 2).sum(-1) * b["corr_weight"]).mean() / 3
        xz = (torch.rand(B, 50, 3) * 2.5 - 1.25)
        off_z, hyp_z = query(model, xz, z_geo, None, z_exp, anchors, deformation_only=True)
        L["reg_zero"] = (off_z ** 2).sum(-1).mean()
        # neutral samples: no deformation on their surface; all samples: none at the back of the head
        off_s, hyp_s = surf_off, surf_hyp
        back = (b["off"][..., 2] < -0.3).float()
        L["neutral_zero"] = ((off_s ** 2).sum(-1) * neutral).mean() + ((off_o ** 2).sum(-1) * back).mean()
        L["hyper"] = (hyp_s.abs().mean() + hyp_z.abs().mean() + hyp_g.abs().mean()
                      + 10 * (hyp_s.abs().sum(-1) * neutral).mean() + 10 * (hyp_o.abs().sum(-1) * back).mean())

        # --- codes
        L["reg_shape"] = (z_geo ** 2).sum(-1).mean()
        L["reg_app"] = (z_app ** 2).sum(-1).mean()
        L["reg_expr"] = (z_exp ** 2).sum(-1).mean()
        G = cfg.lat_dim_glob
        loc_g = z_geo[:, G:].reshape(B, cfg.n_codes_local, cfg.lat_dim_loc_geo)
        loc_a = z_app[:, G:].reshape(B, cfg.n_codes_local, cfg.lat_dim_loc_app)
        L["symm_dist"] = symm_dist(loc_g, cfg.n_symm_pairs)
        L["symm_dist_app"] = symm_dist(loc_a, cfg.n_symm_pairs)
        L["anchors"] = ((anchors - b["anchors"]) ** 2).mean()

        # --- ARKit regressor on detached codes (does not train the model)
        zr = z_exp.detach()
        if train:
            zr = zr + 0.05 * zr.std() * torch.randn_like(zr)
        L["arkit"] = ((self.reg(zr) - b["arkit"]) ** 2).mean()
        return L

    def total(self, L):
        w = dict(LOSS_WEIGHTS)
        if self.step > self.args.corresp_decay_at * self.args.total_steps:
            w["corresp"] *= 0.25
        return sum(w[k] * v for k, v in L.items())

    # ---------------------------------------------------------------- loop
    def set_lr(self):
        f = lr_factor(self.step, self.args.total_steps, self.args.warmup)
        for g in self.opt_net.param_groups:
            g["lr"] = self.args.lr * f
        for g in self.opt_enc.param_groups:
            g["lr"] = self.args.lr_enc * f
        return f

    def train_step(self):
        self.model.train()
        f = self.set_lr()
        b = self.next_batch()
        L = self.losses(b, train=True)
        loss = self.total(L)
        self.opt_net.zero_grad(set_to_none=True)
        self.opt_enc.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        torch.nn.utils.clip_grad_norm_(self.enc.parameters(), 1.0)
        self.opt_net.step()
        self.opt_enc.step()
        self.step += 1
        self.update_ema()
        rec = {k: float(v.detach()) for k, v in L.items()}
        rec["total"] = float(loss.detach())
        rec["grad_norm"] = float(gn)
        rec["lr_factor"] = f
        return rec

    def validate(self):
        self.model.eval()
        with torch.no_grad():
            L = self.losses(self.val_batch, train=False)
        rec = {k: float(v) for k, v in L.items()}
        rec["total"] = float(sum(LOSS_WEIGHTS[k] * v for k, v in rec.items()))
        rec["mm_surf"] = rec["surf_sdf"] * MM_PER_UNIT
        return rec


def _bar(step, total, rate, rec, width=24):
    f = min(1.0, step / max(1, total))
    n = int(f * width)
    eta = (total - step) / rate if rate > 0 else float("inf")
    eta_s = f"{eta / 3600:.1f}h" if eta != float("inf") else "?"
    return (f"[{'#' * n}{'.' * (width - n)}] {step}/{total} {rate:.2f} it/s eta {eta_s} "
            f"loss {rec.get('total', 0):.4f} surf {rec.get('surf_sdf', 0) * 250:.2f}mm "
            f"near {rec.get('near_sdf', 0) * 250:.2f}mm n {rec.get('normals', 0):.3f}")


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    tr = Trainer(args)
    resumed = tr.try_resume()
    if not resumed and args.init_from:
        tr.init_from(args.init_from)
        if args.boost_weak_expressions:
            print(f"[train] boosted expression columns: {tr.boost_weak_expression_columns()}", file=sys.stderr)
    out = tr.out
    (out / "run_args.json").write_text(json.dumps(vars(args), indent=1))
    print(f"[train] {'resumed at step ' + str(tr.step) if resumed else 'new run'}"
          f"{' from ' + args.init_from if args.init_from and not resumed else ''}; out={out}; "
          f"params={sum(p.numel() for p in tr.model.parameters())}; threads={torch.get_num_threads()}",
          file=sys.stderr, flush=True)

    def on_signal(signum, frame):  # noqa: ARG001
        tr.stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    stop_step = args.max_steps if args.max_steps > 0 else args.total_steps
    t_sitting = time.time()
    t_last = time.time()
    last_ckpt = time.time()
    rate, rate_t, rate_s = 0.0, time.time(), tr.step
    logf = open(out / "log.jsonl", "a")
    valf = open(out / "val.jsonl", "a")
    tty = sys.stderr.isatty()
    while tr.step < stop_step and not tr.stop_requested:
        if args.minutes > 0 and time.time() - t_sitting > args.minutes * 60:
            break
        rec = tr.train_step()
        now = time.time()
        tr.elapsed += now - t_last
        t_last = now
        if tr.step % args.log_every == 0 or tr.step == 1:
            if now - rate_t > 0:
                rate = (tr.step - rate_s) / (now - rate_t)
            rate_t, rate_s = now, tr.step
            rec.update(step=tr.step, elapsed=round(tr.elapsed, 2), steps_per_s=round(rate, 3))
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            if not args.quiet:
                print(("\r" if tty else "") + _bar(tr.step, args.total_steps, rate, rec),
                      end="" if tty else "\n", file=sys.stderr, flush=True)
        if args.val_every > 0 and tr.step % args.val_every == 0:
            v = tr.validate()
            v.update(step=tr.step, elapsed=round(tr.elapsed, 2))
            valf.write(json.dumps(v) + "\n")
            valf.flush()
        if tr.elapsed - tr.last_snapshot > args.snapshot_minutes * 60:
            tr.last_snapshot = tr.elapsed
            tr.snapshot()
        if now - last_ckpt > args.ckpt_minutes * 60:
            tr.save()
            last_ckpt = time.time()
            try:
                from .plots import plot_losses
                plot_losses(out)
            except Exception as e:  # plotting must never kill training
                print(f"[train] plot failed: {e}", file=sys.stderr)
    tr.save()
    logf.close()
    valf.close()
    try:
        from .plots import plot_losses
        plot_losses(out)
    except Exception as e:
        print(f"[train] plot failed: {e}", file=sys.stderr)
    print(f"\n[train] stopped at step {tr.step} ({tr.elapsed / 60:.1f} min total); checkpoint saved",
          file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
