// Signing in: a token pasted once, checked with `whoami`, kept for this tab only.
import { h, describe } from '../dom.js';
import { signIn } from '../session.js';

export const title = 'Sign in';

export function render(main, { onSignedIn }) {
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'tth_…', required: true, class: 'input mono',
  });
  const error = h('div', { id: 'signin-error', class: 'alert alert-error', role: 'alert', hidden: true });
  const button = h('button', { id: 'signin-submit', class: 'btn btn-primary btn-block', type: 'submit' }, 'Sign in');
  const form = h('form', { class: 'signin-form', onsubmit: submit },
    h('label', { for: 'token', class: 'label' }, 'API token'),
    input,
    h('p', { class: 'hint' }, 'The operator’s token (printed by ', h('code', {}, 'tether serve'),
      ' and kept in ', h('code', {}, '.codebolt/api-token'), ') or a user token made with ',
      h('code', {}, 'tether token create'), '. It stays in this tab and is forgotten when you close it.'),
    error,
    button);

  async function submit(event) {
    event.preventDefault();
    const token = input.value.trim();
    error.hidden = true;
    if (token.startsWith('tkt_')) {
      error.textContent = 'That is a WebSocket ticket: it opens one connection and cannot sign in. Paste an API token (tth_…).';
      error.hidden = false;
      return;
    }
    button.disabled = true;
    button.textContent = 'Signing in…';
    try {
      onSignedIn(await signIn(token));
    } catch (e) {
      error.textContent = e.code === 'unauthorized'
        ? `This token was not accepted: ${e.message} (${e.code})`
        : describe(e, 'Could not sign in');
      error.hidden = false;
      input.select();
    } finally {
      button.disabled = false;
      button.textContent = 'Sign in';
    }
  }

  main.append(h('div', { class: 'signin' },
    h('div', { class: 'card signin-card' },
      h('h1', {}, 'Sign in to Tether'),
      h('p', { class: 'subtitle' }, 'Remote agent environments: their status, logs and threads.'),
      form)));
  input.focus();
}
