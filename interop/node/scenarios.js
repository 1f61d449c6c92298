// The interop scenarios with Node's amqplib (promise API). Same protocol as the Python drivers
// (interop/clients/base.py):
//   node scenarios.js run URL PREFIX SCENARIO...   -> {"start": s} then {"scenario": s, "obs"|"error"}
//   node scenarios.js worker URL QUEUE             -> the consumer_killed worker
'use strict';
const amqp = require('amqplib');
const crypto = require('crypto');
const { spawn } = require('child_process');

const LARGE_SIZE = 5 * 1024 * 1024;
const PROPS_HEADERS = { i: 0, s: 'str', b: true, t: { n: 1 } };
const WORKER_PREFETCH = 10, WORKER_ACKS = 5, WORKER_HOLD = 15, KILLED_MESSAGES = 30;
const SCENARIO_TIMEOUT = 40000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms); })])
    .finally(() => clearTimeout(t));
}
function emit(obj) {
  process.stdout.write(JSON.stringify(obj, (k, v) => (typeof v === 'bigint' ? Number(v) : v)) + '\n');
}
function largeBody() {
  const b = Buffer.alloc(LARGE_SIZE);
  for (let i = 0; i < LARGE_SIZE; i++) b[i] = i % 251;
  return b;
}
function namedBy(q) { return q.startsWith('amq.gen-') ? 'server (amq.gen-)' : 'client'; }
function codeOf(e) {
  if (e && typeof e.code === 'number') return e.code;
  const m = /\b([345]\d\d)\b/.exec(String(e && e.message));
  return m ? Number(m[1]) : String((e && e.message) || e);
}
// a channel error also emits 'error' on the channel: without a listener node would crash
function quiet(ch) { ch.on('error', (e) => { ch.lastError = e; }); return ch; }
async function channel(conn) { return quiet(await conn.createChannel()); }
async function connect(url, opts) {
  const conn = await amqp.connect(url, opts);
  conn.on('error', () => {});
  return conn;
}

class Ctx {
  constructor(url, prefix) { this.url = url; this.prefix = prefix; }
  name(s) { return `${this.prefix}.${s}`; }
  badPasswordUrl() { return this.url.replace('guest:guest@', 'guest:wrong-password@'); }
  badVhostUrl() {
    const u = new URL(this.url);
    return `${u.protocol}//${u.username}:${u.password}@${u.host}/no-such-vhost-${this.prefix}`;
  }
}

async function getAll(ch, q) {
  const out = [];
  for (;;) {
    const m = await ch.get(q, { noAck: true });
    if (m === false) return out;
    out.push(m.content.toString());
  }
}

// deliveries of a consumer, awaited one by one
class Inbox {
  constructor() { this.items = []; this.waiters = []; }
  push(m) { const w = this.waiters.shift(); if (w) w(m); else this.items.push(m); }
  next(ms = 10000) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return withTimeout(new Promise((r) => this.waiters.push(r)), ms, 'delivery');
  }
}

const S = {};

S.connect = async (ctx) => {
  const conn = await connect(ctx.url);
  const caps = conn.connection.serverProperties.capabilities || {};
  const obs = { open: true, capabilities: Object.keys(caps).filter((k) => caps[k]).sort() };
  await conn.close();
  for (const [key, url] of [['bad_password', ctx.badPasswordUrl()], ['bad_vhost', ctx.badVhostUrl()]]) {
    try {
      const c = await connect(url);
      await c.close();
      obs[key] = 'connected';
    } catch (e) {
      // "Handshake terminated by server: 403 (ACCESS-REFUSED) with message ..."
      const code = codeOf(e);
      obs[key] = code === 403 ? 'ACCESS_REFUSED' : code;
    }
  }
  return obs;
};

