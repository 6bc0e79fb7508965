"""SemiNFT (paper §3): FLUX.1-dev with reference and source branches, trained in two stages.

- `conditioning`: latent packing, branch position ids, `branch_attention_mask`.
- `transformer`: `SemiNFTTransformer`, FLUX's block forward with per-branch modulation, the
  branch mask and the condition KV cache (`ConditionCache`).

Nothing heavy is imported here: import the submodule you need.
"""
