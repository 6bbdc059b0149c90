"""The local runtime's moto server answers a Query on a table's key from that key's partition.

moto sorts every item of the table and compares each one's hash key for every Query, so a delivery
log read slowed as the jobs table grew: about one a second at 10,000 jobs, and a 10,000-job chaos
run read 687 of its 2,001 delivery logs in 11 minutes. Runs in a fresh interpreter: importing the
server module patches moto for the whole process.
"""

from __future__ import annotations

from tests.unit.moto_probe import run_moto_probe

PROBE = r"""
import json
import boto3
from moto import mock_aws
import baton_dev.runtime.moto_server as server
from tests.unit.moto_probe import create_jobs_table

whole_table_reads = []
original = server._all_items
def counting(table):
    whole_table_reads.append(table.name)
    return original(table)
server._all_items = counting

def s(value):
    return {"S": value}

results = {}
with mock_aws():
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_jobs_table(ddb, tenant_index=True)
    for job in range(50):
        ddb.put_item(TableName="jobs", Item={"pk": s(f"JOB#{job}"), "sk": s("JOB"), "tenant": s("t1")})
        for attempt in (3, 1, 2):
            ddb.put_item(
                TableName="jobs",
                Item={"pk": s(f"DELIVERY#t1#{job}"), "sk": s(f"msg#{attempt}"), "n": {"N": str(attempt)}},
            )

    def keys(answer):
        return [item["sk"]["S"] for item in answer["Items"]]

    query = {"TableName": "jobs", "KeyConditionExpression": "pk = :pk",
             "ExpressionAttributeValues": {":pk": s("DELIVERY#t1#7")}, "ConsistentRead": True}
    results["partition"] = keys(ddb.query(**query))
    results["backwards"] = keys(ddb.query(**query, ScanIndexForward=False))
    first = ddb.query(**query, Limit=2)
    results["paged"] = keys(first) + keys(ddb.query(**query, ExclusiveStartKey=first["LastEvaluatedKey"]))
    results["filtered"] = keys(ddb.query(
        TableName="jobs", KeyConditionExpression="pk = :pk AND sk > :after", FilterExpression="n < :three",
        ExpressionAttributeValues={":pk": s("DELIVERY#t1#7"), ":after": s("msg#1"), ":three": {"N": "3"}},
    ))
    nobody = {":pk": s("DELIVERY#t1#none")}
    results["missing"] = keys(ddb.query(**{**query, "ExpressionAttributeValues": nobody}))
    results["whole_table_reads_by_key_queries"] = len(whole_table_reads)
    results["by_index"] = len(ddb.query(
        TableName="jobs", IndexName="by_tenant", KeyConditionExpression="tenant = :t",
        ExpressionAttributeValues={":t": s("t1")},
    )["Items"])
    results["scan"] = ddb.scan(TableName="jobs", Select="COUNT")["Count"]
    results["whole_table_reads_after_index_query_and_scan"] = len(whole_table_reads) > 0
print(json.dumps(results))
"""


def test_a_query_on_the_table_key_reads_its_partition_with_moto_semantics() -> None:
    result = run_moto_probe(PROBE)
    assert result == {
        "partition": ["msg#1", "msg#2", "msg#3"],  # range key ascending, as DynamoDB
        "backwards": ["msg#3", "msg#2", "msg#1"],
        "paged": ["msg#1", "msg#2", "msg#3"],  # Limit and ExclusiveStartKey still page
        "filtered": ["msg#2"],  # key condition on the range key, then the filter
        "missing": [],
        "whole_table_reads_by_key_queries": 0,  # moto's own Query sorted all 200 items each time
        "by_index": 50,  # an index's Query is moto's own
        "scan": 200,
        "whole_table_reads_after_index_query_and_scan": True,
    }
