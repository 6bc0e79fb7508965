"""Vision-language models as judges (benchmark) and as the reward model (RL training).

- `Judge` scores (reference, prediction) pairs with a named judge ("gpt-4o",
  "gemini-2.5-flash", "qwen3-vl-32b", "qwen3-vl-8b", or one from a config file),
  with the paper's Fig. 8 prompt, an on-disk cache, retries and a cost ledger.
- `expected_score` is the reward of Eq. 4 from the score tokens' log-probabilities; a reply
  with under `DEFAULT_MIN_MASS` of its probability on them (`score_mass`) is refused.

Nothing heavy is imported here: SDKs and transformers load when a client is built.
"""

from seminft_bench.vlm.cache import ResponseCache
from seminft_bench.vlm.clients import JudgeUnavailable, TransformersClient
from seminft_bench.vlm.config import JudgeSpec, load_config
from seminft_bench.vlm.costs import CostLedger, Price, Usage
from seminft_bench.vlm.judge import Judge, Judgement, Pair
from seminft_bench.vlm.parsing import DEFAULT_MIN_MASS, ParseError, expected_score, parse_evaluation, score_mass
from seminft_bench.vlm.prompts import TEMPLATE_VERSION, build_prompt
from seminft_bench.vlm.transport import RetryPolicy, Transport

__all__ = [
    "DEFAULT_MIN_MASS",
    "TEMPLATE_VERSION",
    "CostLedger",
    "Judge",
    "JudgeSpec",
    "JudgeUnavailable",
    "Judgement",
    "Pair",
    "ParseError",
    "Price",
    "ResponseCache",
    "RetryPolicy",
    "Transport",
    "TransformersClient",
    "Usage",
    "build_prompt",
    "expected_score",
    "load_config",
    "parse_evaluation",
    "score_mass",
]
