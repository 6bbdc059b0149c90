"""`python -m baton_dev.runtime.moto_server ...`: moto's server, with its IAM enforcement made usable.

moto authorizes every request against the caller's policies, but for most services (DynamoDB,
EventBridge, Secrets Manager...) it does not work out which resource a request acts on: it asks
about resource `*`, which no statement scoped to a table or bus ARN matches, so every call of a
correctly scoped role would be denied. Here a statement's Resource matches when moto does not know
the resource: actions are enforced everywhere, resource ARNs where moto knows them (SQS queues, S3
buckets and keys). tests/unit/test_template.py checks resources statically for the rest.
"""

from __future__ import annotations

from typing import Any

from moto.iam import access_control
from moto.server import main

_check_element_matches = access_control.IAMPolicyStatement._check_element_matches


def _resource_unknown_to_moto_matches(self: Any, element: str, value: str) -> bool:
    if element == "Resource" and value == "*":
        return True
    return bool(_check_element_matches(self, element, value))


access_control.IAMPolicyStatement._check_element_matches = _resource_unknown_to_moto_matches  # type: ignore[method-assign,assignment]

if __name__ == "__main__":
    main()
