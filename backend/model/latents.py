"""Latent-code batching shared by the model's entry points (forward pass, root finding, reference loop)."""
from __future__ import annotations

from typing import Optional

import torch


def batch_codes(z: Optional[torch.Tensor], B: int) -> Optional[torch.Tensor]:
    """Accept (D,), (B, D) or (B, 1, D) codes; broadcast a single code to B. -> (B, D) or None."""
    if z is None:
        return None
    if z.dim() == 1:
        z = z.unsqueeze(0)
    if z.dim() == 3:
        z = z.reshape(z.shape[0], z.shape[-1])
    if z.shape[0] == 1 and B > 1:
        z = z.expand(B, -1)
    return z
