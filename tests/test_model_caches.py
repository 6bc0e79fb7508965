"""Prompt-embedding and VAE-latent caches: computed once, keyed right, written atomically."""

import os
import random

import pytest
import torch

from seminft_bench.errors import MissingWeightsError
from seminft_bench.model import caches
from seminft_bench.model.caches import (
    LatentCache,
    PromptEmbeddings,
    encode_with_flux_text_encoders,
    prompt_embeddings,
    tiny_prompt_embeddings,
    vae_identity,
)
from seminft_bench.model.components import tiny_components


class CountingEncoder:
    """An ``encode`` that records its calls and pads to ``length`` tokens."""

    def __init__(self, length: int = 8):
        self.length = length
        self.calls = []

    def __call__(self, prompt: str) -> PromptEmbeddings:
        self.calls.append(prompt)
        return tiny_prompt_embeddings(prompt, length=self.length)


def _never(prompt: str) -> PromptEmbeddings:
    raise AssertionError("the text encoders were needed although the prompt is cached")


def _assert_same_embeddings(a: PromptEmbeddings, b: PromptEmbeddings) -> None:
    for name in ("prompt_embeds", "pooled_prompt_embeds", "text_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_prompt_is_encoded_once_then_read_from_disk(tmp_path):
    encoder = CountingEncoder()
    first = prompt_embeddings("transfer the grade", "tiny:0", tmp_path, encode=encoder, max_sequence_length=8)
    again = prompt_embeddings("transfer the grade", "tiny:0", tmp_path, encode=_never, max_sequence_length=8)
    assert encoder.calls == ["transfer the grade"]
    _assert_same_embeddings(first, again)
    _assert_same_embeddings(again, tiny_prompt_embeddings("transfer the grade"))
    assert len(list(tmp_path.iterdir())) == 1


def test_prompt_key_covers_base_prompt_and_length(tmp_path):
    encoder = CountingEncoder()
    prompt_embeddings("a", "tiny:0", tmp_path, encode=encoder, max_sequence_length=8)
    prompt_embeddings("b", "tiny:0", tmp_path, encode=encoder, max_sequence_length=8)
    prompt_embeddings("a", "tiny:1", tmp_path, encode=encoder, max_sequence_length=8)
    longer = prompt_embeddings("a", "tiny:0", tmp_path, encode=CountingEncoder(length=16), max_sequence_length=16)
    assert encoder.calls == ["a", "b", "a"]
    assert longer.prompt_embeds.shape == (1, 16, 32)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_encoder_of_another_length_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"expected \[1, 512, D\]"):
        prompt_embeddings("a", "tiny:0", tmp_path, encode=CountingEncoder(length=8))
    assert list(tmp_path.iterdir()) == []


def test_tiny_prompt_embeddings_are_deterministic_and_fit_the_tiny_transformer():
    a, b = tiny_prompt_embeddings("one", seed=0), tiny_prompt_embeddings("one", seed=0)
    _assert_same_embeddings(a, b)
    assert not torch.equal(a.prompt_embeds, tiny_prompt_embeddings("two", seed=0).prompt_embeds)
    assert not torch.equal(a.pooled_prompt_embeds, tiny_prompt_embeddings("one", seed=1).pooled_prompt_embeds)
    config = tiny_components().transformer.config
    assert a.prompt_embeds.shape == (1, 8, config.joint_attention_dim)
    assert a.pooled_prompt_embeds.shape == (1, config.pooled_projection_dim)
    assert torch.equal(a.text_ids, torch.zeros(8, 3))


def test_flux_text_encoders_load_lazily_and_name_what_is_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    encode = encode_with_flux_text_encoders("black-forest-labs/FLUX.1-dev", device="cpu")  # loads nothing yet
    cached = prompt_embeddings("p", "tiny:0", tmp_path / "c", encode=CountingEncoder(), max_sequence_length=8)
    again = prompt_embeddings("p", "tiny:0", tmp_path / "c", encode=encode, max_sequence_length=8)
    _assert_same_embeddings(cached, again)
    with pytest.raises(MissingWeightsError) as caught:
        encode("p")
    assert str(tmp_path / "hf-cache") in str(caught.value)
    assert "hf download black-forest-labs/FLUX.1-dev" in str(caught.value)

    (tmp_path / "model" / "text_encoder").mkdir(parents=True)
    with pytest.raises(MissingWeightsError, match="lacks text_encoder_2/, tokenizer/, tokenizer_2/"):
        encode_with_flux_text_encoders(tmp_path / "model", device="cpu")("p")


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
    c = tiny_components()
    pipeline = FluxPipeline(c.scheduler, c.vae, clip.eval(), clip_tokenizer, t5.eval(), t5_tokenizer, c.transformer)
    pipeline.save_pretrained(tmp_path / "flux")
    return tmp_path / "flux", pipeline


