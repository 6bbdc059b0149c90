"""Runs a probe of the local runtime's moto patches in a fresh interpreter: importing
`baton_dev.runtime.moto_server` patches moto for the whole process, so the probe must not share
the test session's. The probe prints its results as JSON on its last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def create_jobs_table(ddb: Any, *, tenant_index: bool = False) -> None:
    """The probes' `jobs` table: keyed (pk, sk) as template.yaml's jobs table; `tenant_index`:
    with a GSI `by_tenant` on `tenant` (an index Query, which moto answers itself)."""
    attributes = [{"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk")]
    indexes: dict[str, Any] = {}
    if tenant_index:
        attributes.append({"AttributeName": "tenant", "AttributeType": "S"})
        indexes["GlobalSecondaryIndexes"] = [
            {
                "IndexName": "by_tenant",
                "KeySchema": [{"AttributeName": "tenant", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ]
    ddb.create_table(
        TableName="jobs",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=attributes,
        BillingMode="PAY_PER_REQUEST",
        **indexes,
    )


def run_moto_probe(probe: str) -> dict[str, Any]:
    answer = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    result: dict[str, Any] = json.loads(answer.stdout.strip().splitlines()[-1])
    return result
