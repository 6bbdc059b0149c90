"""Prices: AWS list prices (us-east-1, on-demand, beyond the free tiers) and the model price table.

One source for both uses: bench/cost.py prices the requests it counts with these, and every job's
`cost` (`GET /v1/jobs/{id}`) is priced with them too.

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


# -- what one job cost ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million tokens, as providers list them."""

    input_per_million: float
    output_per_million: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


# A provider's listed price for a small model and its Batch API discount, for comparisons only
# (bench scenario 9: a batch through Baton at the full price vs OpenAI Batch at half). Jobs are
# priced with the ModelPrices parameter instead. OpenAI list prices, gpt-4o-mini, as of 2025-11.
LISTED_MODEL = "gpt-4o-mini"
LISTED_MODEL_PRICE = ModelPrice(input_per_million=0.15, output_per_million=0.60)
OPENAI_BATCH_DISCOUNT = 0.5  # "50% off" the synchronous price, results within 24 h


def parse_model_prices(table: str) -> dict[str, ModelPrice]:
    """`ModelPrices` ("model=input/output,model=input/output", USD per million tokens) -> prices.
    Raises ValueError naming the entry that is not of that shape."""
    prices: dict[str, ModelPrice] = {}
    for entry in (part.strip() for part in table.split(",")):
        if not entry:
            continue
        model, sep, pair = entry.rpartition("=")
        given_in, slash, given_out = pair.partition("/")
        try:
            if not (sep and slash and model.strip()):
                raise ValueError(entry)
            price = ModelPrice(float(given_in), float(given_out))
        except ValueError:
            raise ValueError(
                f"model price {entry!r}: write model=input/output (USD per million tokens)"
            ) from None
        if price.input_per_million < 0 or price.output_per_million < 0:
            raise ValueError(f"model price {entry!r}: prices cannot be negative")
        prices[model.strip()] = price
    return prices


@dataclass(frozen=True)
class JobPath:
    """What a job did, as its record tells: the requests it made follow from these."""

    has_document: bool
    infer_hops: int  # depth + 1: one model call per hop
    tool_hops: int  # depth
    has_webhook: bool
    stage_ms: int  # measured time of the stages (extract + infer + notify), for Lambda GB-seconds


# The AWS requests one step of the pipeline makes, read from the code (intake, execution and their stores):
# each stage command is one SQS send, one receive and one delete; each stage reads the job, writes
# its start and its outcome (conditional updates) and its idempotency record twice, and publishes
# one event. Retries, polls and long-polls are not counted: `aws_usd` is the price of the job's
# path, not of how often a client asked about it.
SQS_PER_STEP = 3
DDB_WRITES_PER_STEP = 4
DDB_READS_PER_STEP = 1
EVENTS_PER_STEP = 1
STAGE_MEMORY_MB = 512


def aws_cost(path: JobPath, prices: Prices = PRICES) -> float:
    """List price in USD of the AWS requests a job of this path makes."""
    steps = int(path.has_document) + path.infer_hops + path.tool_hops + int(path.has_webhook)
    # Submission: API Gateway + the API function, the job's write, Job Accepted (an upload's job
    # also marks its hand-off, for its S3 event's replays: one write more, not counted here).
    total = prices.apigw_rest_per_request + prices.dynamodb_per_wru + prices.eventbridge_per_event
    total += lambda_cost(1 + steps, path.stage_ms, STAGE_MEMORY_MB, prices)
    total += steps * (
        SQS_PER_STEP * prices.sqs_per_request
        + DDB_WRITES_PER_STEP * prices.dynamodb_per_wru
        + DDB_READS_PER_STEP * prices.dynamodb_per_rru
        + EVENTS_PER_STEP * prices.eventbridge_per_event
    )
    # S3: the document read and its text written; the conversation written and read per tool hop.
    total += int(path.has_document) * (prices.s3_per_get + prices.s3_per_put)
    total += path.tool_hops * 2 * (prices.s3_per_put + prices.s3_per_get)
    return total
