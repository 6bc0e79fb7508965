"""What judging cost: token usage reported by the providers times a price table.

Every reply the provider returned is paid, parsed or not, so each is recorded once;
answers served from the cache are counted but cost nothing.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from seminft_bench.fileio import atomic_write_text


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),  # OpenAI list price
    "gemini-2.5-flash": Price(0.30, 2.50),  # Gemini API paid tier; thinking tokens bill as output
    "qwen3-vl-32b": Price(0.0, 0.0),  # self-hosted: no per-token price
    "qwen3-vl-8b": Price(0.0, 0.0),
}


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class LedgerEntry:
    """One judge's account: paid calls and their tokens, answers reused from the cache."""

    calls: int = 0
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class CostLedger:
    """Thread-safe tally per judge name; prices come from ``prices`` (judge name → `Price`)."""

    def __init__(self, prices: Mapping[str, Price] = DEFAULT_PRICES):
        self.prices = dict(prices)
        self.entries: dict[str, LedgerEntry] = {}
        self._lock = threading.Lock()

    def record_call(self, judge: str, usage: Usage) -> None:
        """A reply the provider returned (and billed)."""
        with self._lock:
            entry = self.entries.setdefault(judge, LedgerEntry())
            entry.calls += 1
            entry.input_tokens += usage.input_tokens
            entry.output_tokens += usage.output_tokens

    def record_cached(self, judge: str) -> None:
        with self._lock:
            self.entries.setdefault(judge, LedgerEntry()).cached += 1

    def cost(self, judge: str) -> float | None:
        """US dollars spent on ``judge``; None when its price is unknown."""
        price = self.prices.get(judge)
        if price is None:
            return None
        entry = self.entries.get(judge, LedgerEntry())
        return (entry.input_tokens * price.input_per_mtok + entry.output_tokens * price.output_per_mtok) / 1e6

    def total_cost(self) -> float:
        """Dollars over every priced judge."""
        return sum(cost for judge in self.entries if (cost := self.cost(judge)) is not None)

    def add(self, other: CostLedger) -> None:
        """Fold another ledger's counts into this one (an earlier run's, read from its file)."""
        with self._lock:
            for judge, theirs in other.entries.items():
                mine = self.entries.setdefault(judge, LedgerEntry())
                for field, value in asdict(theirs).items():
                    setattr(mine, field, getattr(mine, field) + value)

    def to_dict(self) -> dict:
        judges = {
            judge: {**asdict(entry), "cost_usd": self.cost(judge)} for judge, entry in sorted(self.entries.items())
        }
        prices = {judge: asdict(price) for judge, price in self.prices.items()}
        return {"judges": judges, "total_cost_usd": self.total_cost(), "prices": prices}

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike, prices: Mapping[str, Price] = DEFAULT_PRICES) -> CostLedger:
        """A ledger written by `write`; today's ``prices`` price it."""
        ledger = cls(prices)
        for judge, fields in json.loads(Path(path).read_text(encoding="utf-8"))["judges"].items():
            ledger.entries[judge] = LedgerEntry(**{k: v for k, v in fields.items() if k != "cost_usd"})
        return ledger

    def report(self) -> str:
        """A small table for the terminal."""
        lines = [f"{'judge':<20} {'calls':>7} {'cached':>7} {'input tok':>11} {'output tok':>11} {'cost USD':>10}"]
        for judge, entry in sorted(self.entries.items()):
            cost = self.cost(judge)
            shown = "no price" if cost is None else f"{cost:.4f}"
            lines.append(
                f"{judge:<20} {entry.calls:>7} {entry.cached:>7} {entry.input_tokens:>11,} "
                f"{entry.output_tokens:>11,} {shown:>10}"
            )
        lines.append(f"{'total':<20} {'':>7} {'':>7} {'':>11} {'':>11} {self.total_cost():>10.4f}")
        return "\n".join(lines)
