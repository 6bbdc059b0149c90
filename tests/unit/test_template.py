"""template.yaml: valid CloudFormation, and the wiring rules Baton relies on hold for every stage."""

from __future__ import annotations

import ast
import json
import shlex
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cfnlint.api import ManualArgs, lint, lint_file

from baton.settings import Settings
from baton_dev.runtime.conditions import evaluate, parameter_problems, parameter_values, resolve_conditionals
from baton_dev.runtime.template import AppTemplate

if TYPE_CHECKING:
    from conftest import AwsStack

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
FUNCTIONS = {
    "ApiFunction": "api",
    "AuthorizerFunction": "authorizer",
    "IngestFunction": "ingest",
    "ExtractFunction": "extract",
    "InferFunction": "infer",
    "NotifyFunction": "notify",
    "DeliverFunction": "deliver",
    "ToolFunction": "tool",
    "SweeperFunction": "sweeper",
    "DeadLetterFunction": "deadletter",
    "BatchFunction": "batch",
    "ProviderWebhookFunction": "provider_webhook",
}
# The DLQs whose messages are job commands: consumed by the dead-letter function as they arrive.
JOB_STEP_DLQS = {"ExtractDeadLetterQueue", "InferDeadLetterQueue", "ToolDeadLetterQueue"}
CONSUMED_DLQS = JOB_STEP_DLQS | {"BatchDeadLetterQueue"}
LAMBDA_RECURSION_LIMIT = 16  # Lambda stops chains of more than 16 invocations through SQS/SNS


def resources(app: AppTemplate, type_: str) -> dict[str, dict[str, Any]]:
    return {lid: res for lid, res in app.cloudformation["Resources"].items() if res["Type"] == type_}


def properties(app: AppTemplate, logical_id: str) -> dict[str, Any]:
    props: dict[str, Any] = app.cloudformation["Resources"][logical_id]["Properties"]
    return props


def visibility_timeout(app: AppTemplate, queue: str) -> int:
    """A queue's visibility timeout, with a !Ref to a parameter resolved to its default."""
    return int(app.resolve_parameter(properties(app, queue)["VisibilityTimeout"]))


def test_cfn_lint_passes() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1"]))
    assert [str(match) for match in matches] == []


def test_cfn_lint_would_catch_a_misspelled_property() -> None:
    """The check above can fail: the same linter flags a typo in the same template."""
    broken = TEMPLATE.read_text().replace("VisibilityTimeout: !Ref Infer", "VisibilityTimout: !Ref Infer", 1)
    assert broken != TEMPLATE.read_text()
    matches = lint(broken, regions=["us-east-1"])
    assert any(match.rule.id == "E3002" for match in matches)


