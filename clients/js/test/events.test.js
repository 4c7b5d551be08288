// The live environment list (`/ws/events`) against a real server.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { client, tcpProxy, uniqueName, until, untilListed } from './support.js';

test('the events stream sees an environment start, and survives a cut', { timeout: 90_000 }, async (t) => {
  const proxy = await tcpProxy();
  t.after(() => proxy.close());
  const tether = client({ url: proxy.url });
  const watch = tether.watchEnvironments();
  t.after(() => watch.close());
  await until(watch, 'frame', (f) => f.type === 'snapshot');

  const admin = client();
  const name = uniqueName('watch');
  const seen = [];
  watch.on('frame', (f) => f.type === 'environmentStatus' && f.name === name && seen.push(f.status));
  const env = await admin.createEnvironment({ name, provider: 'local-process', start: true });
  await untilListed(watch, (envs) => envs.get(env.id)?.status === 'running' && envs.get(env.id).runtime.connected);
  assert.ok(seen.includes('starting'), `saw ${seen}`);
  assert.equal(watch.environments.get(env.id).name, name);
  assert.equal(watch.environments.get(env.id).provider, 'local-process');

  // Cut: the stream reconnects and a fresh snapshot carries what changed meanwhile.
  assert.ok(proxy.cut() > 0);
  await admin.stopEnvironment(env.id);
  await untilListed(watch, (envs) => envs.get(env.id)?.status === 'stopped');
  await admin.deleteEnvironment(env.id);
  await untilListed(watch, (envs) => !envs.has(env.id));
});

test('a ticket opens the events stream for a user, who sees only their own', { timeout: 60_000 }, async (t) => {
  const admin = client();
  const theirs = await admin.createEnvironment({ name: uniqueName('admins'), provider: 'local-process' });
  const issued = await admin.createToken({ user: uniqueName('js-fay') });
  const fay = client({ token: issued.token, tickets: true });
  const mine = await fay.createEnvironment({ name: uniqueName('fays'), provider: 'local-process' });
  const watch = fay.watchEnvironments();
  t.after(() => watch.close());
  const snapshot = await until(watch, 'frame', (f) => f.type === 'snapshot');
  assert.deepEqual(snapshot.environments.map((e) => e.id), [mine.id]);
  assert.ok(!watch.environments.has(theirs.id));
});
