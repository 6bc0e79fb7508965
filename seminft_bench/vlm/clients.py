"""Provider clients: one request (prompt + images) in, one reply (text, usage, log-probabilities) out.

Every client speaks the same small interface so the judge, cache and transport do not
care who answers. API clients switch their SDK's retries off and translate its errors
into `TransientError` / `PermanentError` with the key redacted; the transport decides
what to retry. Keys are read from the environment only (see `config`).
"""

from __future__ import annotations

import base64
import io
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from seminft_bench.imaging import ImageSource, read_image
from seminft_bench.vlm.config import JudgeSpec
from seminft_bench.vlm.costs import Usage
from seminft_bench.vlm.parsing import SCORE_TOKENS
from seminft_bench.vlm.prompts import Prompt
from seminft_bench.vlm.transport import (
    PermanentError,
    TransientError,
    is_transient_status,
    parse_retry_after,
    redact,
)

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_SIDE = 1024
IMAGE_MIME = "image/jpeg"
NO_KEY = "EMPTY"  # what self-hosted OpenAI-compatible servers without authentication accept


class JudgeUnavailable(RuntimeError):
    """A judge that cannot be built here: its API key, weights or GPU is missing (the message says how to fix it)."""


@dataclass(frozen=True)
class Request:
    """What a judge is asked. ``images`` are `encode_image` bytes in the order the judge sees them."""

    prompt: Prompt
    images: tuple[bytes, ...]
    max_tokens: int
    temperature: float = 0.0
    top_logprobs: int = 20
    thinking_budget: int = 0
    """Gemini only: tokens it may think before answering (0: none; the evaluation reply carries its reasoning)."""

    @property
    def reward(self) -> bool:
        return self.prompt.mode == "reward"

    def params(self) -> dict[str, object]:
        """Every generation setting a client sends (part of the cache key); ``top_logprobs`` only when asked for."""
        params = {
            "mode": self.prompt.mode,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "thinking_budget": self.thinking_budget,
        }
        return {**params, "top_logprobs": self.top_logprobs} if self.reward else params


@dataclass(frozen=True)
class Reply:
    text: str
    usage: Usage
    top_logprobs: dict[str, float] | None = None
    """Token → log-probability at the first answer position (reward requests), when the provider gives them."""


class JudgeClient(Protocol):
    provider: str
    model: str
    endpoint: str  # where replies come from: two servers of one model id answer apart (cache keys)
    secrets: tuple[str, ...]

    def complete(self, request: Request) -> Reply: ...


def make_client(spec: JudgeSpec, *, timeout: float = DEFAULT_TIMEOUT_S, device: str | None = None) -> JudgeClient:
    """The client for a judge spec (already `served_at` its endpoint); raises `JudgeUnavailable` with the fix."""
    if spec.provider == "transformers":
        return TransformersClient.from_pretrained(spec.model, device=device)
    api_key = _api_key(spec)
    if spec.provider == "gemini":
        return GeminiClient(spec.model, api_key=api_key, base_url=spec.base_url, timeout=timeout)
    return OpenAIClient(spec.model, api_key=api_key, base_url=spec.base_url, timeout=timeout)


def _api_key(spec: JudgeSpec) -> str:
    """The first set variable of ``spec.api_key_env``; an endpoint of the user's own (a base URL) may go without."""
    for variable in spec.api_key_env:
        if os.environ.get(variable):
            return os.environ[variable]
    if spec.base_url is not None:
        return NO_KEY
    names = " or ".join(spec.api_key_env) or "an api_key_env entry in the judge config"
    raise JudgeUnavailable(f"judge {spec.name!r} needs an API key: set {names} in the environment")