S.exchanges = async (ctx) => {
  const conn = await connect(ctx.url);
  const ch = await channel(conn);
  const n = (s) => ctx.name(s);
  const obs = {};
  const reset = async (count) => {
    for (let i = 1; i <= count; i++) {
      await ch.deleteQueue(n(`q${i}`));
      await ch.assertQueue(n(`q${i}`), { exclusive: true, autoDelete: false });
    }
  };
  const collect = async (count) => {
    const out = {};
    for (let i = 1; i <= count; i++) out[`q${i}`] = await getAll(ch, n(`q${i}`));
    return out;
  };
  await reset(2);
  await ch.assertExchange(n('direct'), 'direct', { autoDelete: true, durable: false });
  await ch.bindQueue(n('q1'), n('direct'), 'a');
  await ch.bindQueue(n('q1'), n('direct'), 'b');
  await ch.bindQueue(n('q2'), n('direct'), 'b');
  for (const rk of ['a', 'b', 'c']) ch.publish(n('direct'), rk, Buffer.from(rk));
  obs.direct = await collect(2);

  await reset(2);
  await ch.assertExchange(n('fanout'), 'fanout', { autoDelete: true, durable: false });
  await ch.bindQueue(n('q1'), n('fanout'), '');
  await ch.bindQueue(n('q2'), n('fanout'), '');
  for (const b of ['x', 'y']) ch.publish(n('fanout'), 'ignored', Buffer.from(b));
  obs.fanout = await collect(2);

  await reset(3);
  await ch.assertExchange(n('topic'), 'topic', { autoDelete: true, durable: false });
  await ch.bindQueue(n('q1'), n('topic'), 'a.*');
  await ch.bindQueue(n('q2'), n('topic'), 'a.#');
  await ch.bindQueue(n('q3'), n('topic'), '#.c');
  for (const rk of ['a', 'a.b', 'a.b.c', 'x.c', 'b']) ch.publish(n('topic'), rk, Buffer.from(rk));
  obs.topic = await collect(3);

  await reset(2);
  await ch.assertExchange(n('headers'), 'headers', { autoDelete: true, durable: false });
  await ch.bindQueue(n('q1'), n('headers'), '', { 'x-match': 'all', h1: 1, h2: 2 });
  await ch.bindQueue(n('q2'), n('headers'), '', { 'x-match': 'any', h1: 1, h2: 2 });
  for (const [b, h] of [['h1', { h1: 1 }], ['h1h2', { h1: 1, h2: 2 }], ['h3', { h3: 3 }]]) {
    ch.publish(n('headers'), '', Buffer.from(b), { headers: h });
  }
  obs.headers = await collect(2);

  await reset(1);
  await ch.assertExchange(n('e2e-src'), 'topic', { autoDelete: true, durable: false });
  await ch.assertExchange(n('e2e-dst'), 'fanout', { autoDelete: true, durable: false });
  await ch.bindExchange(n('e2e-dst'), n('e2e-src'), 'e.*');
  await ch.bindQueue(n('q1'), n('e2e-dst'), '');
  for (const rk of ['e.1', 'f.1', 'e.1.2']) ch.publish(n('e2e-src'), rk, Buffer.from(rk));
  obs.e2e = await collect(1);
  await conn.close();
  return obs;
};

S.publish_consume_ack = async (ctx) => {
  const conn = await connect(ctx.url);
  const ch = await channel(conn);
  const q = ctx.name('pca');
  await ch.assertQueue(q, { exclusive: true });
  for (let i = 0; i < 100; i++) {
    ch.sendToQueue(q, Buffer.from(String(i)), {
      contentType: 'text/plain', correlationId: `c-${i}`, messageId: `m-${i}`, appId: 'interop',
      type: 't', deliveryMode: 2, headers: { ...PROPS_HEADERS, i },
    });
  }
  await ch.prefetch(10);
  const inbox = new Inbox();
  const { consumerTag } = await ch.consume(q, (m) => inbox.push(m));
  const got = [];
  let redelivered = false, first = null;
  while (got.length < 100) {
    const m = await inbox.next();
    const p = m.properties;
    if (!first) {
      first = { content_type: p.contentType, correlation_id: p.correlationId, message_id: p.messageId,
        app_id: p.appId, type: p.type, delivery_mode: p.deliveryMode, headers: p.headers };
    }
    got.push(Number(m.content.toString()));
    redelivered = redelivered || m.fields.redelivered;
    ch.ack(m);
  }
  await ch.cancel(consumerTag);
  const left = (await ch.checkQueue(q)).messageCount;
  await conn.close();
  return { count: got.length, in_order: got.every((v, i) => v === i), any_redelivered: redelivered,
    props: first, left };
};

