// One environment: its record (live over `/ws/events`), its live log (the logs
// endpoint with `follow=true`, streamed with fetch) and a thread console.
import { h, fill, errorBox, loading, empty } from '../dom.js';
import { statusBadge, runtimeMark, timeEl, when } from '../format.js';
import { actions } from './environments.js';
import { threadConsole } from './console.js';
import { can } from '../session.js';

export const title = 'Environment';

/** Lines kept on the page; older ones scroll away. */
const MAX_LOG_LINES = 2000;

export function render(main, ctx, id) {
  const { client, who, navigate } = ctx;
  const head = h('div', { class: 'page-head' }, loading());
  const summary = h('section', { class: 'card', id: 'env-record' });
  const logPanel = h('section', { class: 'card log-card', id: 'env-log' });
  const consolePanel = h('section', { class: 'card', id: 'env-console' });
  main.append(
    h('nav', { class: 'crumbs' }, h('a', { href: '#/environments' }, 'Environments'), ' / ', h('span', { id: 'crumb-name' }, id)),
    head,
    h('div', { class: 'env-grid' },
      h('div', { class: 'env-col' }, summary, consolePanel),
      h('div', { class: 'env-col' }, logPanel)));

  let env = null;
  let gone = false;
  const watch = client.watchEnvironments();
  watch.on('update', (envs) => {
    const next = envs.get(id);
    if (!next) {
      if (env && !gone) {
        gone = true;
        fill(head, h('div', {}, h('h1', {}, env.name)));
        fill(summary, empty('This environment was deleted', null, h('a', { class: 'btn', href: '#/environments' }, 'Back to the list')));
      } else if (!env) {
        fill(head, h('h1', {}, 'Not found'));
        fill(summary, errorBox({ code: 'not_found', message: `No environment ${id} is visible to this token.` }));
      }
      return;
    }
    const first = !env;
    env = next;
    draw();
    if (first) {
      document.title = `${env.name} · Tether`;
      startLog();
      threadConsoleStop = threadConsole(consolePanel, client, who, id);
    }
  });
  watch.on('close', ({ error }) => error && fill(summary, errorBox(error, 'The live record stopped')));

  function draw() {
    document.getElementById('crumb-name').textContent = env.name;
    fill(head,
      h('div', {},
        h('h1', {}, env.name, ' ', statusBadge(env)),
        h('p', { class: 'subtitle' }, `${env.provider} · owned by ${env.owner ?? '—'} · `, runtimeMark(env))),
      h('div', { class: 'page-actions' }, actions(client, who, env, { onDeleted: () => navigate('#/environments') })));
    const rows = [
      ['Status', statusBadge(env)],
      ['Desired state', env.desiredState],
      ['Runtime', runtimeMark(env)],
      ['Provider', env.provider],
      ['Owner', env.owner],
      ['Resource', env.resourceId ?? '—'],
      ['Workspace', env.workspacePath ?? '—'],
      ['Restarts', env.restarts ?? 0],
      ['Restart policy', env.restartPolicy ?? '—'],
      ['Created', env.createdAt ? when(env.createdAt) : '—'],
      ['Updated', env.updatedAt ? timeEl(env.updatedAt) : '—'],
    ];
    fill(summary,
      h('div', { class: 'card-head' }, h('h2', {}, 'Record')),
      env.lastError ? h('div', { class: 'alert alert-error' }, h('strong', {}, 'Last error: '), env.lastError) : null,
      h('dl', { class: 'props' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
      h('details', { class: 'raw' }, h('summary', {}, 'The whole record (JSON)'),
        h('pre', { class: 'code', id: 'env-json' }, JSON.stringify(env, null, 2))));
  }

  // ---- the live log ----
  let logAbort = null;
  let threadConsoleStop = () => {};
  const logState = h('span', { class: 'live', 'data-state': 'connecting' }, 'Connecting…');
  const logLines = h('div', { class: 'log', id: 'log-lines', role: 'log', 'aria-live': 'off' });
  let follow = true;
  logLines.addEventListener('scroll', () => {
    follow = logLines.scrollTop + logLines.clientHeight >= logLines.scrollHeight - 8;
  });
  fill(logPanel, h('div', { class: 'card-head' }, h('h2', {}, 'Log'), logState), logLines);

  async function startLog() {
    if (!can(who, 'envs:read')) return;
    logAbort = new AbortController();
    let count = 0;
    try {
      const stream = client.followLogs(id, { tail: 200, signal: logAbort.signal });
      setLogState('open', 'Following');
      for await (const line of stream) {
        count += 1;
        appendLine(line);
      }
      if (!logAbort.signal.aborted) setLogState('closed', 'Ended');
    } catch (e) {
      if (logAbort.signal.aborted) return;
      setLogState('closed', 'Stopped');
      logLines.append(h('div', { class: 'log-line log-ERROR' }, `The log stream stopped: ${e.message} (${e.code ?? 'error'})`));
    }
    if (count === 0 && !logAbort.signal.aborted) logLines.append(h('div', { class: 'log-empty' }, 'Nothing logged.'));
  }

  function setLogState(state, text) {
    logState.dataset.state = state;
    logState.textContent = text;
  }

  function appendLine(line) {
    const t = line.ts ? new Date(line.ts) : null;
    const clock = t && !Number.isNaN(t.getTime()) ? t.toLocaleTimeString(undefined, { hour12: false }) : '';
    logLines.append(h('div', { class: `log-line log-${line.level ?? 'INFO'}`, title: line.ts ?? '' },
      h('span', { class: 'log-ts' }, clock),
      h('span', { class: `log-src log-src-${line.source ?? 'x'}` }, line.stream ?? line.source ?? ''),
      h('span', { class: 'log-msg' }, line.message ?? '')));
    while (logLines.childElementCount > MAX_LOG_LINES) logLines.firstElementChild.remove();
    if (follow) logLines.scrollTop = logLines.scrollHeight;
  }

  return () => {
    watch.close();
    logAbort?.abort();
    threadConsoleStop();
  };
}
