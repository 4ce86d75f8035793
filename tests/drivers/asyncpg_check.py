"""asyncpg through pgsplit in transaction mode: default statement cache,
explicit prepared statements, transactions, with more clients than servers."""
import asyncio
import os

import asyncpg

URL = os.environ["DATABASE_URL"]
CLIENTS = int(os.environ.get("CLIENTS", "8"))


async def worker(i: int) -> None:
    conn = await asyncpg.connect(URL)  # statement_cache_size=100 by default
    try:
        for n in range(30):
            assert await conn.fetchval("SELECT $1::int + $2::int", n, i) == n + i
            async with conn.transaction():
                await conn.execute("INSERT INTO drivers_asyncpg(client, n) VALUES ($1, $2)", i, n)
                count = await conn.fetchval("SELECT count(*) FROM drivers_asyncpg WHERE client = $1", i)
                assert count == n + 1, (count, n)
            stmt = await conn.prepare("SELECT $1::text || '-' || $2::text")
            assert await stmt.fetchval("a", str(n)) == f"a-{n}"
            rows = await conn.fetch("SELECT g FROM generate_series(1, $1::int) g", 5)
            assert [r["g"] for r in rows] == [1, 2, 3, 4, 5]
    finally:
        await conn.close()


async def main() -> None:
    setup = await asyncpg.connect(URL)
    await setup.execute("CREATE TABLE IF NOT EXISTS drivers_asyncpg(client int, n int)")
    await setup.close()
    await asyncio.gather(*(worker(i) for i in range(CLIENTS)))
    check = await asyncpg.connect(URL)
    total = await check.fetchval("SELECT count(*) FROM drivers_asyncpg")
    await check.close()
    assert total == CLIENTS * 30, total
    print(f"ok asyncpg {total}")


asyncio.run(main())