S.nack_requeue = async (ctx) => {
  const conn = await connect(ctx.url);
  const ch = await channel(conn);
  const q = ctx.name('nack');
  await ch.assertQueue(q, { exclusive: true });
  for (let i = 1; i <= 5; i++) ch.sendToQueue(q, Buffer.from(`m${i}`));
  await ch.prefetch(5);
  const inbox = new Inbox();
  await ch.consume(q, (m) => inbox.push(m));
  const deliveries = [], msgs = {};
  const take = async (count) => {
    for (let i = 0; i < count; i++) {
      const m = await inbox.next();
      deliveries.push([m.content.toString(), m.fields.redelivered]);
      msgs[m.content.toString()] = m;
    }
  };
  await take(5);
  ch.ack(msgs.m1);
  ch.nack(msgs.m2, false, true);
  ch.ack(msgs.m3);
  ch.reject(msgs.m4, true);
  ch.ack(msgs.m5);
  await take(2);
  ch.nack(msgs.m4, true, true);     // allUpTo: m2 and m4
  await take(2);
  ch.ack(msgs.m4, true);
  const left = (await ch.checkQueue(q)).messageCount;
  await conn.close();
  return { deliveries, left };
};

function deadInfo(m) {
  const h = m.properties.headers || {};
  const xd = (h['x-death'] || []).map((e) => {
    const out = { count: e.count, reason: e.reason, queue: e.queue, exchange: e.exchange,
      'routing-keys': e['routing-keys'], time: 'time' in e };
    if ('original-expiration' in e) out['original-expiration'] = e['original-expiration'];
    return out;
  });
  return { body: m.content.toString(), exchange: m.fields.exchange, routing_key: m.fields.routingKey,
    redelivered: m.fields.redelivered, expiration: m.properties.expiration === undefined ? null : m.properties.expiration,
    'x-death': xd,
    'x-first-death-reason': h['x-first-death-reason'], 'x-first-death-queue': h['x-first-death-queue'],
    'x-first-death-exchange': h['x-first-death-exchange'] };
}

async function waitGet(ch, q, ms = 5000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const m = await ch.get(q);
    if (m !== false) return m;
    await sleep(50);
  }
  throw new Error(`nothing arrived in ${q} within ${ms} ms`);
}

S.dead_letter = async (ctx) => {
  const conn = await connect(ctx.url);
  const ch = await channel(conn);
  const work = ctx.name('work'), dlx = ctx.name('dlx'), dlq = ctx.name('dlq');
  await ch.assertExchange(dlx, 'direct', { durable: false });
  let dead, left;
  try {
    await ch.assertQueue(dlq, { exclusive: true });
    await ch.bindQueue(dlq, dlx, 'dead');
    await ch.assertQueue(work, { exclusive: true, deadLetterExchange: dlx, deadLetterRoutingKey: 'dead' });
    ch.sendToQueue(work, Buffer.from('r1'));
    ch.sendToQueue(work, Buffer.from('n1'));
    ch.reject(await waitGet(ch, work), false);
    ch.nack(await waitGet(ch, work), false, false);
    dead = [];
    for (let i = 0; i < 2; i++) {
      const m = await waitGet(ch, dlq);
      dead.push(deadInfo(m));
      ch.ack(m);
      if (m.content.toString() === 'r1') ch.sendToQueue(work, m.content, { headers: m.properties.headers });
    }
    ch.reject(await waitGet(ch, work), false);
    const m = await waitGet(ch, dlq);
    dead.push(deadInfo(m));
    ch.ack(m);
    // reason maxlen: the head of a full x-max-length=1 queue; reason expired: a 50 ms expiration
    await ch.assertQueue(ctx.name('maxlen'), { exclusive: true, maxLength: 1, deadLetterExchange: dlx,
      deadLetterRoutingKey: 'dead' });
    await ch.assertQueue(ctx.name('ttl'), { exclusive: true, deadLetterExchange: dlx, deadLetterRoutingKey: 'dead' });
    ch.sendToQueue(ctx.name('maxlen'), Buffer.from('l1'));
    ch.sendToQueue(ctx.name('maxlen'), Buffer.from('l2'));
    let d = await waitGet(ch, dlq);
    dead.push(deadInfo(d));
    ch.ack(d);
    ch.sendToQueue(ctx.name('ttl'), Buffer.from('e1'), { expiration: '50' });
    d = await waitGet(ch, dlq);
    dead.push(deadInfo(d));
    ch.ack(d);
    left = (await ch.checkQueue(work)).messageCount;
  } finally {
    const c2 = await channel(conn);
    await c2.deleteExchange(dlx);
    await conn.close();
  }
  return { dead, work_left: left };
};

