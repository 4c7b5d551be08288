// The environments list, live over `/ws/events` (a snapshot, then each change: no
// polling), with start/stop/restart/delete and the create form.
import { h, fill, pageHeader, empty, errorBox, loading, confirmDialog, toast, describe } from '../dom.js';
import { statusBadge, runtimeMark, timeEl } from '../format.js';
import { can, isAdmin } from '../session.js';

export const title = 'Environments';

export function render(main, ctx) {
  const { client, who } = ctx;
  const live = h('span', { id: 'live', class: 'live', 'data-state': 'connecting' }, 'Connecting…');
  const createBtn = can(who, 'envs:write')
    ? h('button', { id: 'new-env', class: 'btn btn-primary', onclick: () => toggleCreate() }, 'New environment')
    : null;
  const createSlot = h('div', { id: 'create-slot' });
  const body = h('div', { id: 'env-list' }, loading('Loading environments…'));
  main.append(
    pageHeader('Environments', isAdmin(who) ? 'Every user’s environments.' : `Environments owned by ${who.user}.`, live, createBtn),
    createSlot,
    body);

  const watch = client.watchEnvironments();
  let snapshotSeen = false;
  watch.on('open', () => setLive('open', 'Live'));
  watch.on('reconnecting', () => setLive('reconnecting', 'Reconnecting…'));
  watch.on('close', ({ error }) => {
    setLive('closed', 'Disconnected');
    if (error) fill(body, errorBox(error, 'The live list stopped'));
  });
  watch.on('update', (envs) => {
    snapshotSeen = true;
    draw([...envs.values()]);
  });
  const ticker = setInterval(() => snapshotSeen && draw([...watch.environments.values()]), 15000);

  function setLive(state, text) {
    live.dataset.state = state;
    live.textContent = text;
  }

  function draw(envs) {
    envs.sort((a, b) => String(a.name).localeCompare(String(b.name)));
    if (envs.length === 0) {
      fill(body, empty('No environments yet',
        'An environment is a workspace, sandbox or machine with an agent runtime in it. Create one from a provider or a template.',
        createBtn ? h('button', { class: 'btn btn-primary', onclick: () => toggleCreate(true) }, 'New environment') : null));
      return;
    }
    const showOwner = isAdmin(who);
    fill(body, h('div', { class: 'table-wrap' }, h('table', { class: 'table', id: 'env-table' },
      h('thead', {}, h('tr', {},
        h('th', {}, 'Name'), h('th', {}, 'Provider'), showOwner ? h('th', {}, 'Owner') : null,
        h('th', {}, 'Status'), h('th', {}, 'Runtime'), h('th', {}, 'Updated'), h('th', { class: 'right' }, 'Actions'))),
      h('tbody', {}, envs.map((env) => row(env, showOwner))))));
  }

  function row(env, showOwner) {
    const href = `#/environments/${encodeURIComponent(env.id)}`;
    return h('tr', { 'data-env': env.id, 'data-name': env.name, 'data-status': env.status },
      h('td', {}, h('a', { href, class: 'strong' }, env.name ?? env.id), h('div', { class: 'muted mono small' }, env.id)),
      h('td', {}, env.provider ?? '—'),
      showOwner ? h('td', {}, env.owner ?? '—') : null,
      h('td', {}, statusBadge(env), env.lastError ? h('div', { class: 'small error-text', title: env.lastError }, env.lastError) : null),
      h('td', {}, runtimeMark(env)),
      h('td', { class: 'muted' }, timeEl(env.updatedAt)),
      h('td', { class: 'right nowrap' }, actions(client, who, env)));
  }

  let createOpen = false;
  function toggleCreate(open = !createOpen) {
    createOpen = open;
    fill(createSlot, open ? createForm(ctx, () => toggleCreate(false)) : null);
  }

  return () => {
    clearInterval(ticker);
    watch.close();
  };
}

