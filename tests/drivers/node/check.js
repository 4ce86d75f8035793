// node-postgres through pgsplit in transaction mode: named queries (its
// prepared statements), transactions, with more clients than servers.
const { Client } = require('pg');

const url = process.env.DATABASE_URL;
const clients = Number(process.env.CLIENTS || 8);

async function worker(i) {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    for (let n = 0; n < 30; n++) {
      const r = await c.query({ name: 'add', text: 'SELECT $1::int + $2::int AS v', values: [n, i] });
      if (r.rows[0].v !== n + i) throw new Error(`client ${i}: ${r.rows[0].v} != ${n + i}`);
      await c.query('BEGIN');
      await c.query({ name: 'ins', text: 'INSERT INTO drivers_node(client, n) VALUES ($1, $2)', values: [i, n] });
      const cnt = await c.query({ name: 'cnt', text: 'SELECT count(*)::int AS c FROM drivers_node WHERE client = $1', values: [i] });
      if (cnt.rows[0].c !== n + 1) throw new Error(`client ${i}: count ${cnt.rows[0].c}`);
      await c.query('COMMIT');
    }
  } finally {
    await c.end();
  }
}

(async () => {
  const setup = new Client({ connectionString: url });
  await setup.connect();
  await setup.query('CREATE TABLE IF NOT EXISTS drivers_node(client int, n int)');
  await setup.end();
  await Promise.all(Array.from({ length: clients }, (_, i) => worker(i)));
  const check = new Client({ connectionString: url });
  await check.connect();
  const total = (await check.query('SELECT count(*)::int AS c FROM drivers_node')).rows[0].c;
  await check.end();
  if (total !== clients * 30) throw new Error(`total ${total}`);
  console.log(`ok node-postgres ${total}`);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
