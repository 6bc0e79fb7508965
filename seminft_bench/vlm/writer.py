"""A VLM asked for free text about images: a text-to-image prompt for an old photo's restoration
(paper §4.3), or the retouching instruction an instruction-following baseline needs (App. C).

`Writer` is a judge's sibling: the same clients, reply cache, retries, rate limits and cost
ledger (`judge.Asker`), a prompt of its own, and a reply read as plain text. A reply with no
text left after trimming is retried and then recorded as a failure, never written as "".

The paper prints neither prompt; both below are ours. Their ``version`` is part of every cache
key: change a word and bump it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from seminft_bench.imaging import ImageReadError, ImageSource
from seminft_bench.vlm.clients import DEFAULT_MAX_SIDE, JudgeClient, Reply, Request, encode_image
from seminft_bench.vlm.costs import CostLedger, Usage
from seminft_bench.vlm.judge import Asker
from seminft_bench.vlm.parsing import ParseError
from seminft_bench.vlm.prompts import Prompt

RESTORATION_PROMPT = Prompt(
    system="You are an expert photo restorer and colour historian.",
    user=(
        "This is an old photograph, faded or in black and white. Write one prompt for a text-to-image model "
        "that describes a photorealistic colour photograph of the same scene as it most probably looked: the "
        "scene and its subjects, their materials and their likely colours, the era, the light and the time of "
        "day. Keep the composition and the viewpoint. Write only the prompt, one paragraph of at most 120 "
        "words, with no preamble."
    ),
    mode="text",
    version="restoration-v1",
)
"""Ours (§4.3 describes the step, not its prompt): the VLM infers the old photo's probable colours."""

INSTRUCTION_PROMPT = Prompt(
    system="You are a professional photo retoucher.",
    user=(
        "The first image is the source photo and the second is the reference photo. Write one retouching "
        "instruction that would give the source the reference's colour grade: its overall tone and white "
        "balance, saturation, contrast and brightness, and the colours of key local elements such as sky, "
        "skin and foliage. Do not ask for any change of content or composition. Write only the instruction, "
        "in at most 80 words."
    ),
    mode="text",
    version="instruction-v1",
)
"""Ours (App. C has Qwen3-VL-32B write JarvisArt's instruction from source and reference without printing the
prompt); images go as (source, reference)."""

TEXT_MAX_TOKENS = 400


@dataclass
class Written:
    """A writer's text for one item; ``text`` is None when it failed (``error`` says why)."""

    name: str
    writer: str
    text: str | None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
    raw: str | None = None

    def to_record(self) -> dict[str, object]:
        record = {"name": self.name, "writer": self.writer, "text": self.text, "error": self.error,
                  "usage": self.usage.to_dict(), "cached": self.cached}  # fmt: skip
        return {**record, "raw": self.raw} if self.error is not None else record


class Writer(Asker):
    """A named VLM that writes ``prompt``'s text about images, with the judges' cache, retries and costs."""

    def __init__(
        self,
        name: str,
        client: JudgeClient,
        *,
        prompt: Prompt,
        max_tokens: int = TEXT_MAX_TOKENS,
        max_side: int = DEFAULT_MAX_SIDE,
        cache=None,
        ledger: CostLedger | None = None,
        transport=None,
    ):
        if prompt.mode != "text":
            raise ValueError(f"a writer's prompt asks for text, got mode {prompt.mode!r}")
        super().__init__(name, client, max_side=max_side, cache=cache, ledger=ledger, transport=transport)
        self.prompt = prompt
        self.max_tokens = max_tokens

    def write(self, name: str, images: Sequence[ImageSource]) -> Written:
        """The text for ``images`` (in the order the prompt names them); failures are recorded, not raised."""
        try:
            encoded = tuple(encode_image(image, self.max_side) for image in images)
        except ImageReadError as error:
            return Written(name, self.name, None, error=str(error))
        answer = self._ask(Request(self.prompt, encoded, max_tokens=self.max_tokens), _read_text)
        return Written(name, self.name, answer.reasoning, answer.error, answer.usage, answer.cached,
                       None if answer.error is None else answer.raw)  # fmt: skip

    def settings(self) -> dict[str, object]:
        """What decides the text: who writes it, with which prompt and settings (JSON-safe)."""
        return {
            "writer": self.name, "provider": self.client.provider, "model": self.client.model,
            "endpoint": self.client.endpoint, "template": self.prompt.version,
            "params": Request(self.prompt, (), max_tokens=self.max_tokens).params(), "max_side": self.max_side,
        }  # fmt: skip


def _read_text(reply: Reply) -> tuple[None, str]:
    """The reply's text, trimmed of white space, quotes and a code fence around it."""
    text = reply.text.strip()
    if text.startswith("```") and text.endswith("```"):
        text = text.strip("`").removeprefix("text").strip()
    text = text.strip().strip('"“”').strip()
    if not text:
        raise ParseError("the reply has no text")
    return None, text
