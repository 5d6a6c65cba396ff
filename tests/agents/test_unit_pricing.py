"""A node's tokens and cost (pricing.NodeUsage): added up by node and model, priced only when
every model the node called has a price; the longest `prefix*` family wins."""

from __future__ import annotations

import pytest

from amelia_agents.pricing import NodeUsage, model_price

PRICES = {
    "anthropic:claude-sonnet-4-5": (3.0, 15.0),
    "anthropic:*": (1.0, 5.0),
    "anthropic:claude-*": (2.0, 10.0),
    "local:*": (0.0, 0.0),
}


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("anthropic:claude-sonnet-4-5", (3.0, 15.0)),
        ("anthropic:claude-haiku-4-5", (2.0, 10.0)),
        ("anthropic:other", (1.0, 5.0)),
        ("local:qwen2.5-coder-0.5b", (0.0, 0.0)),
        ("openai:gpt-4o", None),
        ("", None),
    ],
)
def test_a_models_price_is_its_own_or_its_longest_family(
    model: str, price: tuple[float, float] | None
) -> None:
    assert model_price(PRICES, model) == price


def test_a_nodes_usage_is_summed_by_model_and_priced() -> None:
    usage = NodeUsage(PRICES)
    call = {"node": "write", "model": "anthropic:claude-sonnet-4-5"}
    usage.add({**call, "input_tokens": 1000, "output_tokens": 200})
    usage.add({**call, "input_tokens": 500, "output_tokens": 100})
    usage.add({"node": "other", "model": "local:x", "input_tokens": 7, "output_tokens": 3})
    assert usage.take("write") == {
        "input_tokens": 1500,
        "output_tokens": 300,
        "models": ["anthropic:claude-sonnet-4-5"],
        "cost_usd": pytest.approx((1500 * 3 + 300 * 15) / 1_000_000),
    }
    assert usage.take("write") == {}  # taken once: the next execution of the node starts at 0
    assert usage.take("other")["cost_usd"] == 0.0  # free is a known cost


def test_a_node_with_a_model_without_a_price_has_tokens_and_no_cost() -> None:
    usage = NodeUsage(PRICES)
    usage.add({"node": "mix", "model": "local:x", "input_tokens": 1, "output_tokens": 1})
    usage.add({"node": "mix", "model": "openai:gpt-4o", "input_tokens": 2, "output_tokens": 2})
    taken = usage.take("mix")
    assert taken == {
        "input_tokens": 3,
        "output_tokens": 3,
        "models": ["local:x", "openai:gpt-4o"],
    }
    assert "cost_usd" not in NodeUsage({}).take("never-ran")
