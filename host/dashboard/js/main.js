// The dashboard's shell: hash routes to views, the header (who is signed in, the
// navigation), and signing out. Each view renders into <main> and returns a function
// that stops what it started (sockets, log streams) when the page changes.
import { fill, h, loading, errorBox } from './dom.js';
import { storedToken, clientFor, signOut, isAdmin } from './session.js';
import * as signin from './views/signin.js';
import * as environments from './views/environments.js';
import * as environment from './views/environment.js';
import * as providers from './views/providers.js';
import * as tokens from './views/tokens.js';
import * as audit from './views/audit.js';
import * as removals from './views/removals.js';

const main = document.getElementById('main');
let session = null; // {client, who}
let cleanup = () => {};

/** `#/environments/abc` → `{page: 'environments', arg: 'abc'}`. */
function route() {
  const [page, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  return { page: page || 'environments', arg: rest.length ? decodeURIComponent(rest.join('/')) : null };
}

function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function showHeader() {
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  nav.hidden = !session;
  who.hidden = !session;
  if (!session) return;
  const admin = isAdmin(session.who);
  for (const a of nav.querySelectorAll('[data-admin]')) a.hidden = !admin;
  document.getElementById('who-user').textContent = session.who.user;
  document.getElementById('who-scopes').textContent = (session.who.scopes ?? []).join(' ');
  const { page } = route();
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.page === page);
}

async function render() {
  cleanup();
  cleanup = () => {};
  const { page, arg } = route();
  if (!session || page === 'signin') {
    if (session && page === 'signin') return navigate('#/environments');
    showHeader();
    document.title = 'Sign in · Tether';
    fill(main);
    cleanup = signin.render(main, {
      onSignedIn: (s) => {
        session = s;
        navigate('#/environments');
      },
    }) ?? (() => {});
    return;
  }
  showHeader();
  const ctx = { client: session.client, who: session.who, navigate };
  const views = {
    environments: arg ? environment : environments,
    providers,
    tokens,
    audit,
    removals,
  };
  const view = views[page];
  if (!view) {
    fill(main, errorBox({ code: 'not_found', message: `There is no page “${page}”.` }));
    return;
  }
  document.title = `${view.title ?? page} · Tether`;
  fill(main);
  cleanup = view.render(main, ctx, arg) ?? (() => {});
}

async function start() {
  document.getElementById('signout').addEventListener('click', () => {
    signOut();
    session = null;
    navigate('#/signin');
  });
  window.addEventListener('hashchange', render);
  const token = storedToken();
  if (token) {
    fill(main, loading('Signing in…'));
    const client = clientFor(token);
    try {
      session = { client, who: await client.whoami() };
    } catch (error) {
      // A token that stopped working (revoked, rotated, expired) signs the tab out.
      if (error.code === 'unauthorized') signOut();
      else {
        fill(main, errorBox(error, 'The server could not be reached'),
          h('p', {}, h('button', { class: 'btn', onclick: () => location.reload() }, 'Try again')));
        return;
      }
    }
  }
  render();
}

start();
