// REST round trips and typed errors against a real server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';

import { TetherError } from '../index.js';
import { client, silentServer, uniqueName, url } from './support.js';

test('environments: create, read, list, patch, start, stop, delete', { timeout: 60_000 }, async () => {
  const tether = client();
  const name = uniqueName('rest');
  const created = await tether.createEnvironment({ name, provider: 'local-process', config: { a: 1 } });
  assert.equal(created.name, name);
  assert.equal(created.status, 'created');
  assert.equal(created.owner, 'admin');

  assert.equal((await tether.getEnvironment(created.id)).id, created.id);
  assert.ok((await tether.listEnvironments()).some((e) => e.id === created.id));
  assert.ok((await tether.listEnvironments({ owner: 'admin' })).some((e) => e.id === created.id));

  const patched = await tether.updateEnvironment(created.id, { config: { a: null, b: 'two' } });
  assert.deepEqual(patched.config, { b: 'two' });

  assert.equal((await tether.startEnvironment(created.id)).status, 'starting');
  assert.equal((await tether.stopEnvironment(created.id)).desiredState, 'stopped');
  assert.equal(await tether.deleteEnvironment(created.id), undefined);
  await assert.rejects(tether.getEnvironment(created.id), (e) => e instanceof TetherError && e.status === 404);
});

test('errors carry the server code and status', async () => {
  const tether = client();
  await assert.rejects(tether.getEnvironment('no-such-environment'), (error) => {
    assert.ok(error instanceof TetherError);
    assert.equal(error.status, 404);
    assert.equal(error.code, 'not_found');
    return true;
  });
  await assert.rejects(client({ token: 'wrong-token' }).whoami(), (error) => {
    assert.equal(error.status, 401);
    assert.equal(error.code, 'unauthorized');
    return true;
  });
  await assert.rejects(tether.createEnvironment({ name: 'x', provider: 'local-process', bogus: 1 }), (error) => {
    assert.equal(error.status, 400);
    assert.equal(error.code, 'invalid_request');
    assert.match(error.message, /bogus/);
    return true;
  });
  await assert.rejects(client({ url: 'http://127.0.0.1:1' }).whoami(), (error) => error.code === 'network');
});

test('tokens, whoami, tickets, templates, providers, audit, config status, health', async () => {
  const admin = client();
  assert.equal((await admin.whoami()).user, 'admin');
  const user = uniqueName('js-carol');
  const issued = await admin.createToken({ user, scopes: ['envs:read', 'relay'], note: 'js test' });
  assert.match(issued.token, /^tth_[0-9a-f]{64}$/);
  const carol = client({ token: issued.token });
  assert.deepEqual((await carol.whoami()).scopes, ['envs:read', 'relay']);
  assert.ok((await admin.listTokens({ user })).some((t) => t.id === issued.id));
  await assert.rejects(carol.createEnvironment({ name: uniqueName('no'), provider: 'local-process' }), (e) => {
    return e.status === 403 && e.code === 'missing_scope';
  });
  const ticket = await carol.createTicket({ events: true });
  assert.match(ticket.ticket, /^tkt_/);
  assert.ok(ticket.expiresInSecs > 0);

  assert.ok(Array.isArray(await carol.listTemplates()));
  const providers = await admin.listProviders();
  assert.ok(providers.some((p) => p.name === 'local-process'));
  assert.equal((await admin.getProvider('local-process')).name, 'local-process');
  const audit = await admin.audit({ limit: 50 });
  assert.ok(audit.some((entry) => entry.action === 'token.create' && entry.target === issued.id));
  assert.equal(typeof (await admin.configStatus()).found, 'boolean');
  assert.ok(Array.isArray(await admin.listRemovals()));
  // A host running alone has no cluster to show.
  await assert.rejects(admin.cluster(), (e) => e.status === 404 && e.code === 'not_found');
  await assert.rejects(admin.retryRemoval('never-deleted'), (e) => e.status === 404 && e.code === 'not_found');
  await assert.rejects(admin.dropRemoval('never-deleted'), (e) => e.status === 404 && e.code === 'not_found');
  await assert.rejects(carol.listRemovals(), (e) => e.status === 403 && e.code === 'missing_scope');
  assert.ok(['ok', 'degraded'].includes((await admin.health()).status));
  assert.ok(Array.isArray((await admin.health()).reasons));
  // A user's token gets the status only.
  assert.deepEqual(Object.keys(await carol.health()), ['status']);

  await admin.revokeToken(issued.id);
  await assert.rejects(carol.whoami(), (e) => e.status === 401);
  assert.ok(url.startsWith('http://'));
});

test('logs, and following them as they are written', { timeout: 60_000 }, async () => {
  const tether = client();
  const env = await tether.createEnvironment({ name: uniqueName('logs'), provider: 'local-process' });
  const controller = new AbortController();
  const lines = tether.followLogs(env.id, { tail: 0, signal: controller.signal });
  // The start writes host lines to the log; the follower sees them arrive.
  const first = lines.next();
  await tether.startEnvironment(env.id);
  const { value } = await first;
  assert.equal(typeof value.ts, 'string');
  assert.ok(['host', 'provider', 'process'].includes(value.source), JSON.stringify(value));
  controller.abort();
  assert.equal((await lines.next()).done, true);
  assert.ok((await tether.logs(env.id, { tail: 5 })).length > 0);
  await tether.deleteEnvironment(env.id);
});

// A followed log whose server streamed without a line end grew one string for as long
// as it sent; the client gives up past 1 MiB with `invalid_response`.
test('a followed log line without end is given up on', { timeout: 30_000 }, async () => {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.write('x'.repeat(2 << 20)); // and never a line end, nor an end
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const fake = client({ url: `http://127.0.0.1:${server.address().port}` });
    await assert.rejects(
      (async () => {
        for await (const _line of fake.followLogs('e-1')) assert.fail('a line was yielded');
      })(),
      (e) => e instanceof TetherError && e.code === 'invalid_response' && /longer than/.test(e.message),
    );
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

// A server that took the connection and never answered kept every REST call waiting for
// ever; each now gives up after the client's `timeoutMs` (30 s unless set) with `timeout`.
test('a REST call to a server that never answers times out', { timeout: 30_000 }, async () => {
  assert.equal(client().timeoutMs, 30_000);
  const isTimeout = (e) => e instanceof TetherError && e.code === 'timeout' && e.status === undefined;
  const silent = await silentServer();
  const stalled = await silentServer({ headers: true });
  try {
    const quiet = client({ url: silent.url, timeoutMs: 200 });
    await assert.rejects(quiet.whoami(), isTimeout);
    await assert.rejects(quiet.logs('e-1', { tail: 5 }), isTimeout);
    await assert.rejects(quiet.createEnvironment({ name: 'x', provider: 'local-process' }), isTimeout);
    // Per call, over the client's default.
    await assert.rejects(client({ url: silent.url }).call('GET', '/api/v1/whoami', { timeoutMs: 200 }), isTimeout);
    // Headers, then a body that never comes: the body is inside the deadline too.
    const half = client({ url: stalled.url, timeoutMs: 200 });
    await assert.rejects(half.whoami(), isTimeout);
    await assert.rejects(half.logs('e-1'), isTimeout);
    // The caller's own signal still says `aborted`.
    const controller = new AbortController();
    const pending = client({ url: silent.url }).call('GET', '/api/v1/whoami', { signal: controller.signal });
    controller.abort();
    await assert.rejects(pending, (e) => e instanceof TetherError && e.code === 'aborted');
  } finally {
    await silent.close();
    await stalled.close();
  }
});