S.confirms = async (ctx) => {
  const conn = await connect(ctx.url);
  const ch = quiet(await conn.createConfirmChannel());
  const q = ctx.name('confirms');
  await ch.assertQueue(q, { exclusive: true });
  const results = await Promise.all(Array.from({ length: 50 }, (_, i) => new Promise((res) => {
    ch.sendToQueue(q, Buffer.from(String(i)), { deliveryMode: 2 }, (err) => res(err ? 'nack' : 'ack'));
  })));
  const acked = results.filter((r) => r === 'ack').length;
  const returns = [];
  ch.on('return', (m) => returns.push(m.fields.replyCode));
  const confirmed = await new Promise((res) => {
    ch.publish('', ctx.name('nowhere'), Buffer.from('u'), { mandatory: true }, (err) => res(!err));
  });
  const unroutable = { returned: returns.length > 0, reply_code: returns.length ? returns[0] : null, confirmed };
  let missing;
  try {
    ch.publish(ctx.name('no-such-exchange'), 'k', Buffer.from('x'));
    await ch.waitForConfirms();
    missing = 'published';
  } catch (e) {
    // waitForConfirms fails with "channel closed"; the close frame's code comes with the
    // channel's 'error' event
    const deadline = Date.now() + 2000;
    while (!ch.lastError && Date.now() < deadline) await sleep(10);
    missing = codeOf(ch.lastError || e);
  }
  await conn.close();
  return { acked, nacked: results.length - acked, unroutable_mandatory: unroutable, missing_exchange: missing };
};

S.mandatory = async (ctx) => {
  const conn = await connect(ctx.url);
  const ch = await channel(conn);
  const x = ctx.name('x'), q = ctx.name('routed');
  await ch.assertExchange(x, 'direct', { autoDelete: true, durable: false });
  await ch.assertQueue(q, { exclusive: true });
  await ch.bindQueue(q, x, 'here');
  const returns = [];
  ch.on('return', (m) => returns.push({ reply_code: m.fields.replyCode, reply_text: m.fields.replyText,
    exchange: m.fields.exchange, routing_key: m.fields.routingKey, body: m.content.toString() }));
  ch.publish(x, 'nowhere', Buffer.from('m1'), { mandatory: true });
  ch.publish(x, 'here', Buffer.from('m2'), { mandatory: true });
  ch.publish(x, 'nowhere', Buffer.from('m3'), { mandatory: false });
  await ch.checkQueue(q);          // a round trip: the returns came before its reply
  const routed = await getAll(ch, q);
  await conn.close();
  return { returns, routed };
};

S.basic_get = async (ctx) => {
  const conn = await connect(ctx.url);
  const ch = await channel(conn);
  const q = ctx.name('get');
  await ch.assertQueue(q, { exclusive: true });
  const gets = [];
  const get = async () => {
    const m = await ch.get(q);
    if (m === false) { gets.push(null); return null; }
    gets.push([m.content.toString(), m.fields.redelivered, m.fields.messageCount]);
    return m;
  };
  await get();
  for (const i of [1, 2, 3]) ch.sendToQueue(q, Buffer.from(`m${i}`));
  ch.ack(await get());
  ch.reject(await get(), true);
  ch.ack(await get());
  ch.ack(await get());
  await get();
  await conn.close();
  return { gets };
};

async function rpc(ctx, direct) {
  const server = await connect(ctx.url);
  const sch = await channel(server);
  const rq = ctx.name(direct ? 'rpc-direct' : 'rpc');
  await sch.assertQueue(rq, { exclusive: true });
  const seen = [];
  await sch.consume(rq, (m) => {
    seen.push(m.properties.replyTo);
    sch.sendToQueue(m.properties.replyTo, Buffer.from(m.content.toString().toUpperCase()),
      { correlationId: m.properties.correlationId });
    sch.ack(m);
  });
  const conn = await connect(ctx.url);
  const ch = await channel(conn);
  const replies = {};
  let done;
  const allIn = new Promise((r) => { done = r; });
  const replyTo = direct ? 'amq.rabbitmq.reply-to' : (await ch.assertQueue('', { exclusive: true })).queue;
  await ch.consume(replyTo, (m) => {
    replies[m.properties.correlationId] = m.content.toString();
    if (Object.keys(replies).length === 3) done();
  }, { noAck: true });
  for (let i = 0; i < 3; i++) {
    ch.sendToQueue(rq, Buffer.from(`req${i}`), { replyTo, correlationId: `c${i}` });
  }
  await withTimeout(allIn, 10000, 'replies').catch(() => {});
  await conn.close();
  await server.close();
  const obs = { replies };
  if (direct) {
    obs.server_saw_prefix = seen.length && seen.every((s) => s.startsWith('amq.rabbitmq.reply-to.'))
      ? 'amq.rabbitmq.reply-to.' : seen;
  } else {
    obs.reply_queue = namedBy(replyTo);
  }
  return obs;
}
S.rpc = (ctx) => rpc(ctx, false);
S.direct_reply_to = (ctx) => rpc(ctx, true);

S.large_message = async (ctx) => {
  const conn = await connect(ctx.url);
  const ch = await channel(conn);
  const q = ctx.name('large');
  await ch.assertQueue(q, { exclusive: true });
  ch.sendToQueue(q, largeBody());
  ch.sendToQueue(q, Buffer.alloc(0));
  const big = await waitGet(ch, q);
  const empty = await waitGet(ch, q);
  ch.ack(empty, true);
  await ch.checkQueue(q);
  await conn.close();
  return { size: big.content.length, sha256: crypto.createHash('sha256').update(big.content).digest('hex'),
    empty: empty.content.length };
};

S.many_channels = async (ctx) => {
  const conn = await connect(ctx.url);
  const q = ctx.name('many');
  // amqplib pipelines the 200 channel.open frames
  const chans = await Promise.all(Array.from({ length: 200 }, () => channel(conn)));
  await chans[0].assertQueue(q, { exclusive: true });
  chans.forEach((ch, i) => ch.sendToQueue(q, Buffer.from(String(i))));
  let error = null;
  let closed5 = false;
  chans[5].on('close', () => { closed5 = true; });
  try {
    await chans[5].checkQueue(ctx.name('missing'));
  } catch (e) {
    error = codeOf(e);
  }
  const closedOthers = [];
  chans.forEach((ch, i) => { if (i !== 5) ch.on('close', () => closedOthers.push(i)); });
  await chans[6].checkQueue(q);
  const got = await getAll(chans[7], q);
  const othersOk = closedOthers.length === 0;
  await conn.close();
  return { opened: chans.length, received: got.length, distinct: new Set(got).size, error_code: error,
    others_ok: othersOk };
};

S.heartbeats = async (ctx) => {
  const sep = ctx.url.includes('?') ? '&' : '?';
  const conn = await connect(ctx.url + `${sep}heartbeat=2`);
  const negotiated = conn.connection.heartbeat;
  let closed = false;
  conn.on('close', () => { closed = true; });
  await sleep(5000);
  const ch = await channel(conn);
  await ch.assertQueue(ctx.name('hb'), { exclusive: true });
  const alive = !closed;
  await conn.close();
  return { negotiated, alive };
};

