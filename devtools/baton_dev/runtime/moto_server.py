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
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlparse

from moto.core import authorization
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

if __name__ == "__main__":
    main()