/** Start/stop/restart/delete buttons for one environment, as the token allows. */
export function actions(client, who, env, { onDeleted } = {}) {
  const running = env.desiredState === 'running';
  const act = (label, name, fn, opts = {}) => h('button', {
    class: `btn btn-small ${opts.danger ? 'btn-danger-quiet' : ''}`,
    'data-action': name,
    onclick: async (event) => {
      const button = event.currentTarget;
      if (opts.confirm && !(await confirmDialog(opts.confirm))) return;
      button.disabled = true;
      try {
        await fn();
        if (name === 'delete') {
          toast(`Deleted ${env.name}`);
          onDeleted?.();
        }
      } catch (e) {
        toast(describe(e, `Could not ${name} ${env.name}`), 'error');
      } finally {
        button.disabled = false;
      }
    },
  }, label);
  const out = [];
  if (can(who, 'envs:write')) {
    if (running) out.push(act('Stop', 'stop', () => client.stopEnvironment(env.id)));
    else out.push(act('Start', 'start', () => client.startEnvironment(env.id)));
    out.push(act('Restart', 'restart', () => client.restartEnvironment(env.id)));
  }
  if (can(who, 'envs:delete')) {
    out.push(act('Delete', 'delete', () => client.deleteEnvironment(env.id), {
      danger: true,
      confirm: {
        title: `Delete ${env.name}?`,
        body: 'It is stopped first, then its record, its log and what its provider keeps for it are removed. This cannot be undone.',
        confirm: 'Delete',
        danger: true,
      },
    }));
  }
  return h('div', { class: 'btn-group' }, out);
}

/** The create form: from a provider (name, provider, config) or from a template. */
function createForm(ctx, close) {
  const { client, navigate } = ctx;
  const error = h('div', { class: 'alert alert-error', role: 'alert', hidden: true });
  const tabs = h('div', { class: 'tabs', role: 'tablist' });
  const panel = h('div', {});
  const card = h('section', { class: 'card create-card', id: 'create-form' },
    h('div', { class: 'card-head' }, h('h2', {}, 'New environment'),
      h('button', { class: 'btn btn-quiet btn-small', type: 'button', onclick: close }, 'Cancel')),
    tabs, error, panel);

  const modes = { provider: fromProvider, template: fromTemplate };
  for (const [mode, label] of [['provider', 'From a provider'], ['template', 'From a template']]) {
    tabs.append(h('button', { type: 'button', class: 'tab', 'data-mode': mode, onclick: () => show(mode) }, label));
  }
  show('provider');

  function show(mode) {
    for (const t of tabs.children) t.classList.toggle('active', t.dataset.mode === mode);
    error.hidden = true;
    fill(panel, modes[mode]());
  }

  function fail(e, what) {
    error.textContent = describe(e, what);
    error.hidden = false;
  }

  function fromProvider() {
    const name = h('input', { id: 'create-name', class: 'input', required: true, maxlength: 64, pattern: '[A-Za-z0-9._\\-]+', placeholder: 'dev', autocomplete: 'off' });
    const providerSlot = h('div', {}, loading('Loading providers…'));
    const start = h('input', { id: 'create-start', type: 'checkbox', checked: true });
    const rows = h('div', { class: 'kv-rows', id: 'create-config' });
    const addRow = (key = '', value = '') => rows.append(h('div', { class: 'kv-row' },
      h('input', { class: 'input mono kv-key', placeholder: 'key', value: key, 'aria-label': 'config key' }),
      h('input', { class: 'input mono kv-value', placeholder: 'value (JSON or text)', value, 'aria-label': 'config value' }),
      h('button', { type: 'button', class: 'btn btn-quiet btn-small', 'aria-label': 'remove', onclick: (e) => e.currentTarget.parentElement.remove() }, '✕')));
    let provider;
    // Only admins may list providers; anyone else names one.
    const providers = isAdmin(ctx.who) ? client.listProviders() : Promise.reject(new Error('not an admin'));
    providers.then((list) => {
      const loaded = list.filter((p) => !p.loadError);
      provider = h('select', { id: 'create-provider', class: 'input', required: true },
        loaded.map((p) => h('option', { value: p.name, selected: p.name === 'local-process' }, `${p.name}${p.description ? ` — ${p.description}` : ''}`)));
      fill(providerSlot, provider);
    }).catch(() => {
      provider = h('input', { id: 'create-provider', class: 'input', required: true, placeholder: 'local-process', value: 'local-process' });
      fill(providerSlot, provider, h('p', { class: 'hint' }, 'The provider’s name, as your operator gave it to you.'));
    });
    const submit = h('button', { class: 'btn btn-primary', type: 'submit', id: 'create-submit' }, 'Create');
    return h('form', {
      class: 'form-grid',
      onsubmit: async (event) => {
        event.preventDefault();
        error.hidden = true;
        let config;
        try {
          config = readConfig(rows);
        } catch (e) {
          return fail(e);
        }
        submit.disabled = true;
        try {
          const env = await client.createEnvironment({ name: name.value.trim(), provider: provider.value, config, start: start.checked });
          toast(`Created ${env.name}`);
          close();
          navigate(`#/environments/${encodeURIComponent(env.id)}`);
        } catch (e) {
          fail(e, 'Could not create it');
        } finally {
          submit.disabled = false;
        }
      },
    },
    field('Name', name, 'Letters, digits, dot, underscore and dash; unique on this host.'),
    field('Provider', providerSlot),
    field('Config', h('div', {}, rows, h('button', { type: 'button', class: 'btn btn-quiet btn-small', id: 'add-config', onclick: () => addRow() }, '+ Add a key')),
      'Values that parse as JSON (numbers, true, objects) are sent as such; anything else as text.'),
    h('label', { class: 'check' }, start, ' Start it now'),
    h('div', { class: 'form-actions' }, submit));
  }

  function fromTemplate() {
    const slot = h('div', {}, loading('Loading templates…'));
    client.listTemplates().then((templates) => {
      if (!templates.length) {
        fill(slot, empty('No templates', 'The operator defines templates in tether.toml ([templates.NAME]).'));
        return;
      }
      const select = h('select', { id: 'template', class: 'input' },
        templates.map((t) => h('option', { value: t.name }, `${t.name} — ${t.provider}, one per ${t.scope}`)));
      const key = h('input', { id: 'template-key', class: 'input', placeholder: 'main', value: 'main', maxlength: 256 });
      const keyField = field('Thread', key);
      const sync = () => {
        const t = templates.find((x) => x.name === select.value);
        keyField.hidden = t?.scope === 'user';
        keyField.querySelector('.label').textContent = t?.scope === 'workspace' ? 'Workspace' : 'Thread';
      };
      select.addEventListener('change', sync);
      sync();
      const submit = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Create and start');
      fill(slot, h('form', {
        class: 'form-grid',
        onsubmit: async (event) => {
          event.preventDefault();
          error.hidden = true;
          submit.disabled = true;
          const t = templates.find((x) => x.name === select.value);
          const k = key.value.trim() || 'main';
          try {
            const id = await provision(client, t, k);
            close();
            navigate(`#/environments/${encodeURIComponent(id)}`);
          } catch (e) {
            fail(e, 'Could not provision it');
          } finally {
            submit.disabled = false;
          }
        },
      }, field('Template', select, 'Provider, config and restart policy come from the template.'), keyField,
      h('div', { class: 'form-actions' }, submit)));
    }).catch((e) => fill(slot, errorBox(e, 'Could not list templates')));
    return slot;
  }

  return card;
}

