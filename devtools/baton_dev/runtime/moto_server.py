"""`python -m baton_dev.runtime.moto_server ...`: moto's server, with its IAM enforcement made usable.

moto authorizes every request against the caller's policies, but for most services (DynamoDB,
EventBridge, Secrets Manager...) it does not work out which resource a request acts on: it asks
about resource `*`, which no statement scoped to a table or bus ARN matches, so every call of a
correctly scoped role would be denied. Here a statement's Resource matches when moto does not know
the resource: actions are enforced everywhere, resource ARNs where moto knows them (SQS queues, S3
buckets and keys). tests/unit/test_template.py checks resources statically for the rest.
Presigned URLs, which moto cannot authenticate at all, are authorized as their signer. A DynamoDB
transaction is authorized as AWS does it, as the PutItem/UpdateItem/DeleteItem/ConditionCheckItem
of each of its items (moto asks for `dynamodb:TransactWriteItems`, an action IAM does not have).
A DynamoDB transaction backs up and rolls back only the items it touches, one transaction at a
time: moto deep-copies every table a transaction names (seconds and hundreds of MB once a table
holds thousands of jobs) and, when the transaction is cancelled, puts the whole copy back, which
also undid every other client's writes made to that table meanwhile.
What moto recomputes for every request and never changes is computed once: the list of its service
packages (a directory listing and a stat per package, to route the request) and the method names of
the request's response class (`inspect.getmembers`). A Query on a table's key reads its partition,
not every item of the table (sorted, per Query). Per-request access lines are not logged (errors
are): together about a tenth of moto's CPU under load, profiled with py-spy.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlparse

from moto import backends
from moto.core import authorization
from moto.core import responses as moto_responses
from moto.dynamodb import models as dynamodb_models
from moto.dynamodb.exceptions import MockValidationException, TransactionCanceledException
from moto.dynamodb.models.table import Table
from moto.iam import access_control
from moto.server import main

_check_element_matches = access_control.IAMPolicyStatement._check_element_matches


def _resource_unknown_to_moto_matches(self: Any, element: str, value: str) -> bool:
    if element == "Resource" and value == "*":
        return True
    return bool(_check_element_matches(self, element, value))


access_control.IAMPolicyStatement._check_element_matches = _resource_unknown_to_moto_matches  # type: ignore[method-assign,assignment]

_authenticate = authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action


def _presigned_urls_act_as_their_signer(self: Any, iam_request_cls: type, resource: str = "*") -> None:
    """moto authenticates only requests with an Authorization header: a presigned URL (credentials
    in its query) answers 500. Authorize it with the policies of whoever signed it (the URL can do
    what the signer may do); its signature is not verified - moto cannot compute presigned ones."""
    query = parse_qs(urlparse(self.uri).query)
    if "Authorization" in self.headers or "X-Amz-Credential" not in query:
        item_actions = _transaction_item_actions(self)
        if item_actions is None:
            _authenticate(self, iam_request_cls, resource)
            return
        for action in item_actions:
            original = self._get_action
            self._get_action = lambda action=action: action
            try:
                _authenticate(self, iam_request_cls, resource)
            finally:
                self._get_action = original
        return
    if (
        authorization.ActionAuthenticatorMixin.request_count
        < authorization.settings.INITIAL_NO_AUTH_ACTION_COUNT
    ):
        _authenticate(self, iam_request_cls, resource)
        return
    headers = {
        **dict(self.headers),
        "Authorization": f"AWS4-HMAC-SHA256 Credential={query['X-Amz-Credential'][0]}, Signature=presigned",
    }
    if "X-Amz-Security-Token" in query:
        headers["X-Amz-Security-Token"] = query["X-Amz-Security-Token"][0]
    iam_request = iam_request_cls(
        account_id=self.current_account,
        method=self.method,
        path=urlparse(self.uri).path,
        data=self.data,
        body=self.raw_body,
        headers=headers,
        action=self._get_action(),
    )
    iam_request.check_action_permitted(resource)


# What AWS authorizes for each kind of item in a DynamoDB transaction.
_TRANSACTION_ITEM_ACTIONS = {
    "TransactWriteItems": {
        "Put": "PutItem",
        "Update": "UpdateItem",
        "Delete": "DeleteItem",
        "ConditionCheck": "ConditionCheckItem",
    },
    "TransactGetItems": {"Get": "GetItem"},
}


def _transaction_item_actions(handler: Any) -> list[str] | None:
    """The item actions of a DynamoDB transaction request (sorted, once each); None otherwise."""
    target = str(handler.headers.get("X-Amz-Target") or "")
    service, _, operation = target.partition(".")
    if not service.startswith("DynamoDB_") or operation not in _TRANSACTION_ITEM_ACTIONS:
        return None
    kinds = _TRANSACTION_ITEM_ACTIONS[operation]
    try:
        items = json.loads(handler.raw_body or b"{}").get("TransactItems", [])
    except ValueError:
        return None  # moto answers the malformed request itself
    return sorted({kinds[kind] for item in items for kind in item if kind in kinds}) or None


setattr(  # noqa: B010 - replacing moto's method
    authorization.ActionAuthenticatorMixin,
    "_authenticate_and_authorize_action",
    _presigned_urls_act_as_their_signer,
)


class _CopyKeepingTables:
    """moto.dynamodb.models' `copy`, except that a Table is not deep-copied: the only Table copy
    there is transact_write_items' whole-table backup, which the wrapper below replaces."""

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        return value if isinstance(value, Table) else copy.deepcopy(value, memo)


