"""PostgreSQL access: the only place with SQL. Small typed query functions per aggregate."""

from typing import Any, TypeAlias

from psycopg import AsyncConnection

Conn: TypeAlias = AsyncConnection[Any]
