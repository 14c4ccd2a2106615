"""The public surface: every exported name exists, every module says what it exports."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import netconn


def public_modules() -> list[str]:
    names = ["netconn"]
    for info in pkgutil.walk_packages(netconn.__path__, "netconn."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def isort_key(name: str) -> tuple[int, str]:
    """Constants first, then classes, then the rest (ruff's isort-style order)."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_all_is_sorted_and_unique() -> None:
    assert netconn.__all__ == sorted(set(netconn.__all__), key=isort_key)


def test_every_exported_name_exists() -> None:
    for name in netconn.__all__:
        assert hasattr(netconn, name), name


@pytest.mark.parametrize("name", public_modules())
def test_module_declares_all(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__"
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names missing {item!r}"
        assert not item.startswith("_"), f"{name}.__all__ exports private {item!r}"


def test_no_private_names_leak() -> None:
    """Only the curated names, submodules and dunders are public in the package."""
    allowed = set(netconn.__all__)
    for name, value in vars(netconn).items():
        if name.startswith("_") or name in allowed:
            continue
        assert isinstance(value, types.ModuleType), f"netconn.{name} is public but not exported"


def test_public_classes_live_in_public_modules() -> None:
    for name in netconn.__all__:
        value = getattr(netconn, name)
        module = getattr(value, "__module__", None)
        if isinstance(value, type) and module is not None and module.startswith("netconn"):
            assert name in importlib.import_module(module).__all__, f"{module} hides {name}"


def test_version() -> None:
    assert isinstance(netconn.__version__, str) and netconn.__version__