def test_translation_yields_every_function(app_template: AppTemplate) -> None:
    assert set(app_template.functions) == set(FUNCTIONS)
    for logical_id, name in FUNCTIONS.items():
        spec = app_template.functions[logical_id]
        assert spec.code_dir == REPO / "functions" / name
        assert spec.module_file == REPO / "functions" / name / "app.py"
        tree = ast.parse(spec.module_file.read_text())
        # A handler is a def, or built by baton.stages.sqs_stage_handler and assigned.
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        defined |= {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        assert spec.handler_name in defined, f"{logical_id}: no {spec.handler}"
        props = properties(app_template, logical_id)
        assert props["Runtime"] == "python3.13"
        assert props["Architectures"] == ["arm64"]
        assert props["TracingConfig"] == {"Mode": "Active"}


def test_api_routes_and_authorizer(app_template: AppTemplate) -> None:
    routes = {(route.method, route.path): route for route in app_template.routes}
    # The provider's webhook authenticates by its Standard Webhooks signature, not an API key.
    provider = routes.pop(("POST", "/v1/provider-webhooks/openai"))
    assert (provider.function, provider.authorizer) == ("ProviderWebhookFunction", None)
    jobs_routes = {
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/{job_id}"),
        ("DELETE", "/v1/jobs/{job_id}"),
        ("POST", "/v1/documents"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches"),
        ("GET", "/v1/batches/{batch_id}"),
        ("DELETE", "/v1/batches/{batch_id}"),
        ("GET", "/v1/batches/{batch_id}/deliveries"),
        ("POST", "/v1/batches/{batch_id}/deliveries/{webhook_id}/redeliver"),
        ("GET", "/v1/documents/{document_id}"),
        ("GET", "/v1/jobs/{job_id}/deliveries"),
        ("POST", "/v1/jobs/{job_id}/deliveries/{webhook_id}/redeliver"),
        ("POST", "/v1/webhook-secret/rotate"),
        ("POST", "/v1/jobs/{job_id}/review"),
        ("POST", "/v1/jobs/{job_id}/rerun"),
    }
    # The API's description needs no key; every other route does.
    public = {("GET", "/v1/openapi.json"), ("GET", "/docs")}
    assert set(routes) == jobs_routes | public
    assert {routes[key].function for key in jobs_routes | public} == {"ApiFunction"}
    assert {route.authorizer for key, route in routes.items() if key not in public} == {"ApiKeyAuthorizer"}
    assert {routes[key].authorizer for key in public} == {None}
    authorizer = app_template.authorizers["ApiKeyAuthorizer"]
    assert (authorizer.function, authorizer.kind) == ("AuthorizerFunction", "request")
    assert authorizer.identity_headers == ("Authorization",)
    assert app_template.functions["ApiFunction"].timeout <= 29  # API Gateway's integration timeout
    for response in ("UNAUTHORIZED", "ACCESS_DENIED", "DEFAULT_4XX", "DEFAULT_5XX"):
        template = app_template.gateway_responses[response]["responseTemplates"]["application/json"]
        assert '"error"' in template


def test_every_stage_function_is_fed_by_one_sqs_queue(app_template: AppTemplate) -> None:
    fed = {
        source.function: source.queue
        for source in app_template.sqs_sources
        if source.function != "DeadLetterFunction"
    }
    assert fed == {
        "IngestFunction": "IngestQueue",
        "ExtractFunction": "ExtractQueue",
        "InferFunction": "InferQueue",
        "NotifyFunction": "NotifyQueue",
        "DeliverFunction": "WebhookDeliveryQueue",
        "ToolFunction": "ToolQueue",
        "BatchFunction": "BatchQueue",
    }


def test_every_consumed_queue_redrives_to_a_dead_letter_queue(app_template: AppTemplate) -> None:
    consumers = {source.queue: source.function for source in app_template.sqs_sources}
    stage_queues = {queue for queue, function in consumers.items() if function != "DeadLetterFunction"}
    queues = resources(app_template, "AWS::SQS::Queue")
    dead_letter_queues = set()
    for queue in stage_queues:
        redrive = queues[queue]["Properties"].get("RedrivePolicy")
        assert redrive, f"{queue} has no RedrivePolicy"
        target = redrive["deadLetterTargetArn"]["Fn::GetAtt"]
        assert target[1] == "Arn" and target[0] in queues, f"{queue}: DLQ is not a template queue"
        assert target[0] not in stage_queues, f"{queue}: its DLQ is consumed by a stage"
        assert redrive["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
        dead_letter_queues.add(target[0])
    assert len(dead_letter_queues) == len(stage_queues)  # one DLQ per stage
    # The job steps' DLQs and the batch DLQ are consumed by the dead-letter function (never
    # peeked: issues 8 and 12); the others keep their messages for `baton dlq redrive`.
    assert {q for q, f in consumers.items() if f == "DeadLetterFunction"} == CONSUMED_DLQS
    for dlq in dead_letter_queues:
        assert queues[dlq]["Properties"]["MessageRetentionPeriod"] == 1_209_600
        assert "RedrivePolicy" not in queues[dlq]["Properties"]


def test_dead_letters_are_alarmed_on_arrival_not_on_depth(app_template: AppTemplate) -> None:
    alarms = resources(app_template, "AWS::CloudWatch::Alarm")
    arrivals = [
        a["Properties"] for a in alarms.values() if a["Properties"].get("MetricName") == "DeadLetters"
    ]
    assert len(arrivals) == 1
    assert (arrivals[0]["Namespace"], arrivals[0]["Statistic"]) == ("Baton", "Sum")
    assert arrivals[0]["Dimensions"] == [{"Name": "service", "Value": "baton-deadletter"}]
    service = app_template.functions["DeadLetterFunction"].environment["POWERTOOLS_SERVICE_NAME"]
    assert service == "baton-deadletter"
    # The DLQs that keep their messages: alarmed when they grow (DIFF), never on their depth.
    grown = {}
    for alarm in alarms.values():
        metrics = alarm["Properties"].get("Metrics") or []
        stats = [m["MetricStat"]["Metric"] for m in metrics if "MetricStat" in m]
        expressions = [m["Expression"] for m in metrics if m.get("ReturnData")]
        if stats and stats[0]["Namespace"] == "AWS/SQS":
            grown[stats[0]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]] = expressions
    assert grown == {
        "IngestDeadLetterQueue": ["DIFF(depth)"],
        "NotifyDeadLetterQueue": ["DIFF(depth)"],
        "WebhookDeliveryDeadLetterQueue": ["DIFF(depth)"],
    }
    depth = [
        a
        for a in alarms.values()
        if a["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"
    ]
    assert not depth


def test_every_event_source_reports_batch_item_failures(app_template: AppTemplate) -> None:
    mappings = resources(app_template, "AWS::Lambda::EventSourceMapping")
    # 5 stages + webhook attempts + batch + 3 job-step DLQs + the batch DLQ
    assert len(mappings) == len(app_template.sqs_sources) == 11
    for logical_id, mapping in mappings.items():
        assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"], logical_id
        concurrency = int(
            app_template.resolve_parameter(mapping["Properties"]["ScalingConfig"]["MaximumConcurrency"])
        )
        assert 2 <= concurrency <= 1000, logical_id


@pytest.mark.parametrize(
    "source",
    [
        "IngestQueue",
        "ExtractQueue",
        "InferQueue",
        "ToolQueue",
        "NotifyQueue",
        "BatchQueue",
        *sorted(CONSUMED_DLQS),
    ],
)
def test_visibility_timeout_is_at_least_six_times_the_consumer_timeout(
    app_template: AppTemplate, source: str
) -> None:
    [consumer] = [s.function for s in app_template.sqs_sources if s.queue == source]
    assert visibility_timeout(app_template, source) >= 6 * app_template.functions[consumer].timeout


def test_infer_queue_outlasts_six_infer_timeouts(app_template: AppTemplate) -> None:
    infer_timeout = app_template.functions["InferFunction"].timeout
    assert infer_timeout >= 60  # a model call needs room
    assert visibility_timeout(app_template, "InferQueue") >= 6 * infer_timeout


def test_baton_gives_up_on_retryable_errors_before_the_queue_dead_letters() -> None:
    """Only crashes and timeouts should reach a DLQ: classified failures end the job first."""
    parameters = AppTemplate.load(TEMPLATE).cloudformation["Parameters"]
    assert int(parameters["MaxReceiveCount"]["Default"]) > int(parameters["MaxAttempts"]["Default"])


def test_the_sweeper_runs_on_a_schedule_of_at_most_a_minute(app_template: AppTemplate) -> None:
    [schedule] = app_template.schedules
    assert schedule.function == "SweeperFunction"
    assert schedule.expression == "rate(1 minute)"


def test_max_depth_stays_below_lambda_recursion_detection(app_template: AppTemplate) -> None:
    parameter = app_template.cloudformation["Parameters"]["MaxDepth"]
    assert int(parameter["Default"]) < LAMBDA_RECURSION_LIMIT
    assert int(parameter["MaxValue"]) < LAMBDA_RECURSION_LIMIT
    depth_field = Settings.model_fields["max_depth"]
    assert any(getattr(meta, "le", None) == LAMBDA_RECURSION_LIMIT - 1 for meta in depth_field.metadata)


def test_every_function_has_a_log_group_with_retention(app_template: AppTemplate) -> None:
    groups = resources(app_template, "AWS::Logs::LogGroup")
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    for logical_id in FUNCTIONS:
        # The function logs to its explicit group, so CloudFormation creates the group first: no
        # race with a first invocation in which Lambda would create one itself (no retention).
        log_group = properties(app_template, logical_id)["LoggingConfig"]["LogGroup"]
        assert set(log_group) == {"Ref"} and log_group["Ref"] in groups, logical_id
        name = groups[log_group["Ref"]]["Properties"]["LogGroupName"]
        assert "${AWS::StackName}" in name["Fn::Sub"], logical_id
        assert logical_id not in json.dumps(name), f"{logical_id}: its log group would depend on it"


def test_stateful_resources_survive_stack_deletion_and_replacement(app_template: AppTemplate) -> None:
    for logical_id in ("JobsTable", "IdempotencyTable", "DataBucket"):
        resource = app_template.cloudformation["Resources"][logical_id]
        assert resource.get("DeletionPolicy") == "Retain", logical_id
        assert resource.get("UpdateReplacePolicy") == "Retain", logical_id


def test_traces_capture_no_responses_or_errors(app_template: AppTemplate) -> None:
    """Model output and tenant metadata must not land in X-Ray."""
    for spec in app_template.functions.values():
        assert spec.environment["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false", spec.logical_id
        assert spec.environment["POWERTOOLS_TRACER_CAPTURE_ERROR"] == "false", spec.logical_id


@pytest.mark.parametrize(
    ("overrides", "notified"),
    [
        ({}, None),
        ({"AlarmEmail": "ops@example.com"}, {"Ref": "AlarmTopic"}),
        (
            {"AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:pager"},
            {"Ref": "AlarmTopicArn"},
        ),
    ],
)
def test_dead_letter_alarms_notify_the_alarm_topic(
    app_template: AppTemplate, overrides: dict[str, str], notified: Any
) -> None:
    cfn = app_template.cloudformation
    values = parameter_values(cfn, overrides)
    alarms = resources(app_template, "AWS::CloudWatch::Alarm")
    assert len(alarms) >= 3
    for logical_id, alarm in alarms.items():
        actions = resolve_conditionals(alarm["Properties"], values, cfn["Conditions"]).get("AlarmActions")
        assert actions == (None if notified is None else [notified]), logical_id
    topic_created = evaluate(
        {"Condition": cfn["Resources"]["AlarmTopic"]["Condition"]}, values, cfn["Conditions"]
    )
    assert topic_created == ("AlarmEmail" in overrides)


# -- what CloudFormation refuses before creating anything ------------------------------------------
def test_template_defaults_pass_every_parameter_check_and_rule(app_template: AppTemplate) -> None:
    assert parameter_problems(app_template.cloudformation, {}) == []


@pytest.mark.parametrize("queue", ["IngestQueue", "ExtractQueue", "ToolQueue", "NotifyQueue"])
def test_a_visibility_timeout_below_six_function_timeouts_is_refused(
    app_template: AppTemplate, queue: str
) -> None:
    [consumer] = [s.function for s in app_template.sqs_sources if s.queue == queue]
    parameter = properties(app_template, queue)["VisibilityTimeout"]["Ref"]
    floor = 6 * app_template.functions[consumer].timeout
    cfn = app_template.cloudformation
    assert parameter_problems(cfn, {parameter: str(floor)}) == []
    assert parameter_problems(cfn, {parameter: str(floor - 1)}) != []


def test_rules_tie_the_infer_visibility_timeout_to_six_infer_timeouts(app_template: AppTemplate) -> None:
    cfn = app_template.cloudformation
    timeouts = cfn["Parameters"]["InferFunctionTimeout"]["AllowedValues"]
    visibilities = cfn["Parameters"]["InferVisibilityTimeout"]["AllowedValues"]
    for timeout in timeouts:
        for visibility in visibilities:
            problems = parameter_problems(
                cfn, {"InferFunctionTimeout": str(timeout), "InferVisibilityTimeout": str(visibility)}
            )
            assert (problems == []) == (int(visibility) >= 6 * int(timeout)), (timeout, visibility, problems)
    assert parameter_problems(cfn, {"InferFunctionTimeout": "20"}) != []  # a local drill value


@pytest.mark.parametrize(
    ("parameter", "refused", "accepted"),
    [
        (
            "LlmApiKeySecretArn",
            "baton/openai",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:baton/openai-AbC123",
        ),
        (
            "LlmApiKeySecretKmsKeyArn",
            "alias/mine",
            "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        ),
        ("LlmEndpoint", "api.openai.com/v1", "https://api.openai.com/v1"),
        ("AlarmEmail", "ops at example.com", "ops@example.com"),
        ("AlarmTopicArn", "pager", "arn:aws:sns:eu-west-1:123456789012:pager"),
    ],
)
def test_arns_and_urls_are_validated(
    app_template: AppTemplate, parameter: str, refused: str, accepted: str
) -> None:
    cfn = app_template.cloudformation
    assert parameter_problems(cfn, {parameter: refused}) != []
    assert parameter_problems(cfn, {parameter: accepted}) == []
    assert parameter_problems(cfn, {parameter: ""}) == []  # empty: not used (the local stack)


def samconfig_overrides(profile: str) -> dict[str, str]:
    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    text = config[profile]["deploy"]["parameters"]["parameter_overrides"]
    return dict(item.split("=", 1) for item in shlex.split(text))


def test_the_prod_profile_cannot_deploy_until_its_placeholders_are_replaced(
    app_template: AppTemplate,
) -> None:
    """`sam deploy --config-env prod` as shipped: CloudFormation refuses it (AllowedPattern) before
    creating anything, naming each value the user must supply."""
    cfn = app_template.cloudformation
    overrides = samconfig_overrides("prod")
    placeholders = {name for name, value in overrides.items() if value.startswith("<")}
    assert {"ModelName", "LlmApiKeySecretArn", "AlarmEmail"} <= placeholders
    problems = parameter_problems(cfn, overrides)
    assert {problem.split(":")[0] for problem in problems} == placeholders
    supplied = overrides | {
        "ModelName": "gpt-4.1-mini",
        "LlmEndpoint": "https://api.openai.com/v1",
        "LlmApiKeySecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:baton/openai-AbC123",
        "AlarmEmail": "ops@example.com",
    }
    assert parameter_problems(cfn, supplied) == []
    assert overrides["Stage"] == "prod"


def test_function_environment_maps_to_settings(aws: AwsStack) -> None:
    """Every variable the template gives a function is a Settings field (Powertools' own aside),
    and the values the stack resolves parse."""
    aliases = {field.alias for field in Settings.model_fields.values()}
    app = aws.app
    for logical_id in app.functions:
        environment = app.function_environment(logical_id, aws.stack.resolved)
        baton_variables = {k: v for k, v in environment.items() if not k.startswith("POWERTOOLS_")}
        assert set(baton_variables) <= aliases, f"{logical_id}: {set(baton_variables) - aliases}"
        settings = Settings(**baton_variables)
        assert settings.jobs_table == aws.jobs_table
        assert settings.idempotency_table == aws.idempotency_table
        assert settings.bucket == aws.bucket
        assert settings.event_bus == aws.event_bus == "baton-dev"
        assert settings.extract_queue_url == aws.queue_url("ExtractQueue")
        assert settings.infer_queue_url == aws.queue_url("InferQueue")
        assert settings.max_depth == 8
        assert settings.retention_days == 7
        assert settings.model == "baton-local"


def test_queue_age_and_error_rate_alarms_and_a_dashboard(app_template: AppTemplate) -> None:
    alarms = resources(app_template, "AWS::CloudWatch::Alarm")
    aged = {
        alarm["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for alarm in alarms.values()
        if alarm["Properties"].get("MetricName") == "ApproximateAgeOfOldestMessage"
    }
    assert aged == {"ExtractQueue", "InferQueue", "ToolQueue", "NotifyQueue"}
    rated = set()
    for alarm in alarms.values():
        metrics = alarm["Properties"].get("Metrics") or []
        if any("errors / invocations" in metric.get("Expression", "") for metric in metrics):
            rated.add(metrics[0]["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"])
    assert {"InferFunction", "ApiFunction"} <= rated
    [dashboard] = resources(app_template, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    for metric in (
        "EndToEndLatency",
        "QueueWait",
        "StageDuration",
        "ModelLatency",
        "JobTokens",
        "JobModelCostUsd",
        "JobAwsCostUsd",
        "WebhookDeliveries",
    ):
        assert metric in body, metric


def test_cors_is_off_by_default_and_one_parameter_turns_it_on(app_template: AppTemplate) -> None:
    preflight = {(mock.method, mock.path): mock for mock in app_template.mock_routes}
    # SAM's preflight routes exist either way (answered by API Gateway, no key), but without the
    # parameter they name no origin, so browsers refuse.
    assert "Access-Control-Allow-Origin" not in preflight[("OPTIONS", "/v1/jobs")].headers
    assert not app_template.gateway_responses["UNAUTHORIZED"].get("responseParameters")
    origin = "https://app.example.com"
    allowed = AppTemplate.load(TEMPLATE, {"CorsAllowOrigin": origin})
    jobs = {(mock.method, mock.path): mock for mock in allowed.mock_routes}[("OPTIONS", "/v1/jobs")]
    assert jobs.headers["Access-Control-Allow-Origin"] == origin
    assert {"Idempotency-Key", "Prefer", "Authorization"} <= set(
        jobs.headers["Access-Control-Allow-Headers"].split(",")
    )
    for kind in ("UNAUTHORIZED", "ACCESS_DENIED", "DEFAULT_4XX", "DEFAULT_5XX"):
        headers = allowed.gateway_responses[kind]["responseParameters"]
        assert headers["gatewayresponse.header.Access-Control-Allow-Origin"] == f"'{origin}'"
    api_environment = allowed.functions["ApiFunction"].environment
    assert allowed.resolve_static(api_environment["BATON_CORS_ALLOW_ORIGIN"]) == origin
