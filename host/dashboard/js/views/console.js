// The thread console: an app WebSocket on one thread of an environment (opened with
// a single-use ticket), a box to send JSON (or text, sent as an `echo`), and the
// frames that come back.
import { h, fill, describe } from '../dom.js';
import { can } from '../session.js';

/** Frames kept in the transcript. */
const MAX_FRAMES = 500;

/**
 * Renders the console into `panel`; answers a function that closes its connection.
 */
export function threadConsole(panel, client, who, id) {
  if (!can(who, 'relay')) {
    fill(panel, h('div', { class: 'card-head' }, h('h2', {}, 'Thread console')),
      h('p', { class: 'muted' }, 'This token lacks the relay scope, which thread connections need.'));
    return () => {};
  }
  let app = null;
  let sent = 0;
  const state = h('span', { class: 'live', id: 'console-state', 'data-state': 'closed' }, 'Not connected');
  const thread = h('input', { id: 'console-thread', class: 'input mono', value: 'main', maxlength: 256, 'aria-label': 'thread id' });
  const connectBtn = h('button', { id: 'console-connect', class: 'btn', type: 'button', onclick: toggle }, 'Connect');
  const input = h('textarea', {
    id: 'console-input', class: 'input mono', rows: 3, spellcheck: 'false',
    placeholder: '{"type": "echo", "payload": "hello"}  — or plain text, sent as an echo',
  });
  const sendBtn = h('button', { id: 'console-send', class: 'btn btn-primary', type: 'submit' }, 'Send');
  const error = h('div', { class: 'alert alert-error', role: 'alert', hidden: true });
  const transcript = h('div', { class: 'transcript', id: 'console-transcript', role: 'log' },
    h('div', { class: 'log-empty' }, 'Connect to a thread, then send a message: the runtime’s replies appear here.'));
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  const form = h('form', { class: 'console-form', onsubmit: submit }, input,
    h('div', { class: 'console-actions' }, h('span', { class: 'hint' }, 'Ctrl+Enter sends'), sendBtn));
  fill(panel,
    h('div', { class: 'card-head' }, h('h2', {}, 'Thread console'), state),
    h('div', { class: 'console-bar' }, h('label', { class: 'label', for: 'console-thread' }, 'Thread'), thread, connectBtn),
    transcript, error, form);

  function setState(s, text) {
    state.dataset.state = s;
    state.textContent = text;
  }

  function toggle() {
    if (app) disconnect();
    else connect();
  }

  function connect() {
    const t = thread.value.trim();
    if (!t) return showError({ message: 'Name a thread first.' });
    error.hidden = true;
    app = client.connectApp(id, { thread: t });
    thread.disabled = true;
    connectBtn.textContent = 'Disconnect';
    setState('connecting', 'Connecting…');
    transcript.replaceChildren();
    note(`thread ${t}`);
    app.on('resumed', ({ reset }) => setState('open', reset ? 'Connected (new session)' : 'Connected'));
    app.on('reconnecting', () => setState('reconnecting', 'Reconnecting…'));
    app.on('lost', ({ count }) => note(`${count} message(s) were lost while away`));
    app.on('message', (m) => frame('in', m));
    app.on('close', ({ error: e }) => {
      if (e) showError(e, 'The connection ended');
      finish();
    });
  }

  function disconnect() {
    app?.close();
    finish();
  }

  function finish() {
    if (!app) return;
    app = null;
    thread.disabled = false;
    connectBtn.textContent = 'Connect';
    setState('closed', 'Not connected');
  }

  function submit(event) {
    event.preventDefault();
    error.hidden = true;
    const text = input.value.trim();
    if (!text) return;
    let message;
    try {
      const parsed = JSON.parse(text);
      message = parsed && typeof parsed === 'object' && !Array.isArray(parsed) && typeof parsed.type === 'string'
        ? parsed
        : { type: 'echo', payload: parsed };
    } catch {
      message = { type: 'echo', payload: text };
    }
    if (message.requestId === undefined) message = { ...message, requestId: `dash-${Date.now().toString(36)}-${++sent}` };
    if (!app) connect();
    try {
      app.send(message);
      frame('out', message);
      input.value = '';
    } catch (e) {
      showError(e, 'Not sent');
    }
  }

  function frame(direction, m) {
    transcript.querySelector('.log-empty')?.remove();
    const kind = m?.type === 'error' ? 'error' : m?.type === 'environmentStatus' ? 'status' : direction;
    transcript.append(h('div', { class: `frame frame-${kind}`, 'data-type': m?.type ?? '' },
      h('span', { class: 'frame-dir' }, direction === 'out' ? '→' : '←'),
      h('span', { class: 'frame-type' }, m?.type ?? '?'),
      h('code', { class: 'frame-body' }, JSON.stringify(m))));
    while (transcript.childElementCount > MAX_FRAMES) transcript.firstElementChild.remove();
    transcript.scrollTop = transcript.scrollHeight;
  }

  function note(text) {
    transcript.append(h('div', { class: 'frame frame-note' }, text));
  }

  function showError(e, prefix) {
    error.textContent = describe(e, prefix);
    error.hidden = false;
  }

  return () => app?.close();
}
