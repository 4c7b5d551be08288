// Who is signed in: the token lives in sessionStorage (gone with the tab, never in a
// URL), and every call goes through one TetherClient on this same origin.
import { TetherClient } from '/ui/client/index.js';

const KEY = 'tether.dashboard.token';

/** The stored token, or null. */
export function storedToken() {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

/** A client for `token`; sockets get single-use tickets so the token never rides in a URL. */
export function clientFor(token) {
  return new TetherClient({ url: location.origin, token, tickets: true });
}

/**
 * Checks `token` with `whoami` and keeps it for this tab; throws the API's error
 * (`unauthorized` for a wrong token) without keeping anything.
 * @returns {Promise<{client: TetherClient, who: object}>}
 */
export async function signIn(token) {
  const client = clientFor(token);
  const who = await client.whoami();
  sessionStorage.setItem(KEY, token);
  return { client, who };
}

/** Forgets the token. */
export function signOut() {
  sessionStorage.removeItem(KEY);
}

/** Whether `who` holds the admin scope. */
export function isAdmin(who) {
  return Array.isArray(who?.scopes) && who.scopes.includes('admin');
}

/** Whether `who` may use `scope` (admin may do anything). */
export function can(who, scope) {
  return isAdmin(who) || (Array.isArray(who?.scopes) && who.scopes.includes(scope));
}
