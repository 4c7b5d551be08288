// Removals (admin): deleted environments whose resource the host still tries to remove,
// each with why the last attempt failed; one can be tried now (after fixing the cause)
// or dropped (removed by hand, or to be kept).
import { h, fill, pageHeader, empty, errorBox, loading, confirmDialog, toast, describe } from '../dom.js';
import { when } from '../format.js';
import { isAdmin } from '../session.js';

export const title = 'Removals';

export function render(main, { client, who }) {
  const body = h('div', { id: 'removal-list' }, loading('Loading pending removals…'));
  const reload = h('button', { class: 'btn', type: 'button', id: 'removals-refresh', onclick: () => refresh() }, 'Refresh');
  main.append(pageHeader('Removals', 'Deleted environments whose provider failed to remove the resource: tried again with backoff until it is gone.', reload));
  if (!isAdmin(who)) {
    fill(body, empty('Removals are shown to admins', 'What is left to remove is the operator’s business; this token lacks the admin scope.'));
    main.append(body);
    return;
  }
  main.append(body);
  refresh();

  async function refresh() {
    try {
      draw(await client.listRemovals());
    } catch (e) {
      fill(body, errorBox(e, 'Could not list pending removals'));
    }
  }

  async function act(what, done, doing) {
    try {
      await doing();
      toast(done);
    } catch (e) {
      toast(describe(e, `Could not ${what}`), 'error');
    }
    refresh();
  }

  function draw(removals) {
    if (!removals.length) {
      fill(body, empty('Nothing left to remove', 'Every deleted environment’s resource is gone.'));
      return;
    }
    fill(body, h('div', { class: 'table-wrap' }, h('table', { class: 'table', id: 'removal-table' },
      h('thead', {}, h('tr', {}, ['Environment', 'Owner', 'Provider', 'Resource', 'Attempts', 'Last error', 'Next attempt', ''].map((t) => h('th', {}, t)))),
      h('tbody', {}, removals.map((r) => h('tr', { 'data-removal': r.environmentId },
        h('td', {}, h('div', { class: 'strong' }, r.name), h('div', { class: 'mono small muted' }, r.environmentId)),
        h('td', {}, r.owner),
        h('td', { class: 'mono small nowrap' }, r.provider),
        h('td', { class: 'mono small' }, r.resourceId ?? '—'),
        h('td', { 'data-field': 'attempts' }, String(r.attempts)),
        h('td', { class: 'small', 'data-field': 'lastError' }, r.lastError),
        h('td', {}, r.inFlight
          ? h('span', { class: 'badge badge-busy' }, h('span', { class: 'dot' }), 'trying now')
          : h('span', { class: 'nowrap', title: `first failed ${when(r.failedAt)}` }, when(r.nextAttemptAt))),
        h('td', { class: 'right nowrap' },
          h('button', {
            class: 'btn btn-small', 'data-action': 'retry',
            onclick: () => act('try it now', `Trying ${r.name} again`, () => client.retryRemoval(r.environmentId)),
          }, 'Retry now'),
          ' ',
          h('button', {
            class: 'btn btn-small btn-danger-quiet', 'data-action': 'drop',
            onclick: async () => {
              const ok = await confirmDialog({
                title: `Stop removing ${r.name}’s resource?`,
                body: `The host stops trying to remove ${r.resourceId ?? 'it'} and leaves it as it is: drop it only once it is removed by hand, or is to be kept.`,
                confirm: 'Drop',
                danger: true,
              });
              if (ok) act('drop it', `Dropped ${r.name}`, () => client.dropRemoval(r.environmentId));
            },
          }, 'Drop'))))))));
  }
}
