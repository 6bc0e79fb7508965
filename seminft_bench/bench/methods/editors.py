"""The unified image editors among the paper's baselines (§4.2, App. C): GPT-Image-1.5, Nano Banana, Qwen-Image-Edit.

API calls follow the judges' rules (`seminft_bench.vlm`): the SDKs' own retries are off and
one `Transport` retries timeouts, 429s, 5xx and replies without an image, with back-off;
every result is kept in the `ResponseCache` under a hash of (model, prompt template, input
images, parameters), so rerunning a finished benchmark makes no calls; the tokens each
provider reports go to the `CostLedger`, priced by `PRICES`. Keys come from the
environment only and are redacted from every message. Endpoints are the SDKs' defaults,
moved by their own variables (``OPENAI_BASE_URL``, ``GOOGLE_GEMINI_BASE_URL``) or
``base_url``.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from seminft_bench.bench.methods.base import Method, MethodContext, MethodUnavailable
from seminft_bench.bench.samples import BenchSet
from seminft_bench.qwen_edit import QWEN_IMAGE_EDIT, QwenImageEditor
from seminft_bench.vlm.cache import ResponseCache, cache_key
from seminft_bench.vlm.clients import (
    DEFAULT_MAX_SIDE,
    IMAGE_MIME,
    JudgeClient,
    Request,
    data_url,
    encode_image,
    gemini_errors,
    gemini_sdk,
    gemini_usage,
    openai_errors,
    openai_sdk,
    sdk_endpoint,
)
from seminft_bench.vlm.costs import CostLedger, Price, Usage
from seminft_bench.vlm.prompts import Prompt
from seminft_bench.vlm.transport import TransientError, Transport, redact

if TYPE_CHECKING:
    from openai.types.responses import Response

TEMPLATE_VERSION = "appc-fig7-v1"
"""Goes into every cache key: change any prompt text below and bump it, so no stale image is reused."""

IMAGE_TIMEOUT_S = 300.0  # a high-quality image takes a minute or more

PRICES: dict[str, Price] = {
    # OpenAI API pricing page (GPT Image 1.5, Dec 2025): image tokens $8 in / $32 out per million.
    # Its text input ($5) is a few hundred tokens per request and is priced as image input here.
    "gpt-image-1.5": Price(8.00, 32.00),
    "gpt-4.1": Price(2.00, 8.00),  # OpenAI API pricing page; holds GPT-Image's conversation
    # Gemini API pricing page (paid tier): input $0.30 per million; an output image is 1290 tokens
    # at $30 per million ($0.039 per image). Its rare text output ($2.50) is priced as image output here.
    "gemini-2.5-flash-image": Price(0.30, 30.00),
}
"""US dollars per million tokens, by the model id each ledger entry is named after."""

# Fig. 7, GPT-Image-1.5: the conversation, word for word. The reference image follows OPENING; the
# model's own reply to it (the template shows "I've viewed the reference image carefully. I see …")
# follows that; then STEP_2, the source image, and the image the model draws.
OPENING = (
    (
        "user",
        "I invite you to participate in an experiment on 'Image Preset Filter Transfer'. Be patient and "
        "focus. I will pay you tips according to your performance. Are you ready now?",
    ),
    ("assistant", "Locked in, patient, and focused. Let's do the experiment."),
    ("user", "Step 1: I will provide a reference image. Please first view the image."),
    ("assistant", "Got it. Please go ahead and share the reference image—I'm ready to view it carefully."),
)
STEP_2 = (
    (
        "user",
        "Step 2: I will provide an input image. Please transfer the filter (photographic preset filter) of "
        "the reference image to the input image. Give me the result image.",
    ),
    (
        "assistant",
        "Understood. Please share the input image, and I'll transfer the photographic preset/filter from the "
        "reference image onto it carefully and consistently.",
    ),
)
GPT_IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536")

# Fig. 7, Gemini-2.5-flash-image: the single-turn prompt, word for word; the source, then the reference, follow it.
NANO_BANANA_PROMPT = (
    "You will receive two images as input. The first image is the source image, and the second image is the "
    "reference image. Please transfer the color from the reference image onto the source image to make the "
    "overall color atmosphere of the two images consistent, and the colors of the corresponding elements in "
    "the local areas should also remain consistent. Note: Only change the colors of the source image, and do "
    "not alter its content structure."
)
GEMINI_ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")

# Qwen-Image-Edit: App. C gives no prompt, so both texts below are ours.
FIXED_INSTRUCTION = (
    "Apply a professional photographic preset filter to this photo: change only its colors, tone, "
    "saturation and brightness, and keep its content and structure unchanged."
)
WRITER_PROMPT = Prompt(
    system="You write instructions for an instruction-guided image editor.",
    user=(
        "The first image is the source image and the second image is the reference image. Write one editing "
        "instruction that makes the source image take on the photographic preset of the reference image: its "
        "overall color tone, saturation, brightness and contrast, and the colors of corresponding elements such "
        "as sky, skin and foliage. The editor sees only the source image, so name the target colors concretely. "
        "Only colors may change, never the content or structure. Output only the instruction."
    ),
    mode="evaluation",  # free text, not a one-token score
    version="qwen-edit-writer-v1",
)
WRITER_MAX_TOKENS = 256


@dataclass
class _Services:
    """The judges' path for every API call here: cache first, else the transport, and the ledger."""

    cache: ResponseCache | None
    ledger: CostLedger
    transport: Transport

    @classmethod
    def build(
        cls, cache: ResponseCache | None, ledger: CostLedger | None, transport: Transport | None, concurrency: int
    ) -> _Services:
        """Shared ``ledger`` and ``transport`` when given; prices of `PRICES` added where the ledger has none."""
        ledger = ledger if ledger is not None else CostLedger()
        for model, price in PRICES.items():
            ledger.prices.setdefault(model, price)
        return cls(cache, ledger, transport if transport is not None else Transport(concurrency))

    def remember(self, key: str, entry: str, make: Callable[[], str]) -> str:
        """The reply cached under ``key`` (counted as a cached ``entry`` call), else ``make()``'s, stored."""
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self.ledger.record_cached(entry)
            return hit["reply"]
        reply = make()
        if self.cache is not None:
            self.cache.put(key, {"reply": reply})
        return reply


