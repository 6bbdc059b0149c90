"""5. Cold start: each function's module imported in a fresh interpreter (what Lambda's INIT phase
runs, billed since 2025-08-01 for zip functions), the AWS clients its first invocation creates, and
the size of each deployment package and of the layer.

Each function is imported as module `app` in a new `python` process with Lambda-like environment
variables (tracing on, as deployed); the median of a few runs is reported, plus one run under
`python -X importtime` to say which packages the time goes to (self time folded by top-level
package). The layer's size is Baton's package plus the closure of its runtime dependencies
(pyproject's dependencies minus the developer tools) as installed in .venv.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
import tomllib
import zlib
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.report import Result, scenario_main

REPO = Path(__file__).resolve().parents[1]
DEV_TOOLS = {"moto", "aws-sam-translator", "cfn-lint", "typer", "rich"}
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer", "jmespath", "urllib3", "python-dateutil", "six"}
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")

_PROBE = """
import importlib.util, json, sys, time
started = time.perf_counter()
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
imported = time.perf_counter()
import baton.aws
for service in ("dynamodb", "sqs", "events", "s3"):
    baton.aws.client(service)
clients = time.perf_counter()
print(json.dumps({"import_ms": (imported - started) * 1000, "clients_ms": (clients - imported) * 1000,
                  "modules": len(sys.modules)}))
