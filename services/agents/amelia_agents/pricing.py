"""Tokens and cost per node: what each node's model calls used, for its `run.node.finished`.

Model calls report their usage (`runtime.record_usage`, tagged with the node) while the node
runs; the executor adds it up here and puts the node's share on the event when the node
finishes: `input_tokens`, `output_tokens`, `models`, and `cost_usd` when every model it called
has a price in MODEL_PRICES (USD per million input and output tokens; `prefix*` for a family,
the longest match wins). No price, no cost: an unknown cost is never shown as 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Prices = Mapping[str, tuple[float, float]]


def model_price(prices: Prices, model: str) -> tuple[float, float] | None:
    """The (input, output) USD per million tokens of `model`, or None when it has none."""
    if model in prices:
        return prices[model]
    families = [p for p in prices if p.endswith("*") and model.startswith(p[:-1])]
    return prices[max(families, key=len)] if families else None


class NodeUsage:
    """Usage reported during a pick-up, by node and model, until the node finishes."""

    def __init__(self, prices: Prices) -> None:
        self.prices = prices
        self._nodes: dict[str, dict[str, list[int]]] = {}

    def add(self, data: Mapping[str, Any]) -> None:
        counts = self._nodes.setdefault(str(data.get("node", "")), {}).setdefault(
            str(data.get("model", "")), [0, 0]
        )
        counts[0] += int(data.get("input_tokens", 0))
        counts[1] += int(data.get("output_tokens", 0))

    def take(self, node: str) -> dict[str, Any]:
        """The node's usage (and cost, when known) for its finished event; {} if it used none."""
        models = self._nodes.pop(node, None)
        if not models:
            return {}
        found: dict[str, Any] = {
            "input_tokens": sum(c[0] for c in models.values()),
            "output_tokens": sum(c[1] for c in models.values()),
            "models": sorted(models),
        }
        cost = 0.0
        for model, (input_tokens, output_tokens) in models.items():
            price = model_price(self.prices, model)
            if price is None:
                return found
            cost += (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
        found["cost_usd"] = round(cost, 8)
        return found