class _APIEditor(Method):
    """What GPT-Image and Nano Banana share: a key from the environment, the cache, and an output of the source's size.

    Subclasses name their ``provider`` and ``key_env``, ``connect`` their SDK client, choose the
    request's ``params`` (part of the cache key) and ``generate`` the image bytes through
    ``self.services.transport``.
    """

    provider: str
    key_env: tuple[str, ...]
    runs_on = "driver"  # where the reply cache and the cost ledger are

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        timeout: float = IMAGE_TIMEOUT_S,
        max_side: int = DEFAULT_MAX_SIDE,
        cache: ResponseCache | None = None,
        ledger: CostLedger | None = None,
        transport: Transport | None = None,
        concurrency: int = 8,
    ):
        self.model = model
        self.secrets = (_api_key(self.name, self.key_env),)
        self.max_side = max_side
        self.concurrency = concurrency
        self.services = _Services.build(cache, ledger, transport, concurrency)
        self._client = self.connect(base_url, timeout)

    @classmethod
    def from_context(cls, context: MethodContext) -> _APIEditor:
        return cls(
            cache=context.cache, ledger=context.ledger, transport=context.transport, concurrency=context.concurrency
        )

    def transfer(self, source: Image.Image, reference: Image.Image) -> Image.Image:
        images = (encode_image(source, self.max_side), encode_image(reference, self.max_side))
        params = self.params(source.size)
        endpoint = sdk_endpoint(self._client)
        key = cache_key(self.provider, self.model, TEMPLATE_VERSION, images, params, endpoint=endpoint)

        def draw() -> str:
            return base64.b64encode(self.generate(*images, params)).decode("ascii")

        return _decoded_at(base64.b64decode(self.services.remember(key, self.model, draw)), source.size)

    def settings(self) -> dict:
        """Model, endpoint, input size and template; subclasses add their request options."""
        endpoint = sdk_endpoint(self._client)
        return {**super().settings(), "model": self.model, "endpoint": endpoint, "max_side": self.max_side, "template": TEMPLATE_VERSION}

    def close(self) -> None:
        self._client.close()

    @abstractmethod
    def connect(self, base_url: str | None, timeout: float) -> object:
        """The provider's SDK client, with the key in ``self.secrets``."""

    @abstractmethod
    def params(self, size: tuple[int, int]) -> dict[str, object]:
        """The request settings for a source of ``size`` (width, height)."""

    @abstractmethod
    def generate(self, source: bytes, reference: bytes, params: dict[str, object]) -> bytes:
        """The edited image, encoded, from the `encode_image` bytes of both inputs."""

    def _no_image(self, reason: str) -> TransientError:
        return TransientError(redact(f"{self.model} returned no image: {reason}", self.secrets))


