// Providers: each loaded one with what it asks for, what the operator grants it and
// what was denied (admin only: grants are the operator's business).
import { h, fill, pageHeader, empty, errorBox, loading } from '../dom.js';
import { isAdmin } from '../session.js';

export const title = 'Providers';

export function render(main, { client, who }) {
  const body = h('div', { id: 'provider-list' }, loading('Loading providers…'));
  main.append(pageHeader('Providers', 'The WebAssembly components that create and reconnect environments, and what each may reach.'), body);
  if (!isAdmin(who)) {
    fill(body, empty('Providers are shown to admins', 'What a provider is granted is the operator’s business; this token lacks the admin scope.'));
    return;
  }
  let cancelled = false;
  client.listProviders()
    .then((list) => Promise.all(list.map((p) => client.getProvider(p.name).catch(() => p))))
    .then((list) => {
      if (cancelled) return;
      if (!list.length) {
        fill(body, empty('No providers loaded', 'Built-in providers load at start; drop-ins go in .codebolt/providers/.'));
        return;
      }
      list.sort((a, b) => String(a.name).localeCompare(String(b.name)));
      fill(body, h('div', { class: 'cards' }, list.map(card)));
    })
    .catch((e) => !cancelled && fill(body, errorBox(e, 'Could not list providers')));
  return () => {
    cancelled = true;
  };
}

function card(p) {
  const asks = {
    commands: p.commands,
    urls: p.urls,
    directories: p.directories,
    'message types': p.messageTypes,
  };
  const schemaKeys = Object.keys(p.configSchema?.properties ?? {});
  return h('article', { class: 'card provider', 'data-provider': p.name },
    h('div', { class: 'card-head' },
      h('h2', {}, p.name, ' ', h('span', { class: 'muted small' }, p.version ? `v${p.version}` : '')),
      h('span', { class: `badge ${p.loadError ? 'badge-bad' : 'badge-ok'}` }, h('span', { class: 'dot' }), p.loadError ? 'load error' : 'loaded')),
    p.description ? h('p', {}, p.description) : null,
    p.loadError ? h('div', { class: 'alert alert-error' }, p.loadError) : null,
    h('dl', { class: 'props small' },
      h('dt', {}, 'Source'), h('dd', {}, source(p.source)),
      h('dt', {}, 'World'), h('dd', {}, p.world ?? '—'),
      h('dt', {}, 'SHA-256'), h('dd', { class: 'mono', title: p.sha256 ?? '' }, p.sha256 ? `${p.sha256.slice(0, 16)}…` : '—'),
      h('dt', {}, 'Config keys'), h('dd', {}, schemaKeys.length ? chips(schemaKeys) : h('span', { class: 'muted' }, 'none declared')),
      h('dt', {}, 'Operator config'), h('dd', {}, p.operatorConfigKeys?.length ? chips(p.operatorConfigKeys) : h('span', { class: 'muted' }, 'none'))),
    h('div', { class: 'grant-grid' },
      section('Asks for', asks),
      section('Granted', p.granted),
      section('Denied', p.denied, 'bad')));
}

function section(title, obj, kind) {
  const entries = Object.entries(obj ?? {}).filter(([, v]) => !(Array.isArray(v) && v.length === 0) && v !== null && v !== undefined);
  return h('div', { class: `grant grant-${kind ?? 'plain'}` }, h('h3', {}, title),
    entries.length === 0
      ? h('p', { class: 'muted small' }, 'nothing')
      : h('dl', { class: 'props small' }, entries.map(([k, v]) => [h('dt', {}, k), h('dd', {}, Array.isArray(v) ? list(v.map(text)) : h('span', { class: 'mono' }, text(v)))])));
}

function chips(items) {
  return h('span', { class: 'chips' }, items.map((k) => h('span', { class: 'chip mono' }, k)));
}

/** A value as short text: strings as they are, anything else as compact JSON. */
function text(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'string') return v;
  // A command pattern reads as the command line it admits.
  if (typeof v.program === 'string' && Array.isArray(v.args)) return [v.program, ...v.args].join(' ');
  return JSON.stringify(v);
}

/** `built-in`, or the drop-in's file. */
function source(s) {
  if (s?.kind === 'builtIn') return 'built-in';
  if (s && typeof s === 'object') return [s.kind, s.path ?? s.file].filter(Boolean).join(': ') || text(s);
  return text(s);
}

/**
 * Items one a line. Items of one command that share a long start (git's fixed `-c`
 * options, say) show it once above them, so what tells them apart is what shows.
 */
function list(items) {
  const groups = new Map();
  for (const x of items) {
    const head = x.split(' ')[0];
    if (!groups.has(head)) groups.set(head, []);
    groups.get(head).push(x);
  }
  return h('div', {}, [...groups.values()].map((group) => {
    const prefix = sharedPrefix(group);
    return [
      prefix ? h('div', { class: 'mono small muted shared', title: prefix }, `${prefix} …`) : null,
      h('ul', { class: prefix ? 'plain-list indented' : 'plain-list' }, group.map((x) =>
        h('li', { class: 'mono', title: x }, prefix ? `… ${x.slice(prefix.length).trimStart()}` : x))),
    ];
  }));
}

/** The longest start of whole words that every item has, if long enough to matter. */
function sharedPrefix(items) {
  if (items.length < 2) return '';
  let prefix = items[0];
  for (const x of items) while (!x.startsWith(prefix)) prefix = prefix.slice(0, -1);
  prefix = prefix.slice(0, prefix.lastIndexOf(' ') + 1).trimEnd();
  return prefix.length >= 24 ? prefix : '';
}