def test_flux_text_encoders_give_flux_pipelines_embeddings(tiny_flux_folder, tmp_path):
    folder, pipeline = tiny_flux_folder
    encode = encode_with_flux_text_encoders(folder, device="cpu", max_sequence_length=16)
    embeddings = prompt_embeddings("a cat", str(folder), tmp_path / "c", encode=encode, max_sequence_length=16)
    with torch.no_grad():
        expected = pipeline.encode_prompt("a cat", device="cpu", max_sequence_length=16)
    _assert_same_embeddings(embeddings, PromptEmbeddings(*expected))
    assert embeddings.prompt_embeds.shape == (1, 16, 32) and embeddings.pooled_prompt_embeds.shape == (1, 32)
    other = encode("a dog")
    assert not torch.equal(other.prompt_embeds, embeddings.prompt_embeds)


def test_vae_identity_follows_weights_config_and_dtype(tmp_path):
    vae = tiny_components(0).vae
    assert vae_identity(vae) == vae_identity(tiny_components(0).vae)
    assert vae_identity(vae) != vae_identity(tiny_components(1).vae)
    assert vae_identity(vae) != vae_identity(tiny_components(0, dtype=torch.bfloat16).vae)
    vae.save_pretrained(tmp_path / "vae")
    reloaded = type(vae).from_pretrained(tmp_path / "vae")
    assert vae_identity(reloaded) == vae_identity(vae)  # same weights from another folder
    rescaled = type(vae).from_pretrained(tmp_path / "vae", scaling_factor=1.0)
    assert vae_identity(rescaled) != vae_identity(vae)
    with torch.no_grad():
        reloaded.encoder.conv_in.weight[0, 0, 0, 0] += 1e-3
    assert vae_identity(reloaded) != vae_identity(vae)


def test_latents_are_reused_across_instances_and_not_across_vaes(tmp_path):
    components = tiny_components(0)
    identity = vae_identity(components.vae)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calls = []

    def encode(x):
        calls.append(x)
        return components.encode(x)[0]

    first = LatentCache(tmp_path, identity).get_or_encode("s1", "source", image, encode)
    again = LatentCache(tmp_path, identity).get_or_encode("s1", "source", image, encode)
    assert len(calls) == 1 and torch.equal(first, again)
    assert torch.equal(first, components.encode(image)[0])
    assert LatentCache(tmp_path, identity).get("s1", "target") is None  # roles are separate entries
    assert LatentCache(tmp_path, vae_identity(tiny_components(1).vae)).get("s1", "source") is None
    assert (tmp_path / identity).is_dir()


def test_shuffled_order_pairs_each_sample_with_its_own_latents(tmp_path):
    components = tiny_components(0)
    cache = LatentCache(tmp_path, vae_identity(components.vae))
    images = {f"sample-{i}": torch.full((1, 3, 16, 16), i / 10) for i in range(8)}
    for sample_id in images:  # first epoch, in order
        cache.get_or_encode(sample_id, "target", images[sample_id], lambda x: components.encode(x)[0])
    order = list(images)
    random.Random(0).shuffle(order)
    for sample_id in order:  # later epoch, shuffled, from cache only
        latents = cache.get_or_encode(sample_id, "target", images[sample_id], pytest.fail)
        assert torch.equal(latents, components.encode(images[sample_id])[0]), sample_id


def test_a_file_of_another_sample_is_never_served(tmp_path):
    cache = LatentCache(tmp_path, "vae0")
    cache.put("a", "source", torch.zeros(4, 2, 2))
    os.replace(cache.path("a", "source"), cache.path("b", "source"))
    with pytest.raises(RuntimeError, match="instead of sample 'b'"):
        cache.get("b", "source")


def test_writes_are_atomic(tmp_path, monkeypatch):
    cache = LatentCache(tmp_path, "vae0")
    cache.put("a", "source", torch.ones(4, 2, 2))
    assert [p.name for p in cache.folder.iterdir()] == [cache.path("a", "source").name]

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.put("b", "source", torch.ones(4, 2, 2))
    with pytest.raises(KeyboardInterrupt):
        caches.prompt_embeddings("p", "tiny:0", tmp_path / "prompts", encode=CountingEncoder(), max_sequence_length=8)
    assert [p.name for p in cache.folder.iterdir()] == [cache.path("a", "source").name]  # no temp file, no torn file
    assert list((tmp_path / "prompts").iterdir()) == []
    assert cache.get("b", "source") is None


def test_unsafe_identity_is_refused(tmp_path):
    with pytest.raises(ValueError, match="file-name-safe"):
        LatentCache(tmp_path, "../elsewhere")
