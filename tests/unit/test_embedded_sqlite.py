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

"""The embedded server's sqlite retry filter (tools/embedded_sqlite.py):
real oslo.db engines on one sqlite file, two connections as the API and the
periodic workers would hold them."""

from __future__ import annotations

import os
import sys

import pytest
import sqlalchemy as sa
from neutron_lib.db import api as db_api
from oslo_db import exception as db_exc
from oslo_db.sqlalchemy import engines

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..",
                                "tools"))


def test_locked_database_is_a_retriable_deadlock(tmp_path):
    import embedded_sqlite  # noqa: F401  (registers the filter)

    url = f"sqlite:///{tmp_path}/neutron.sqlite?timeout=0.2"
    api, worker = engines.create_engine(url), engines.create_engine(url)
    with api.begin() as c:
        c.execute(sa.text("CREATE TABLE ports (id TEXT)"))
    with worker.connect() as w, api.connect() as a:
        w_tx = w.begin()
        w.execute(sa.text("INSERT INTO ports VALUES ('from the worker')"))
        a_tx = a.begin()
        a.execute(sa.text("SELECT * FROM ports")).fetchall()
        with pytest.raises(db_exc.DBDeadlock) as caught:
            a.execute(sa.text("INSERT INTO ports VALUES ('from the API')"))
        assert "database is locked" in str(caught.value)
        assert db_api.is_retriable(caught.value)
        a_tx.rollback()
        w_tx.commit()
    # Retried once the other writer is done, the write goes through.
    with api.begin() as c:
        c.execute(sa.text("INSERT INTO ports VALUES ('from the API')"))
        assert c.execute(sa.text("SELECT count(*) FROM ports")).scalar() == 2
