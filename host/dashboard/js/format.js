// How values read on the page: times, statuses, owners.
import { h } from './dom.js';

/** `3 s ago`, `5 min ago`, `2 h ago`, else the local date and time. */
export function ago(iso) {
  if (!iso) return '—';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const secs = Math.round((Date.now() - t) / 1000);
  if (secs < 5) return 'just now';
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return when(iso);
}

/** A local date and time, to the second. */
export function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** A `<time>` showing `ago`, with the exact time on hover. */
export function timeEl(iso) {
  return h('time', { datetime: iso ?? '', title: when(iso) }, ago(iso));
}

const STATUS_KIND = {
  running: 'ok',
  starting: 'busy',
  restarting: 'busy',
  stopping: 'busy',
  stopped: 'idle',
  created: 'idle',
  error: 'bad',
};

/** A coloured badge for an environment's status, with the start phase if the record has one. */
export function statusBadge(env) {
  const status = env?.status ?? 'unknown';
  const phase = env?.startPhase ?? env?.phase;
  return h('span', { class: `badge badge-${STATUS_KIND[status] ?? 'idle'}`, 'data-status': status },
    h('span', { class: 'dot', 'aria-hidden': 'true' }), status,
    phase && status !== 'running' ? h('span', { class: 'badge-phase' }, ` · ${phase}`) : null);
}

/** A connected / not connected marker for the runtime. */
export function runtimeMark(env) {
  const up = Boolean(env?.runtime?.connected);
  return h('span', { class: up ? 'conn conn-up' : 'conn', 'data-connected': String(up) },
    h('span', { class: 'dot', 'aria-hidden': 'true' }), up ? 'connected' : 'not connected');
}

/** A badge for an audit outcome. */
export function outcomeBadge(outcome) {
  const kind = { ok: 'ok', refused: 'warn', failed: 'bad' }[outcome] ?? 'idle';
  return h('span', { class: `badge badge-${kind}` }, outcome ?? '—');
}

/** An audit actor as text. */
export function actorText(actor) {
  if (actor && typeof actor === 'object') return actor.user ?? actor.tokenId ?? JSON.stringify(actor);
  return actor ?? '—';
}