def encode_image(image: ImageSource, max_side: int = DEFAULT_MAX_SIDE) -> bytes:
    """What a judge is sent (and the cache keys on): the long side at most ``max_side`` (Lanczos), JPEG.

    JPEG at quality 95 without chroma subsampling moves pixels by about 1.5/255 on average and
    an image's mean colour by under 0.1/255 (skimage photos), at a hundredth of PNG's encoding
    time (PNG: 0.4 s per megapixel on a 2-core CPU) and a fifth of its upload.
    """
    picture = read_image(image)  # a fresh RGB image, safe to resize in place
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


def data_url(image: bytes) -> str:
    return f"data:{IMAGE_MIME};base64," + base64.b64encode(image).decode("ascii")


def openai_sdk(api_key: str, base_url: str | None, timeout: float):
    """An ``openai.OpenAI`` with its own retries off (`Transport` retries); base_url None honours OPENAI_BASE_URL."""
    import openai

    return openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)


def sdk_endpoint(sdk) -> str:
    """The base URL an openai or google-genai client really calls: its ``base_url``, else what the SDK's
    environment variable (OPENAI_BASE_URL, GOOGLE_GEMINI_BASE_URL) or default made of None."""
    api_client = getattr(sdk, "_api_client", None)  # google-genai keeps its resolved options there
    return str(sdk.base_url if api_client is None else api_client._http_options.base_url)


@contextmanager
def openai_errors(model: str, secrets: tuple[str, ...]) -> Iterator[None]:
    """Turn the openai SDK's errors inside the block into `TransientError` / `PermanentError`, keys redacted."""
    import openai

    try:
        yield
    except openai.APIStatusError as error:
        detail = error.message.removeprefix(f"Error code: {error.status_code} - ")
        message = redact(f"HTTP {error.status_code} from {model}: {detail}", secrets)
        if is_transient_status(error.status_code):
            raise TransientError(message, parse_retry_after(error.response.headers)) from None
        raise PermanentError(message) from None
    except openai.APIConnectionError as error:  # timeouts included
        raise TransientError(_connection_message(error, model, secrets)) from None


def gemini_sdk(api_key: str, base_url: str | None, timeout: float):
    """A ``google.genai.Client`` for the Gemini API with one attempt per call (`Transport` retries)."""
    from google import genai
    from google.genai import types

    options = types.HttpOptions(
        base_url=base_url, timeout=int(timeout * 1000), retry_options=types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key=api_key, vertexai=False, http_options=options)


@contextmanager
def gemini_errors(model: str, secrets: tuple[str, ...]) -> Iterator[None]:
    """Turn google-genai's errors inside the block into `TransientError` / `PermanentError`, keys redacted."""
    import httpx2
    from google.genai import errors

    try:
        yield
    except errors.APIError as error:
        message = redact(f"HTTP {error.code} from {model}: {error.message or error.details}", secrets)
        if is_transient_status(error.code):
            headers = error.response.headers if error.response is not None else None
            raise TransientError(message, parse_retry_after(headers)) from None
        raise PermanentError(message) from None
    except httpx2.TransportError as error:  # timeouts, refused and dropped connections
        raise TransientError(_connection_message(error, model, secrets)) from None


class OpenAIClient:
    """Chat completions through the openai SDK: OpenAI itself or any compatible server (vLLM, SGLang)."""

    provider = "openai"

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        self.model = model
        self.secrets = (api_key,)
        self._client = openai_sdk(api_key, base_url, timeout)
        self.endpoint = sdk_endpoint(self._client)

    def complete(self, request: Request) -> Reply:
        images = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in request.images]
        messages = [
            {"role": "system", "content": request.prompt.system},
            {"role": "user", "content": [*images, {"type": "text", "text": request.prompt.user}]},
        ]
        options = {"max_tokens": request.max_tokens, "temperature": request.temperature}
        if request.reward:
            options.update(logprobs=True, top_logprobs=request.top_logprobs)
        with openai_errors(self.model, self.secrets):
            completion = self._client.chat.completions.create(model=self.model, messages=messages, **options)
        if not completion.choices:
            return Reply("", _openai_usage(completion))
        choice = completion.choices[0]
        top = None
        if choice.logprobs is not None and choice.logprobs.content:
            top = {entry.token: entry.logprob for entry in choice.logprobs.content[0].top_logprobs}
        return Reply(choice.message.content or "", _openai_usage(completion), top)