dynamodb_models.copy = _CopyKeepingTables  # type: ignore[assignment]
_transact_write_items = dynamodb_models.DynamoDBBackend.transact_write_items
_ONE_TRANSACTION_AT_A_TIME = threading.Lock()


def _item_key(backend: Any, op_type: str, op: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    table_name = op.get("TableName")
    if not isinstance(table_name, str) or table_name not in backend.tables:
        return None
    if op_type != "Put":
        key = op.get("Key")
        return (table_name, key) if isinstance(key, dict) else None
    table = backend.tables[table_name]
    attrs = op.get("Item") or {}
    names = [table.hash_key_attr, *([table.range_key_attr] if table.range_key_attr else [])]
    if not all(name in attrs for name in names):
        return None  # moto answers the malformed item itself
    return table_name, {name: attrs[name] for name in names}


def _transact_rolling_back_touched_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    with _ONE_TRANSACTION_AT_A_TIME:
        before: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        for entry in transact_items:
            for op_type, op in entry.items():
                found = _item_key(self, op_type, op) if isinstance(op, dict) else None
                if found is not None:
                    table_name, key = found
                    try:
                        current = self.get_item(table_name, key)
                    except MockValidationException:
                        continue  # a key of the wrong shape: moto refuses the transaction itself
                    before.append(
                        (table_name, key, None if current is None else current.to_json()["Attributes"])
                    )
        try:
            _transact_write_items(self, transact_items)
        except (TransactionCanceledException, MockValidationException):
            for table_name, key, attributes in reversed(before):
                if attributes is None:
                    if self.get_item(table_name, key) is not None:
                        self.delete_item(table_name, key)
                else:
                    self.put_item(table_name, attributes)
            raise


dynamodb_models.DynamoDBBackend.transact_write_items = _transact_rolling_back_touched_items  # type: ignore[method-assign]

# A Query on a table's own key reads that partition, as DynamoDB does. moto sorts every item of the
# table and compares each one's hash key, per Query: a delivery log read (`GET
# /v1/jobs/{id}/deliveries`) slowed as the table grew, to about 1 a second once it held 10,000 jobs
# (a 10,000-job chaos run read 687 of its 2,001 logs in 11 minutes). While a thread runs such a
# Query, that table's `all_items` is the partition's, in moto's order (range key ascending).
_all_items = Table.all_items
_query = Table.query
_partition_query = threading.local()


def _all_items_of_the_queried_partition(self: Any) -> list[Any]:
    if id(getattr(_partition_query, "table", None)) != id(self):  # (`is` would narrow self for mypy)
        return _all_items(self)
    partition = self.items.get(_partition_query.hash_key)  # .get: no empty partition is created
    if partition is None:
        return []
    if not self.range_key_attr:
        return [partition]
    return sorted(partition.values(), key=lambda item: item.range_key)


_QUERY_PARAMETERS = inspect.signature(_query)


def _query_reading_one_partition(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
    index_name = _QUERY_PARAMETERS.bind(self, hash_key, *args, **kwargs).arguments.get("index_name")
    if index_name or hash_key is None:  # an index's Query: moto's own (its backend passes it by position)
        return _query(self, hash_key, *args, **kwargs)
    _partition_query.table, _partition_query.hash_key = self, hash_key
    try:
        return _query(self, hash_key, *args, **kwargs)
    finally:
        _partition_query.table = _partition_query.hash_key = None


Table.all_items = _all_items_of_the_queried_partition  # type: ignore[method-assign]
Table.query = _query_reading_one_partition  # type: ignore[method-assign]

_list_moto_packages = backends.list_of_moto_modules


@functools.cache
def _moto_packages_read_once() -> Iterable[str]:
    """The packages never change while the server runs; reading them per request cost about 150
    stat calls each (a fifth of a DynamoDB GetItem's CPU, profiled)."""
    return tuple(_list_moto_packages())


backends.list_of_moto_modules = _moto_packages_read_once
# A response class's action methods, looked up by reflection on every request: a class never changes.
moto_responses.method_names_from_class = functools.cache(moto_responses.method_names_from_class)
# werkzeug logs every request at INFO; nothing reads those lines, and errors are still logged.
logging.getLogger("werkzeug").setLevel(logging.WARNING)

if __name__ == "__main__":
    main()
