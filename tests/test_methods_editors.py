"""Image-editor baselines: GPT-Image-1.5 and Nano Banana against a local server, Qwen-Image-Edit on a tiny model.

The server (`PlantedServer`) speaks the OpenAI Responses API and Gemini generateContent and
plants images, faults and image-less replies. An editor must send Fig. 7's text with both
images, return RGB of the source's size, retry what is transient, cache what it got (a rerun
makes no calls), tally the billed tokens, and never let its key out.
"""

import json
import io

import pytest
import skimage.data
import torch
from PIL import Image

from seminft_bench.bench.methods import MethodContext, MethodUnavailable, get_method
from seminft_bench.bench.methods.editors import (
    FIXED_INSTRUCTION,
    NANO_BANANA_PROMPT,
    OPENING,
    PRICES,
    STEP_2,
    WRITER_PROMPT,
    GPTImage,
    NanoBanana,
    QwenImageEdit,
)
from seminft_bench.bench.samples import BenchSet
from seminft_bench.errors import MissingWeightsError
from seminft_bench.vlm import CostLedger, ResponseCache, RetryPolicy, Transport
from seminft_bench.vlm.clients import OpenAIClient
from seminft_bench.vlm.testserver import Answer, Fault, PlantedServer
from seminft_bench.vlm.transport import PermanentError, TransientError

KEYS = {"OPENAI_API_KEY": "sk-test-openai-0123456789abcdef", "GEMINI_API_KEY": "gemini-test-key-0123456789"}
EDITORS = {  # registry name: class, key variable, server URL attribute, the model that draws
    "gpt-image-1.5": (GPTImage, "OPENAI_API_KEY", "openai_url", "gpt-image-1.5"),
    "nano-banana": (NanoBanana, "GEMINI_API_KEY", "gemini_url", "gemini-2.5-flash-image"),
}
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)
DESCRIPTION = "I see warm, faded highlights and teal shadows."
PLANTED_COLOUR = (200, 40, 10)
IMAGE_TOKENS = (300, 1290)
CHAT_TOKENS = (50, 12)


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


PLANTED = png((96, 64), PLANTED_COLOUR)  # neither the source's size nor its aspect ratio


def planted(seen) -> Answer:
    """An image where one is asked for, else the conversation model's look at the reference."""
    if seen.wants_image:
        return Answer("", image=PLANTED, input_tokens=IMAGE_TOKENS[0], output_tokens=IMAGE_TOKENS[1])
    return Answer(DESCRIPTION, input_tokens=CHAT_TOKENS[0], output_tokens=CHAT_TOKENS[1])


class Recorder:
    """Wraps a plan and keeps every request it saw."""

    def __init__(self, plan=planted):
        self.plan = plan
        self.seen = []

    def __call__(self, seen):
        self.seen.append(seen)
        return self.plan(seen)