def _connection_message(error: Exception, model: str, secrets: tuple[str, ...]) -> str:
    return redact(f"{type(error).__name__} talking to {model}: {error}", secrets)


def _openai_usage(completion) -> Usage:
    usage = completion.usage
    return Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else Usage()


class GeminiClient:
    """``generateContent`` through google-genai, thinking as the request's ``thinking_budget`` (default: off)."""

    provider = "gemini"

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        self.model = model
        self.secrets = (api_key,)
        self._client = gemini_sdk(api_key, base_url, timeout)
        self.endpoint = sdk_endpoint(self._client)

    def complete(self, request: Request) -> Reply:
        from google.genai import types

        parts = [types.Part.from_bytes(data=image, mime_type=IMAGE_MIME) for image in request.images]
        parts.append(types.Part.from_text(text=request.prompt.user))
        config = types.GenerateContentConfig(
            system_instruction=request.prompt.system,
            temperature=request.temperature,
            max_output_tokens=request.max_tokens,
            thinking_config=types.ThinkingConfig(thinking_budget=request.thinking_budget),
        )
        if request.reward:
            config.response_logprobs, config.logprobs = True, request.top_logprobs
        with gemini_errors(self.model, self.secrets):
            response = self._client.models.generate_content(
                model=self.model, contents=[types.Content(role="user", parts=parts)], config=config
            )
        return Reply(response.text or "", gemini_usage(response), _gemini_top_logprobs(response))


def gemini_usage(response) -> Usage:
    meta = response.usage_metadata
    if meta is None:
        return Usage()
    return Usage(meta.prompt_token_count or 0, (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0))


def _gemini_top_logprobs(response) -> dict[str, float] | None:
    candidates = response.candidates or []
    result = candidates[0].logprobs_result if candidates else None
    if result is None or not result.top_candidates:
        return None
    return {c.token: c.log_probability for c in result.top_candidates[0].candidates or [] if c.token is not None}


