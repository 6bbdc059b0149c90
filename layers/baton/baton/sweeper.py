"""The sweeper (scheduled every minute): jobs past their `timeout_seconds` fail as `timeout`, and
pending webhook deliveries whose message was lost are sent again.

Dead letters are not its business any more: the dead-letter function consumes the job steps' DLQs
as they arrive (baton.deadletters). The sweep is bounded, so that a backlog of overdue jobs never
outruns the function's timeout: at most `MAX_OVERDUE_PER_RUN` jobs, and it stops early when the
invocation's remaining time runs low. Every job it visits leaves the open-jobs index, so the next
run (a minute later) carries on where this one stopped and nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Callable

from aws_lambda_powertools import Logger

from baton.clock import now_ms
from baton.deliveries import WebhookService
from baton.failures import JobFailures

logger = Logger(child=True)

MAX_OVERDUE_PER_RUN = 500  # jobs, and as many deliveries
# Stop starting new work with less than this left of the invocation (one failure takes ~3 calls).
RESERVE_MS = 10_000


class Sweeper:
    def __init__(
        self, failures: JobFailures, webhooks: WebhookService, *, max_per_run: int = MAX_OVERDUE_PER_RUN
    ) -> None:
        self.failures = failures
        self.webhooks = webhooks
        self.max_per_run = max_per_run

    def sweep(self, remaining_ms: Callable[[], int] | None = None) -> dict[str, int]:
        def keep_going() -> bool:
            return remaining_ms is None or remaining_ms() > RESERVE_MS

        now = now_ms()
        overdue = self.failures.fail_overdue(now, limit=self.max_per_run, keep_going=keep_going)
        resent = self.webhooks.resend_overdue(now, limit=self.max_per_run, keep_going=keep_going)
        if overdue or resent:
            logger.info(
                "sweep",
                extra={
                    "overdue_failed": overdue,
                    "deliveries_resent": resent,
                    "max_per_run": self.max_per_run,
                },
            )
        return {"overdue_failed": overdue, "deliveries_resent": resent}
