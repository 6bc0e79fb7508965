"""The local transformers judge on a tiny random Qwen3-VL built here (hand-made tokenizer, no download).

Reward = Eq. 4 over the last position's logits from one forward pass; evaluation =
greedy generation, whose gibberish from a random model must end as a failure, not a 0.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from seminft_bench.vlm import Judge, JudgeUnavailable, Pair, RetryPolicy, Transport, TransformersClient
from seminft_bench.vlm.clients import encode_image
from seminft_bench.vlm.prompts import build_prompt

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
SPECIAL += ["<|image_pad|>", "<|video_pad|>", "<|endoftext|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> str:
    """A folder holding a random 2-layer Qwen3-VL and its processor, as `from_pretrained` expects."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, initial_alphabet=alphabet)
    prompt = build_prompt("evaluation")
    bpe.train_from_iterator([prompt.system, prompt.user, "0 1 2 3 4 5"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=32 * 32, max_pixels=64 * 64, patch_size=16, merge_size=2, temporal_patch_size=2
        ),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2),
        chat_template=CHAT_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8,
            rope_parameters={
                "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2], "mrope_interleaved": True
            },
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=16, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=32, num_position_embeddings=16, deepstack_visual_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-qwen3-vl")
    Qwen3VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def pair() -> Pair:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    return Pair("p", reference, rng.integers(0, 256, (48, 32, 3), dtype=np.uint8))


def reference_reward(folder: str, device: str) -> float:
    """Eq. 4 by hand: a full forward pass, the softmax over the whole vocabulary, then the expectation
    over the score tokens renormalised."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    prompt = build_prompt("reward")
    sent = [encode_image(image) for image in (pair().reference, pair().prediction)]  # what the judge sends
    images = [{"type": "image", "image": Image.open(io.BytesIO(data)).convert("RGB")} for data in sent]
    messages = [
        {"role": "system", "content": [{"type": "text", "text": prompt.system}]},
        {"role": "user", "content": [*images, {"type": "text", "text": prompt.user}]},
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**inputs.to(device)).logits[0, -1].double().cpu()
    probs = torch.softmax(logits, dim=0).numpy()
    mass = np.zeros(6)
    for score in range(6):
        for spelling in (str(score), f" {score}"):  # a digit after a space, where the vocabulary has it
            ids = processor.tokenizer.encode(spelling, add_special_tokens=False)
            mass[score] += probs[ids[0]] if len(ids) == 1 else 0.0
    return float((np.arange(6) * mass).sum() / mass.sum())


def test_reward_is_eq4_from_one_forward_pass(tiny_qwen, monkeypatch):
    client = TransformersClient.from_pretrained(tiny_qwen, device="cpu")
    monkeypatch.setattr(client._model, "generate", lambda *a, **k: pytest.fail("reward mode must not generate"))
    [result] = Judge("tiny-qwen", client, reward=True, min_mass=0.0).score_pairs([pair()])
    assert result.error is None and result.mode == "reward"
    assert result.score == pytest.approx(reference_reward(tiny_qwen, "cpu"), abs=1e-6)
    assert 0.0 < result.score < 5.0 and result.usage.output_tokens == 0


def test_rewards_in_flight_together_share_forward_passes_and_equal_one_at_a_time(tiny_qwen):
    rng = np.random.default_rng(1)
    sizes = [(40, 56), (48, 32), (64, 64), (32, 48), (56, 40)]  # different sizes: different token counts, padded
    pairs = [Pair(f"p{i}", rng.integers(0, 256, (*size, 3), dtype=np.uint8), rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
             for i, size in enumerate(sizes)]  # fmt: skip
    alone = TransformersClient.from_pretrained(tiny_qwen, device="cpu", max_batch=1)
    one_at_a_time = [Judge("q", alone, reward=True, min_mass=0.0).score_pairs([p])[0] for p in pairs]

    client = TransformersClient.from_pretrained(tiny_qwen, device="cpu", max_batch=4)
    client.batch_wait_s = 0.5  # every request of the judge's first wave joins the batch
    batches = []
    original = client.rewards
    client.rewards = lambda requests: (batches.append(len(requests)), original(requests))[1]
    together = Judge("q", client, reward=True, min_mass=0.0, transport=Transport(8)).score_pairs(pairs)
    assert max(batches) > 1 and max(batches) <= 4 and sum(batches) == len(pairs)  # shared passes, never over max_batch
    for a, b in zip(one_at_a_time, together, strict=True):
        assert b.error is None and b.score == pytest.approx(a.score, abs=1e-5)
        assert b.usage.input_tokens == a.usage.input_tokens  # padding is not billed
    assert len({round(j.usage.input_tokens) for j in together}) > 1


def test_gibberish_evaluation_is_a_failure_not_a_zero(tiny_qwen):
    client = TransformersClient.from_pretrained(tiny_qwen, device="cpu")
    transport = Transport(1, RetryPolicy(max_attempts=2, base_delay=0.0))
    judge = Judge("tiny-qwen", client, max_tokens=6, transport=transport)
    [result] = judge.score_pairs([pair()])
    assert result.score is None and "gave up after 2 attempts: unparseable reply" in result.error
    assert result.raw is not None and result.usage.output_tokens > 0
    assert judge.ledger.entries["tiny-qwen"].calls == 2


def test_missing_weights_name_the_fix(tmp_path):
    with pytest.raises(JudgeUnavailable, match="hf download"):
        TransformersClient.from_pretrained(str(tmp_path / "no-such-model"), device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reward_on_gpu_matches_cpu(tiny_qwen):
    client = TransformersClient.from_pretrained(tiny_qwen, device="cuda", dtype=torch.float32)
    [result] = Judge("tiny-qwen", client, reward=True, min_mass=0.0).score_pairs([pair()])
    assert result.score == pytest.approx(reference_reward(tiny_qwen, "cpu"), abs=1e-4)
