"""The benchmarks' pricing arithmetic and billing-unit sizing (no stack, no timing)."""

from __future__ import annotations

import pytest

from baton.prices import PRICES, express_duration_cost, lambda_cost, per_million
from bench.cost import price
from bench.stack import ddb_item_size, read_units, write_units


def test_lambda_cost_is_requests_plus_gb_seconds() -> None:
    # 1 M invocations of 100 ms at 512 MB: $0.20 + 50,000 GB-s x $0.0000133334.
    assert per_million(lambda_cost(1, 100, 512)) == pytest.approx(0.20 + 50_000 * 0.0000133334)


def test_express_rounds_up_to_100_ms_in_64_mb_chunks() -> None:
    one_chunk_100ms = 64 / 1024 * 0.1 * PRICES.sfn_express_per_gb_second
    assert express_duration_cost(1) == pytest.approx(one_chunk_100ms)
    assert express_duration_cost(101) == pytest.approx(2 * one_chunk_100ms)
    assert express_duration_cost(100, memory_mb=65) == pytest.approx(2 * one_chunk_100ms)


def test_dynamodb_units_follow_item_size() -> None:
    item = {"pk": {"S": "TENANT#acme"}, "n": {"N": "12345"}, "ok": {"BOOL": True}, "l": {"L": [{"S": "ab"}]}}
    # names 2 + 1 + 2 + 1; values 11 + (5 digits -> 3 + 1) + 1 + (3 + 1 + 2)
    assert ddb_item_size(item) == 6 + 11 + 4 + 1 + 6
    assert write_units(1024) == 1 and write_units(1025) == 2
    assert read_units(4096, consistent=True) == 1 and read_units(4097, consistent=True) == 2
    assert read_units(100, consistent=False) == 0.5
    assert read_units(0, consistent=True) == 1  # a miss still bills a read


def test_price_adds_every_line_item() -> None:
    units = {
        "sqs_requests": 5,
        "dynamodb_rru": 4,
        "dynamodb_wru": 10,
        "s3_put": 1,
        "s3_get": 2,
        "eventbridge_events": 3,
    }
    lambdas = {"InferFunction": {"invocations": 1.0, "billed_ms": 200.0, "memory_mb": 512}}
    lines = price(units, lambdas, {"sqs_requests": 1, "apigw_requests": 1, "log_bytes": 1024**3 / 1e6})
    expected = {
        "SQS": 6 * 0.40e-6,
        "DynamoDB": 4 * 0.125e-6 + 10 * 0.625e-6,
        "S3": 0.005e-3 + 2 * 0.0004e-3,
        "EventBridge": 3e-6,
        "API Gateway": 3.5e-6,
        "CloudWatch Logs": 0.50 / 1e6,
        "Lambda Infer": 0.2e-6 + 0.5 * 0.2 * 0.0000133334,
    }
    assert lines == pytest.approx(expected)