"""


def _environment(name: str, code_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "POWERTOOLS_", "AWS_ENDPOINT"))}
    env.update(
        {
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "cold",
            "AWS_SECRET_ACCESS_KEY": "cold",
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
            "LAMBDA_TASK_ROOT": str(code_dir),
            "POWERTOOLS_SERVICE_NAME": f"baton-{name}",
            "POWERTOOLS_METRICS_NAMESPACE": "Baton",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            "JOBS_TABLE": "baton-jobs",
            "IDEMPOTENCY_TABLE": "baton-idempotency",
            "BUCKET_NAME": "baton-data",
            "EVENT_BUS_NAME": "baton-dev",
            "PYTHONDONTWRITEBYTECODE": "",
        }
    )
    return env


def probe(app: Path, *, importtime: bool = False) -> tuple[dict[str, Any], str]:
    args = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", _PROBE, str(app)]
    answer = subprocess.run(
        args,
        capture_output=True,
        text=True,
        cwd=app.parent,
        env=_environment(app.parent.name, app.parent),
        check=False,
        timeout=120,
    )
    if answer.returncode != 0:
        raise RuntimeError(f"importing {app} failed:\n{answer.stderr[-2000:]}")
    return json.loads(answer.stdout.strip().splitlines()[-1]), answer.stderr


def import_costs(stderr: str) -> list[tuple[str, float]]:
    """Self import time (ms) by top-level package, from `python -X importtime` output, largest first."""
    costs: Counter[str] = Counter()
    for line in stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            costs[match.group(4).split(".")[0]] += int(match.group(1))  # microseconds
    return [(package, micros / 1000) for package, micros in costs.most_common()]


def interpreter_ms(runs: int) -> float:
    """Wall time of `python -c pass`: what every fresh interpreter costs before any import."""
    return statistics.median(
        _wall(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)) for _ in range(runs)
    )


def _wall(action: Any) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


# -- package sizes ----------------------------------------------------------------------------------
def _closure(requirements: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = [(Requirement(text), set(Requirement(text).extras)) for text in requirements]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            child = Requirement(text)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                todo.append((child, set(child.extras)))
    return {key.split("[", 1)[0] for key in seen}


def _dist_size(name: str) -> tuple[int, int, int]:
    """(files, bytes, deflated bytes) of an installed distribution, without __pycache__."""
    dist = metadata.distribution(name)
    files = bytes_ = deflated = 0
    for entry in dist.files or []:
        if "__pycache__" in entry.parts:
            continue
        path = Path(str(entry.locate()))
        if not path.is_file():
            continue
        data = path.read_bytes()
        files += 1
        bytes_ += len(data)
        deflated += len(zlib.compress(data, 6)) + 80
    return files, bytes_, deflated


def _tree_size(root: Path) -> tuple[int, int, int]:
    files = bytes_ = deflated = 0
    for path in root.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            data = path.read_bytes()
            files += 1
            bytes_ += len(data)
            deflated += len(zlib.compress(data, 6)) + 80
    return files, bytes_, deflated


def layer_sizes() -> dict[str, Any]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = [
        text for text in project["dependencies"] if canonicalize_name(Requirement(text).name) not in DEV_TOOLS
    ]
    by_dist: dict[str, tuple[int, int, int]] = {}
    for name in sorted(_closure(runtime)):
        try:
            by_dist[name] = _dist_size(name)
        except metadata.PackageNotFoundError:
            continue
    baton = _tree_size(REPO / "layers" / "baton" / "baton")
    total = [sum(sizes[i] for sizes in by_dist.values()) + baton[i] for i in range(3)]
    provided = [
        sum(sizes[i] for name, sizes in by_dist.items() if name in RUNTIME_PROVIDED) for i in range(3)
    ]
    largest = sorted(by_dist.items(), key=lambda item: -item[1][1])[:5]
    return {
        "requirements": runtime,
        "distributions": {
            name: {"files": s[0], "bytes": s[1], "zipped": s[2]} for name, s in by_dist.items()
        },
        "baton_bytes": baton[1],
        "total_bytes": total[1],
        "total_zipped": total[2],
        "runtime_provided_bytes": provided[1],
        "runtime_provided_zipped": provided[2],
        "largest": [(name, sizes[1]) for name, sizes in largest],
        "requirements_file": (REPO / "layers" / "baton" / "requirements.txt").exists(),
    }


def run(*, quick: bool = False, stack: Any = None) -> Result:
    del stack
    runs = 1 if quick else 2
    result = Result("cold_start", "5. Cold start and package sizes")
    baseline = interpreter_ms(runs + 1)
    functions: dict[str, Any] = {}
    for app in sorted((REPO / "functions").glob("*/app.py")):
        samples = [probe(app)[0] for _ in range(runs)]
        measured, stderr = probe(app, importtime=True)
        costs = import_costs(stderr)
        functions[app.parent.name] = {
            "import_ms": statistics.median(sample["import_ms"] for sample in samples),
            "clients_ms": statistics.median(sample["clients_ms"] for sample in samples),
            "modules": measured["modules"],
            "top_packages_ms": costs[:6],
            "package_bytes": _tree_size(app.parent)[1],
        }
    sizes = layer_sizes()
    result.add("interpreter start (python -c pass)", f"{baseline:.0f} ms")
    for name, data in sorted(functions.items(), key=lambda item: -item[1]["import_ms"]):
        top = ", ".join(f"{package} {ms:.0f}" for package, ms in data["top_packages_ms"][:3])
        result.add(
            f"{name}: import (INIT) / first AWS clients",
            f"{data['import_ms']:.0f} / {data['clients_ms']:.0f} ms (top: {top} ms)",
        )
    package_sizes = {data["package_bytes"] for data in functions.values()}
    result.add(
        "function packages (app.py + requirements.txt)",
        " - ".join(f"{size / 1024:.1f} KB" for size in sorted(package_sizes)),
    )
    mb = 1024 * 1024
    result.add(
        "layer: unzipped / zipped (limit 250 MB unzipped)",
        f"{sizes['total_bytes'] / mb:.1f} / {sizes['total_zipped'] / mb:.1f} MB "
        f"(Baton's own code {sizes['baton_bytes'] / 1024:.0f} KB)",
    )
    result.add(
        "layer: of which boto3/botocore & co (already in the runtime)",
        f"{sizes['runtime_provided_bytes'] / mb:.1f} / {sizes['runtime_provided_zipped'] / mb:.1f} MB",
    )
    result.add("layer: largest", ", ".join(f"{name} {size / mb:.1f} MB" for name, size in sizes["largest"]))
    if not sizes["requirements_file"]:
        result.notes.append(
            "layers/baton/requirements.txt does not exist: `sam build` would ship the layer without its "
            "dependencies; sizes here are what it should contain"
        )
    result.data = {"interpreter_ms": baseline, "functions": functions, "layer": sizes}
    return result


def main() -> int:
    return scenario_main(run, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
