"""Adam for the fits of a run (tracking, evaluation alignment), without ``torch.optim``.

``torch.optim``'s first optimizer imports ``torch._dynamo`` (its parameter groups and ``step`` are wrapped for
``torch.compile``): 1.5-5 s of every run's start-up on a 2-core machine, for a handful of small parameter tensors.
This is the same algorithm as ``torch.optim.Adam``'s default single-tensor step (no weight decay, no AMSGrad), the
same operations in the same order, so a fit gives the same bits with either.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import torch


class Adam:
    """Adam over parameter groups ``[{"params": [tensor, ...], "lr": float}, ...]`` (``param_groups``, whose
    ``lr`` may be changed between steps). A parameter without a gradient at a step is left alone, its moments and
    step count too (as ``torch.optim.Adam`` does)."""

    def __init__(self, groups: Sequence[Dict], betas=(0.9, 0.999), eps: float = 1e-8):
        self.param_groups: List[Dict] = [dict(g, params=list(g["params"])) for g in groups]
        self.betas = betas
        self.eps = eps
        self._state: Dict[int, list] = {}     # id(param) -> [step, first moment, second moment]

    def params(self) -> Iterable[torch.Tensor]:
        return (p for g in self.param_groups for p in g["params"])

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (``torch.optim``'s ``set_to_none=True``)."""
        for p in self.params():
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state.get(id(p))
                if state is None:
                    state = self._state[id(p)] = [0.0, torch.zeros_like(p), torch.zeros_like(p)]
                state[0] += 1.0
                step, exp_avg, exp_avg_sq = state
                exp_avg.lerp_(p.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(self.eps)
                p.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))
