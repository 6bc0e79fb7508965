"""Token layout of the three branches: packing, position ids and the branch mask."""

import pytest
import torch
from diffusers import FluxPipeline

from seminft_bench.model.conditioning import BRANCHES, branch_attention_mask, image_ids, pack_latents, unpack_latents


def test_branch_mask_layout():
    # [text text | noisy noisy noisy | reference reference | source]
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    mask = branch_attention_mask(2, 3, 2, 1)
    assert mask.dtype == torch.bool
    assert mask.shape == (8, 8)
    assert torch.equal(mask, expected)


def test_branch_mask_without_conditions_is_full_attention():
    assert branch_attention_mask(3, 4, 0, 0).all()


@pytest.mark.parametrize(("height", "width"), [(4, 4), (6, 10), (8, 2)])
def test_packing_matches_diffusers(height, width):
    latents = torch.randn(2, 4, height, width, generator=torch.Generator().manual_seed(0))
    tokens = pack_latents(latents)
    assert torch.equal(tokens, FluxPipeline._pack_latents(latents, 2, 4, height, width))
    vae_scale_factor = 8
    diffusers_unpacked = FluxPipeline._unpack_latents(
        tokens, height * vae_scale_factor, width * vae_scale_factor, vae_scale_factor
    )
    assert torch.equal(unpack_latents(tokens, height, width), diffusers_unpacked)
    assert torch.equal(unpack_latents(tokens, height, width), latents)


@pytest.mark.parametrize("branch", range(len(BRANCHES)))
def test_image_ids_are_diffusers_grids_with_branch_axis(branch):
    height, width = 6, 10
    ids = image_ids(branch, height, width)
    grid = FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, "cpu", torch.float32)
    assert ids.shape == (15, 3)
    assert ids.dtype == torch.float32
    assert torch.equal(ids[:, 1:], grid[:, 1:])
    assert torch.equal(ids[:, 0], torch.full((15,), float(branch)))


def test_odd_latent_sizes_are_refused():
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.zeros(1, 4, 5, 4))
    with pytest.raises(ValueError, match="even"):
        image_ids(0, 4, 3)
