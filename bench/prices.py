"""AWS list prices used by bench/cost.py: us-east-1, on-demand, beyond the free tiers.

Taken from public knowledge of the AWS pricing pages, not fetched live; PRICES_AS_OF says when they
were known to hold. Check them before quoting a figure: https://aws.amazon.com/<service>/pricing/.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_AS_OF = "2025-11 (public us-east-1 list prices; DynamoDB on-demand after its 2024-11-01 cut)"
REGION = "us-east-1"


@dataclass(frozen=True)
class Prices:
    # Amazon SQS, standard queues: per request; every started 64 KB of payload is one request.
    sqs_per_request: float = 0.40 / 1e6
    # DynamoDB on-demand: a write request unit covers 1 KB written; a read request unit covers 4 KB
    # read strongly consistent (eventually consistent reads cost half).
    dynamodb_per_wru: float = 0.625 / 1e6
    dynamodb_per_rru: float = 0.125 / 1e6
    # S3 Standard requests: PUT, COPY, POST, LIST per 1,000; GET, HEAD and others per 1,000.
    s3_per_put: float = 0.005 / 1000
    s3_per_get: float = 0.0004 / 1000
    # EventBridge custom events (PutEvents), every started 64 KB is one event; rules and delivery
    # to SQS targets are not charged extra; AWS service events (S3 -> default bus) are free.
    eventbridge_per_event: float = 1.00 / 1e6
    # Lambda (arm64, first 7.5 billion GB-s a month): per request and per GB-second, 1 ms billing.
    lambda_per_request: float = 0.20 / 1e6
    lambda_per_gb_second_arm64: float = 0.0000133334
    # API Gateway REST API, first 333 million requests a month.
    apigw_rest_per_request: float = 3.50 / 1e6
    # Step Functions Standard: per state transition.
    sfn_standard_per_transition: float = 0.025 / 1000
    # Step Functions Express: per execution, and per GB-second (64 MB chunks, 100 ms rounding).
    sfn_express_per_request: float = 1.00 / 1e6
    sfn_express_per_gb_second: float = 0.00001667
    # CloudWatch Logs ingestion (standard class), per GB: what the handlers' log lines cost.
    cloudwatch_logs_per_gb: float = 0.50


PRICES = Prices()

# S3 operations billed in the PUT class; every other billed S3 operation is GET-class.
S3_PUT_CLASS = frozenset(
    {
        "PutObject",
        "CopyObject",
        "PostObject",
        "ListObjects",
        "ListObjectsV2",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
    }
)
# Free S3 operations.
S3_FREE = frozenset({"DeleteObject", "DeleteObjects"})


def lambda_cost(invocations: float, billed_ms: float, memory_mb: int, prices: Prices = PRICES) -> float:
    """Requests plus duration: billed_ms is the sum of each invocation's duration rounded up to 1 ms."""
    gb_seconds = memory_mb / 1024 * billed_ms / 1000
    return invocations * prices.lambda_per_request + gb_seconds * prices.lambda_per_gb_second_arm64


def express_duration_cost(duration_ms: float, memory_mb: int = 64, prices: Prices = PRICES) -> float:
    """One Express execution's duration charge: 100 ms rounding, memory in 64 MB chunks."""
    billed_s = max(100, -(-duration_ms // 100) * 100) / 1000
    chunks = max(1, -(-memory_mb // 64))
    return chunks * 64 / 1024 * billed_s * prices.sfn_express_per_gb_second


def per_million(cost_per_job: float) -> float:
    return cost_per_job * 1e6