function runWorkerAndKill(url, queue, ms = 20000) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [__filename, 'worker', url, queue], { stdio: ['ignore', 'pipe', 'pipe'] });
    let received = 0, buf = '', err = '', holding = false;
    const timer = setTimeout(() => { child.kill('SIGKILL'); }, ms);
    child.stderr.on('data', (d) => { err += d; });
    child.stdout.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.startsWith('got ')) received++;
        else if (line.trim() === 'holding' && !holding) { holding = true; child.kill('SIGKILL'); }
      }
    });
    child.on('exit', () => {
      clearTimeout(timer);
      if (!holding) reject(new Error(`worker never reached holding (received ${received}): ${err.slice(-2000)}`));
      else resolve({ worker_received: received, worker_acked: Math.min(received, WORKER_ACKS) });
    });
  });
}

S.consumer_killed = async (ctx) => {
  const conn = await connect(ctx.url);
  const ch = await channel(conn);
  const q = ctx.name('killed');
  await ch.assertQueue(q, { durable: false, autoDelete: false });
  try {
    for (let i = 1; i <= KILLED_MESSAGES; i++) ch.sendToQueue(q, Buffer.from(`m${i}`));
    await ch.checkQueue(q);
    const obs = await runWorkerAndKill(ctx.url, q);
    const deadline = Date.now() + 10000;
    while ((await ch.checkQueue(q)).messageCount < 25 && Date.now() < deadline) await sleep(50);
    const after = [];
    for (;;) {
      const m = await ch.get(q, { noAck: true });
      if (m === false) break;
      after.push([m.content.toString(), m.fields.redelivered]);
    }
    obs.after = after;
    return obs;
  } finally {
    await ch.deleteQueue(q);
    await conn.close();
  }
};

S.reserved_names = async (ctx) => {
  const conn = await connect(ctx.url);
  const ch = await channel(conn);
  const name = (await ch.assertQueue('', { exclusive: true })).queue;
  const obs = { server_named: namedBy(name) };
  await ch.checkQueue(name);
  obs.passive_redeclare = 'ok';
  for (const [key, q] of [['redeclare', name], ['amq_custom', `amq.custom-${ctx.prefix}`]]) {
    try {
      await (await channel(conn)).assertQueue(q, { exclusive: true });
      obs[key] = 'ok';
    } catch (e) {
      obs[key] = codeOf(e);
    }
  }
  await conn.close();
  return obs;
};

async function worker(url, queue) {
  const conn = await connect(url);
  const ch = await channel(conn);
  await ch.prefetch(WORKER_PREFETCH);
  let count = 0;
  await ch.consume(queue, (m) => {
    count++;
    process.stdout.write(`got ${m.content.toString()} ${m.fields.redelivered}\n`);
    if (count <= WORKER_ACKS) ch.ack(m);
    if (count === WORKER_HOLD) process.stdout.write('holding\n');
  });
  await new Promise(() => {});
}

async function main() {
  const [mode, url, ...rest] = process.argv.slice(2);
  if (mode === 'worker') return worker(url, rest[0]);
  if (mode !== 'run') { console.error('usage: run URL PREFIX SCENARIO... | worker URL QUEUE'); process.exit(2); }
  const [prefix, ...names] = rest;
  const ctx = new Ctx(url, prefix);
  for (const name of names) {
    emit({ start: name });
    const fn = S[name];
    if (!fn) { emit({ scenario: name, error: 'not implemented by this driver' }); continue; }
    try {
      const obs = await withTimeout(fn(ctx), SCENARIO_TIMEOUT, name);
      emit({ scenario: name, obs });
    } catch (e) {
      emit({ scenario: name, error: `${e && e.constructor && e.constructor.name}: ${e && e.message}`,
        trace: String(e && e.stack).slice(-3000) });
    }
  }
  process.exit(0);
}

process.on('unhandledRejection', () => {});
main();
