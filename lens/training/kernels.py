"""The two computations lens training is made of: closed-form least-squares statistics and the fused KL.

:class:`LstsqStats` streams the float64 sufficient statistics of the per-reading ridge regressions (no
vocabulary work at all); :class:`FusedKLFunction` sums ``KL(p_final || p_lens)`` over rows and makes its
gradient w.r.t. the normed hidden state in the same pass over row blocks, so no ``[tokens, vocab]``
tensor is kept for autograd. The KL formula itself is :func:`lmscope.lens.metrics.kl_from_parts`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..lenses import TunedLens, Unembedding
from ..metrics import TargetStats, kl_from_parts, rowdot


# -- closed-form initialisation ---------------------------------------------------------------------
class LstsqStats:
    """Streamed float64 sufficient statistics for the per-reading ridge regressions."""

    def __init__(self, n_readings: int, d: int, device: torch.device | str = "cpu") -> None:
        self.zz = torch.zeros(n_readings, d + 1, d + 1, dtype=torch.float64, device=device)
        self.zy = torch.zeros(n_readings, d + 1, d, dtype=torch.float64, device=device)
        self.n_tokens = 0

    def update(self, hs: Sequence[torch.Tensor], target: torch.Tensor) -> None:
        """Add one batch: ``hs[i]`` [N, d] readings, ``target`` [N, d] final hidden state (pre-norm).

        Per-batch products run in float32 (one batched matmul); the running sums are float64.
        """
        y = target.float()
        y = y / y.pow(2).mean(-1, keepdim=True).clamp_min(1e-30).sqrt()
        h = torch.stack([x.float() for x in hs])  # [R, N, d]
        z = torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)
        z = z / h.pow(2).mean(-1, keepdim=True).clamp_min(1e-30).sqrt()
        zt = z.transpose(1, 2)
        self.zz += torch.bmm(zt, z).double()
        self.zy += torch.matmul(zt, y).double()
        self.n_tokens += int(target.shape[0])

    def solve(self, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge solutions shrunk towards the identity: ``(weight [R, d, d], bias [R, d])`` in float32."""
        r, d1, d = self.zy.shape
        w0 = torch.zeros(d1, d, dtype=torch.float64, device=self.zz.device)
        w0[:d] = torch.eye(d, dtype=torch.float64, device=self.zz.device)
        weights, biases = [], []
        eye = torch.eye(d1, dtype=torch.float64, device=self.zz.device)
        for i in range(r):
            lam = ridge * float(torch.diagonal(self.zz[i]).mean()) + 1e-12
            w = torch.linalg.solve(self.zz[i] + lam * eye, self.zy[i] + lam * w0)
            weights.append((w[:d].T - torch.eye(d, dtype=torch.float64, device=w.device)).float())
            biases.append(w[d].float())
        return torch.stack(weights), torch.stack(biases)


# -- fused KL ---------------------------------------------------------------------------------------
class FusedKLFunction(torch.autograd.Function):
    """Sum over rows of KL(p || softmax(n W^T + b)); its gradient w.r.t. ``n`` is made in the same pass."""

    @staticmethod
    def forward(ctx: Any, n: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: torch.Tensor,
                plogp: torch.Tensor, row_block: int) -> torch.Tensor:
        grad = torch.empty_like(n)
        total = torch.zeros((), dtype=torch.float64, device=n.device)
        for s in range(0, n.shape[0], row_block):
            e = min(s + row_block, n.shape[0])
            z = n[s:e] @ weight.T
            if bias is not None:
                z += bias
            pz = torch.einsum("nv,nv->n", p[s:e], z)
            m = z.amax(-1, keepdim=True)
            z.sub_(m).exp_()
            ssum = z.sum(-1, keepdim=True)
            lse = m.squeeze(-1) + ssum.squeeze(-1).log()
            total += kl_from_parts(plogp[s:e], pz, lse).double().sum()
            z.div_(ssum).sub_(p[s:e])  # softmax(z) - p = dKL/dz
            grad[s:e] = z @ weight
        ctx.save_for_backward(grad)
        return total.float()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None, None, None


def kl_sum(lens: TunedLens, unembedding: Unembedding, h: torch.Tensor, i: int, target: TargetStats,
           row_block: int = 512) -> torch.Tensor:
    """Summed KL(final || lens) over the rows of ``h`` at reading ``i`` (differentiable in the lens)."""
    t = lens.translate(h, i)
    if unembedding.fused:
        return FusedKLFunction.apply(unembedding.normed(t), unembedding.weight, unembedding.bias, target.p,
                                     target.plogp, row_block)
    z = lens.model.decode_hidden(t.to(lens.model.dtype)).float()
    return kl_from_parts(target.plogp, rowdot(target.p, z), torch.logsumexp(z, dim=-1)).sum()