class GPTImage(_APIEditor):
    """GPT-Image-1.5 led through App. C's multi-turn conversation (Fig. 7) on the Responses API.

    The Responses API is the OpenAI endpoint that takes a conversation with images in it and can
    answer with an image: Fig. 7's turns go in as user and assistant messages, and the final
    "(call GPT-Image-1.5 …)" is the ``image_generation`` tool (model gpt-image-1.5), forced.
    (``images.edit`` takes both images but a single prompt, which would flatten the conversation.)
    The template leaves one assistant turn to the model, what it sees in the reference, so
    that turn is asked first and its reply goes back into the conversation: two calls per
    image, each retried and costed; only the image is cached. ``chat_model`` holds the
    conversation (gpt-4.1: no reasoning tokens to pay for); the image is drawn at the standard
    size nearest the source's aspect ratio with high input fidelity (the source's content must
    survive) and resized to the source.
    """

    name = "gpt-image-1.5"
    provider = "openai"
    key_env = ("OPENAI_API_KEY",)

    def __init__(self, *, model: str = "gpt-image-1.5", chat_model: str = "gpt-4.1", quality: str = "auto", **options):
        """``options``: the keyword arguments of `_APIEditor` (base_url, timeout, cache, ledger, …)."""
        super().__init__(model, **options)
        self.chat_model = chat_model
        self.quality = quality

    def settings(self) -> dict:
        return {**super().settings(), "chat_model": self.chat_model, "quality": self.quality}

    def connect(self, base_url: str | None, timeout: float) -> object:
        return openai_sdk(self.secrets[0], base_url, timeout)

    def params(self, size: tuple[int, int]) -> dict[str, object]:
        tool = {
            "type": "image_generation",
            "model": self.model,
            "size": _nearest_shape(size, GPT_IMAGE_SIZES),
            "quality": self.quality,
            "input_fidelity": "high",
            "output_format": "png",
        }
        return {"chat_model": self.chat_model, "tool": tool}

    def generate(self, source: bytes, reference: bytes, params: dict[str, object]) -> bytes:
        turns = [*map(_message, OPENING), _image_message(reference)]
        description = self.services.transport.call(lambda: self._describe(turns))
        turns += [_message(("assistant", description)), *map(_message, STEP_2), _image_message(source)]
        return self.services.transport.call(lambda: self._draw(turns, params["tool"]))

    def _describe(self, turns: list[dict]) -> str:
        text = self._respond(turns).output_text.strip()
        if not text:
            raise TransientError(f"{self.chat_model} said nothing about the reference image")
        return text

    def _draw(self, turns: list[dict], tool: dict) -> bytes:
        response = self._respond(turns, tools=[tool], tool_choice={"type": "image_generation"})
        image_gen = response.tool_usage.image_gen if response.tool_usage is not None else None
        usage = Usage(image_gen.input_tokens, image_gen.output_tokens) if image_gen is not None else Usage()
        self.services.ledger.record_call(self.model, usage)
        for item in response.output:
            if item.type == "image_generation_call" and item.result:
                return base64.b64decode(item.result)
        raise self._no_image(repr(response.output_text[:300]))

    def _respond(self, turns: list[dict], **options) -> Response:
        """One Responses API call on the conversation so far; its chat tokens go to the ledger."""
        with openai_errors(self.chat_model, self.secrets):
            response = self._client.responses.create(model=self.chat_model, input=turns, store=False, **options)
        usage = response.usage
        self.services.ledger.record_call(
            self.chat_model, Usage(usage.input_tokens, usage.output_tokens) if usage is not None else Usage()
        )
        return response


