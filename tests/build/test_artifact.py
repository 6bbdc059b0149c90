"""What `sam build` produced is what Lambda (python3.13, arm64) can run, and nothing more.

These read .aws-sam/build (made by `make build`, which `make test` runs first): the layer's native
code is aarch64, the domain package sits where Lambda looks (`python/baton`), no developer package
or second copy of the runtime's boto3 rides along, the layer's dependency closure is complete, and
each function's code directory holds its handler.
"""

from __future__ import annotations

import ast
import email.parser
import io
import re
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from samtranslator.yaml_helper import yaml_parse

REPO = Path(__file__).resolve().parents[2]
EM_AARCH64 = 183  # ELF e_machine for ARM 64-bit
# What Lambda's python3.13 runtime brings: boto3 and its dependency closure. Must match the
# Makefile's RUNTIME_PROVIDED (left out of the layer lock), checked below.
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}
RUNTIME_PROVIDED_MODULES = {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3"}
DEVELOPER_PACKAGES = {
    "baton_dev",
    "moto",
    "typer",
    "rich",
    "pytest",
    "_pytest",
    "samtranslator",
    "cfnlint",
    "mypy",
    "ruff",
    "boto3_stubs",
    "mypy_boto3_sqs",
}
# Lambda's quotas: a layer zip uploaded directly <= 50 MB; function + layers unzipped <= 250 MB.
MAX_ZIPPED_BYTES = 50 * 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
# The target the markers of Requires-Dist are evaluated for.
LAMBDA_ENVIRONMENT: dict[str, str] = {
    **{key: str(value) for key, value in default_environment().items()},
    "python_version": "3.13",
    "python_full_version": "3.13.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "aarch64",
    "os_name": "posix",
}


def built_template(build_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml_parse((build_dir / "template.yaml").read_text())
    return data


def layer_python(build_dir: Path) -> Path:
    layers = [
        res
        for res in built_template(build_dir)["Resources"].values()
        if res["Type"] == "AWS::Serverless::LayerVersion"
    ]
    assert len(layers) == 1
    python = build_dir / layers[0]["Properties"]["ContentUri"] / "python"
    assert python.is_dir(), f"{python}: Lambda adds a layer's python/ to sys.path; it is missing"
    return python


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert header[4] == 2, f"{path} is not 64-bit ELF"
    byte_order = "<" if header[5] == 1 else ">"
    machine: int = struct.unpack(byte_order + "H", header[18:20])[0]
    return machine


def installed_distributions(python: Path) -> dict[str, email.message.Message]:
    return {
        canonicalize_name(meta["Name"]): meta
        for meta in (
            email.parser.Parser().parsestr(path.read_text()) for path in python.glob("*.dist-info/METADATA")
        )
    }


def requested_extras() -> dict[str, set[str]]:
    extras: dict[str, set[str]] = {}
    for line in (REPO / "layers" / "baton" / "requirements.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            extras[canonicalize_name(requirement.name)] = set(requirement.extras)
    return extras


def third_party_imports(paths: list[Path]) -> set[str]:
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "__future__"}


def test_every_native_extension_is_aarch64(build_dir: Path) -> None:
    shared_objects = sorted(build_dir.rglob("*.so")) + sorted(build_dir.rglob("*.so.*"))
    # pydantic_core, jiter and wrapt are compiled: none found means the inspection looks at nothing.
    assert any("pydantic_core" in str(path) for path in shared_objects)
    wrong = {str(path.relative_to(build_dir)): elf_machine(path) for path in shared_objects}
    assert {path: machine for path, machine in wrong.items() if machine != EM_AARCH64} == {}


def test_elf_check_rejects_an_x86_64_extension(tmp_path: Path) -> None:
    """The check above can fail: the header of an x86-64 object reads as machine 62, not 183."""
    fake = tmp_path / "x.so"
    fake.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(11) + struct.pack("<H", 62) + bytes(40))
    assert elf_machine(fake) == 62


def test_domain_package_sits_at_python_baton(build_dir: Path) -> None:
    python = layer_python(build_dir)
    source = REPO / "layers" / "baton" / "baton"
    shipped = {path.relative_to(python / "baton") for path in (python / "baton").rglob("*.py")}
    assert shipped == {path.relative_to(source) for path in source.rglob("*.py")}
    assert not list((python / "baton").rglob("__pycache__"))


def test_no_developer_package_and_no_second_boto3_in_the_layer(build_dir: Path) -> None:
    python = layer_python(build_dir)
    top_level = {path.name.removesuffix(".py") for path in python.iterdir()}
    assert top_level & (DEVELOPER_PACKAGES | RUNTIME_PROVIDED_MODULES) == set()
    distributions = set(installed_distributions(python))
    assert distributions & {canonicalize_name(name) for name in RUNTIME_PROVIDED} == set()
    assert distributions & {canonicalize_name(name) for name in DEVELOPER_PACKAGES} == set()


def test_layer_dependency_closure_is_complete(build_dir: Path) -> None:
    """`pip --no-deps` installs exactly the lock: every dependency of every installed distribution
    (for python3.13 on aarch64 Linux, with the extras requirements.in asks for) is in the layer or
    comes with the runtime. A lock that leaves one out fails here, not as an ImportError on AWS."""
    distributions = installed_distributions(layer_python(build_dir))
    extras = requested_extras()
    missing: dict[str, list[str]] = {}
    for name, meta in distributions.items():
        for line in meta.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            marker = requirement.marker
            wanted = marker is None or any(
                marker.evaluate({**LAMBDA_ENVIRONMENT, "extra": extra})
                for extra in {"", *extras.get(name, set())}
            )
            dependency = canonicalize_name(requirement.name)
            if wanted and dependency not in distributions and requirement.name not in RUNTIME_PROVIDED:
                missing.setdefault(name, []).append(str(requirement))
    assert missing == {}
    assert set(extras) <= set(distributions)


def test_runtime_provided_set_matches_the_layer_lock_recipe() -> None:
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^RUNTIME_PROVIDED := (.+)$", makefile, re.MULTILINE)
    assert match is not None
    assert set(match.group(1).split()) == RUNTIME_PROVIDED
    lock = (REPO / "layers" / "baton" / "requirements.txt").read_text()
    pinned = {line.split("==")[0] for line in lock.splitlines() if re.match(r"^[a-z0-9]", line)}
    assert pinned & RUNTIME_PROVIDED == set()


def test_every_import_of_lambda_code_resolves_in_the_layer_or_runtime(build_dir: Path) -> None:
    python = layer_python(build_dir)
    code = list((python / "baton").rglob("*.py")) + list(build_dir.glob("*Function/*.py"))
    unresolved = {
        name
        for name in third_party_imports(code) - RUNTIME_PROVIDED_MODULES - {"app"}
        if not (python / name).is_dir() and not (python / f"{name}.py").is_file()
    }
    assert unresolved == set()


def test_each_function_directory_holds_its_handler(build_dir: Path) -> None:
    functions = {
        logical_id: res["Properties"]
        for logical_id, res in built_template(build_dir)["Resources"].items()
        if res["Type"] == "AWS::Serverless::Function"
    }
    assert len(functions) >= 8
    source = yaml_parse((REPO / "template.yaml").read_text())["Resources"]
    for logical_id, props in functions.items():
        module, _, handler = props["Handler"].rpartition(".")
        code = build_dir / props["CodeUri"] / f"{module}.py"
        original = REPO / source[logical_id]["Properties"]["CodeUri"] / f"{module}.py"
        assert code.read_text() == original.read_text(), logical_id
        assert f"def {handler}(" in code.read_text() or f"{handler} =" in code.read_text(), logical_id
        # Nothing but the handler (and its empty requirements.txt): the code lives in the layer.
        assert {path.name for path in (build_dir / props["CodeUri"]).iterdir()} <= {
            f"{module}.py",
            "requirements.txt",
        }


def test_layer_fits_lambda_quotas_and_report_its_zipped_size(
    build_dir: Path, build_summary: list[str]
) -> None:
    python = layer_python(build_dir)
    buffer = io.BytesIO()
    unzipped = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(python.rglob("*")):
            if path.is_file():
                unzipped += path.stat().st_size
                archive.write(path, path.relative_to(python.parent))
    zipped = buffer.getbuffer().nbytes
    build_summary.append(
        f"Lambda layer: {zipped / 2**20:.1f} MiB zipped, {unzipped / 2**20:.1f} MiB unzipped"
        f" ({python.parent.relative_to(REPO)})"
    )
    assert zipped < MAX_ZIPPED_BYTES
    assert unzipped < MAX_UNZIPPED_BYTES


@pytest.mark.parametrize("name", ["pytest", "boto3"])
def test_the_package_checks_see_a_planted_package(tmp_path: Path, name: str) -> None:
    """The absence checks can fail: a dist-info planted in a copy of the layer is found."""
    (tmp_path / "python" / f"{name}-1.0.dist-info").mkdir(parents=True)
    (tmp_path / "python" / f"{name}-1.0.dist-info" / "METADATA").write_text(f"Name: {name}\nVersion: 1.0\n")
    assert canonicalize_name(name) in installed_distributions(tmp_path / "python")
