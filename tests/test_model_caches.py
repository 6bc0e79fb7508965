"""Prompt-embedding and VAE-latent caches: computed once, keyed right, written atomically."""

import os
import random
import shutil

import pytest
import torch

from seminft_bench.errors import MissingWeightsError
from seminft_bench.model import caches
from seminft_bench.model.caches import (
    LatentCache,
    LatentKey,
    PromptEmbeddings,
    encode_with_flux_text_encoders,
    prompt_embeddings,
    text_encoders_identity,
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


def test_prompt_key_covers_encoders_prompt_and_length(tmp_path):
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


def key(image: str = "img-a", size=(32, 32), resize: str = "rule") -> LatentKey:
    return LatentKey(image, size, resize)


def test_latents_are_reused_across_instances_and_not_across_vaes(tmp_path):
    components = tiny_components(0)
    identity = vae_identity(components.vae)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    LatentCache(tmp_path, identity).put(key(), components.encode(image)[0])
    again = LatentCache(tmp_path, identity).get(key())
    assert torch.equal(again, components.encode(image)[0])
    assert LatentCache(tmp_path, vae_identity(tiny_components(1).vae)).get(key()) is None
    assert (tmp_path / identity).is_dir()


def test_every_part_of_the_key_makes_its_own_entry(tmp_path):
    cache = LatentCache(tmp_path, "vae0")
    cache.put(key(), torch.zeros(4, 2, 2))
    assert cache.get(key()) is not None and key() in cache
    for other in (key(image="img-b"), key(size=(32, 48)), key(resize="another rule")):
        assert cache.get(other) is None and other not in cache, other


def test_shuffled_order_pairs_each_sample_with_its_own_latents(tmp_path):
    components = tiny_components(0)
    cache = LatentCache(tmp_path, vae_identity(components.vae))
    images = {f"img-{i}": torch.full((1, 3, 16, 16), i / 10) for i in range(8)}
    for name, image in images.items():  # first epoch, in order
        cache.put(key(name, (16, 16)), components.encode(image)[0])
    order = list(images)
    random.Random(0).shuffle(order)
    for name in order:  # later epoch, shuffled, from cache only
        assert torch.equal(cache.get(key(name, (16, 16))), components.encode(images[name])[0]), name


def test_a_file_of_another_image_is_never_served(tmp_path):
    cache = LatentCache(tmp_path, "vae0")
    cache.put(key("a"), torch.zeros(4, 2, 2))
    os.replace(cache.path(key("a")), cache.path(key("b")))
    with pytest.raises(RuntimeError, match="instead of"):
        cache.get(key("b"))


def test_writes_are_atomic(tmp_path, monkeypatch):
    cache = LatentCache(tmp_path, "vae0")
    cache.put(key("a"), torch.ones(4, 2, 2))
    assert [p.name for p in cache.folder.iterdir()] == [cache.path(key("a")).name]

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.put(key("b"), torch.ones(4, 2, 2))
    with pytest.raises(KeyboardInterrupt):
        caches.prompt_embeddings("p", "tiny:0", tmp_path / "prompts", encode=CountingEncoder(), max_sequence_length=8)
    assert [p.name for p in cache.folder.iterdir()] == [cache.path(key("a")).name]  # no temp file, no torn file
    assert list((tmp_path / "prompts").iterdir()) == []
    assert cache.get(key("b")) is None


def test_text_encoders_identity_follows_their_files(tiny_flux_folder, tmp_path, monkeypatch):
    folder, _ = tiny_flux_folder
    first = text_encoders_identity(folder)
    assert first == text_encoders_identity(folder)
    config = folder / "text_encoder_2" / "config.json"
    config.write_text(config.read_text().replace('"num_heads": 2', '"num_heads": 1'))
    changed = text_encoders_identity(folder)
    assert changed != first  # a changed file: the prompts are encoded again
    # large files count by size and modification time, or by their blob name in the Hugging Face cache
    monkeypatch.setattr(caches, "SMALL_FILE", 0)
    weights = next((folder / "text_encoder").glob("*.safetensors"))
    by_stat = text_encoders_identity(folder)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert text_encoders_identity(folder) != by_stat
    blob = tmp_path / "blobs" / "0123abcd"
    blob.parent.mkdir()
    os.replace(weights, blob)
    weights.symlink_to(blob)
    by_blob = text_encoders_identity(folder)
    blob.touch()
    assert text_encoders_identity(folder) == by_blob
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(MissingWeightsError, match="lacks tokenizer_2/"):
        text_encoders_identity(folder)


def test_unsafe_identity_is_refused(tmp_path):
    with pytest.raises(ValueError, match="file-name-safe"):
        LatentCache(tmp_path, "../elsewhere")
