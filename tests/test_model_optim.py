"""The fits' Adam (backend.model.optim) gives the bits of torch.optim.Adam, and does not import torch._dynamo."""
import subprocess
import sys
from pathlib import Path

import torch

from backend.model.optim import Adam

REPO = Path(__file__).resolve().parents[1]


def _fit(make_optimizer, steps=25):
    """A small fit with three parameter groups; the third gets a gradient on every other step only."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, generator=g).requires_grad_(True)
    b = torch.randn(3, 3, generator=g).requires_grad_(True)
    c = torch.randn(4, generator=g).requires_grad_(True)
    target = torch.randn(5, generator=g)
    opt = make_optimizer([{"params": [a], "lr": 0.05}, {"params": [b], "lr": 0.01}, {"params": [c], "lr": 0.2}])
    for it in range(steps):
        opt.zero_grad()
        loss = ((a - target) ** 2).sum() + (b @ b.T).trace() * 1e-3 + (a[:3] @ b).abs().sum()
        if it % 2 == 0:
            loss = loss + (c.sin() * a[:4]).sum()
        loss.backward()
        opt.step()
        opt.param_groups[0]["lr"] *= 0.97   # a schedule
    return a.detach(), b.detach(), c.detach()


def test_adam_gives_torch_optim_bits():
    ours = _fit(Adam)
    reference = _fit(lambda groups: torch.optim.Adam(groups))
    for x, y in zip(ours, reference):
        assert torch.equal(x, y)
    assert not torch.equal(ours[2], _fit(Adam, steps=0)[2])   # the sometimes-unused group moved


def test_adam_does_not_import_dynamo():
    code = ("import sys, torch\nfrom backend.model.optim import Adam\n"
            "p = torch.zeros(2, requires_grad=True)\nopt = Adam([{'params': [p], 'lr': 0.1}])\n"
            "p.sum().backward()\nopt.step()\nprint('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