@pytest.fixture
def keys(monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    for name in ("GOOGLE_API_KEY", "OPENAI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def images():
    source = Image.fromarray(skimage.data.astronaut()[100:148, 150:222])  # 72×48
    reference = Image.fromarray(skimage.data.coffee()[100:140, 200:240])  # 40×40
    return source, reference


def make_editor(name, server, cache_dir, ledger=None):
    cls, _, url, _ = EDITORS[name]
    return cls(
        base_url=getattr(server, url),
        cache=ResponseCache(cache_dir),
        ledger=ledger if ledger is not None else CostLedger(),
        transport=Transport(4, FAST_RETRY),
    )


def key_served(name):
    return KEYS[EDITORS[name][1]]


def test_gpt_image_holds_the_fig7_conversation(keys, images, tmp_path):
    source, reference = images
    recorder = Recorder()
    with PlantedServer(recorder, api_key=key_served("gpt-image-1.5")) as server:
        output = make_editor("gpt-image-1.5", server, tmp_path).transfer(source, reference)
    assert output.mode == "RGB" and output.size == source.size
    assert output.getpixel((0, 0)) == PLANTED_COLOUR
    describe, draw = recorder.seen
    assert (describe.protocol, describe.model, draw.model) == ("responses", "gpt-4.1", "gpt-4.1")
    assert describe.roles == ("user", "assistant", "user", "assistant", "user") and not describe.wants_image
    assert [image.size for image in describe.images] == [reference.size]
    assert describe.text == "\n".join(text for _, text in OPENING)
    assert draw.wants_image and draw.roles == describe.roles + ("assistant", "user", "assistant", "user")
    assert [image.size for image in draw.images] == [reference.size, source.size]
    assert draw.text == "\n".join([describe.text, DESCRIPTION, *(text for _, text in STEP_2)])


def test_nano_banana_sends_the_fig7_prompt_with_source_then_reference(keys, images, tmp_path):
    source, reference = images
    recorder = Recorder()
    with PlantedServer(recorder, api_key=key_served("nano-banana")) as server:
        output = make_editor("nano-banana", server, tmp_path).transfer(source, reference)
    assert output.mode == "RGB" and output.size == source.size
    assert output.getpixel((0, 0)) == PLANTED_COLOUR
    (seen,) = recorder.seen
    assert (seen.protocol, seen.model, seen.roles) == ("gemini", "gemini-2.5-flash-image", ("user",))
    assert seen.wants_image and seen.text == NANO_BANANA_PROMPT
    assert [image.size for image in seen.images] == [source.size, reference.size]


@pytest.mark.parametrize("name", EDITORS)
def test_rate_limits_and_server_errors_are_retried(name, keys, images, tmp_path):
    def flaky(seen):
        if seen.attempt == 0:
            return Fault(429, "slow down", retry_after=0)
        if seen.attempt == 1:
            return Fault(500)
        return planted(seen)

    recorder = Recorder(flaky)
    with PlantedServer(recorder, api_key=key_served(name)) as server:
        output = make_editor(name, server, tmp_path).transfer(*images)
    assert output.size == images[0].size and output.getpixel((0, 0)) == PLANTED_COLOUR
    assert [seen.attempt for seen in recorder.seen] == [0, 1, 2] * (2 if name == "gpt-image-1.5" else 1)


@pytest.mark.parametrize("name", EDITORS)
def test_rerun_is_served_from_the_cache(name, keys, images, tmp_path):
    with PlantedServer(planted, api_key=key_served(name)) as server:
        first = make_editor(name, server, tmp_path / "cache").transfer(*images)
        server.reset_counts()
        ledger = CostLedger()
        again = make_editor(name, server, tmp_path / "cache", ledger).transfer(*images)
        assert server.calls == 0
    assert again.tobytes() == first.tobytes()
    model = EDITORS[name][3]
    assert ledger.entries[model].cached == 1 and ledger.entries[model].calls == 0
    assert ledger.total_cost() == 0


def test_ledger_tallies_what_the_server_billed(keys, images, tmp_path):
    gpt_ledger, nano_ledger = CostLedger(), CostLedger()
    for name, ledger in (("gpt-image-1.5", gpt_ledger), ("nano-banana", nano_ledger)):
        with PlantedServer(planted, api_key=key_served(name)) as server:
            make_editor(name, server, tmp_path / name, ledger).transfer(*images)
            billed = (server.billed_input_tokens, server.billed_output_tokens)
        tallied = [(entry.input_tokens, entry.output_tokens) for entry in ledger.entries.values()]
        assert tuple(map(sum, zip(*tallied))) == billed
    chat, drawn = gpt_ledger.entries["gpt-4.1"], gpt_ledger.entries["gpt-image-1.5"]
    assert (chat.calls, chat.input_tokens, chat.output_tokens) == (2, *CHAT_TOKENS)
    assert (drawn.calls, drawn.input_tokens, drawn.output_tokens) == (1, *IMAGE_TOKENS)
    price = PRICES["gpt-image-1.5"]
    expected = (IMAGE_TOKENS[0] * price.input_per_mtok + IMAGE_TOKENS[1] * price.output_per_mtok) / 1e6
    assert gpt_ledger.cost("gpt-image-1.5") == pytest.approx(expected)
    gemini = nano_ledger.entries["gemini-2.5-flash-image"]
    assert (gemini.calls, gemini.input_tokens, gemini.output_tokens) == (1, *IMAGE_TOKENS)
    assert nano_ledger.cost("gemini-2.5-flash-image") == pytest.approx(0.0388, abs=1e-4)  # $0.039 per image


@pytest.mark.parametrize("name", EDITORS)
def test_reply_without_an_image_is_retried_then_fails_clearly(name, keys, images, tmp_path):
    def refuses(seen):
        return Answer("I can't edit this photo.") if seen.wants_image else planted(seen)

    cache_dir = tmp_path / "cache"
    with PlantedServer(refuses, api_key=key_served(name)) as server:
        editor = make_editor(name, server, cache_dir)
        with pytest.raises(TransientError, match="gave up after 3 attempts.*returned no image.*can't edit this photo"):
            editor.transfer(*images)
    assert editor.services.ledger.entries[EDITORS[name][3]].calls == 3  # billed all the same
    assert len(ResponseCache(cache_dir)) == 0


@pytest.mark.parametrize("name", EDITORS)
def test_key_never_reaches_errors_or_the_cache(name, keys, images, tmp_path):
    key = key_served(name)
    with PlantedServer(lambda seen: Fault(400, f"rejected key {key}"), api_key=key) as server:
        with pytest.raises(PermanentError) as failure:
            make_editor(name, server, tmp_path / "failed").transfer(*images)
    assert key not in str(failure.value) and "[REDACTED]" in str(failure.value)
    with PlantedServer(planted, api_key=key) as server:
        make_editor(name, server, tmp_path / "cache").transfer(*images)
    files = [path for path in (tmp_path / "cache").iterdir() if path.is_file()]
    assert files and not any(key.encode() in path.read_bytes() for path in files)


@pytest.mark.parametrize("name", EDITORS)
def test_missing_key_names_the_variable(name, monkeypatch):
    for variable in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    variables = {"gpt-image-1.5": "OPENAI_API_KEY", "nano-banana": "GEMINI_API_KEY or GOOGLE_API_KEY"}[name]
    with pytest.raises(MethodUnavailable, match=f"{name} needs an API key: set {variables} in the environment"):
        get_method(name, MethodContext())


def test_registry_builds_from_the_context_and_the_sdk_base_url_variables(keys, monkeypatch, images, tmp_path):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", KEYS["GEMINI_API_KEY"])  # the second variable Gemini accepts
    ledger = CostLedger(prices={})
    context = MethodContext(cache=ResponseCache(tmp_path), ledger=ledger, concurrency=5)
    with PlantedServer(planted) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.gemini_url)
        for name in EDITORS:
            editor = get_method(name, context)
            assert (editor.name, editor.concurrency, editor.services.transport.concurrency) == (name, 5, 5)
            assert editor.transfer(*images).size == images[0].size
            editor.close()
        assert server.calls == 3
    assert ledger.prices == PRICES and ledger.total_cost() > 0


# --------------------------------------------------------------------------------------------- Qwen-Image-Edit


def test_qwen_image_edit_runs_the_tiny_model_on_cpu(tiny_qwen_edit_dir, images):
    source, reference = images
    method = QwenImageEdit(tiny_qwen_edit_dir, device="cpu", num_inference_steps=2)
    assert method.concurrency == 1
    with pytest.warns(UserWarning, match="CPU"):
        method.prepare(BenchSet("set", []))
    output = method.transfer(source, reference)
    assert output.mode == "RGB" and output.size == source.size


def test_qwen_image_edit_without_weights_says_where_and_how(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(MissingWeightsError, match=f"{missing}.*not found.*hf download"):
        QwenImageEdit(missing, device="cpu").prepare(BenchSet("set", []))


class StubEditor:
    def __init__(self):
        self.instructions = []

    def edit(self, image, instruction, seed):
        self.instructions.append(instruction)
        return image.copy()


def test_qwen_instruction_is_fixed_without_a_writer(images):
    method = QwenImageEdit()
    method.editor = StubEditor()
    method.transfer(*images)
    assert method.editor.instructions == [FIXED_INSTRUCTION]


def test_qwen_instruction_writer_sees_both_images_and_is_cached(keys, images, tmp_path):
    source, reference = images
    written = "Shift the sky to teal and warm the skin tones."

    def writes(seen):
        return Answer("" if seen.attempt == 0 else f"  {written}\n", input_tokens=70, output_tokens=15)

    recorder = Recorder(writes)
    with PlantedServer(recorder) as server:
        writer = OpenAIClient("Qwen/Qwen3-VL-32B-Instruct", api_key="EMPTY", base_url=server.openai_url)
        options = dict(instruction_writer=writer, cache=ResponseCache(tmp_path), transport=Transport(1, FAST_RETRY))
        method = QwenImageEdit(**options)
        method.editor = StubEditor()
        method.transfer(source, reference)
        server.reset_counts()
        again = QwenImageEdit(**options)
        assert again.instruction(source, reference) == written and server.calls == 0
    assert method.editor.instructions == [written]  # the empty first reply was retried
    first = recorder.seen[0]
    assert (first.system, first.text) == (WRITER_PROMPT.system, WRITER_PROMPT.user)
    assert [image.size for image in first.images] == [source.size, reference.size]
    entry = method.services.ledger.entries["Qwen/Qwen3-VL-32B-Instruct"]
    assert (entry.calls, entry.input_tokens, entry.output_tokens) == (2, 140, 30)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qwen_image_edit_on_cuda(tiny_qwen_edit_dir, images):
    source, reference = images
    output = QwenImageEdit(tiny_qwen_edit_dir, num_inference_steps=2).transfer(source, reference)
    assert output.mode == "RGB" and output.size == source.size


def test_settings_name_what_changes_an_editors_output(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-settings-0123456789")
    from seminft_bench.bench.methods.editors import GPTImage

    plain, other = GPTImage(), GPTImage(quality="high", base_url="http://127.0.0.1:9/v1")
    assert plain.settings() == GPTImage().settings() and plain.settings() != other.settings()
    assert other.settings()["endpoint"].startswith("http://127.0.0.1:9/v1") and "concurrency" not in other.settings()
    assert "sk-settings" not in json.dumps(plain.settings())
