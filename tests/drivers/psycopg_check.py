"""psycopg 3 through pgsplit in transaction mode: server-side prepared
statements from the first execution (prepare_threshold=0), transactions,
and pipeline mode, with more clients than servers."""
import os
import threading

import psycopg

URL = os.environ["DATABASE_URL"]
CLIENTS = int(os.environ.get("CLIENTS", "8"))
errors = []


def worker(i: int) -> None:
    try:
        with psycopg.connect(URL, prepare_threshold=0, autocommit=True) as conn:
            for n in range(30):
                assert conn.execute("SELECT %s::int + %s::int", (n, i)).fetchone()[0] == n + i
                with conn.transaction():
                    conn.execute("INSERT INTO drivers_psycopg(client, n) VALUES (%s, %s)", (i, n))
                    count = conn.execute("SELECT count(*) FROM drivers_psycopg WHERE client = %s", (i,)).fetchone()[0]
                    assert count == n + 1, (count, n)
            with conn.pipeline():
                cursors = [conn.execute("SELECT %s::int * 2", (k,)) for k in range(20)]
                with conn.transaction():
                    conn.execute("INSERT INTO drivers_psycopg(client, n) VALUES (%s, %s)", (i, 1000))
            for k, cur in enumerate(cursors):
                assert cur.fetchone()[0] == 2 * k
    except Exception as e:  # noqa: BLE001 - reported by the main thread
        errors.append(f"client {i}: {e!r}")


with psycopg.connect(URL, autocommit=True) as setup:
    setup.execute("CREATE TABLE IF NOT EXISTS drivers_psycopg(client int, n int)")
threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    raise SystemExit("\n".join(errors))
with psycopg.connect(URL) as check:
    total = check.execute("SELECT count(*) FROM drivers_psycopg").fetchone()[0]
assert total == CLIENTS * 31, total
print(f"ok psycopg {total}")
