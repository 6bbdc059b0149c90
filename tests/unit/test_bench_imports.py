"""`make bench` is not in `make test`: at least every scenario must import (a moved module broke it once)."""

import importlib
import pkgutil

import bench


def test_every_bench_scenario_imports() -> None:
    # function_hook runs inside a function's process (the exec wrapper), configured by its environment.
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name != "function_hook")
    assert "cost" in names and "throughput" in names
    for name in names:
        importlib.import_module(f"bench.{name}")
    main = importlib.import_module("bench.__main__")
    assert set(main.ORDER) <= set(names)
