"""moto's DynamoDB emulator for the tests, on 127.0.0.1:<argv[1]>.

Served from one thread, so that every request is atomic, as each DynamoDB
request is (moto's own `moto_server` answers on several threads without
serialising its transactions), and the replica race tests are meaningful.

One change to moto, for speed only: its TransactWriteItems snapshots the
whole table for rollback (a deep copy of every item, per item of the
transaction), which makes a table of thousands of items take seconds per
transaction. Here the snapshot copies the table's index of items (not the
items), the partitions the transaction touches, and the items it updates in
place (the live table gets the copy, the snapshot keeps the original): the
same state to roll back to, so the behaviour is moto's.
"""

import copy
import sys
from collections import defaultdict

import moto.dynamodb.models as models
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class _SnapshotShim:
    """Stands in for the `copy` module inside moto's DynamoDB models."""

    snapshots = None  # id(table) -> its snapshot, while a transaction runs

    copy = staticmethod(copy.copy)

    @classmethod
    def deepcopy(cls, x, memo=None):
        if cls.snapshots is not None and id(x) in cls.snapshots:
            return cls.snapshots[id(x)]
        return copy.deepcopy(x, memo)


def _key_of(table, op_type, op):
    attrs = op["Item"] if op_type == "Put" else op["Key"]
    hash_key = DynamoType(attrs[table.hash_key_attr])
    range_key = None
    if table.range_key_attr is not None:
        range_key = DynamoType(attrs[table.range_key_attr])
    return hash_key, range_key


def _snapshot(table, transact_items):
    ops = []
    for item in transact_items:
        op_type, op = next(iter(item.items()))
        if op.get("TableName") == table.name:
            ops.append((op_type, _key_of(table, op_type, op)))
    snapshot = copy.copy(table)
    snapshot.items = defaultdict(dict, table.items)
    for _, (hash_key, _) in ops:
        if isinstance(table.items.get(hash_key), dict):
            snapshot.items[hash_key] = dict(table.items[hash_key])
    # What an update changes in place: the live table works on a copy, the
    # snapshot keeps the original.
    for op_type, (hash_key, range_key) in ops:
        if op_type != "Update":
            continue
        current = table.get_item(hash_key, range_key)
        if current is None:
            continue
        fresh = copy.deepcopy(current)
        if range_key is not None:
            table.items[hash_key][range_key] = fresh
        else:
            table.items[hash_key] = fresh
    return snapshot


_transact = models.DynamoDBBackend.transact_write_items


def _transact_with_cheap_snapshots(self, transact_items):
    snapshots = {}
    for item in transact_items:
        _, op = next(iter(item.items()))
        name = op.get("TableName")
        if name in self.tables and id(self.tables[name]) not in snapshots:
            snapshots[id(self.tables[name])] = _snapshot(self.tables[name], transact_items)
    _SnapshotShim.snapshots = snapshots
    try:
        return _transact(self, transact_items)
    finally:
        _SnapshotShim.snapshots = None


models.copy = _SnapshotShim
models.DynamoDBBackend.transact_write_items = _transact_with_cheap_snapshots

run_simple(
    "127.0.0.1",
    int(sys.argv[1]),
    DomainDispatcherApplication(create_backend_app),
    threaded=False,
)
