// The audit log (admin): the newest entries first, filtered by owner.
import { h, fill, pageHeader, empty, errorBox, loading } from '../dom.js';
import { outcomeBadge, actorText, when } from '../format.js';
import { isAdmin } from '../session.js';

export const title = 'Audit log';

export function render(main, { client, who }) {
  const body = h('div', { id: 'audit-list' }, loading('Loading the audit log…'));
  const owner = h('input', { id: 'audit-owner', class: 'input', placeholder: 'any owner', maxlength: 64 });
  const limit = h('select', { id: 'audit-limit', class: 'input' }, [100, 500, 2000].map((n) => h('option', { value: n }, `last ${n}`)));
  const reload = h('button', { class: 'btn', type: 'submit' }, 'Refresh');
  main.append(pageHeader('Audit log', 'Every change, refused sign-in and thing the host did on its own, as recorded before it was answered.'));
  if (!isAdmin(who)) {
    main.append(empty('The audit log is for admins', 'This token lacks the admin scope.'));
    return;
  }
  main.append(h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); load(); } },
    h('label', { class: 'label', for: 'audit-owner' }, 'Owner'), owner, limit, reload), body);
  load();

  async function load() {
    fill(body, loading('Loading the audit log…'));
    try {
      const entries = await client.audit({ limit: Number(limit.value), owner: owner.value.trim() || undefined });
      draw(entries.reverse());
    } catch (e) {
      fill(body, errorBox(e, 'Could not read the audit log'));
    }
  }

  function draw(entries) {
    if (!entries.length) {
      fill(body, empty('Nothing recorded', owner.value ? 'No entry matches this owner.' : 'Changes appear here as they are made.'));
      return;
    }
    fill(body, h('div', { class: 'table-wrap' }, h('table', { class: 'table table-dense', id: 'audit-table' },
      h('thead', {}, h('tr', {}, ['Time', 'Actor', 'Action', 'Target', 'Owner', 'Outcome', 'Reason', 'From'].map((t) => h('th', {}, t)))),
      h('tbody', {}, entries.map((e) => h('tr', { 'data-action': e.action ?? '' },
        h('td', { class: 'nowrap muted' }, when(e.time)),
        h('td', {}, actorText(e.actor)),
        h('td', { class: 'mono small' }, e.action ?? ''),
        h('td', { class: 'mono small' }, e.target ?? ''),
        h('td', {}, e.owner ?? ''),
        h('td', {}, outcomeBadge(e.outcome)),
        h('td', { class: 'small' }, e.reason ?? (e.suppressed ? `${e.suppressed} similar left out` : '')),
        h('td', { class: 'mono small muted' }, e.remote ?? '')))))));
  }
}
