"""Narrowing a both_backends module's test to one store backend (see the conftest's database_url)."""

from __future__ import annotations

import pytest

__all__ = ["postgres_only", "sqlite_only"]

# A test of SQLite itself (its file, WAL, migrations) or of PostgreSQL itself.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
postgres_only = pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                                        indirect=True)
