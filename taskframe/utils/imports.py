"""Importing by dotted name, as Celery's settings and ``-A`` accept them."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["symbol_by_name"]


def symbol_by_name(name: str) -> Any:
    """``'pkg.module:attr'`` or ``'pkg.module.attr'`` -> the object."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
    else:
        module_name, _, attribute = name.rpartition(".")
    if not module_name:
        return importlib.import_module(attribute)
    module = importlib.import_module(module_name)
    obj = module
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj
