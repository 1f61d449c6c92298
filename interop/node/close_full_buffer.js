// amqplib, as a new user would: sendToQueue in a tight loop until it reports a full buffer,
// then close. Prints one JSON line: what the client observed.
//   node close_full_buffer.js URL QUEUE
'use strict';
const amqp = require('amqplib');

async function main() {
  const [url, queue] = process.argv.slice(2);
  const seen = { errors: [], closed: false, sent: 0 };
  const conn = await amqp.connect(url);
  conn.on('error', (e) => seen.errors.push(String(e.message || e)));
  conn.on('close', (e) => { seen.closed = true; if (e) seen.errors.push(`close: ${e.message || e}`); });
  const ch = await conn.createChannel();
  ch.on('error', (e) => seen.errors.push(`channel: ${e.message || e}`));
  await ch.assertQueue(queue, { durable: false });
  while (ch.sendToQueue(queue, Buffer.from('x'.repeat(16)))) seen.sent += 1;
  const closing = conn.close().then(() => 'resolved', (e) => `rejected: ${e.message || e}`);
  const timeout = new Promise((r) => setTimeout(() => r('pending after 10 s'), 10000));
  seen.close = await Promise.race([closing, timeout]);
  process.stdout.write(JSON.stringify(seen) + '\n');
  process.exit(0);
}
main().catch((e) => { process.stdout.write(JSON.stringify({ fatal: String(e) }) + '\n'); process.exit(1); });
