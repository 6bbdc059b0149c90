"""What a job cost: the model's tokens at the configured price table, AWS requests at list price."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

import baton.llm
from baton.llm import Completion
from baton.prices import PRICES, JobPath, ModelPrice, aws_cost, parse_model_prices
from baton.records import Usage

if TYPE_CHECKING:
    from conftest import AwsStack


def test_the_price_table_parses_and_names_bad_entries() -> None:
    assert parse_model_prices("gpt-4.1-mini=0.40/1.60, local=0/0,") == {
        "gpt-4.1-mini": ModelPrice(0.40, 1.60),
        "local": ModelPrice(0.0, 0.0),
    }
    assert parse_model_prices("") == {}
    for bad in ("gpt=1", "gpt=a/b", "=1/2", "gpt=-1/2"):
        with pytest.raises(ValueError, match="model price"):
            parse_model_prices(bad)
    assert ModelPrice(2, 8).cost(prompt_tokens=1_000_000, completion_tokens=500_000) == pytest.approx(6.0)


def test_aws_cost_grows_with_the_jobs_path() -> None:
    prompt = aws_cost(JobPath(has_document=False, infer_hops=1, tool_hops=0, has_webhook=False, stage_ms=0))
    # At least the API Gateway request, the infer step's three SQS requests and its event.
    assert prompt > PRICES.apigw_rest_per_request + 3 * PRICES.sqs_per_request + PRICES.eventbridge_per_event
    agent = aws_cost(JobPath(has_document=True, infer_hops=3, tool_hops=2, has_webhook=True, stage_ms=900))
    assert agent > prompt
    assert aws_cost(JobPath(False, 1, 0, False, stage_ms=1000)) > prompt  # Lambda GB-seconds count


def test_the_job_shows_its_cost(aws: AwsStack, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = {"BATON_MODEL_PRICES": "baton-local=2/8"}
    api, infer = aws.load("ApiFunction", **prices), aws.load("InferFunction", **prices)
    answer = Completion(
        text="ok",
        finish_reason="stop",
        tool_calls=None,
        usage=Usage(prompt_tokens=1000, completion_tokens=500, total_tokens=1500),
    )
    monkeypatch.setattr(baton.llm, "complete", lambda *args, **kwargs: answer)
    ids = []
    for model in ("baton-local", "unpriced-model"):
        body = {"input": {"prompt": "hi"}, "model": model}
        created = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
        ids.append(json.loads(created["body"])["id"])
    infer(aws.take_event("InferQueue"))
    priced, unpriced = (json.loads(api(aws.api_event("api-get-job.json", job_id=i))["body"]) for i in ids)
    assert priced["status"] == "completed"
    assert priced["cost"]["model_usd"] == pytest.approx((1000 * 2 + 500 * 8) / 1e6)
    assert unpriced["cost"]["model_usd"] is None
    assert priced["cost"]["aws_usd"] > 0
    assert unpriced["cost"]["aws_usd"] > 0  # AWS requests are priced whatever the model
