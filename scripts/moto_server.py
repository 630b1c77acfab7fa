"""moto's DynamoDB emulator for the tests, on 127.0.0.1:<argv[1]>.

Served from one thread, so that every request is atomic, as each DynamoDB
request is (moto's own `moto_server` answers on several threads without
serialising its transactions), and the replica race tests are meaningful.

One change to moto, for speed only: its TransactWriteItems snapshots the
table for rollback once per item of the transaction (100 deep copies of the
whole table for a full one), which makes a table of a few thousand items
take seconds per transaction. Here the table is copied once per transaction;
the copies were identical (taken before any write), so the behaviour is
moto's.
"""

import copy
import sys

import moto.dynamodb.models as models
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class _CopyOncePerTransaction:
    """Stands in for the `copy` module inside moto's DynamoDB models."""

    snapshots = None  # id(table) -> its copy, while a transaction runs

    copy = staticmethod(copy.copy)

    @classmethod
    def deepcopy(cls, x, memo=None):
        if cls.snapshots is None:
            return copy.deepcopy(x, memo)
        if id(x) not in cls.snapshots:
            cls.snapshots[id(x)] = copy.deepcopy(x, memo)
        return cls.snapshots[id(x)]


_transact = models.DynamoDBBackend.transact_write_items


def _transact_copying_once(self, transact_items):
    _CopyOncePerTransaction.snapshots = {}
    try:
        return _transact(self, transact_items)
    finally:
        _CopyOncePerTransaction.snapshots = None


models.copy = _CopyOncePerTransaction
models.DynamoDBBackend.transact_write_items = _transact_copying_once

run_simple(
    "127.0.0.1",
    int(sys.argv[1]),
    DomainDispatcherApplication(create_backend_app),
    threaded=False,
)
