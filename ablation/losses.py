"""Contrastive losses of SimCLR Table 4 (NT-Xent, NT-Logistic, margin triplet), batch- and rank-aware.

All three share one layout. The batch holds N images, two views each, so 2N samples. Every sample
is an anchor. Its positive is the other view of the same image and its negatives are the other
2N - 2 samples. With ``normalize=True`` the projections are l2-normalised first, so a similarity is
a cosine. One (2n x 2N) similarity matrix serves all anchors, where n is this rank's share of N.

Under ``torch.distributed`` (initialised, world size > 1) the projections are gathered from every
rank with gradients. Each rank scores its own anchors against all 2N candidates and returns the mean
over those anchors. DDP's gradient mean over ranks then gives exactly the loss and gradients of one
process on the whole batch.

Reduction: the mean over the 2N anchors. The official SimCLR code returns mean(loss_a + loss_b)
over N images, which is twice this value. Only the gradient scale differs. LARS's trust ratio
almost cancels that factor for adapted (weight) tensors, but biases and normalisation parameters
take the full factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ablation import dist
from ablation.errors import choices_error
from ablation.names import LOSSES, SEMI_HARD_LOSSES


def _nt_xent(sim: Tensor, pos: Tensor, neg: Tensor, temperature: float, margin: float) -> Tensor:
    """-log softmax of the positive over positive + negatives. Uses logsumexp, so large logits do not overflow."""
    neg_lse = torch.logsumexp((sim / temperature).masked_fill(~neg, float("-inf")), dim=1)
    return torch.logaddexp(pos / temperature, neg_lse) - pos / temperature


def _mean_over(terms: Tensor, neg: Tensor) -> Tensor:
    """Mean of each row's terms over its negatives; 0 for a row without any (possible after mining)."""
    return terms.masked_fill(~neg, 0.0).sum(dim=1) / neg.sum(dim=1).clamp_min(1)


def _nt_logistic(sim: Tensor, pos: Tensor, neg: Tensor, temperature: float, margin: float) -> Tensor:
    """Positive term plus the mean negative term. logsigmoid does not saturate to log(0)."""
    return -F.logsigmoid(pos / temperature) - _mean_over(F.logsigmoid(-sim / temperature), neg)


def _margin(sim: Tensor, pos: Tensor, neg: Tensor, temperature: float, margin: float) -> Tensor:
    """Mean triplet hinge over negatives. Uses raw similarities, no temperature."""
    return _mean_over(F.relu(sim - pos[:, None] + margin), neg)


_PER_ANCHOR = {"nt_xent": _nt_xent, "nt_logistic": _nt_logistic, "margin": _margin}  # keys: names.LOSSES


def _similarities(z1: Tensor, z2: Tensor, normalize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(sim (2n, 2N), positive similarity (2n,), negative mask (2n, 2N)) for this rank's anchors.

    Candidates are ordered [all first views; all second views] across ranks. This rank's image i
    sits at global index rank * n + i.
    """
    rank = dist.rank()
    n = z1.shape[0]
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    big1, big2 = dist.gather_with_grad(torch.cat([z1, z2], dim=1)).split(z1.shape[1], dim=1)
    total = big1.shape[0]
    sim = torch.cat([z1, z2]) @ torch.cat([big1, big2]).T
    rows = torch.arange(2 * n, device=sim.device)
    local = torch.arange(n, device=sim.device) + rank * n
    self_idx = torch.cat([local, local + total])
    pos_idx = torch.cat([local + total, local])
    # compared, not written: an indexed write of a Python value copies it from the host to the device
    cols = torch.arange(2 * total, device=sim.device)
    neg = (cols != self_idx[:, None]) & (cols != pos_idx[:, None])
    return sim, sim[rows, pos_idx], neg


def contrastive_loss(
    name: str,
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    normalize: bool = True,
    margin: float = 1.0,
    semi_hard: bool = False,
) -> Tensor:
    """Mean loss over this rank's 2n anchors. Row i of ``z1`` and row i of ``z2`` are the two views of image i.

    - ``nt_xent``: -log( exp(s+/tau) / sum over the 2N-1 others of exp(s/tau) ).
    - ``nt_logistic``: -log sigmoid(s+/tau) - mean over the 2N-2 negatives of log sigmoid(-s-/tau).
      The positive term and the mean of the negative terms carry equal weight. The paper gives no
      weighting, and the public SimCLR code implements NT-Xent only, so this weighting is our choice.
    - ``margin``: mean over the 2N-2 negatives of max(s- - s+ + margin, 0). ``temperature`` is not
      used here, as in the paper's definition.

    ``semi_hard`` (``nt_logistic`` and ``margin`` only) mines semi-hard negatives (Schroff et al.,
    2015): an anchor keeps only the negatives less similar to it than its positive (s- < s+), chosen
    without gradient; the mean runs over those, and an anchor with none has no negative term. The
    paper does not define its mining further, so this definition is our choice.

    Similarities are computed in float32 (float64 inputs stay float64) with autocast disabled, so
    the loss is the same under bf16 autocast.
    """
    if name not in _PER_ANCHOR:
        raise choices_error("loss", name, LOSSES)
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both be (N, D) with the same shape; got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if semi_hard and name not in SEMI_HARD_LOSSES:
        raise ValueError(f"semi-hard negative mining applies to {' and '.join(SEMI_HARD_LOSSES)}, not '{name}'")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    total = z1.shape[0] * dist.world()
    if total < 2:
        raise ValueError(f"contrastive losses need at least 2 images in the (global) batch; got {total}")
    dtype = torch.promote_types(z1.dtype, torch.float32)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        sim, pos, neg = _similarities(z1.to(dtype), z2.to(dtype), normalize)
        if semi_hard:
            neg = neg & (sim < pos[:, None])  # a mask: no gradient flows through the choice
        return _PER_ANCHOR[name](sim, pos, neg, temperature, margin).mean()