class NanoBanana(_APIEditor):
    """Gemini-2.5-flash-image ("Nano Banana") with Fig. 7's single-turn prompt, then the source and the reference.

    Asked for text and image (the model's default modalities) at the supported aspect ratio
    nearest the source's; a reply without an image is retried, then fails with the text it sent.
    """

    name = "nano-banana"
    provider = "gemini"
    key_env = ("GEMINI_API_KEY", "GOOGLE_API_KEY")

    def __init__(self, *, model: str = "gemini-2.5-flash-image", **options):
        """``options``: the keyword arguments of `_APIEditor` (base_url, timeout, cache, ledger, …)."""
        super().__init__(model, **options)

    def connect(self, base_url: str | None, timeout: float) -> object:
        return gemini_sdk(self.secrets[0], base_url, timeout)

    def params(self, size: tuple[int, int]) -> dict[str, object]:
        return {"response_modalities": ["TEXT", "IMAGE"], "aspect_ratio": _nearest_shape(size, GEMINI_ASPECT_RATIOS)}

    def generate(self, source: bytes, reference: bytes, params: dict[str, object]) -> bytes:
        return self.services.transport.call(lambda: self._draw(source, reference, params))

    def _draw(self, source: bytes, reference: bytes, params: dict[str, object]) -> bytes:
        from google.genai import types

        parts = [
            types.Part.from_text(text=NANO_BANANA_PROMPT),
            types.Part.from_bytes(data=source, mime_type=IMAGE_MIME),
            types.Part.from_bytes(data=reference, mime_type=IMAGE_MIME),
        ]
        config = types.GenerateContentConfig(
            response_modalities=params["response_modalities"],
            image_config=types.ImageConfig(aspect_ratio=params["aspect_ratio"]),
        )
        with gemini_errors(self.model, self.secrets):
            response = self._client.models.generate_content(
                model=self.model, contents=[types.Content(role="user", parts=parts)], config=config
            )
        self.services.ledger.record_call(self.model, gemini_usage(response))
        candidate = response.candidates[0] if response.candidates else None
        content_parts = (candidate.content.parts if candidate and candidate.content else None) or []
        for part in content_parts:
            if part.inline_data is not None and part.inline_data.data:
                return part.inline_data.data
        said = "".join(part.text or "" for part in content_parts)
        why = f"finish reason {candidate.finish_reason}" if candidate else f"prompt feedback {response.prompt_feedback}"
        raise self._no_image(f"{why}, text {said[:300]!r}")


