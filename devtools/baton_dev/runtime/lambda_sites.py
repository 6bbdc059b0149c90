"""The import layout of a Lambda execution environment, rebuilt on this machine.

On Lambda (python3.13) a function imports, in this order: its own folder (/var/task), its layers
(/opt/python) and what the runtime itself ships (boto3, botocore, s3transfer, jmespath, dateutil,
urllib3, six and the Runtime Interface Client, awslambdaric). Nothing else. The local runtime gives
each function process exactly these directories, never the developer's virtualenv:

- the **runtime site**: the runtime's own packages, at the versions the dev venv pins, installed
  once with uv into a cache directory;
- a **layer** either as `sam build` left it (`<content>/python`), or - running from source - the
  layer's folder plus its third-party dependencies installed from its requirements.txt for this
  machine (what `sam build` would put beside it), once per requirements.txt content;
- a built layer is for Lambda's architecture (arm64): its native extensions cannot load on an
  x86_64 laptop, so those distributions alone (same name, same version) are installed for this
  machine into a directory searched just before the layer. Pure-Python code is the artifact's own.

Caches live under $XDG_CACHE_HOME/baton/lambda (default ~/.cache): keyed by content, built into a
temporary directory and renamed, so concurrent `baton dev` runs never see half a site.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("baton.runtime")

# What the python3.13 Lambda runtime provides besides the standard library.
RUNTIME_DISTRIBUTIONS = (
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "python-dateutil",
    "urllib3",
    "six",
    "awslambdaric",
    "simplejson",
    "snapshot-restore-py",
)
# ELF e_machine of the architectures Lambda runs on.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


class SiteError(Exception):
    """A Lambda import directory could not be built."""


def interpreter() -> Path:
    """The Python that runs functions: the dev venv's *base* interpreter (never the venv itself)."""
    base = getattr(sys, "_base_executable", "") or sys.executable
    return Path(base)


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "baton" / "lambda"


def runtime_site() -> Path:
    """The runtime's own packages, pinned to the versions of the dev venv."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME_DISTRIBUTIONS]
    return _installed("runtime", "\n".join(pins) + "\n", require_hashes=False)


def layer_paths(content_dir: Path) -> list[Path]:
    """Import directories of one layer, in Lambda's order."""
    built = content_dir / "python"
    if built.is_dir():
        shim = _host_builds_of_foreign_extensions(built)
        return [*([shim] if shim else []), built]
    requirements = content_dir / "requirements.txt"
    if not requirements.exists():
        return [content_dir]
    text = requirements.read_text()
    return [content_dir, _installed("layer", text, require_hashes="--hash=" in text)]


def _installed(kind: str, requirements: str, *, require_hashes: bool) -> Path:
    python = interpreter()
    key = hashlib.sha256(f"{kind}\n{python}\n{platform.machine()}\n{requirements}".encode()).hexdigest()[:16]
    target = cache_root() / f"{kind}-{key}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=target.parent))
    try:
        reqs = staging / "requirements.txt"
        reqs.write_text(requirements)
        site = staging / "site"
        command = [
            _uv(),
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            # Lambda's runtime ships compiled bytecode; cold starts here should not compile either.
            "--compile-bytecode",
            "--target",
            str(site),
            "--python",
            str(python),
            "-r",
            str(reqs),
            *(["--require-hashes"] if require_hashes else []),
        ]
        logger.info("building the Lambda %s site for this machine (once): %s", kind, target)
        answer = subprocess.run(command, capture_output=True, text=True, check=False)
        if answer.returncode != 0:
            raise SiteError(f"could not install the Lambda {kind} packages: {answer.stderr.strip()[-2000:]}")
        (site / ".complete").touch()
        try:
            site.rename(target)
        except OSError:
            if not (target / ".complete").exists():  # not another run that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise SiteError("uv not found (it installs the Lambda runtime's packages): run `make install`")
    return found


def _host_builds_of_foreign_extensions(site: Path) -> Path | None:
    """Host builds of the distributions in `site` whose native extensions are for another CPU."""
    host = platform.machine().lower().replace("arm64", "aarch64").replace("amd64", "x86_64")
    foreign: list[str] = []
    for dist_info in sorted(site.glob("*.dist-info")):
        record = dist_info / "RECORD"
        if not record.exists():
            continue
        for line in record.read_text().splitlines():
            path = line.split(",", 1)[0]
            if path.endswith(".so") and _elf_machine(site / path) not in (None, host):
                meta = importlib.metadata.PathDistribution(dist_info)
                foreign.append(f"{meta.metadata['Name']}=={meta.version}")
                break
    if not foreign:
        return None
    logger.info("the layer's native extensions are for another CPU: host builds of %s", ", ".join(foreign))
    return _installed("native", "\n".join(foreign) + "\n", require_hashes=False)


def _elf_machine(path: Path) -> str | None:
    try:
        with path.open("rb") as file:
            header = file.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return _ELF_MACHINES.get(int.from_bytes(header[18:20], "little"), "other")


def prepare(template: Path) -> list[Path]:
    """Build every import directory a template's functions need (`make test` does it first, so
    that no `baton dev` start waits for it)."""
    from baton_dev.runtime.template import AppTemplate

    app = AppTemplate.load(template)
    layers = {layer for spec in app.functions.values() for layer in spec.layers}
    return [runtime_site(), *(path for layer in sorted(layers) for path in layer_paths(layer))]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for built in prepare(Path(sys.argv[1] if len(sys.argv) > 1 else "template.yaml")):
        logger.info("ready: %s", built)