/** Connects once through the template (which finds or creates and starts the environment) and answers its id. */
function provision(client, template, key) {
  const options = template.scope === 'workspace' ? { thread: 'dashboard', workspace: key } : { thread: key };
  const app = client.connectTemplate(template.name, { ...options, maxAttempts: 1 });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(null, { code: 'timeout', message: 'no answer from the host in 30 s' }), 30000);
    const done = (id, err) => {
      clearTimeout(timer);
      app.close();
      if (id) resolve(id);
      else reject(err);
    };
    app.on('message', (m) => {
      if (m.type === 'provisioned') done(m.environmentId);
    });
    app.on('close', ({ error }) => done(null, error ?? { code: 'closed', message: 'the connection closed' }));
  });
}

/** The config rows as an object; throws on an empty or repeated key. */
function readConfig(rows) {
  const config = {};
  for (const row of rows.querySelectorAll('.kv-row')) {
    const key = row.querySelector('.kv-key').value.trim();
    const raw = row.querySelector('.kv-value').value;
    if (!key && !raw) continue;
    if (!key) throw new Error('A config value has no key.');
    if (Object.hasOwn(config, key)) throw new Error(`The config key “${key}” is given twice.`);
    try {
      config[key] = JSON.parse(raw);
    } catch {
      config[key] = raw;
    }
  }
  return config;
}

function field(label, control, hint) {
  return h('div', { class: 'field' }, h('label', { class: 'label' }, label), control, hint ? h('p', { class: 'hint' }, hint) : null);
}
