"""Leave a real hot rollback journal on a SQLite database, the way a crash does.

A writer process starts a transaction, changes committed rows, writes enough to spill its page
cache into the database file (so the file itself now holds uncommitted pages and only the journal
can undo them), and is then killed with SIGKILL mid-transaction.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

WRITER = r"""
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA cache_size=2")  # spill dirty pages into the database file early
connection.execute("BEGIN IMMEDIATE")
connection.execute("UPDATE experiments SET name = name || '-torn'")
connection.execute("CREATE TABLE crash_filler (payload BLOB)")
for _ in range(400):
    connection.execute("INSERT INTO crash_filler VALUES (randomblob(4000))")
print("in-transaction", flush=True)
time.sleep(600)
"""


def journal_of(database: Path) -> Path:
    return database.with_name(database.name + "-journal")


def leave_hot_journal(database: Path) -> None:
    """Kill a writer mid-transaction on `database` (an MLflow store), leaving its journal hot."""
    size_before = database.stat().st_size
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(database)], stdout=subprocess.PIPE, text=True)
    try:
        line = writer.stdout.readline()
        assert line.strip() == "in-transaction", f"the writer did not get into its transaction: {line!r}"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        writer.stdout.close()
    journal = journal_of(database)
    assert journal.exists() and journal.stat().st_size > 0, "no journal left behind"
    assert database.stat().st_size > size_before, "the uncommitted pages did not reach the database file"
