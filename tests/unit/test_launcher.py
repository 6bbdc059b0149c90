"""The one launcher of the local stack: what a launched `baton dev` is told, and that nobody else
builds the runtime's options (the bench once missed a local parameter that way)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from baton_dev.launcher import LOCAL_PARAMETERS, REPO, StackConfig
from baton_dev.simulator import SimulatorConfig


def _overrides(argv: list[str]) -> dict[str, str]:
    pairs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--parameter-overrides"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_every_launch_carries_the_local_parameters_and_an_explicit_override_wins(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, parameters={"MaxAttempts": "3"})
    assert _overrides(config.command(4321)) == {**LOCAL_PARAMETERS, "MaxAttempts": "3"}
    assert config.runtime_options().parameters == {**LOCAL_PARAMETERS, "MaxAttempts": "3"}
    locked = StackConfig(state_dir=tmp_path, parameters={"WebhookAllowPrivateNetworks": "false"})
    assert _overrides(locked.command(1))["WebhookAllowPrivateNetworks"] == "false"
    assert locked.runtime_options().parameters["WebhookAllowPrivateNetworks"] == "false"


def test_the_command_is_baton_dev_with_every_option(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, stack_name="s1", schedule_every_s=2.0)
    argv = config.command(4321)
    assert argv[1:4] == ["-m", "baton_dev.cli", "dev"]
    joined = " ".join(argv)
    assert "--port 4321" in joined
    assert f"--state-dir {tmp_path}" in joined
    assert "--stack-name s1" in joined
    assert "--schedule-every 2 " in joined


def test_a_built_artifact_folder_runs_its_own_template(tmp_path: Path) -> None:
    (tmp_path / "template.yaml").write_text("Resources: {}\n")
    config = StackConfig(template=tmp_path, state_dir=tmp_path / "state")
    assert config.template_file() == tmp_path / "template.yaml"
    assert config.runtime_options().template == tmp_path / "template.yaml"
    assert StackConfig().template_file() == REPO / "template.yaml"


def test_a_value_with_white_space_is_refused_not_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CorsAllowOrigin"):
        StackConfig(state_dir=tmp_path, parameters={"CorsAllowOrigin": "a b"}).command(1)


def test_the_callers_environment_cannot_configure_a_launched_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "OPENAI_BASE_URL": "http://elsewhere/v1",
        "AWS_ENDPOINT_URL": "http://other-moto",
        "BATON_MODEL": "gpt-x",
        "BATON_SIM_LATENCY_MS": "999",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "BATON_STATE": "/home/dev/.local/state/baton/dev.json",
    }.items():
        monkeypatch.setenv(name, value)
    env = StackConfig(state_dir=tmp_path).environment()
    assert not {"OPENAI_BASE_URL", "AWS_ENDPOINT_URL", "BATON_MODEL", "BATON_SIM_LATENCY_MS"} & set(env)
    assert "POWERTOOLS_METRICS_DISABLED" not in env
    # Its record is its own: the developer's `baton dev` record is never replaced.
    assert env["BATON_STATE"] == str(tmp_path / "dev.json")
    assert "PATH" in env
    # `baton demo` runs in the developer's environment on purpose (a real model, say).
    inherited = StackConfig(state_dir=tmp_path, inherit_environment=True).environment()
    assert inherited["OPENAI_BASE_URL"] == "http://elsewhere/v1"
    assert inherited["BATON_STATE"] == str(tmp_path / "dev.json")


def test_simulator_settings_and_external_endpoints_reach_the_launched_stack(tmp_path: Path) -> None:
    simulator = SimulatorConfig(latency_ms=20, rate_429=0.05, seed=7, models=("a", "b"))
    config = StackConfig(
        state_dir=tmp_path,
        simulator=simulator,
        aws_endpoint_url="http://127.0.0.1:5000",
        model_url="http://127.0.0.1:6000/v1",
    )
    env = config.environment()
    assert SimulatorConfig.from_env(env) == simulator
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5000"
    assert env["AWS_ACCESS_KEY_ID"] == "local"
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:6000/v1"
    assert config.runtime_options().simulator == simulator


def test_only_the_launcher_builds_the_runtimes_options() -> None:
    """Every stack starts through baton_dev.launcher; the one exception runs a template of its own
    to test the runtime itself."""
    allowed = {
        Path("devtools/baton_dev/launcher.py"),
        Path("tests/integration/test_runtime_parameters_and_iam.py"),
    }
    builders = {
        path.relative_to(REPO)
        for folder in ("devtools", "tests", "bench")
        for path in (REPO / folder).rglob("*.py")
        if re.search(r"\bRuntimeOptions\(", path.read_text()) and path.name != "test_launcher.py"
    }
    assert builders == allowed


def test_values_sam_deploy_would_refuse_stop_the_local_stack_unless_a_drill_allows_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Local means deployed: InferFunctionTimeout=45 is not one of the template's AllowedValues, so
    CloudFormation refuses it and the local stack refuses it too, naming it (before provisioning
    anything). A fault drill that wants seconds-long timeouts asks for them and gets a warning."""
    from baton_dev.runtime.local import LocalRuntime
    from baton_dev.runtime.template import TemplateError

    refused = StackConfig(state_dir=tmp_path, parameters={"InferFunctionTimeout": "45"})
    with pytest.raises(TemplateError, match=r"InferFunctionTimeout: '45' is not one of"):
        LocalRuntime(refused.runtime_options(port=1))._load_template()  # what start() runs first
    drill = StackConfig(
        state_dir=tmp_path,
        parameters={"InferFunctionTimeout": "20", "InferVisibilityTimeout": "25"},
        allow_undeployable_parameters=True,
    )
    assert "--allow-undeployable-parameters" in drill.command(1)
    assert "--allow-undeployable-parameters" not in refused.command(1)
    with caplog.at_level("WARNING"):
        app = LocalRuntime(drill.runtime_options(port=1))._load_template()
    assert app.functions["InferFunction"].timeout == 20
    assert "would refuse" in caplog.text and "InferFunctionTimeout" in caplog.text
    # The deployable defaults start without a word.
    caplog.clear()
    LocalRuntime(StackConfig(state_dir=tmp_path).runtime_options(port=1))._load_template()
    assert "would refuse" not in caplog.text


def test_the_cli_takes_the_drills_switch() -> None:
    from typer.testing import CliRunner

    from baton_dev.cli import app

    answer = CliRunner().invoke(app, ["dev", "--help"], env={"COLUMNS": "200"})
    assert answer.exit_code == 0 and "--allow-undeployable-parameters" in answer.output
