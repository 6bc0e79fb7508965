"""The judge and reward prompts of the paper's Fig. 8 (App. D), word for word.

One template serves two uses. The reward form asks for a single number so a
reward model can be read from one token's probabilities (Eq. 4); the evaluation
form asks for a score with its reasoning. ``TEMPLATE_VERSION`` goes into every
cache key: change any text here and bump it, so no stale reply is reused.

Images always go in the order (reference, prediction); the text follows them.
(Fig. 8's typesetting leaves a space before two full stops; it is dropped here.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TEMPLATE_VERSION = "fig8-v1"

Mode = Literal["reward", "evaluation", "text"]
"""``text``: a free-text request of `vlm.writer` (its prompts are ours, not Fig. 8)."""

SYSTEM_PROMPT = (
    "You are an extremely rigorous “Holistic and Local Color Harmony Specialist.” Your core responsibility "
    "is to evaluate the visual color similarity between two input images, considering both the overall "
    "atmosphere and the color consistency of key local elements. You strive for professional, quantified, "
    "and balanced color matching."
)

TASK = (
    "Task: Your sole task is to determine the matching degree between the two input images across three "
    "dimensions: overall color tone tendency, color saturation, and brightness distribution. When deriving "
    "the final score, you must internally weigh the similarity of the overall atmosphere against the color "
    "discrepancies of key local elements. Ignore subjective aesthetics and compositional factors; base your "
    "score (0-5) strictly on professional colorimetry standards."
)

SCORING_CRITERIA = """Scoring Criteria (Mandatory):
• 0 (Absolute Difference): At least two dimensions among main tone, saturation, or brightness are completely opposite or entirely unrelated.
• 1 (Extremely Low Match): Fundamental differences exist in the overall color style or the color tendency of most key local elements.
• 2-3 (Moderate Match): Overall color tone tendencies are similar, but significant differences exist in saturation or brightness, or the color treatment of a few key local elements is clearly inconsistent.
• 4 (High Match): The overall color style is highly unified, and the color treatment of most key local elements (e.g., sky, skin tones, etc.) is also highly consistent.
• 5 (Perfect Match): Almost no perceptible difference across all key color dimensions and all visible local elements, reaching the color consistency standards of professional commercial photography series."""

IMPORTANT = """Important: Please note:
1. Overall Atmosphere Priority: The final score is based on the overall color atmosphere, but discrepancies in local elements will act as deductions affecting the final rating.
2. Focus Only on Color: Completely ignore objects, composition, subject matter, and image clarity."""

RESPONSE_FORMATS: dict[str, str] = {
    "reward": "Output ONLY a single number from 0 to 5.",
    "evaluation": 'Output form: "score": [...], "reasoning": "...".',
}


@dataclass(frozen=True)
class Prompt:
    """The text of one judge request; the images travel beside it."""

    system: str
    user: str
    mode: Mode
    version: str = TEMPLATE_VERSION


def build_prompt(mode: Mode) -> Prompt:
    """Fig. 8's system and user prompts with the reward or the evaluation response format."""
    if mode not in RESPONSE_FORMATS:
        raise ValueError(f"mode must be 'reward' or 'evaluation', got {mode!r}")
    user = "\n\n".join([TASK, SCORING_CRITERIA, IMPORTANT, f"Response Format:\n{RESPONSE_FORMATS[mode]}"])
    return Prompt(system=SYSTEM_PROMPT, user=user, mode=mode)
