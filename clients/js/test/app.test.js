// The app WebSocket against a real server and a real runtime: request and reply by
// requestId, tickets, and a connection cut mid-stream that resumes with every reply
// exactly once.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { TetherError } from '../index.js';
import { client, relayWindow, runningEnv, tcpProxy, uniqueName, until } from './support.js';

test('an echo through the runtime, a provider call and an exec', { timeout: 60_000 }, async (t) => {
  const tether = client();
  const env = await runningEnv(tether, 'echo');
  const app = tether.connectApp(env.id, { thread: 'main' });
  t.after(() => app.close());
  const status = await until(app, 'status', (s) => s.environmentId === env.id);
  assert.equal(status.status, 'running');

  const reply = await app.request({ type: 'echo', payload: { hello: 'world' } });
  assert.equal(reply.type, 'echoResponse');
  assert.deepEqual(reply.payload, { hello: 'world' });
  assert.equal(reply.threadId, 'main');

  const written = await app.request({ type: 'providerWriteFile', path: 'a.txt', content: 'hi' });
  assert.equal(written.action, 'providerWriteFileResponse');
  const read = await app.request({ type: 'providerReadFile', path: 'a.txt' });
  assert.equal(read.message.content, 'hi');

  const run = await app.exec(['cat', 'a.txt']);
  assert.deepEqual({ code: run.code, stdout: run.stdout }, { code: 0, stdout: 'hi' });
});

