"""PostgreSQL access: the only place with SQL. Small typed query functions per aggregate.

Lock order, the same in every transaction of the API and the workers, so that two of
them never wait for each other in a circle:
  accounts -> blocks -> assignments -> pbxes -> apply_queue -> apply_state
Rows we lock to change (never their keys) are locked FOR NO KEY UPDATE, which a foreign
key check of a child row (FOR KEY SHARE, taken by every insert into apply_queue,
apply_state, config_revisions, ...) does not wait for. Several PBXs are locked or queued
in the order of their ids. Where PostgreSQL still reports a deadlock or a serialization
failure, the API's unit of work runs the whole request again (api.middleware).
"""

from typing import Any, TypeAlias

from psycopg import AsyncConnection

Conn: TypeAlias = AsyncConnection[Any]
