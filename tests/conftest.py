"""Test-wide guards and shared fixtures (tiny random models built offline)."""

import numpy as np
import pytest
import torch


def _import_colour_cleanly() -> None:
    """Import colour-science once, then undo what its import does to the whole process:
    it switches numpy to legacy 1.13 float printing, and puts MagicMocks in ``sys.modules``
    for missing optional packages (matplotlib), which breaks ``importlib.util.find_spec``
    for every later importer (diffusers, transformers)."""
    import sys
    import warnings
    from unittest import mock

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # colour warns that matplotlib is missing
        import colour  # noqa: F401
    for name, module in list(sys.modules.items()):
        if isinstance(module, mock.Mock):
            del sys.modules[name]
    np.set_printoptions(legacy=False)


_import_colour_cleanly()


@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory):
    """A random 2-layer ViT and its processor, saved as a DINO model folder would be."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny_dino")
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def tiny_flux_folder(tmp_path):
    """A FluxPipeline folder with tiny random CLIP and T5 encoders and hand-made tokenizers."""
    from diffusers import FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    clip_vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    clip_vocab.update({token: len(clip_vocab) + i for i, token in enumerate(letters + [c + "</w>" for c in letters])})
    clip_tokenizer = CLIPTokenizer(vocab=clip_vocab, merges=[], model_max_length=77)
    t5_pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -1.0) for c in letters]
    t5_tokenizer = T5TokenizerFast(vocab=t5_pieces, extra_ids=0, model_max_length=512)
    torch.manual_seed(0)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
            num_attention_heads=2, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_pieces), d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=2))
    from seminft_bench.model.components import tiny_components

    c = tiny_components()
    pipeline = FluxPipeline(c.scheduler, c.vae, clip.eval(), clip_tokenizer, t5.eval(), t5_tokenizer, c.transformer)
    pipeline.save_pretrained(tmp_path / "flux")
    return tmp_path / "flux", pipeline


@pytest.fixture
def load_hf(tmp_path_factory):
    """``datasets.load_dataset`` on a folder with a cache of its own: the shared cache keys local
    folders loosely, so two test folders of the same name can read each other's stale copy."""
    import datasets

    def load(folder):
        return datasets.load_dataset(str(folder), cache_dir=str(tmp_path_factory.mktemp("hf-cache")))

    return load


SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)


def _tiny_tokenizer():
    """A byte-level Qwen2 tokenizer with no merges (one token per byte) plus the chat and vision tokens."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({token: len(vocab) + i for i, token in enumerate(SPECIAL_TOKENS)})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])
    return tokenizer


@pytest.fixture(scope="session")
def tiny_qwen_edit_dir(tmp_path_factory):
    """A random QwenImageEditPipeline small enough for CPU, saved as the real one would be.

    The pipeline always encodes the input image at about one megapixel, so the VAE downsamples
    16× with no residual blocks to keep that cheap; the vision encoder sees at most 56×56 pixels.
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _tiny_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                "bos_token_id": token_id("<|endoftext|>"),
                "eos_token_id": token_id("<|im_end|>"),
            },
            vision_config={
                "depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16,
            },
            image_token_id=token_id("<|image_pad|>"),
            video_token_id=token_id("<|video_pad|>"),
            vision_start_token_id=token_id("<|vision_start|>"),
            vision_end_token_id=token_id("<|vision_end|>"),
        )
    )
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=0,
        temperal_downsample=[False, False, False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )
    pipeline = QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, processor=processor, transformer=transformer,
    )
    folder = tmp_path_factory.mktemp("tiny-qwen-image-edit")
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture
def planted_vlm(monkeypatch, tmp_path):
    """``start(plan, key, *judges)``: a `PlantedServer` answering with ``plan``, ``key`` as OPENAI_API_KEY, and a judge
    config (``server.config``) that points ``judges`` at it; stopped after the test."""
    from seminft_bench.vlm.testserver import PlantedServer

    started = []

    def start(plan, key: str, *judges: str) -> PlantedServer:
        monkeypatch.setenv("OPENAI_API_KEY", key)
        server = PlantedServer(plan).__enter__()
        started.append(server)
        config = tmp_path / "judges.toml"
        config.write_text("".join(f'[judges."{judge}"]\nbase_url = "{server.openai_url}"\n' for judge in judges))
        server.config, server.plan = str(config), plan
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)
