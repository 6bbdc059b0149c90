"""The local runtime's moto server rolls a cancelled DynamoDB transaction back item by item.

moto itself deep-copies every table a transaction names and, on cancel, puts the copy back: that
costs seconds and hundreds of MB per transaction once a table holds thousands of jobs (a chaos run's
1,000-line batch grew moto from 0.4 to 1.8 GB), and it silently undid other clients' writes to the
same table made while the transaction ran. Runs in a fresh interpreter: importing the server module
patches moto for the whole process.
"""

from __future__ import annotations

from tests.unit.moto_probe import run_moto_probe

PROBE = r"""
import json
import boto3
from botocore.exceptions import ClientError
from moto import mock_aws
import baton_dev.runtime.moto_server  # noqa: F401  (the patches under test)
from moto.dynamodb import models
from tests.unit.moto_probe import create_jobs_table

results = {}
with mock_aws():
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_jobs_table(ddb)
    rich = {
        "pk": {"S": "BATCH#b1"}, "sk": {"S": "BATCH"}, "completed": {"N": "3"},
        "doc": {"M": {"chunks": {"L": [{"N": "1"}, {"M": {"x": {"S": "y"}}}]}, "ok": {"BOOL": True}}},
        "tags": {"SS": ["a", "b"]}, "blob": {"B": b"\x00\x01"}, "none": {"NULL": True},
    }
    ddb.put_item(TableName="jobs", Item=rich)
    ddb.put_item(TableName="jobs", Item={"pk": {"S": "BATCH#b1"}, "sk": {"S": "LINE#counted"}})
    key = {"pk": {"S": "BATCH#b1"}, "sk": {"S": "BATCH"}}
    before = ddb.get_item(TableName="jobs", Key=key)["Item"]

    # Another client's write lands while the transaction runs (here: during its count update).
    update_item = models.DynamoDBBackend.update_item
    def update_then_other_client_writes(self, *args, **kwargs):
        result = update_item(self, *args, **kwargs)
        other = {"pk": {"S": "JOB#other"}, "sk": {"S": "JOB"}, "status": {"S": "completed"}}
        ddb.put_item(TableName="jobs", Item=other)
        return result
    models.DynamoDBBackend.update_item = update_then_other_client_writes

    try:
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": "jobs", "Item": {"pk": {"S": "BATCH#b1"}, "sk": {"S": "LINE#new"}},
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Update": {"TableName": "jobs", "Key": key, "UpdateExpression": "ADD completed :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"Put": {"TableName": "jobs", "Item": {"pk": {"S": "BATCH#b1"}, "sk": {"S": "LINE#counted"}},
                     "ConditionExpression": "attribute_not_exists(pk)"}},
        ])
        results["cancelled"] = False
    except ClientError as error:
        results["cancelled"] = error.response["Error"]["Code"] == "TransactionCanceledException"
    models.DynamoDBBackend.update_item = update_item

    results["batch_restored"] = ddb.get_item(TableName="jobs", Key=key)["Item"] == before
    results["new_line_absent"] = "Item" not in ddb.get_item(
        TableName="jobs", Key={"pk": {"S": "BATCH#b1"}, "sk": {"S": "LINE#new"}})
    results["other_write_kept"] = "Item" in ddb.get_item(
        TableName="jobs", Key={"pk": {"S": "JOB#other"}, "sk": {"S": "JOB"}})

    ddb.transact_write_items(TransactItems=[
        {"Put": {"TableName": "jobs", "Item": {"pk": {"S": "BATCH#b1"}, "sk": {"S": "LINE#new"}},
                 "ConditionExpression": "attribute_not_exists(pk)"}},
        {"Update": {"TableName": "jobs", "Key": key, "UpdateExpression": "ADD completed :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}},
    ])
    results["committed_count"] = ddb.get_item(TableName="jobs", Key=key)["Item"]["completed"]["N"]
print(json.dumps(results))
"""


def test_a_cancelled_transaction_restores_its_items_and_keeps_other_writes() -> None:
    result = run_moto_probe(PROBE)
    assert result == {
        "cancelled": True,
        "batch_restored": True,  # the counter and every kind of attribute, as before
        "new_line_absent": True,  # the transaction's own put undone
        "other_write_kept": True,  # moto's whole-table restore lost this write
        "committed_count": "4",  # a transaction that succeeds still applies
    }
