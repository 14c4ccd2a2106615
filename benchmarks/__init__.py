"""netconn's benchmark harness: every stack against its raw library, side by side.

Run ``python -m benchmarks --help``. Scenarios live in one table
(:data:`benchmarks.scenarios.STACKS`); workloads are written once
(:mod:`benchmarks.workloads`) against a small interface each library adapts
to (:mod:`benchmarks.api`).
"""

__all__: list[str] = []
