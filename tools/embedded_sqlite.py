#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""Imported by the embedded server's two processes (the uWSGI API and
``neutron-periodic-workers``), which share one sqlite file.

SQLite has one writer at a time.  When a transaction that has read tries to
write while the other process holds the write lock, SQLite answers
"database is locked" at once rather than wait (waiting could deadlock):
the sqlite analogue of a MySQL deadlock.  oslo.db translates MySQL's into
``DBDeadlock``, which Neutron's API retries; it leaves SQLite's as a plain
error, and the API call fails with HTTP 500.  Registering the same
translation for SQLite makes the embedded server retry as a MySQL-backed
one would.  Nothing here is loaded outside the launcher's embedded mode.
"""

from __future__ import annotations

import sys

from oslo_db import exception as db_exc
from oslo_db.sqlalchemy import exc_filters
from sqlalchemy import exc as sqla_exc


@exc_filters.filters("sqlite", sqla_exc.OperationalError,
                     r".*database is locked.*")
def _sqlite_locked_is_a_deadlock(operational_error, match, engine_name,
                                 is_disconnect):
    raise db_exc.DBDeadlock(operational_error)


print("embedded_sqlite: sqlite 'database is locked' is retried as a "
      "deadlock", file=sys.stderr, flush=True)
