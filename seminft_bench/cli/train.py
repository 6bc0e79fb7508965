"""``seminft-train``: cold-start SFT and DiffusionNFT (commands arrive with the model issues)."""

from seminft_bench.cli.common import new_app

app = new_app("Train SemiNFT: cold-start LoRA SFT, then DiffusionNFT.")
