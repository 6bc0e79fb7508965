"""DiffusionNFT (paper §3.1, Eq. 1–3; Zheng et al. 2025) for SemiNFT's RL stage.

Negative-aware fine-tuning trains on the forward (noising) process: for a rollout x_0 with a
normalised reward r ∈ [0, 1], noise it to x_t = (1 − t)·x_0 + t·ε, and pull the implicit positive
policy v⁺ = (1 − β)·v_old + β·v_θ towards the target velocity v = ε − x_0 with weight r and the
implicit negative policy v⁻ = (1 + β)·v_old − β·v_θ with weight 1 − r. A well-rewarded sample moves
v_θ towards v, a poorly rewarded one away from it, without likelihoods or a reverse-process SDE.

The old policy v_old is a second LoRA (``old``), soft-updated towards the trained one (``rl``)
after each epoch: old ← d·old + (1 − d)·rl, d ramping from 0 (`old_decay`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

ADAPTIVE_MIN = 1e-5
"""The floor of the adaptive weight (DiffusionNFT's reference code clips at 1e-5)."""


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    v_target: torch.Tensor,
    reward: torch.Tensor,
    beta: float,
    *,
    sigma: torch.Tensor | None = None,
    adaptive_weighting: bool = False,
    v_ref: torch.Tensor | None = None,
    kl_weight: float = 0.0,
) -> torch.Tensor:
    """Eq. 1–3: mean over the batch of r·‖v⁺ − v‖² + (1 − r)·‖v⁻ − v‖², each squared norm the mean over
    the non-batch elements.

    ``v_old`` is treated as a constant (detached). ``reward`` is ``[B]`` in [0, 1] (`group_normalize`).

    Options of DiffusionNFT's reference code, off by default:

    - ``adaptive_weighting``: the errors are taken in x_0 space, x̂_0 − x_0 = σ·(v_target − v) for the
      noise level ``sigma`` ``[B]``, each divided by its own (detached) mean absolute value, so every
      sample weighs alike whatever its noise level.
    - ``kl_weight`` > 0: adds kl_weight·‖v_θ − v_ref‖², pulling towards ``v_ref`` (the frozen cold-start
      policy's velocity, detached).
    """
    if not 0 < beta:
        raise ValueError(f"beta must be positive, got {beta}")
    reward = reward.to(v_theta.dtype).reshape(-1)
    if reward.shape[0] != v_theta.shape[0]:
        raise ValueError(f"{reward.shape[0]} rewards for a batch of {v_theta.shape[0]}")
    v_old = v_old.detach()
    positive = (1 - beta) * v_old + beta * v_theta
    negative = (1 + beta) * v_old - beta * v_theta
    if adaptive_weighting:
        if sigma is None:
            raise ValueError("adaptive_weighting needs the noise levels sigma")
        scale = sigma.to(v_theta.dtype).reshape(-1, *[1] * (v_theta.ndim - 1))
        positive_error, negative_error = scale * (positive - v_target), scale * (negative - v_target)
        positive_loss = _per_sample_mean(positive_error**2) / _adaptive_weight(positive_error)
        negative_loss = _per_sample_mean(negative_error**2) / _adaptive_weight(negative_error)
    else:
        positive_loss = _per_sample_mean((positive - v_target) ** 2)
        negative_loss = _per_sample_mean((negative - v_target) ** 2)
    loss = (reward * positive_loss + (1 - reward) * negative_loss).mean()
    if kl_weight:
        if v_ref is None:
            raise ValueError("kl_weight needs v_ref, the reference policy's velocity")
        loss = loss + kl_weight * _per_sample_mean((v_theta - v_ref.detach()) ** 2).mean()
    return loss


def _adaptive_weight(error: torch.Tensor) -> torch.Tensor:
    return _per_sample_mean(error.detach().abs().double()).clamp(min=ADAPTIVE_MIN).to(error.dtype)


def old_decay(epoch: int, rate: float = 0.001, ceiling: float = 0.5) -> float:
    """d of the soft update after ``epoch`` epochs: min(rate·epoch, ceiling), from 0 (old = rl) to ½ by default."""
    return min(rate * epoch, ceiling)


@torch.no_grad()
def soft_update(old: Iterable[torch.Tensor], new: Iterable[torch.Tensor], decay: float) -> None:
    """old ← decay·old + (1 − decay)·new, tensor by tensor, in place."""
    for target, source in zip(old, new, strict=True):
        target.mul_(decay).add_(source.detach().to(target.dtype), alpha=1 - decay)
