"""The lens metrics, written once: KL to the model's output, cross-entropy, entropy, bits per byte.

Every lens consumer (training in :mod:`~lmscope.lens.training.fit`, held-out evaluation in
:mod:`~lmscope.lens.training.evaluate`, prediction trajectories in :mod:`~lmscope.lens.trajectory`)
computes its numbers here, in nats, with the same conventions:

* ``KL(p || q) = sum_v p_v (log p_v - log q_v)`` where ``p`` is the model's own output distribution
  (the *target*) and ``q`` the lens distribution; ``sum p log p`` is computed once per token
  (:func:`target_stats`) and shared by every reading;
* ``entropy(q) = -sum_v q_v log q_v``; ``cross_entropy = -log q[next token]``.

Two forms of the same formulas:

* from materialised log-probabilities ``[..., V]`` (:func:`kl_from_logprobs`, :func:`entropy_from_logprobs`),
  used where the caller needs the whole distribution anyway (top-k, target ranks);
* streamed over vocabulary blocks of logits (:func:`logit_stats`): one running log-sum-exp per row with
  ``<p, z>``, ``<q, z>`` and ``z[target]`` accumulated on the fly, so no ``[tokens, vocab]`` tensor is
  ever kept and each block is read while it is in cache. With ``z`` the logits and ``lse`` their
  log-sum-exp: ``KL = sum p log p - <p, z> + lse``, ``entropy = lse - <q, z>``, ``CE = lse - z[next]``.

KL and entropy are clamped at 0 (they are non-negative; below 0 is float rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

LN2 = math.log(2.0)


# -- the target (model output) distribution ---------------------------------------------------------
@dataclass(frozen=True)
class TargetStats:
    """The model's output distribution on ``N`` tokens: probabilities ``p [N, V]`` and ``plogp = sum p log p [N]``.

    Computed once per batch and shared by every reading (and every lens) compared against it.
    """

    p: torch.Tensor
    plogp: torch.Tensor

    @property
    def entropy(self) -> torch.Tensor:
        """[N] entropy of the model's output (nats)."""
        return -self.plogp


def target_stats(final_logits: torch.Tensor) -> TargetStats:
    """:class:`TargetStats` of the model's logits ``[N, V]`` (float32 whatever their dtype)."""
    logp = torch.log_softmax(final_logits.float(), dim=-1)
    p = logp.exp()
    return TargetStats(p=p, plogp=rowdot(p, logp))


# -- materialised log-probabilities -----------------------------------------------------------------
def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_v a[..., v] * b[..., v]`` (same shapes) as a batched matmul: no ``[..., V]`` temporary."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1))[..., 0, 0]


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Float32 log-softmax over the last (vocabulary) dimension."""
    return torch.log_softmax(logits.float(), dim=-1)


def kl_from_logprobs(target: TargetStats, logq: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row from lens log-probabilities ``logq [..., N, V]`` (e.g. several readings at once)."""
    flat = logq.reshape(-1, *target.p.shape)
    # p is never copied; flat[i] rather than iterating: unbind views break the lazy test device's matmul
    cross = torch.stack([rowdot(target.p, flat[i]) for i in range(flat.shape[0])]).reshape(logq.shape[:-1])
    return (target.plogp - cross).clamp_min(0)


def entropy_from_logprobs(logq: torch.Tensor) -> torch.Tensor:
    """Entropy of ``q`` per row from its log-probabilities ``[..., V]``."""
    return (-rowdot(logq.exp(), logq)).clamp_min(0)


def cross_entropy_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-log softmax(logits)[target]`` per row (``logits [N, V]``, ``targets [N]``)."""
    z = logits.float()
    return torch.logsumexp(z, dim=-1) - z.gather(-1, targets[:, None])[:, 0]


# -- streamed over vocabulary blocks ----------------------------------------------------------------
@dataclass
class LogitStats:
    """Per-row KL to the target, entropy and cross-entropy of a distribution given by its logits (nats)."""

    kl: torch.Tensor
    entropy: torch.Tensor
    ce: torch.Tensor


def kl_from_parts(plogp: torch.Tensor, p_dot_z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``KL(p || softmax(z)) = sum p log p - <p, z> + logsumexp(z)`` (unclamped: also the training loss)."""
    return plogp - p_dot_z + lse


def logit_stats(blocks: Iterable[torch.Tensor], target: TargetStats, next_ids: torch.Tensor) -> LogitStats:
    """KL to ``target``, entropy and cross-entropy against ``next_ids`` of logits given block by block.

    ``blocks`` yields consecutive vocabulary slices ``[..., N, b]`` of the logits (columns ``0..b``,
    then ``b..2b``, ...; leading dims are e.g. several lenses of the same tokens). Running sums are
    float64 per row; the block itself is float32. Returns ``[..., N]`` tensors.
    """
    m: torch.Tensor | None = None
    s: Any = None
    a: Any = None
    pz: Any = None
    zn: Any = None
    start = 0
    for z in blocks:
        z = z.float()
        end = start + z.shape[-1]
        bm = z.amax(-1)
        m_new = bm if m is None else torch.maximum(m, bm)
        e = torch.exp(z - m_new[..., None])
        bs, ba = e.sum(-1).double(), (e * z).sum(-1).double()
        bp = (z * target.p[:, start:end]).sum(-1).double()
        hit = (next_ids >= start) & (next_ids < end)
        bz = torch.where(hit, z.gather(-1, (next_ids - start).clamp(0, end - start - 1)
                                       .expand(*z.shape[:-1])[..., None])[..., 0], 0.0).double()
        if m is None:
            s, a, pz, zn = bs, ba, bp, bz
        else:
            scale = torch.exp(m - m_new).double()
            s, a, pz, zn = s * scale + bs, a * scale + ba, pz + bp, zn + bz
        m, start = m_new, end
    if m is None or s is None or a is None or pz is None or zn is None:
        raise ValueError("logit_stats needs at least one block of logits.")
    lse = m.double() + s.log()
    return LogitStats(kl=kl_from_parts(target.plogp.double(), pz, lse).clamp_min(0),
                      entropy=(lse - a / s).clamp_min(0), ce=lse - zn)


# -- units ------------------------------------------------------------------------------------------
def bits_per_byte(total_nats: float | torch.Tensor, n_bytes: int) -> float | torch.Tensor:
    """Total nats over some text -> bits per byte of that text (``nats / ln 2 / bytes``)."""
    return total_nats / LN2 / max(1, n_bytes)


def token_bytes(tokenizer: Any, ids: list[int]) -> int:
    """UTF-8 bytes of the text that token ids decode to (special tokens skipped): the bits/byte denominator."""
    try:
        text = tokenizer.decode(list(ids), skip_special_tokens=True)
    except TypeError:
        text = tokenizer.decode(list(ids))
    return len(text.encode("utf-8"))