class QwenImageEdit(Method):
    """Qwen-Image-Edit (`QwenImageEditor`, on the GPU) editing the source by one text instruction.

    The model takes a single image, so the reference reaches it only through the instruction.
    App. C does not say how the paper instructed it; for JarvisArt, its other text-driven
    baseline, Qwen3-VL-32B reads both images and writes the instruction (Fig. 7), and an
    ``instruction_writer`` (any `seminft_bench.vlm` client, e.g. Qwen3-VL-32B served by vLLM)
    does the same here, cached, retried and costed like a judge. Without one, which is what
    the registry builds, every source gets `FIXED_INSTRUCTION`: a fixed template blind to the
    reference.
    """

    name = "qwen-image-edit"
    concurrency = 1  # one model on one device
    runs_on = "gpu"

    def __init__(
        self,
        model: str | os.PathLike = QWEN_IMAGE_EDIT,
        *,
        device: str | None = None,
        num_inference_steps: int = 50,
        true_cfg_scale: float = 4.0,
        seed: int = 0,
        instruction_writer: JudgeClient | None = None,
        cache: ResponseCache | None = None,
        ledger: CostLedger | None = None,
        transport: Transport | None = None,
    ):
        self.editor = QwenImageEditor(
            model, device=device, num_inference_steps=num_inference_steps, true_cfg_scale=true_cfg_scale
        )
        self.seed = seed
        self.instruction_writer = instruction_writer
        self.services = _Services.build(cache, ledger, transport, self.concurrency)

    @classmethod
    def from_context(cls, context: MethodContext) -> QwenImageEdit:
        return cls(device=context.device, cache=context.cache, ledger=context.ledger, transport=context.transport)

    def settings(self) -> dict:
        editor, writer = self.editor, self.instruction_writer
        instruction = FIXED_INSTRUCTION if writer is None else {"writer": writer.model, "endpoint": writer.endpoint}
        return {
            **super().settings(), "model": editor.model, "steps": editor.num_inference_steps,
            "true_cfg_scale": editor.true_cfg_scale, "seed": self.seed, "instruction": instruction,
            "writer_prompt": WRITER_PROMPT.version,
        }

    def prepare(self, bench_set: BenchSet) -> None:
        """Load the model now, so missing weights stop the method before its first sample."""
        self.editor.load()

    def transfer(self, source: Image.Image, reference: Image.Image) -> Image.Image:
        return self.editor.edit(source, self.instruction(source, reference), self.seed)

    def instruction(self, source: Image.Image, reference: Image.Image) -> str:
        """The writer's instruction for this pair, or `FIXED_INSTRUCTION` without a writer."""
        writer = self.instruction_writer
        if writer is None:
            return FIXED_INSTRUCTION
        request = Request(WRITER_PROMPT, (encode_image(source), encode_image(reference)), WRITER_MAX_TOKENS)
        prompt, endpoint = WRITER_PROMPT.version, writer.endpoint
        key = cache_key(writer.provider, writer.model, prompt, request.images, request.params(), endpoint=endpoint)
        return self.services.remember(key, writer.model, lambda: self._write(writer, request))

    def _write(self, writer: JudgeClient, request: Request) -> str:
        """Ask ``writer`` through the transport; an empty reply is retried."""

        def attempt() -> str:
            reply = writer.complete(request)
            self.services.ledger.record_call(writer.model, reply.usage)
            text = redact(reply.text, writer.secrets).strip()
            if not text:
                raise TransientError(f"{writer.model} wrote no instruction")
            return text

        return self.services.transport.call(attempt)


def _api_key(method: str, variables: Sequence[str]) -> str:
    """The first of ``variables`` set in the environment; no key, no method."""
    for variable in variables:
        if os.environ.get(variable):
            return os.environ[variable]
    raise MethodUnavailable(f"{method} needs an API key: set {' or '.join(variables)} in the environment")


def _message(turn: tuple[str, str]) -> dict:
    role, text = turn
    return {"role": role, "content": text}


def _image_message(image: bytes) -> dict:
    return {"role": "user", "content": [{"type": "input_image", "image_url": data_url(image), "detail": "high"}]}


def _nearest_shape(size: tuple[int, int], shapes: Sequence[str]) -> str:
    """The shape ("W:H" or "WxH") whose aspect ratio is nearest that of ``size`` (width, height), in log scale."""

    def log_aspect(shape: str) -> float:
        width, height = map(int, re.split("[:x]", shape))
        return math.log(width / height)

    target = math.log(size[0] / size[1])
    return min(shapes, key=lambda shape: abs(log_aspect(shape) - target))


def _decoded_at(data: bytes, size: tuple[int, int]) -> Image.Image:
    """The encoded image as RGB of ``size`` (Lanczos when it differs)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
