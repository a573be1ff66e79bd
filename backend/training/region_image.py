"""Train a face region's image regressor (``backend.tracking.region_image``) on rendered ICT-FaceKit heads.

    python -m backend.training.region_image --region mouth|jaw|eyes|lids|brows --out backend/models/builtin \
        --cache /work/cache/expr23/train [--identities 325] [--frames 16] [--epochs 30] [--members 3] [--folds 3] \
        [--relight] [--video] [--lid-identities 0] [--video-identities 0] [--predicted-identities 0] [--halvings 2] \
        [--first-identity 0] [--init backend/models/builtin/jaw_image.pt] [--small-opening-weight 1]

Data: the landmark regressor's renders (``training.expression_init.generate``: the same identities, looks, poses and
expressions, the same seeds), with each frame's region patches cut at its MediaPipe points (cached beside those
chunks); ``--video``: points and patches of the frames passed through H.264 first, at a CRF per identity, as a
tracked video's are; ``--lid-identities``: the lid set's identities added (closing lids in dim, hard light:
``expression_init.render_identity``); ``--video-identities N``: the first N identities' frames added again as
``--video`` cuts them; ``--predicted-identities N``: added again, each frame encoded as a video's predicted frame
after a reference frame of the same head (``expression_init.reference_frames``), as nearly all of a tracked clip's
frames are (each view of an identity with its own rest); a network trained on mouthClose leaves out frames whose
mouthClose is above jawOpen (``expression_init.face_makes``: renders of the first sampler); ``--first-identity F``:
identities F .. F + N - 1 (every view) instead of 0 .. N - 1. Model:
``RegionImageNet`` from the rest-relative patch features (each frame's minus its identity's median, as the tracker
takes the clip's) to the ICT weights of the region's ``TRAINED`` channels; squared error over each channel's variance
(a rarely active channel weighs as much as a common one), AdamW, a one-pixel random shift of the patch as
augmentation; ``--members`` networks from different seeds, averaged (one network's reading varies a lot from seed to
seed). ``--init``: each member starts from the same member of a saved network of the region (its features' scale
kept) instead of from random weights: a shipped reader fine-tuned on new views of its data costs a few epochs, not a
full training; ``--small-opening-weight W``: frames whose jawOpen is a small opening (``SMALL_OPENING``) weigh W
times the others in the loss. ``--folds`` first reports the cross-validated correlation and error per channel over identities (one network
per fold), beside all-zeros; the shipped network is fitted on all identities and reads only the region's ``SHIPPED``
channels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .expression_init import CHUNK, face_makes, generate

# The channels each region's network is trained on: the mouth's and the eyes' those the landmark regressor reads
# poorly or not at all; the jaw's every channel of the lower face and the jaw (its patch shows the chin's outline)
TRAINED = {
    "mouth": ("mouthFrown_L", "mouthFrown_R", "mouthDimple_L", "mouthDimple_R", "mouthPress_L", "mouthPress_R",
              "mouthRollLower", "mouthRollUpper", "mouthLowerDown_L", "mouthLowerDown_R", "mouthShrugLower",
              "mouthShrugUpper", "jawLeft", "jawRight", "jawForward", "mouthClose", "cheekPuff_L", "cheekPuff_R",
              "mouthStretch_L", "mouthStretch_R", "noseSneer_L", "noseSneer_R"),
    "jaw": ("jawOpen", "jawLeft", "jawRight", "jawForward", "mouthClose", "mouthFunnel", "mouthPucker",
            "mouthLeft", "mouthRight", "mouthSmile_L", "mouthSmile_R", "mouthFrown_L", "mouthFrown_R",
            "mouthDimple_L", "mouthDimple_R", "mouthStretch_L", "mouthStretch_R", "mouthRollLower",
            "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPress_L", "mouthPress_R",
            "mouthLowerDown_L", "mouthLowerDown_R", "mouthUpperUp_L", "mouthUpperUp_R", "cheekPuff_L",
            "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "noseSneer_L", "noseSneer_R"),
    "eyes": ("browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
             "eyeBlink_L", "eyeBlink_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R", "cheekSquint_L",
             "cheekSquint_R", "noseSneer_L", "noseSneer_R"),
    # one eye's (the network reads the other through the mirrored patch: ``region_image.LIDS``)
    "lids": ("eyeBlink_L", "eyeSquint_L", "eyeWide_L", "cheekSquint_L"),
    # one brow's (the other through the mirrored patch: ``region_image.BROWS``)
    "brows": ("browDown_L", "browInnerUp_L", "browOuterUp_L"),
}
# The channels each shipped network reads; which of them the output ships is the ARKit channel table's choice
# (``tracking.channel_table``, calibrated on the tuning clips). The eyes': those whose calibrated reading's
# out-of-fold error on the training identities is below 0.95 x all-zeros' (``calibrate``). The mouth's and the jaw's:
# all, read raw (``--folds 0``: gain 1, no dead zone) for the table to calibrate, since the training identities'
# mixes of many channels at once and their poses are harder than the clips: session 13's mouth heads for frown,
# dimple, stretch and jaw sideways did not beat zeros out of fold there, yet follow on the tuning clips (correlation
# 0.6-0.9; backend/evaluation/README.md, session 14).
SHIPPED = {
    "mouth": TRAINED["mouth"],
    "jaw": TRAINED["jaw"],
    "eyes": ("browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
             "eyeWide_L", "eyeWide_R", "noseSneer_L", "noseSneer_R"),
    # as the mouth's and the jaw's: all, raw (session 14)
    "lids": TRAINED["lids"],
    "brows": TRAINED["brows"],
}
# the calibrated response clip(gain * (reading - dead_zone), 0, 1): the pair per channel with the lowest out-of-fold
# error over the identities where the channel is active (peak >= ACTIVE_PEAK among their frames, as an active clip pair)
GAINS = (1.5, 2.5, 3.5, 5.0, 7.0)
DEAD_ZONES = (0.07, 0.1, 0.15, 0.2, 0.25)
ACTIVE_PEAK = 0.2
# the jaw openings ``--small-opening-weight`` weighs: the shipped jaw reader reads openings of 0.2-0.5 up to 1.8 x the
# truth at the true peak of the tuning clips' speech, the wide ones within 15 % (backend/evaluation/README.md,
# session 16)
SMALL_OPENING = (0.15, 0.5)


def rest_relative(data: dict, region) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (features (N, 3, rows, cols) minus their identity's median, ICT weights (N, 53), identity (N,), the
    identities' mean rest features (3, rows, cols)) of the frames with a ``region`` patch. A mirrored region's two
    sides are two samples each (N = 2 x frames): the other side's patch with the weights mirrored
    (``arkit.mirror_name``), so that its grid side's channels are the targets of both. Frames of another ``view``
    (data["view"], when given: the same identities' frames encoded otherwise) have a rest of their own, as a clip's
    rest is of its own frames."""
    from ..contracts import arkit
    from ..tracking.region_image import patch_features

    patches = data[f"{region.name}_patches"]
    ok = np.isfinite(patches).all(tuple(range(1, patches.ndim)))
    X, W, ident = patch_features(patches[ok]), data["weights"][ok], data["identity"][ok]
    view = data["view"][ok] if "view" in data else np.zeros(len(X), int)
    if region.mirrored:   # (N, 2, 3, rows, cols) -> the sides one after the other
        swap = [arkit.ICT_NAMES.index(arkit.mirror_name(c)) for c in arkit.ICT_NAMES]
        X, W, ident = np.concatenate([X[:, 0], X[:, 1]]), np.concatenate([W, W[:, swap]]), np.tile(ident, 2)
        side, view = np.repeat([0, 1], len(X) // 2), np.tile(view, 2)
    else:
        side = np.zeros(len(X), int)
    # each identity's (and view's and side's) own rest
    keys, inv = np.unique((np.int64(ident) * 8 + view) * 2 + side, return_inverse=True)
    rests = np.stack([np.median(X[inv == k], 0) for k in range(len(keys))])
    return X - rests[inv], W, ident, rests.mean(0)


def with_views(*views: dict) -> dict:
    """Training data of several views (the same identities' frames encoded otherwise) as one, each frame's view
    numbered (``view``; ``rest_relative`` gives each view its own rest), keeping the keys all views have."""
    keys = set.intersection(*(set(v) - {"view"} for v in views))
    out = {k: np.concatenate([v[k] for v in views]) for k in keys}
    out["view"] = np.concatenate([np.full(len(v["identity"]), k) for k, v in enumerate(views)])
    return out


def opening_weights(weights: np.ndarray, factor: float) -> np.ndarray:
    """(N, 53) ICT weights -> (N,) each frame's weight in the loss, mean 1: ``factor`` where jawOpen is a small
    opening (``SMALL_OPENING``, ends included), 1 elsewhere."""
    from ..contracts import arkit

    jaw = weights[:, arkit.ICT_NAMES.index("jawOpen")]
    w = np.where((jaw >= SMALL_OPENING[0]) & (jaw <= SMALL_OPENING[1]), float(factor), 1.0)
    return (w / w.mean()).astype(np.float32)


def fit(X: np.ndarray, Y: np.ndarray, epochs: int = 40, seed: int = 0, relight: bool = False, halvings: int = 2,
        init=None, sample_weight: np.ndarray | None = None):
    """A one-member ``RegionImageNet`` (``halvings``: its stride-2 convolutions) fitted to (N, 3, rows, cols)
    rest-relative features and (N, C) targets (its buffers other than ``scale`` left for the caller). ``init``:
    (scale (3,), one member's state dict) to start from (the scale kept: the member reads features scaled so), instead
    of random weights and the features' own spread; ``sample_weight`` (N,): each frame's weight in the loss (default
    1). ``relight``:
    each sample's features scaled by U(0.6, 1.2) and given a random linear gradient across the patch (0.5 x each
    plane's spread at the edges, normal), as light that stays while the head turns leaves a change of shading and
    contrast that the clip's rest does not divide out."""
    import torch

    from ..tracking.region_image import RegionImageNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = RegionImageNet(Y.shape[1], X.shape[2:], 1, halvings)
    if init is None:
        net.scale.copy_(torch.as_tensor(X.std((0, 2, 3))))
    else:
        net.scale.copy_(torch.as_tensor(init[0]))
        net.members[0].load_state_dict(init[1])
    x, y = torch.as_tensor(X), torch.as_tensor(Y, dtype=torch.float32)
    # each channel's error relative to its spread: a rarely active channel (squint) weighs as much as a common one
    weight = 1.0 / (y.var(0) + 1e-3)
    frame_weight = torch.ones(len(x)) if sample_weight is None else torch.as_tensor(sample_weight, dtype=torch.float32)
    ramps = torch.stack(torch.meshgrid(torch.linspace(-1, 1, X.shape[2]), torch.linspace(-1, 1, X.shape[3]),
                                       indexing="ij"))                                   # (2, rows, cols)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-3)
    net.train()
    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(len(x)))
        for b in range(0, len(x), 64):
            k = order[b:b + 64]
            shift = tuple(int(s) for s in rng.integers(-1, 2, 2))   # the patch's alignment is good to about a pixel
            xb = torch.roll(x[k], shift, (2, 3))
            if relight:
                tilt = torch.as_tensor(rng.normal(0, 0.5, (len(k), X.shape[1], 2)), dtype=torch.float32)
                xb = (xb * torch.as_tensor(rng.uniform(0.6, 1.2, (len(k), 1, 1, 1)), dtype=torch.float32)
                      + torch.einsum("npk,khw->nphw", tilt * net.scale[:, None], ramps))
            loss = (frame_weight[k, None] * weight * (net(xb) - y[k]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def fit_ensemble(X: np.ndarray, Y: np.ndarray, members: int, epochs: int = 40, seed: int = 0, relight: bool = False,
                 halvings: int = 2, init=None, sample_weight: np.ndarray | None = None):
    """A ``RegionImageNet`` whose ``members`` networks are fitted apart (seeds ``seed`` .. ``seed + members - 1``),
    member k starting from ``init``'s member k (a ``RegionImageNet`` of as many members; default random weights)."""
    from ..tracking.region_image import RegionImageNet

    if init is not None and len(init.members) != members:
        raise ValueError(f"the network to start from has {len(init.members)} members, not {members}")
    fitted = [fit(X, Y, epochs, seed + k, relight, halvings,
                  None if init is None else (init.scale, init.members[k].state_dict()), sample_weight)
              for k in range(members)]
    net = RegionImageNet(Y.shape[1], X.shape[2:], members, halvings)
    net.scale.copy_(fitted[0].scale)
    for slot, one in zip(net.members, fitted):
        slot.load_state_dict(one.members[0].state_dict())
    return net.eval()


def cross_validate(X: np.ndarray, Y: np.ndarray, ident: np.ndarray, folds: int, epochs: int,
                   relight: bool = False, halvings: int = 2) -> np.ndarray:
    """(N, C) out-of-fold readings (uncalibrated) of one network per fold (a lower bound for an ensemble's), folds
    over identities."""
    import torch

    ids, inv = np.unique(ident, return_inverse=True)
    fold_of = np.random.default_rng(0).permutation(len(ids)) % folds
    pred = np.zeros_like(Y)
    for f in range(folds):
        test = fold_of[inv] == f
        net = fit(X[~test], Y[~test], epochs, seed=100 + f, relight=relight, halvings=halvings)
        with torch.no_grad():
            pred[test] = net(torch.as_tensor(X[test])).numpy()
    return pred


def calibrate(pred: np.ndarray, Y: np.ndarray, ident: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C) out-of-fold readings, targets, identities -> per channel (gain, dead zone, that response's error over
    the active identities' frames / all-zeros' error there) (C,) each, from ``GAINS`` x ``DEAD_ZONES``."""
    ids, inv = np.unique(ident, return_inverse=True)
    gain, dead_zone, ratio = (np.zeros(Y.shape[1]) for _ in range(3))
    for c in range(Y.shape[1]):
        peak = np.zeros(len(ids))
        np.maximum.at(peak, inv, Y[:, c])
        act = peak[inv] >= ACTIVE_PEAK
        err = {(g, dz): np.abs(np.clip(g * (pred[act, c] - dz), 0, 1) - Y[act, c]).mean()
               for g in GAINS for dz in DEAD_ZONES}
        (gain[c], dead_zone[c]), best = min(err.items(), key=lambda kv: kv[1])
        ratio[c] = best / max(np.abs(Y[act, c]).mean(), 1e-9)
    return gain, dead_zone, ratio


def keep_channels(net, keep):
    """A copy of ``net`` that reads only the channels at rows ``keep`` of its output layers."""
    from ..tracking.region_image import RegionImageNet

    state = net.state_dict()
    for key in [k for k in state if k.startswith("members.")]:
        layer = key.rsplit(".", 2)[1]
        if layer == str(len(net.members[0]) - 1):   # the last (linear) layer of a member
            state[key] = state[key][list(keep)]
    for key in ("ict_index", "gain", "dead_zone"):
        state[key] = state[key][list(keep)]
    return RegionImageNet.from_state(state).eval()


def train(data: dict, region, channels=None, shipped=None, epochs: int = 40, members: int = 3, folds: int = 0,
          relight: bool = False, halvings: int = 2, init=None, small_opening_weight: float = 1.0, log=print):
    """-> (the shipped ``RegionImageNet`` of ``region``: trained on ``channels`` (default ``TRAINED``), reading
    ``shipped`` (default ``SHIPPED``), its response calibrated out of fold (``calibrate``; without ``folds`` the
    raw reading: gain 1, no dead zone); (the (N, C) out-of-fold readings, (N, C) targets, (C,) calibrated error /
    zeros' error) of the trained channels, or None without ``folds``). ``init``: a saved ``RegionImageNet`` of
    ``members`` members reading ``channels`` to start from (fine-tuning; the folds still start from random
    weights); ``small_opening_weight``: the loss weight of frames with a small jaw opening (``opening_weights``)."""
    import torch

    from ..contracts import arkit

    channels = TRAINED[region.name] if channels is None else channels
    shipped = SHIPPED[region.name] if shipped is None else shipped
    if "mouthClose" in channels:   # not taught the lips through each other (renders of an older sampler)
        keep = face_makes(data["weights"])
        log(f"{region.name}: {int((~keep).sum())} frames with mouthClose above jawOpen left out")
        data = {k: v[keep] for k, v in data.items()}
    X, W, ident, rest = rest_relative(data, region)
    cols = [arkit.ICT_NAMES.index(c) for c in channels]
    if init is not None and init.ict_index.tolist() != cols:
        raise ValueError(f"the network to start from reads other channels than {region.name}'s {len(cols)}")
    Y = W[:, cols].astype(np.float32)
    frame_weight = None if small_opening_weight == 1.0 else opening_weights(W, small_opening_weight)
    log(f"{region.name}: {len(X)} frames of {len(np.unique(ident))} identities")
    net = fit_ensemble(X, Y, members, epochs, relight=relight, halvings=halvings, init=init,
                       sample_weight=frame_weight)
    net.ict_index.copy_(torch.as_tensor(cols))
    net.rest.copy_(torch.as_tensor(rest))
    cv = None
    if folds:
        pred = cross_validate(X, Y, ident, folds, epochs, relight, halvings)
        gain, dead_zone, ratio = calibrate(pred, Y, ident)
        net.gain.copy_(torch.as_tensor(gain))
        net.dead_zone.copy_(torch.as_tensor(dead_zone))
        cv = (pred, Y, ratio)
    return keep_channels(net, [list(channels).index(c) for c in shipped]), cv


def main(argv=None) -> int:
    import torch

    from ..tracking.region_image import REGIONS

    regions = {r.name: r for r in REGIONS}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", choices=sorted(regions), required=True)
    ap.add_argument("--out", type=Path, required=True, help="model folder to write the region's network into")
    ap.add_argument("--cache", type=Path, required=True, help="rendered training data (resumable)")
    ap.add_argument("--identities", type=int, default=325)
    ap.add_argument("--frames", type=int, default=16, help="frames per identity")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--members", type=int, default=3, help="networks averaged")
    ap.add_argument("--folds", type=int, default=3, help="folds over identities for the calibration and its report")
    ap.add_argument("--relight", action="store_true", help="augment with random shading gradients and contrast")
    ap.add_argument("--halvings", type=int, default=2,
                    help="stride-2 convolutions before the linear layer: each one more quarters the linear layer, "
                         "which holds most of a network's weights (the jaw's at 3: 867 -> 354 kB, not shipped: it "
                         "reads sealed lips less well; backend/evaluation/README.md)")
    ap.add_argument("--video", action="store_true",
                    help="cut the patches from the frames encoded as H.264 video and decoded (a CRF per identity)")
    ap.add_argument("--lid-identities", type=int, default=0,
                    help="identities of the lid set added (closing lids in dim, hard light: expression_init)")
    ap.add_argument("--video-identities", type=int, default=0,
                    help="the first N identities added again, their frames encoded as one H.264 clip (as --video)")
    ap.add_argument("--predicted-identities", type=int, default=0,
                    help="the first N identities added again, each frame encoded as a video's predicted frame")
    ap.add_argument("--first-identity", type=int, default=0,
                    help="identities from this one (a multiple of 25) on, in every view, instead of from 0")
    ap.add_argument("--init", type=Path, default=None,
                    help="a saved network of the region (as many members, the same channels) to start from")
    ap.add_argument("--small-opening-weight", type=float, default=1.0,
                    help="loss weight of frames whose jawOpen is a small opening (0.15-0.5), the others' 1")
    a = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    torch.set_num_threads(1)
    region = regions[a.region]
    if a.first_identity % CHUNK or a.first_identity < 0:
        ap.error(f"--first-identity must be a non-negative multiple of {CHUNK} (the cached chunks' cut)")
    if a.small_opening_weight <= 0:
        ap.error("--small-opening-weight must be positive")
    init = None
    if a.init is not None:
        from ..contracts import arkit
        from ..model.checkpoint import CheckpointError, safe_torch_load
        from ..tracking.region_image import RegionImageNet

        try:   # the saved file is half precision; training runs in single
            init = RegionImageNet.from_state({k: v.float() if v.is_floating_point() else v
                                              for k, v in safe_torch_load(a.init).items()})
        except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            ap.error(f"--init {a.init}: not a saved image reader ({type(e).__name__}: {e})")
        shape = (len(init.members), sum(isinstance(m, torch.nn.Conv2d) for m in init.members[0]) - 1,
                 tuple(init.rest.shape[1:]), init.ict_index.tolist())
        want = (a.members, a.halvings, region.shape, [arkit.ICT_NAMES.index(c) for c in TRAINED[region.name]])
        if shape != want:
            ap.error(f"--init {a.init}: {shape[0]} members, {shape[1]} halvings, patch {shape[2]}, its channels; "
                     f"the training asks {want[0]}, {want[1]}, {want[2]} and {region.name}'s {len(want[3])} channels")
    first = {"first_id": a.first_identity}
    data = generate(a.cache, a.identities, a.frames, log, patches=True, video=a.video,
                    lid_ids=a.lid_identities, **first)
    views = [generate(a.cache, n, a.frames, log, patches=True, **kind, **first)
             for n, kind in ((a.video_identities, {"video": True}), (a.predicted_identities, {"predicted": True})) if n]
    if views:
        data = with_views(data, *views)
    net, cv = train(data, region, epochs=a.epochs, members=a.members, folds=a.folds, relight=a.relight,
                    halvings=a.halvings, init=init, small_opening_weight=a.small_opening_weight, log=log)
    # half precision: the file halves, the readings move by less than 1e-3
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()},
               a.out / region.file_name)
    if cv is not None:
        pred, Y, ratio = cv
        for c, name in enumerate(TRAINED[region.name]):
            log(f"  {name:18s} cross-validated correlation {np.corrcoef(pred[:, c], Y[:, c])[0, 1]:.2f}, calibrated "
                f"error over its active identities {ratio[c]:.2f} x all-zeros'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
