// Building the page without innerHTML: every value from the server or the user goes
// into the DOM as text, so nothing it holds can become markup or script.

/**
 * An element: `h('a', {href: '#/x', class: 'link', onclick: fn}, 'text', child)`.
 * Attributes starting with `on` become listeners; `null`/`false` children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces everything inside `el` with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A page header: a title, an optional line under it, and actions on the right. */
export function pageHeader(title, subtitle, ...actions) {
  return h('div', { class: 'page-head' },
    h('div', {}, h('h1', {}, title), subtitle ? h('p', { class: 'subtitle' }, subtitle) : null),
    h('div', { class: 'page-actions' }, actions));
}

/** An empty state: what is missing and what to do about it. */
export function empty(title, text, ...actions) {
  return h('div', { class: 'empty' }, h('h3', {}, title), text ? h('p', {}, text) : null, actions);
}

/** A red box with an error's code and message. */
export function errorBox(error, prefix) {
  return h('div', { class: 'alert alert-error', role: 'alert' }, describe(error, prefix));
}

/** An error as a sentence with its code: `Not found (not_found): no such environment`. */
export function describe(error, prefix) {
  const code = error?.code ? ` (${error.code})` : '';
  const text = error?.message ?? String(error);
  return `${prefix ? `${prefix}: ` : ''}${text}${code}`;
}

/** A spinner line while something loads. */
export function loading(what = 'Loading…') {
  return h('p', { class: 'loading' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), what);
}

/**
 * Asks for confirmation in a modal dialog; resolves true when confirmed.
 * @param {{title: string, body: string, confirm: string, danger?: boolean}} options
 */
export function confirmDialog({ title, body, confirm, danger = false }) {
  return new Promise((resolve) => {
    const dialog = h('dialog', { class: 'dialog' },
      h('form', { method: 'dialog' },
        h('h2', {}, title),
        h('p', {}, body),
        h('div', { class: 'dialog-actions' },
          h('button', { class: 'btn', value: 'cancel', type: 'submit' }, 'Cancel'),
          h('button', { class: danger ? 'btn btn-danger' : 'btn btn-primary', value: 'ok', type: 'submit', 'data-confirm': true }, confirm))));
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'ok');
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A short-lived message at the bottom of the page. */
export function toast(text, kind = 'info') {
  let box = document.getElementById('toasts');
  if (!box) document.body.append((box = h('div', { id: 'toasts', class: 'toasts', 'aria-live': 'polite' })));
  const item = h('div', { class: `toast toast-${kind}` }, text);
  box.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 8000 : 4000);
}
