"""Token layout of SemiNFT's three image branches (paper §3.3).

FLUX sees one token sequence `[text | noisy | reference | source]`. Each image branch is a
VAE latent packed into 2×2 patches, exactly as diffusers' FluxPipeline packs it, so the
pretrained patch embedding applies unchanged. The branches tell themselves apart through the
first axis of their RoPE position ids (0 / 1 / 2, as Kontext uses 1 for its context image),
with row and column grids from 0 each, so any two branches may differ in size and aspect.
The structured mask keeps the condition branches to themselves while the main branch
(text + noisy) sees everything.
"""

import torch

BRANCHES = ("noisy", "reference", "source")


def _check_even(height: int, width: int) -> None:
    if height % 2 or width % 2:
        raise ValueError(f"latent height and width must be even to pack 2×2 patches, got {height}×{width}")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """`[B, C, H, W]` latents → `[B, (H/2)·(W/2), 4·C]` tokens, row-major over the 2×2 patches."""
    batch, channels, height, width = latents.shape
    _check_even(height, width)
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2)
    patches = patches.permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents`; `height` and `width` are the latent (not pixel) size."""
    _check_even(height, width)
    batch, _, features = tokens.shape
    patches = tokens.view(batch, height // 2, width // 2, features // 4, 2, 2)
    patches = patches.permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, features // 4, height, width)


def image_ids(
    branch: int, height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """RoPE ids `[(H/2)·(W/2), 3]` of one branch's tokens: `(branch, row, column)`.

    `branch` indexes `BRANCHES`; `height` and `width` are the latent size.
    """
    if not 0 <= branch < len(BRANCHES):
        raise ValueError(f"branch must index {BRANCHES}, got {branch}")
    _check_even(height, width)
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    ids = torch.stack([torch.full_like(rows, branch), rows, cols], dim=-1).reshape(-1, 3)
    return ids.to(device=device, dtype=dtype)


def branch_attention_mask(
    n_text: int, n_noisy: int, n_reference: int, n_source: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean `[L, L]` mask over `[text | noisy | reference | source]`; True = row may attend column.

    Main-branch rows (text + noisy) attend every token; reference rows attend only the
    reference, source rows only the source, so neither condition reads the noisy latent, the
    text, or the other condition. This is the definition (tests compare with it): `transformer`
    computes the same attention as unmasked calls, one per branch, never building the mask.
    """
    n_main = n_text + n_noisy
    total = n_main + n_reference + n_source
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[:n_main] = True
    reference = slice(n_main, n_main + n_reference)
    source = slice(n_main + n_reference, total)
    mask[reference, reference] = True
    mask[source, source] = True
    return mask
