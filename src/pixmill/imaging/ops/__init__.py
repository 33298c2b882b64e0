"""The operation catalogue: a registry and one module per family of operations.

Adding an operation touches one family module: the API, the CLI, the web page and the tests
read the registry.
"""

from __future__ import annotations

import importlib

from .registry import Operation, Param, catalogue, get_operation, operation, operations

__all__ = ["Operation", "Param", "catalogue", "get_operation", "operation", "operations"]

FAMILIES = ("classic", "geometry", "tone", "filters", "edges", "morphology", "effects")

for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")
