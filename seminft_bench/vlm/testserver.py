"""A stand-in judge and image-editor provider for offline tests and benchmarks.

`PlantedServer` is a real HTTP server on 127.0.0.1 that speaks OpenAI chat
completions (``POST …/chat/completions``), the OpenAI Responses API (``POST
…/responses``; a generated image comes back as an ``image_generation_call``) and
Gemini ``generateContent`` (``POST …/models/{model}:generateContent``; images as
inline data). A plan decides each answer from the request it sees (the decoded
images, the prompt, how many identical requests came before): a planted reply, an
HTTP error (optionally with ``Retry-After``), a stall that outlasts the client's
timeout, or a dropped connection. It counts requests and the tokens of every reply
it delivered, so a test can compare them with the judge's ledger.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


@dataclass(frozen=True)
class Answer:
    """A 200 reply. ``logprobs`` are the top log-probabilities of the first token (sent when asked for).

    ``image`` (PNG or JPEG bytes) is a generated image for the Responses API or Gemini, sent with
    ``text`` unless that is empty. The Responses API reports an image reply's tokens as the image
    tool's (``tool_usage.image_gen``), since OpenAI bills image generation apart from the chat.
    """

    text: str
    logprobs: Mapping[str, float] | None = None
    input_tokens: int = 100
    output_tokens: int = 20
    image: bytes | None = None


@dataclass(frozen=True)
class Fault:
    status: int
    message: str = "planted fault"
    retry_after: float | None = None


@dataclass(frozen=True)
class Stall:
    """Say nothing for ``seconds``, then hang up (to trip the client's timeout)."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering."""


@dataclass(frozen=True)
class SeenRequest:
    protocol: str  # "openai" (chat completions), "responses" (OpenAI Responses API) or "gemini"
    model: str
    system: str
    text: str  # every text part of every message, in order, one per line
    images: tuple[Image.Image, ...]
    reward: bool  # log-probabilities were asked for
    attempt: int  # identical requests received before this one, over the server's life
    roles: tuple[str, ...] = ()  # the role of each message, in order
    wants_image: bool = False  # an image was asked for (image_generation tool, IMAGE response modality)


Plan = Callable[[SeenRequest], Answer | Fault | Stall | Drop]


class PlantedServer:
    """Serve ``plan`` on a free port until the ``with`` block ends.

    ``latency`` delays every response; ``api_key`` (if given) must come in the request's
    ``Authorization: Bearer`` or ``x-goog-api-key`` header, else the reply is 401.
    ``calls`` counts requests, ``billed_*_tokens`` the usage of delivered replies, and
    ``errors`` keeps the traceback of any request the server itself failed to handle.
    """

    def __init__(self, plan: Plan, *, latency: float = 0.0, api_key: str | None = None):
        self.plan = plan
        self.latency = latency
        self.api_key = api_key
        self.calls = 0
        self.billed_input_tokens = 0
        self.billed_output_tokens = 0
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._server.errors = self.errors = []
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def gemini_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def reset_counts(self) -> None:
        """Zero ``calls`` and the billed tokens; attempt numbers go on counting (a rerun is not a first try)."""
        with self._lock:
            self.calls = self.billed_input_tokens = self.billed_output_tokens = 0

    def __enter__(self) -> PlantedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def _register(self, path: str, body: bytes) -> int:
        """Count the request; return how many identical ones came before."""
        fingerprint = hashlib.sha256(path.encode() + body).hexdigest()
        with self._lock:
            self.calls += 1
            attempt = self._seen[fingerprint]
            self._seen[fingerprint] += 1
            return attempt

    def _bill(self, answer: Answer) -> None:
        with self._lock:
            self.billed_input_tokens += answer.input_tokens
            self.billed_output_tokens += answer.output_tokens


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connect at once
    errors: list[str]

    def handle_error(self, request, client_address) -> None:
        """Keep the traceback of a failing handler (a broken plan) for the test to show; clients
        hanging up on stalled requests are expected and ignored."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            self.errors.append(traceback.format_exc())


def _handler_for(server: PlantedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            attempt = server._register(self.path, body)
            time.sleep(server.latency)
            protocol = _protocol(self.path)
            if server.api_key is not None and self._presented_key() != server.api_key:
                self._send_json(401, _error_body(protocol, 401, "invalid API key"))
                return
            request = json.loads(body)
            seen = _READERS[protocol](self.path, request, attempt)
            outcome = server.plan(seen)
            if isinstance(outcome, Drop):
                self.close_connection = True
            elif isinstance(outcome, Stall):
                server._stopping.wait(outcome.seconds)
                self.close_connection = True
            elif isinstance(outcome, Fault):
                headers = {} if outcome.retry_after is None else {"Retry-After": f"{outcome.retry_after:g}"}
                self._send_json(outcome.status, _error_body(protocol, outcome.status, outcome.message), headers)
            else:
                server._bill(outcome)
                self._send_json(200, _REPLIES[protocol](outcome, seen))

        def _presented_key(self) -> str | None:
            bearer = self.headers.get("Authorization", "")
            return bearer.removeprefix("Bearer ") if bearer else self.headers.get("x-goog-api-key")

        def _send_json(self, status: int, payload: dict, headers: Mapping[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _decode(data: str) -> Image.Image:
    """Standard or URL-safe base64, padded or not (google-genai sends URL-safe)."""
    data = data.replace("+", "-").replace("/", "_") + "=" * (-len(data) % 4)
    return Image.open(io.BytesIO(base64.urlsafe_b64decode(data))).convert("RGB")


def _protocol(path: str) -> str:
    if path.endswith(":generateContent"):
        return "gemini"
    return "responses" if path.endswith("/responses") else "openai"


def _read_openai(path: str, request: dict, attempt: int) -> SeenRequest:
    system, texts, images = "", [], []
    for message in request["messages"]:
        content = message["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for part in parts:
            if part["type"] == "image_url":
                images.append(_decode(part["image_url"]["url"].split(",", 1)[1]))
            elif message["role"] == "system":
                system += part["text"]
            else:
                texts.append(part["text"])
    reward = bool(request.get("logprobs"))
    roles = tuple(message["role"] for message in request["messages"])
    return SeenRequest("openai", request["model"], system, "\n".join(texts), tuple(images), reward, attempt, roles)


def _read_responses(path: str, request: dict, attempt: int) -> SeenRequest:
    messages = request["input"]
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    texts, images = [], []
    for message in messages:
        content = message["content"]
        for part in content if isinstance(content, list) else [{"type": "input_text", "text": content}]:
            if part["type"] == "input_image":
                images.append(_decode(part["image_url"].split(",", 1)[1]))
            else:
                texts.append(part["text"])
    wants_image = any(tool.get("type") == "image_generation" for tool in request.get("tools", []))
    roles = tuple(message["role"] for message in messages)
    system = request.get("instructions") or ""
    text = "\n".join(texts)
    return SeenRequest("responses", request["model"], system, text, tuple(images), False, attempt, roles, wants_image)


def _read_gemini(path: str, request: dict, attempt: int) -> SeenRequest:
    model = path.rsplit("/models/", 1)[1].split(":", 1)[0]
    system = "".join(part.get("text", "") for part in request.get("systemInstruction", {}).get("parts", []))
    texts, images = [], []
    for content in request["contents"]:
        for part in content["parts"]:
            inline = part.get("inlineData") or part.get("inline_data")
            if inline is not None:
                images.append(_decode(inline["data"]))
            elif "text" in part:
                texts.append(part["text"])
    config = request.get("generationConfig", {})
    reward = bool(config.get("responseLogprobs"))
    roles = tuple(content.get("role", "user") for content in request["contents"])
    wants_image = "IMAGE" in config.get("responseModalities", [])
    return SeenRequest("gemini", model, system, "\n".join(texts), tuple(images), reward, attempt, roles, wants_image)


def _openai_reply(answer: Answer, seen: SeenRequest) -> dict:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": "stop"}
    if seen.reward and answer.logprobs is not None:
        top = [{"token": token, "logprob": logprob} for token, logprob in answer.logprobs.items()]
        first = max(top, key=lambda entry: entry["logprob"])
        choice["logprobs"] = {"content": [{**first, "top_logprobs": top}]}
    usage = {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }
    return {
        "id": "planted",
        "object": "chat.completion",
        "created": 0,
        "model": seen.model,
        "choices": [choice],
        "usage": usage,
    }


def _responses_reply(answer: Answer, seen: SeenRequest) -> dict:
    output: list[dict] = []
    if answer.text or answer.image is None:
        content = [{"type": "output_text", "text": answer.text, "annotations": []}]
        message = {"type": "message", "id": "msg_planted", "role": "assistant", "status": "completed"}
        output.append({**message, "content": content})
    if answer.image is not None:
        result = base64.b64encode(answer.image).decode("ascii")
        output.append({"type": "image_generation_call", "id": "ig_planted", "status": "completed", "result": result})
    tokens = _responses_usage(answer.input_tokens, answer.output_tokens)
    nothing = _responses_usage(0, 0)
    chat, image_tool = (nothing, tokens) if answer.image is not None else (tokens, nothing)
    usage = {
        **chat,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    image_gen = {**image_tool, "input_tokens_details": {"image_tokens": 0, "text_tokens": image_tool["input_tokens"]}}
    return {
        "id": "resp_planted",
        "object": "response",
        "created_at": 0,
        "model": seen.model,
        "status": "completed",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
        "tool_usage": {"image_gen": image_gen, "web_search": {"num_requests": 0}},
    }


def _responses_usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}


def _gemini_reply(answer: Answer, seen: SeenRequest) -> dict:
    parts: list[dict] = [{"text": answer.text}] if answer.text or answer.image is None else []
    if answer.image is not None:
        mime = Image.MIME[Image.open(io.BytesIO(answer.image)).format]
        parts.append({"inlineData": {"mimeType": mime, "data": base64.b64encode(answer.image).decode("ascii")}})
    candidate: dict = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}
    if seen.reward and answer.logprobs is not None:
        top = [{"token": token, "logProbability": logprob} for token, logprob in answer.logprobs.items()]
        candidate["logprobsResult"] = {"topCandidates": [{"candidates": top}]}
    usage = {
        "promptTokenCount": answer.input_tokens,
        "candidatesTokenCount": answer.output_tokens,
        "totalTokenCount": answer.input_tokens + answer.output_tokens,
    }
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": seen.model}


_READERS: dict[str, Callable[[str, dict, int], SeenRequest]] = {
    "openai": _read_openai,
    "responses": _read_responses,
    "gemini": _read_gemini,
}
_REPLIES: dict[str, Callable[[Answer, SeenRequest], dict]] = {
    "openai": _openai_reply,
    "responses": _responses_reply,
    "gemini": _gemini_reply,
}

_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def _error_body(protocol: str, status: int, message: str) -> dict:
    if protocol == "gemini":
        return {"error": {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}}
    return {"error": {"message": message, "type": "planted_error", "code": status}}