test('a connection cut mid-stream resumes with every reply exactly once', { timeout: 120_000 }, async (t) => {
  const proxy = await tcpProxy();
  t.after(() => proxy.close());
  const admin = client();
  const env = await runningEnv(admin, 'cut');
  const tether = client({ url: proxy.url });
  const app = tether.connectApp(env.id, { thread: 'cut' });
  t.after(() => app.close());
  await app.once('resumed');

  const total = 600;
  const replies = new Map();
  app.on('message', (msg) => {
    if (msg.type === 'echoResponse') replies.set(msg.payload, (replies.get(msg.payload) ?? 0) + 1);
  });
  const resumes = [];
  app.on('resumed', (r) => resumes.push(r));
  const lost = [];
  app.on('lost', (l) => lost.push(l));

  // Four rounds of requests; in each, once replies are flowing, the network is cut
  // while the rest of the round's requests and replies are in flight.
  const answered = [];
  let cuts = 0;
  const rounds = 4;
  const perRound = total / rounds;
  for (let round = 0; round < rounds; round += 1) {
    const start = round * perRound;
    for (let i = start; i < start + perRound; i += 1) answered.push(app.request({ type: 'echo', payload: i }));
    await answered[start + 10];
    cuts += proxy.cut() > 0 ? 1 : 0;
  }
  const all = await Promise.all(answered);
  // The last cut may come after the last reply: wait for its reconnect too.
  while (resumes.length < rounds) await app.once('resumed');
  assert.deepEqual(all.map((r) => r.payload), [...Array(total).keys()]);
  assert.equal(cuts, rounds, 'every cut found a live connection');
  assert.ok(resumes.length >= rounds, `resumed ${resumes.length} times`);
  assert.ok(resumes.every((r) => r.reset === false));
  assert.deepEqual(lost, []);
  // Every reply exactly once: none lost, none repeated by the replay.
  assert.equal(replies.size, total);
  for (const [payload, count] of replies) assert.equal(count, 1, `reply ${payload} came ${count} times`);
  // The host counts frames in its acknowledgements every 64 frames or within 200 ms of
  // a quiet spell, so the last few may still be uncounted when the last reply arrives.
  const until = Date.now() + 5_000;
  while (app.pending > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  assert.equal(app.pending, 0);
});

test('messages past the window while away are reported as lost, the rest arrive once', { timeout: 120_000 }, async (t) => {
  const proxy = await tcpProxy();
  t.after(() => proxy.close());
  const admin = client();
  const env = await runningEnv(admin, 'gap');
  // Away: its connection cut and the network down, so it keeps trying to reconnect.
  const away = client({ url: proxy.url }).connectApp(env.id, { thread: 'gap', minDelayMs: 50, maxDelayMs: 200 });
  t.after(() => away.close());
  await away.once('resumed');
  const received = [];
  away.on('message', (m) => m.type === 'echoResponse' && received.push(m.payload));
  const lost = [];
  away.on('lost', (l) => lost.push(l));
  await proxy.down();

  // Another app on the same thread: every reply to it reaches the thread's apps, the
  // one away included, far more than its session's window holds.
  const here = admin.connectApp(env.id, { thread: 'gap' });
  t.after(() => here.close());
  // In batches, so neither the runtime's window nor this app's own overflows.
  const total = relayWindow * 2;
  const batch = 128;
  for (let start = 0; start < total; start += batch) {
    const sent = [];
    for (let i = start; i < start + batch; i += 1) sent.push(here.request({ type: 'echo', payload: i }));
    for (const reply of await Promise.all(sent)) assert.equal(reply.type, 'echoResponse', JSON.stringify(reply));
  }

  const resuming = away.once('resumed');
  await proxy.up();
  const resumed = await resuming;
  assert.equal(resumed.reset, false);
  await until(away, 'message', (m) => m.type === 'echoResponse' && m.payload === total - 1);
  assert.equal(lost.length, 1, JSON.stringify(lost));
  const [{ from, to, count }] = lost;
  assert.equal(count, to - from + 1);
  assert.ok(count >= total - relayWindow, `lost ${count}`);
  // Exactly the newest replies, each once and in order, after the gap it was told of.
  assert.deepEqual(received, [...Array(total).keys()].slice(total - received.length));
  assert.ok(received.length + count >= total, `${received.length} received + ${count} lost < ${total}`);
});

test('large replies are acknowledged by bytes: the window never fills', { timeout: 120_000 }, async (t) => {
  const admin = client();
  const env = await runningEnv(admin, 'bytes');
  const app = admin.connectApp(env.id, { thread: 'bytes' });
  t.after(() => app.close());
  const resumes = [];
  app.on('resumed', (r) => resumes.push(r));
  const lost = [];
  app.on('lost', (l) => lost.push(l));
  await app.once('resumed');
  // 40 replies of 400 KB, one after another: 16 MB, twice the host's default window of
  // 8 MiB, which 32 of them (the count between acknowledgements) would overfill.
  const payload = 'x'.repeat(400_000);
  for (let i = 0; i < 40; i += 1) {
    const reply = await app.request({ type: 'echo', payload: `${i}${payload}` });
    assert.equal(reply.payload.length, payload.length + String(i).length);
  }
  assert.equal(resumes.length, 1, `reconnected: ${JSON.stringify(resumes)}`);
  assert.deepEqual(lost, []);
});

test('a browser-style connect with a ticket', { timeout: 60_000 }, async (t) => {
  const admin = client();
  const issued = await admin.createToken({ user: uniqueName('js-dora') });
  const dora = client({ token: issued.token, tickets: true });
  const env = await runningEnv(dora, 'ticket');
  const app = dora.connectApp(env.id, { thread: 't1' });
  t.after(() => app.close());
  const reply = await app.request({ type: 'echo', payload: 'by ticket' });
  assert.equal(reply.payload, 'by ticket');
  assert.equal(reply.threadId, 't1');

  // Someone else's environment is, to Dora, one that does not exist: a final close.
  const other = await admin.createEnvironment({ name: uniqueName('not-doras'), provider: 'local-process' });
  const refused = dora.connectApp(other.id);
  const closed = await refused.once('close');
  assert.ok(closed.error instanceof TetherError);
  assert.equal(closed.error.status, 404);
  await assert.rejects(refused.request({ type: 'echo' }), (e) => e.code === 'closed');
});

test('a revoked token ends the connection for good (4003)', { timeout: 60_000 }, async () => {
  const admin = client();
  const issued = await admin.createToken({ user: uniqueName('js-erin') });
  const erin = client({ token: issued.token });
  const env = await runningEnv(erin, 'revoked');
  const app = erin.connectApp(env.id);
  await app.once('resumed');
  const waiting = app.request({ type: 'echo', payload: 'never' }, { timeoutMs: 120_000 }).catch((e) => e);
  const closed = app.once('close');
  await admin.revokeToken(issued.id);
  const { code, error } = await closed;
  assert.equal(code, 4003);
  assert.equal(error.code, 'revoked');
  // Answered before the close or failed by it, never left hanging.
  const outcome = await waiting;
  assert.ok(outcome.type === 'echoResponse' || outcome.code === 'closed', JSON.stringify(outcome));
});

test('a message larger than the host takes is refused with too_large, not sent for ever', { timeout: 60_000 }, async (t) => {
  const tether = client();
  const env = await runningEnv(tether, 'large');
  const app = tether.connectApp(env.id, { thread: 'large' });
  t.after(() => app.close());
  const big = 'x'.repeat(1_100_000); // over the host's default 1 MiB
  // Queued before the greeting says the limit: dropped then, its request rejected.
  const early = app.request({ type: 'echo', payload: big }).catch((e) => e);
  await app.once('resumed');
  assert.equal((await early).code, 'too_large');
  await assert.rejects(app.request({ type: 'echo', payload: big }), (e) => e.code === 'too_large');
  assert.throws(() => app.send({ type: 'echo', payload: big }), (e) => e.code === 'too_large');
  const reply = await app.request({ type: 'echo', payload: 'small' }, { timeoutMs: 10_000 });
  assert.equal(reply.payload, 'small');
});
