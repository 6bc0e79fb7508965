"""DiffusionNFT's loss (Eq. 1–3) against hand-computed values and the reference code's x_0-space form."""

import pytest
import torch

from seminft_bench.model.nft import nft_loss, old_decay, soft_update


def test_nft_loss_matches_hand_computed_values():
    # sample 0 (r = 1): v+ = ½·1 + ½·2 = 1.5, (1.5 − 0)² = 2.25; sample 1 (r = 0): v− = 1.5·1 − ½·0 = 1.5, (1.5 − 1)² = 0.25
    loss = nft_loss(torch.tensor([[2.0], [0.0]]), torch.tensor([[1.0], [1.0]]), torch.tensor([[0.0], [1.0]]),
                    torch.tensor([1.0, 0.0]), beta=0.5)  # fmt: skip
    assert loss.item() == pytest.approx((2.25 + 0.25) / 2)


def test_nft_loss_equals_its_expanded_form_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    v_theta, v_old, v = (torch.randn(4, 7, 3, generator=g, dtype=torch.float64) for _ in range(3))
    r, beta = torch.rand(4, generator=g, dtype=torch.float64), 0.3
    # v± − v = ±β(v_θ − v_old) + (v_old − v)
    delta, offset = beta * (v_theta - v_old), v_old - v
    expected = (r * ((delta + offset) ** 2).mean((1, 2)) + (1 - r) * ((offset - delta) ** 2).mean((1, 2))).mean()
    torch.testing.assert_close(nft_loss(v_theta, v_old, v, r, beta), expected)


def test_beta_one_and_reward_one_is_plain_flow_matching():
    g = torch.Generator().manual_seed(1)
    v_theta, v_old, v = (torch.randn(3, 5, generator=g) for _ in range(3))
    torch.testing.assert_close(nft_loss(v_theta, v_old, v, torch.ones(3), 1.0), torch.nn.functional.mse_loss(v_theta, v))


def test_a_good_reward_pulls_towards_the_target_and_a_bad_one_pushes_away():
    v_old, v = torch.zeros(1, 4), torch.ones(1, 4)
    for reward, sign in ((0.9, -1), (0.1, 1)):
        v_theta = v_old.clone().requires_grad_(True)
        nft_loss(v_theta, v_old, v, torch.tensor([reward]), beta=1.0).backward()
        # a gradient step moves v_θ by −grad: towards v (= +1) for a good reward, away for a bad one
        assert (torch.sign(-v_theta.grad) == -sign * torch.sign(v - v_old)).all()
    v_theta = v_old.clone().requires_grad_(True)
    nft_loss(v_theta, v_old, v, torch.tensor([0.5]), beta=1.0).backward()
    assert torch.allclose(v_theta.grad, torch.zeros(1, 4))  # r = ½: no preference


def test_adaptive_weighting_matches_the_reference_codes_x0_space_loss():
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(3, 6, 2, generator=g, dtype=torch.float64), torch.randn(3, 6, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
    v_theta, v_old = torch.randn(3, 6, 2, generator=g, dtype=torch.float64), torch.randn(3, 6, 2, generator=g, dtype=torch.float64)
    r, beta = torch.tensor([0.1, 0.6, 1.0], dtype=torch.float64), 0.7
    # DiffusionNFT's train_nft_sd3.py, written out: x̂_0 = x_t − t·v, errors over their mean absolute value
    expected = torch.zeros(3, dtype=torch.float64)
    for weight, v_pred in ((r, (1 - beta) * v_old + beta * v_theta), (1 - r, (1 + beta) * v_old - beta * v_theta)):
        x0_pred = xt - t[:, None, None] * v_pred
        factor = (x0_pred - x0).abs().mean((1, 2)).clamp(min=1e-5)
        expected += weight * ((x0_pred - x0) ** 2).mean((1, 2)) / factor
    got = nft_loss(v_theta, v_old, noise - x0, r, beta, sigma=t, adaptive_weighting=True)
    torch.testing.assert_close(got, expected.mean())


def test_the_kl_term_pulls_towards_the_reference_policy():
    g = torch.Generator().manual_seed(3)
    v_theta, v_old, v, v_ref = (torch.randn(2, 5, generator=g) for _ in range(4))
    r = torch.tensor([0.3, 0.8])
    extra = nft_loss(v_theta, v_old, v, r, 0.5, v_ref=v_ref, kl_weight=0.1) - nft_loss(v_theta, v_old, v, r, 0.5)
    torch.testing.assert_close(extra, 0.1 * ((v_theta - v_ref) ** 2).mean())
    with pytest.raises(ValueError, match="v_ref"):
        nft_loss(v_theta, v_old, v, r, 0.5, kl_weight=0.1)


def test_old_policy_decay_ramps_from_zero_to_one_half_and_soft_update_mixes():
    assert old_decay(0) == 0.0 and old_decay(100) == pytest.approx(0.1) and old_decay(10_000) == 0.5
    old, new = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 6.0])]
    soft_update(old, new, 0.25)
    torch.testing.assert_close(old[0], torch.tensor([0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 6]))
    soft_update(old, new, 0.0)
    assert torch.equal(old[0], new[0])
