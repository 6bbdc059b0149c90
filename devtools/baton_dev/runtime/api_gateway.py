"""A local REST API Gateway: HTTP requests become API Gateway proxy events, authorizer included.

Routes, the Lambda authorizer (REQUEST type, identity source, result TTL) and the gateway
responses (401/403/5xx bodies) come from the translated template, like `sam local start-api`.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from baton_dev.runtime.functions import LocalFunction
from baton_dev.runtime.schedules import ScheduleSource
from baton_dev.runtime.sqs_source import SqsEventSource
from baton_dev.runtime.template import (
    AppTemplate,
    AuthorizerSpec,
    MockRouteSpec,
    RouteSpec,
    static_mapping_value,
)

logger = logging.getLogger("baton.runtime")

MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
ACCOUNT_ID = "123456789012"
API_ID = "local"
# Local-only introspection (not part of the deployed API): invocations per function.
LOCAL_STATS_PATH = "/_local/stats"


def _path_regex(path: str) -> re.Pattern[str]:
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
    return re.compile(f"^{pattern}$")


class _Route:
    def __init__(self, spec: RouteSpec) -> None:
        self.spec = spec
        self.regex = _path_regex(spec.path)


class LocalApiGateway:
    def __init__(
        self,
        app: AppTemplate,
        functions: dict[str, LocalFunction],
        *,
        host: str = "127.0.0.1",
        port: int = 3000,
        region: str = "us-east-1",
    ) -> None:
        self.app = app
        self.functions = functions
        self.region = region
        self.routes = [_Route(route) for route in app.routes]
        self.mock_routes = [(_path_regex(mock.path), mock) for mock in app.mock_routes]
        self.sources: list[SqsEventSource] = []
        self.schedules: list[ScheduleSource] = []
        self._auth_cache: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._auth_lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "BatonLocalApi/1"
            # Headers and body go out in separate writes: without this each answer waited ~40 ms
            # for the client's delayed ACK (measured by bench/).
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("api %s", format % args)

            def _serve(self) -> None:
                gateway._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

        ThreadingHTTPServer.request_queue_size = 128  # the default 5 resets bursts of clients
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, object]:
        return {
            "functions": {
                name: {"invocations": function.invocations, "failures": function.failures}
                for name, function in self.functions.items()
            },
            "event_sources": {
                source.spec.logical_id: {
                    "batches": source.batches,
                    "records_ok": source.records_ok,
                    "records_failed": source.records_failed,
                }
                for source in self.sources
            },
            "schedules": {schedule.spec.logical_id: {"runs": schedule.runs} for schedule in self.schedules},
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- request handling ------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        split = urlsplit(request.path)
        method = request.command.upper()
        length = int(request.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            # Drain the body so the client reads the answer instead of a reset connection, then
            # answer as API Gateway does: the REQUEST_TOO_LARGE gateway response (else DEFAULT_4XX).
            while length > 0:
                chunk = request.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)
            self._gateway_response(request, "REQUEST_TOO_LARGE", 413, "Request Too Long")
            return
        raw_body = request.rfile.read(length) if length else b""
        if split.path == LOCAL_STATS_PATH:
            self._send(request, 200, {}, json.dumps(self.stats()))
            return
        mock = self._match_mock(method, split.path)
        if mock is not None:
            # Answered by API Gateway itself, before any authorizer (SAM's CORS preflight).
            self._send(request, mock.status, mock.headers, "{}")
            return
        route, path_parameters = self._match(method, split.path)
        if route is None:
            self._gateway_response(
                request, "MISSING_AUTHENTICATION_TOKEN", 403, "Missing Authentication Token"
            )
            return
        headers = {name: value for name, value in request.headers.items()}
        # API Gateway adds these; locally the scheme is plain HTTP.
        headers.setdefault("X-Forwarded-Proto", "http")
        headers.setdefault("X-Forwarded-Port", str(self.port))
        query = parse_qs(split.query, keep_blank_values=True)
        event = self._proxy_event(
            route, method, split.path, headers, query, path_parameters, raw_body, request
        )
        if route.spec.authorizer:
            allowed, status = self._authorize(self.app.authorizers[route.spec.authorizer], event)
            if allowed is None:
                self._gateway_response(request, *authorizer_refusal(status))
                return
            event["requestContext"]["authorizer"] = allowed
        outcome = self.functions[route.spec.function].invoke(event)
        if not outcome.ok or not isinstance(outcome.result, dict) or "statusCode" not in outcome.result:
            logger.error("integration failed for %s %s: %s", method, split.path, outcome.error)
            self._gateway_response(request, "DEFAULT_5XX", 502, "Internal server error")
            return
        result = outcome.result
        out_headers = dict(result.get("headers") or {})
        for name, values in (result.get("multiValueHeaders") or {}).items():
            out_headers[name] = ", ".join(str(value) for value in values)
        body = result.get("body") or ""
        payload = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
        self._send(request, int(result["statusCode"]), out_headers, payload)
        logger.info(
            "%s %s -> %s (%.0f ms)",
            method,
            split.path,
            result["statusCode"],
            (time.monotonic() - started) * 1000,
        )

    def _match(self, method: str, path: str) -> tuple[_Route | None, dict[str, str]]:
        for route in self.routes:
            match = route.regex.match(path)
            if match and route.spec.method in (method, "ANY", "X-AMAZON-APIGATEWAY-ANY-METHOD"):
                return route, match.groupdict()
        return None, {}

    def _match_mock(self, method: str, path: str) -> MockRouteSpec | None:
        for regex, mock in self.mock_routes:
            if mock.method == method and regex.match(path):
                return mock
        return None

    def _proxy_event(
        self,
        route: _Route,
        method: str,
        path: str,
        headers: dict[str, str],
        query: dict[str, list[str]],
        path_parameters: dict[str, str],
        raw_body: bytes,
        request: BaseHTTPRequestHandler,
    ) -> dict[str, Any]:
        try:
            body: str | None = raw_body.decode() if raw_body else None
            is_base64 = False
        except UnicodeDecodeError:
            body, is_base64 = base64.b64encode(raw_body).decode(), True
        multi_headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            multi_headers.setdefault(name, []).append(value)
        return {
            "resource": route.spec.path,
            "path": path,
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": multi_headers,
            "queryStringParameters": {key: values[-1] for key, values in query.items()} or None,
            "multiValueQueryStringParameters": query or None,
            "pathParameters": path_parameters or None,
            "stageVariables": None,
            "requestContext": {
                "resourceId": "local",
                "resourcePath": route.spec.path,
                "httpMethod": method,
                "extendedRequestId": uuid.uuid4().hex,
                "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
                "path": path,
                "accountId": ACCOUNT_ID,
                "protocol": "HTTP/1.1",
                "stage": self.app.api_stage,
                "domainPrefix": "localhost",
                "requestTimeEpoch": int(time.time() * 1000),
                "requestId": str(uuid.uuid4()),
                "identity": {"sourceIp": request.client_address[0], "userAgent": headers.get("User-Agent")},
                "domainName": headers.get("Host", "127.0.0.1"),
                "apiId": API_ID,
            },
            "body": body,
            "isBase64Encoded": is_base64,
        }

    def _authorize(self, spec: AuthorizerSpec, event: dict[str, Any]) -> tuple[dict[str, Any] | None, int]:
        """(authorizer context, 0) when allowed; (None, 401|403) otherwise."""
        lowered = {name.lower(): value for name, value in event["headers"].items()}
        identity = [lowered.get(header.lower()) for header in spec.identity_headers]
        if any(not value for value in identity):
            return None, 401  # API Gateway does not call the authorizer without its identity source
        cache_key = (spec.name, "\x00".join(str(value) for value in identity))
        with self._auth_lock:
            cached = self._auth_cache.get(cache_key)
        if cached and cached[0] > time.monotonic():
            return (cached[1], 0) if cached[1] is not None else (None, 403)
        method_arn = (
            f"arn:aws:execute-api:{self.region}:{ACCOUNT_ID}:{API_ID}/{self.app.api_stage}/"
            f"{event['httpMethod']}{event['path']}"
        )
        auth_event = {
            "type": "REQUEST",
            "methodArn": method_arn,
            **{
                key: event[key]
                for key in (
                    "resource",
                    "path",
                    "httpMethod",
                    "headers",
                    "multiValueHeaders",
                    "queryStringParameters",
                    "multiValueQueryStringParameters",
                    "pathParameters",
                    "stageVariables",
                    "requestContext",
                )
            },
        }
        outcome = self.functions[spec.function].invoke(auth_event)
        if not outcome.ok:
            # The exact "Unauthorized" error means 401; any other failure is a 500 on AWS.
            return None, 401 if outcome.error and "Unauthorized" in outcome.error else 500
        result = outcome.result or {}
        statements = (result.get("policyDocument") or {}).get("Statement") or []
        allowed = any(
            statement.get("Effect") == "Allow" and _resource_matches(statement.get("Resource"), method_arn)
            for statement in statements
        ) and not any(
            statement.get("Effect") == "Deny" and _resource_matches(statement.get("Resource"), method_arn)
            for statement in statements
        )
        context = (
            {**(result.get("context") or {}), "principalId": result.get("principalId")} if allowed else None
        )
        with self._auth_lock:
            self._auth_cache[cache_key] = (time.monotonic() + spec.ttl_s, context)
        return (context, 0) if context is not None else (None, 403)

    def _gateway_response(
        self, request: BaseHTTPRequestHandler, kind: str, status: int, message: str
    ) -> None:
        default = "DEFAULT_4XX" if status < 500 else "DEFAULT_5XX"
        response = self.app.gateway_responses.get(kind) or self.app.gateway_responses.get(default) or {}
        template = (response.get("responseTemplates") or {}).get("application/json")
        body = render_gateway_template(template, message) if template else json.dumps({"message": message})
        headers = {"Content-Type": "application/json"}
        for name, value in (response.get("responseParameters") or {}).items():
            literal = static_mapping_value(value)
            if name.startswith("gatewayresponse.header.") and literal is not None:
                headers[name.removeprefix("gatewayresponse.header.")] = literal
        self._send(request, int(response.get("statusCode") or status), headers, body)

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: str | bytes
    ) -> None:
        payload = body.encode() if isinstance(body, str) else body
        request.send_response(status)
        sent = {name.lower() for name in headers}
        for name, value in headers.items():
            if name.lower() not in {"content-length", "connection"}:
                request.send_header(name, str(value))
        if "content-type" not in sent:
            request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(payload)


def authorizer_refusal(status: int) -> tuple[str, int, str]:
    """The gateway response (type, status, message) for a request the authorizer did not allow.

    A failed authorizer (an error, a timeout) is API Gateway's AUTHORIZER_CONFIGURATION_ERROR, a
    500 the client may retry: rendered as ACCESS_DENIED it told a valid key "403" under load.
    """
    if status == 401:
        return "UNAUTHORIZED", 401, "Unauthorized"
    if status == 403:
        return "ACCESS_DENIED", 403, "Forbidden"
    return "AUTHORIZER_CONFIGURATION_ERROR", 500, "Internal server error"


def render_gateway_template(template: str, message: str) -> str:
    """A gateway response template rendered as API Gateway renders it: `$context.error.messageString`
    is the message as a JSON string, quotes included (so a template writes it unquoted), and
    `$context.error.message` the bare text. The same template gives the same bytes as on AWS."""
    return template.replace("$context.error.messageString", json.dumps(message)).replace(
        "$context.error.message", message
    )


def _resource_matches(resource: Any, method_arn: str) -> bool:
    resources = resource if isinstance(resource, list) else [resource]
    for pattern in resources:
        regex = "^" + re.escape(str(pattern)).replace(r"\*", ".*") + "$"
        if re.match(regex, method_arn):
            return True
    return False