class TransformersClient:
    """A local vision-language model (transformers ``AutoModelForImageTextToText``, e.g. Qwen3-VL).

    Reward requests take one forward pass and read the last position's logits over the
    score tokens (no generation). Those in flight together (the judge sends up to its
    transport's concurrency at once) are batched, up to ``max_batch`` per forward pass, left
    padded so the last position is every row's own. Evaluation requests generate greedily, one
    at a time. One model, one device: passes never overlap.
    """

    provider = "transformers"
    secrets: tuple[str, ...] = ()
    batch_wait_s = 0.005
    """How long a batch waits for one more request before it runs."""

    def __init__(self, model, processor, model_id: str, *, max_batch: int = 8):
        """``model`` and ``processor`` as transformers loads them; ``model_id`` names them in cache keys."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model_id
        self.endpoint = f"local:{str(model.dtype).removeprefix('torch.')}"  # bfloat16 and float32 answer apart
        self.max_batch = max_batch
        self._model = model.eval()
        self._processor = processor
        processor.tokenizer.padding_side = "left"
        self._score_token_ids = _score_token_ids(processor.tokenizer)
        self._lock = threading.Lock()  # one pass at a time
        self._rewards_waiting: queue.Queue[tuple[Request, Future]] = queue.Queue()
        self._batcher: threading.Thread | None = None
        self._batcher_lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, model_id: str, *, device: str | None = None, dtype=None, max_batch: int = 8
    ) -> TransformersClient:
        """Load ``model_id`` (hub id or folder) onto ``device`` (default: the GPU; refuses to guess the CPU)."""
        import torch

        if device is None:
            if not torch.cuda.is_available():
                raise JudgeUnavailable(
                    f"{model_id} runs locally through transformers and needs a CUDA GPU, and none is visible. "
                    "Serve it with vLLM or SGLang and pass the server's URL (--base-url, or base_url in a judge "
                    "config file), or pass device='cpu' to run it (slowly) on the CPU."
                )
            device = "cuda"
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        try:
            processor = AutoProcessor.from_pretrained(model_id)
            model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=dtype).to(device)
        except OSError as error:
            hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
            raise JudgeUnavailable(
                f"cannot load {model_id}: {error}. Download it first (`hf download {model_id}`, into HF_HOME="
                f"{hf_home}) or set the judge's model to a local folder in a judge config file."
            ) from error
        return cls(model, processor, model_id, max_batch=max_batch)

    def complete(self, request: Request) -> Reply:
        import torch

        if request.reward:
            waiting: Future[Reply] = Future()
            self._rewards_waiting.put((request, waiting))
            self._start_batcher()
            return waiting.result()
        with self._lock, torch.inference_mode():
            inputs = self._inputs([request])
            n_input = inputs["input_ids"].shape[1]
            generated = self._model.generate(**inputs, max_new_tokens=request.max_tokens, do_sample=False)
            new_tokens = generated[0, n_input:]
            text = self._processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
            return Reply(text, Usage(n_input, int(new_tokens.shape[0])))

    def _start_batcher(self) -> None:
        with self._batcher_lock:
            if self._batcher is None:
                self._batcher = threading.Thread(target=self._serve_rewards, name="reward-batches", daemon=True)
                self._batcher.start()

    def _serve_rewards(self) -> None:
        """Forever: take the requests waiting (up to ``max_batch``), answer them in one pass."""
        while True:
            batch = [self._rewards_waiting.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._rewards_waiting.get(timeout=self.batch_wait_s))
                except queue.Empty:
                    break
            try:
                replies = self.rewards([request for request, _ in batch])
            except BaseException as error:  # every caller of the batch hears of it
                for _, waiting in batch:
                    waiting.set_exception(error)
            else:
                for (_, waiting), reply in zip(batch, replies, strict=True):
                    waiting.set_result(reply)

    def rewards(self, requests: list[Request]) -> list[Reply]:
        """Reward requests in one forward pass: each row's log-probabilities of the score tokens at its last position."""
        import torch

        with self._lock, torch.inference_mode():
            inputs = self._inputs(requests)
            logits = self._model(**inputs, logits_to_keep=1).logits[:, -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            lengths = inputs["attention_mask"].sum(1).tolist()
        replies = []
        for row, n_input in enumerate(lengths):
            top = {text: logprobs[row, token_id].item() for token_id, text in self._score_token_ids.items()}
            text = self._processor.tokenizer.decode([int(logits[row].argmax())])
            replies.append(Reply(text, Usage(int(n_input), 0), top))
        return replies

    def _inputs(self, requests: list[Request]):
        conversations = []
        for request in requests:
            images = [{"type": "image", "image": Image.open(io.BytesIO(data)).convert("RGB")} for data in request.images]
            conversations.append([
                {"role": "system", "content": [{"type": "text", "text": request.prompt.system}]},
                {"role": "user", "content": [*images, {"type": "text", "text": request.prompt.user}]},
            ])  # fmt: skip
        inputs = self._processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True
        )
        return inputs.to(self._model.device)


def _score_token_ids(tokenizer) -> dict[int, str]:
    """Vocabulary ids of the scores "0"–"5" and " 0"–" 5", where the tokenizer has them as single tokens."""
    ids: dict[int, str] = {}
    for score in SCORE_TOKENS:
        for spelling in (score, " " + score):
            encoded = tokenizer.encode(spelling, add_special_tokens=False)
            if len(encoded) == 1:
                ids.setdefault(encoded[0], spelling)
    if not {text.strip() for text in ids.values()} >= set(SCORE_TOKENS):
        raise JudgeUnavailable(f"the tokenizer has no single-token spelling of every score {SCORE_TOKENS}")
    return ids
