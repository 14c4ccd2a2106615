"""Benchmarks: netconn against the raw libraries it wraps."""
