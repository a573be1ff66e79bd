"""Train the mouth image regressor (``backend.tracking.mouth_image``) on rendered ICT-FaceKit heads.

    python -m backend.training.mouth_image --out backend/models/builtin --cache /work/cache/expr23/train \
        [--identities 275] [--frames 16] [--epochs 40] [--folds 5]

Data: the landmark regressor's renders (``training.expression_init.generate``: the same identities, looks, poses and
expressions, the same seeds), with each frame's mouth patch cut at its MediaPipe points (cached beside those chunks).
Model: ``MouthImageNet`` from the rest-relative patch features (each frame's minus its identity's median, as the
tracker takes the clip's) to the ICT weights of ``IMAGE_CHANNELS``, the mouth channels MediaPipe's points do not
carry; mean squared error, AdamW, a one-pixel random shift of the patch as augmentation. ``--folds`` first reports
the cross-validated correlation per channel over identities; the shipped network is fitted on all identities.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .expression_init import generate

IMAGE_CHANNELS = ("mouthFrown_L", "mouthFrown_R", "mouthDimple_L", "mouthDimple_R", "mouthPress_L", "mouthPress_R",
                  "mouthRollLower", "mouthRollUpper", "mouthLowerDown_L", "mouthLowerDown_R", "mouthShrugLower",
                  "mouthShrugUpper", "jawLeft", "jawRight", "jawForward", "mouthClose")
# The channels the shipped network keeps: those whose reading, on the tuning seed range's clips, follows the truth
# (correlation >= 0.3 over their active pairs) with a smaller error than all-zeros (frown 0.86 / 0.93, roll lower
# 0.80); press, dimple, lower lip down, jaw sideways/forward and mouth close did not (-0.26 to 0.36, error above
# zeros) and train the shared features only; roll upper had no tuning pair (backend/evaluation/README.md, session 12)
SHIPPED_CHANNELS = ("mouthFrown_L", "mouthFrown_R", "mouthRollLower")
RESPONSE_GAIN = 3.5   # the calibrated response's gain (tuning range, shipped channels: MAE 0.058 at 2.5, 0.052 at 3.5)


def rest_relative(data: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (features (N, 3, rows, cols) minus their identity's median, ICT weights (N, 53), identity (N,), the
    identities' mean rest features (3, rows, cols)) of the frames with a patch."""
    from ..tracking.mouth_image import patch_features

    ok = np.isfinite(data["patches"]).all((1, 2, 3))
    X = patch_features(data["patches"][ok])
    ident = data["identity"][ok]
    ids, inv = np.unique(ident, return_inverse=True)
    rests = np.stack([np.median(X[inv == k], 0) for k in range(len(ids))])
    return X - rests[inv], data["weights"][ok], ident, rests.mean(0)


def fit(X: np.ndarray, Y: np.ndarray, epochs: int = 40, seed: int = 0):
    """A ``MouthImageNet`` fitted to (N, 3, rows, cols) rest-relative features and (N, C) targets (its buffers other
    than ``scale`` left for the caller)."""
    import torch

    from ..tracking.mouth_image import MouthImageNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = MouthImageNet(Y.shape[1])
    net.scale.copy_(torch.as_tensor(X.std((0, 2, 3))))
    x, y = torch.as_tensor(X), torch.as_tensor(Y, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-3)
    net.train()
    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(len(x)))
        for b in range(0, len(x), 64):
            k = order[b:b + 64]
            shift = tuple(int(s) for s in rng.integers(-1, 2, 2))   # the patch's alignment is good to about a pixel
            loss = torch.nn.functional.mse_loss(net(torch.roll(x[k], shift, (2, 3))), y[k])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def cross_validate(X: np.ndarray, Y: np.ndarray, ident: np.ndarray, folds: int, epochs: int) -> np.ndarray:
    """(C,) out-of-fold correlation per channel, folds over identities."""
    import torch

    ids, inv = np.unique(ident, return_inverse=True)
    fold_of = np.random.default_rng(0).permutation(len(ids)) % folds
    pred = np.zeros_like(Y)
    for f in range(folds):
        test = fold_of[inv] == f
        net = fit(X[~test], Y[~test], epochs, seed=f)
        with torch.no_grad():
            pred[test] = net(torch.as_tensor(X[test])).numpy()
    return np.array([np.corrcoef(pred[:, c], Y[:, c])[0, 1] for c in range(Y.shape[1])])


def keep_channels(net, keep):
    """A copy of ``net`` (trained for ``len(keep)`` or more channels) that reads only the channels at rows ``keep``
    of its output layer."""
    from ..tracking.mouth_image import MouthImageNet

    state = net.state_dict()
    last = [k for k in state if k.startswith("net.") and k.endswith(".weight")][-1][: -len("weight")]
    for key in (last + "weight", last + "bias", "ict_index"):
        state[key] = state[key][list(keep)]
    out = MouthImageNet(len(keep))
    out.load_state_dict(state)
    return out.eval()


def train(data: dict, channels=IMAGE_CHANNELS, shipped=SHIPPED_CHANNELS, epochs: int = 40, folds: int = 0,
          log=print):
    """-> (the shipped ``MouthImageNet``: trained on ``channels``, reading ``shipped``; cross-validated correlation
    per trained channel (C,), or None without ``folds``)."""
    import torch

    from ..contracts import arkit

    X, W, ident, rest = rest_relative(data)
    cols = [arkit.ICT_NAMES.index(c) for c in channels]
    Y = W[:, cols].astype(np.float32)
    log(f"{len(X)} frames of {len(np.unique(ident))} identities")
    cv = cross_validate(X, Y, ident, folds, epochs) if folds else None
    net = fit(X, Y, epochs)
    net.ict_index.copy_(torch.as_tensor(cols))
    net.rest.copy_(torch.as_tensor(rest))
    net.gain.fill_(RESPONSE_GAIN)
    return keep_channels(net, [list(channels).index(c) for c in shipped]), cv


def main(argv=None) -> int:
    import torch

    from ..tracking.mouth_image import FILE_NAME

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="model folder to write mouth_image.pt into")
    ap.add_argument("--cache", type=Path, required=True, help="rendered training data (resumable)")
    ap.add_argument("--identities", type=int, default=275)
    ap.add_argument("--frames", type=int, default=16, help="frames per identity")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--folds", type=int, default=0, help="report the cross-validated correlation first (0: skip)")
    a = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    torch.set_num_threads(1)
    data = generate(a.cache, a.identities, a.frames, log, patches=True)
    net, cv = train(data, epochs=a.epochs, folds=a.folds, log=log)
    torch.save(net.state_dict(), a.out / FILE_NAME)
    if cv is not None:
        for n, c in zip(IMAGE_CHANNELS, cv):
            log(f"  {n:18s} cross-validated correlation {c:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
