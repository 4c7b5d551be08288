// Tokens (admin): the list, making one with chosen scopes (its secret shown once),
// revoking.
import { h, fill, pageHeader, empty, errorBox, loading, confirmDialog, toast, describe } from '../dom.js';
import { timeEl, when } from '../format.js';
import { isAdmin } from '../session.js';

export const title = 'Tokens';

const SCOPES = ['envs:read', 'envs:write', 'envs:delete', 'relay', 'admin'];
const DEFAULT_SCOPES = ['envs:read', 'envs:write', 'envs:delete', 'relay'];

export function render(main, { client, who }) {
  const body = h('div', { id: 'token-list' }, loading('Loading tokens…'));
  const secretSlot = h('div', { id: 'secret-slot' });
  main.append(pageHeader('Tokens', 'User tokens: each acts for one user, with scopes that only narrow.'), secretSlot);
  if (!isAdmin(who)) {
    main.append(empty('Tokens are managed by admins', 'This token lacks the admin scope.'));
    return;
  }
  main.append(createForm(), body);
  refresh();

  async function refresh() {
    try {
      draw(await client.listTokens());
    } catch (e) {
      fill(body, errorBox(e, 'Could not list tokens'));
    }
  }

  function draw(tokens) {
    if (!tokens.length) {
      fill(body, empty('No user tokens yet', 'Make one above for each user of this host; the admin token is the operator’s.'));
      return;
    }
    tokens.sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)));
    fill(body, h('div', { class: 'table-wrap' }, h('table', { class: 'table', id: 'token-table' },
      h('thead', {}, h('tr', {}, ['Id', 'User', 'Scopes', 'Environments', 'Note', 'Created', 'Expires', ''].map((t) => h('th', {}, t)))),
      h('tbody', {}, tokens.map((t) => h('tr', { 'data-token': t.id },
        h('td', { class: 'mono small' }, t.id),
        h('td', { class: 'strong' }, t.user),
        h('td', {}, h('span', { class: 'chips' }, (t.scopes ?? []).map((s) => h('span', { class: `chip ${s === 'admin' ? 'chip-warn' : ''}` }, s)))),
        h('td', { class: 'small' }, t.environments ? t.environments.join(', ') : h('span', { class: 'muted' }, 'all of the user’s')),
        h('td', { class: 'small' }, t.note ?? ''),
        h('td', { class: 'muted' }, timeEl(t.createdAt)),
        h('td', {}, t.expired ? h('span', { class: 'badge badge-bad' }, 'expired') : t.expiresAt ? h('span', { title: t.expiresAt }, when(t.expiresAt)) : h('span', { class: 'muted' }, 'never')),
        h('td', { class: 'right' }, h('button', {
          class: 'btn btn-small btn-danger-quiet', 'data-action': 'revoke',
          onclick: async () => {
            const ok = await confirmDialog({ title: `Revoke ${t.id}?`, body: `${t.user}’s token stops working at once and its connections are closed.`, confirm: 'Revoke', danger: true });
            if (!ok) return;
            try {
              await client.revokeToken(t.id);
              toast(`Revoked ${t.id}`);
              refresh();
            } catch (e) {
              toast(describe(e, 'Could not revoke'), 'error');
            }
          },
        }, 'Revoke'))))))));
  }

  function createForm() {
    const user = h('input', { id: 'token-user', class: 'input', required: true, maxlength: 64, pattern: '[A-Za-z0-9._\\-]+', placeholder: 'alice', autocomplete: 'off' });
    const scopes = SCOPES.map((s) => h('input', { type: 'checkbox', value: s, checked: DEFAULT_SCOPES.includes(s), 'data-scope': s }));
    const expires = h('select', { id: 'token-expires', class: 'input' },
      [['', 'Never'], ['86400', '1 day'], ['604800', '7 days'], ['2592000', '30 days'], ['31536000', '1 year']].map(([v, t]) => h('option', { value: v }, t)));
    const note = h('input', { id: 'token-note', class: 'input', maxlength: 256, placeholder: 'what it is for' });
    const error = h('div', { class: 'alert alert-error', role: 'alert', hidden: true });
    const submit = h('button', { class: 'btn btn-primary', type: 'submit', id: 'token-submit' }, 'Create token');
    return h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, 'New token')),
      error,
      h('form', {
        class: 'form-row',
        onsubmit: async (event) => {
          event.preventDefault();
          error.hidden = true;
          submit.disabled = true;
          const spec = { user: user.value.trim(), scopes: scopes.filter((c) => c.checked).map((c) => c.value) };
          if (expires.value) spec.expiresInSecs = Number(expires.value);
          if (note.value.trim()) spec.note = note.value.trim();
          try {
            const made = await client.createToken(spec);
            showSecret(made);
            user.value = '';
            note.value = '';
            refresh();
          } catch (e) {
            error.textContent = describe(e, 'Could not create the token');
            error.hidden = false;
          } finally {
            submit.disabled = false;
          }
        },
      },
      h('div', { class: 'field' }, h('label', { class: 'label', for: 'token-user' }, 'User'), user),
      h('div', { class: 'field' }, h('span', { class: 'label' }, 'Scopes'),
        h('div', { class: 'checks' }, scopes.map((c) => h('label', { class: 'check' }, c, ' ', c.value)))),
      h('div', { class: 'field' }, h('label', { class: 'label', for: 'token-expires' }, 'Expires'), expires),
      h('div', { class: 'field grow' }, h('label', { class: 'label', for: 'token-note' }, 'Note'), note),
      h('div', { class: 'field' }, h('span', { class: 'label' }, '\u00a0'), submit)));
  }

  function showSecret(made) {
    const code = h('code', { class: 'secret mono', id: 'token-secret' }, made.token);
    fill(secretSlot, h('div', { class: 'alert alert-success secret-box' },
      h('div', {}, h('strong', {}, `Token for ${made.user} created (${made.id}). `),
        'Copy it now: it is shown this once and the host keeps only its hash.'),
      h('div', { class: 'secret-row' }, code,
        h('button', { class: 'btn btn-small', type: 'button', onclick: async (e) => {
          try {
            await navigator.clipboard.writeText(made.token);
            e.currentTarget.textContent = 'Copied';
          } catch {
            getSelection().selectAllChildren(code);
          }
        } }, 'Copy'),
        h('button', { class: 'btn btn-small btn-quiet', type: 'button', onclick: () => fill(secretSlot) }, 'Done'))));
  }
}
