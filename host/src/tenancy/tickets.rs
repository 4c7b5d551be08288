//! WebSocket tickets: so a browser never puts a long-lived token in a URL, it trades
//! its token for a ticket (`POST /api/v1/tickets`) and connects with `?ticket=`. A
//! ticket names one environment, one template or the events stream (see [`TicketTarget`]; and optionally a thread), works once, for at most
//! its time to live (`[tenancy] ticket_ttl_secs`), and only while the token it came from still works. Tickets live in
//! memory only, by the SHA-256 of their secret, bounded in number.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::Principal;
use super::tokens::{random_hex, sha256};
use crate::sync::MutexExt;

/// Prefix of a ticket's secret, so it is recognisable (and redacted) anywhere.
pub(crate) const TICKET_PREFIX: &str = "tkt_";
/// Most tickets outstanding at once, host-wide; past it the oldest are dropped.
const MAX_TICKETS: usize = 100_000;
/// Most tickets one token has outstanding; past it that token's oldest is dropped.
const MAX_PER_TOKEN: usize = 64;

/// What a ticket opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TicketTarget {
    /// One environment, by id (`/ws/app/{id}`).
    Environment(String),
    /// The caller's environment provisioned from a template (`/ws/app`), for the
    /// ticket's thread or the workspace named here.
    Template {
        /// The template's name.
        template: String,
        /// The workspace, for a workspace-scoped template.
        workspace: Option<String>,
    },
    /// The stream of environment changes (`/ws/events`).
    Events,
}

/// What a connect presenting a ticket opens; the ticket must be for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opening<'a> {
    /// `/ws/app/{id}`.
    Environment(&'a str),
    /// `/ws/app?ticket=` (a template connect).
    Template,
    /// `/ws/events`.
    Events,
}

/// What a ticket lets its bearer do, once.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    /// Who it acts as.
    pub(crate) principal: Principal,
    /// What it opens.
    pub(crate) target: TicketTarget,
    /// The thread it joins, if it names one.
    pub(crate) thread: Option<String>,
    expires: Instant,
}

impl Ticket {
    /// Whether it opens `opening`.
    fn opens(&self, opening: Opening<'_>) -> bool {
        match (&self.target, opening) {
            (TicketTarget::Environment(id), Opening::Environment(wanted)) => id == wanted,
            (TicketTarget::Template { .. }, Opening::Template) => true,
            (TicketTarget::Events, Opening::Events) => true,
            _ => false,
        }
    }
}

/// Why a ticket was not taken. Deliberately vague to the caller: unknown, used and
/// expired look alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ticket is unknown, used or expired")]
pub(crate) struct BadTicket;

/// Every outstanding ticket.
#[derive(Debug)]
pub(crate) struct Tickets {
    ttl: Duration,
    inner: Mutex<Inner>,
}

/// The tickets, and the orders they expire and are dropped in.
#[derive(Debug, Default)]
struct Inner {
    by_hash: HashMap<[u8; 32], Ticket>,
    /// Every ticket issued and not yet expired, oldest first (so soonest to expire:
    /// every ticket has the same time to live); a redeemed one stays here until its
    /// time comes or the queue is compacted.
    by_age: VecDeque<([u8; 32], Instant)>,
    /// The outstanding tickets of each token, oldest first.
    by_token: HashMap<String, VecDeque<[u8; 32]>>,
}

impl Inner {
    fn remove(&mut self, hash: &[u8; 32]) -> Option<Ticket> {
        let ticket = self.by_hash.remove(hash)?;
        let token = ticket.principal.token_id();
        if let Some(mine) = self.by_token.get_mut(token) {
            mine.retain(|h| h != hash);
            if mine.is_empty() {
                self.by_token.remove(token);
            }
        }
        Some(ticket)
    }

    /// Drops the expired tickets, then the oldest while more than `keep` are left.
    fn drop_oldest(&mut self, now: Instant, keep: usize) {
        while let Some(&(hash, expires)) = self.by_age.front() {
            if expires > now && self.by_hash.len() <= keep {
                break;
            }
            self.by_age.pop_front();
            self.remove(&hash);
        }
        // Redeemed tickets' places: compacted once they outnumber the live ones.
        if self.by_age.len() > 2 * self.by_hash.len() + 1024 {
            let live = &self.by_hash;
            self.by_age.retain(|(h, _)| live.contains_key(h));
        }
    }
}

impl Tickets {
    /// No tickets yet; each will work for `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::default(),
        }
    }

    /// How long a ticket works.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A ticket for `principal` to open `target` (on `thread`); the secret is
    /// returned, only its hash kept. A token with [`MAX_PER_TOKEN`] outstanding loses
    /// its own oldest, never another token's.
    pub(crate) fn issue(
        &self,
        principal: Principal,
        target: TicketTarget,
        thread: Option<String>,
    ) -> String {
        let secret = format!("{TICKET_PREFIX}{}", random_hex(32));
        let hash = sha256(&secret);
        let now = Instant::now();
        let expires = now + self.ttl;
        let token = principal.token_id().to_owned();
        let ticket = Ticket {
            principal,
            target,
            thread,
            expires,
        };
        let mut inner = self.inner.locked();
        inner.drop_oldest(now, MAX_TICKETS - 1);
        let oldest_of_token = inner
            .by_token
            .get(&token)
            .filter(|mine| mine.len() >= MAX_PER_TOKEN)
            .and_then(|mine| mine.front().copied());
        if let Some(oldest) = oldest_of_token {
            inner.remove(&oldest);
        }
        inner.by_hash.insert(hash, ticket);
        inner.by_age.push_back((hash, expires));
        inner.by_token.entry(token).or_default().push_back(hash);
        secret
    }

    /// Takes the ticket `secret` (it works once) if it is known, unexpired, for
    /// `opening`, and its token still works.
    pub(crate) fn redeem(&self, secret: &str, opening: Opening<'_>) -> Result<Ticket, BadTicket> {
        let hash = sha256(secret);
        let ticket = {
            let mut inner = self.inner.locked();
            let found = (inner.by_hash)
                .get_key_value(&hash)
                .map(|(k, _)| bool::from(k.ct_eq(&hash)));
            if found != Some(true) {
                return Err(BadTicket);
            }
            inner.remove(&hash).ok_or(BadTicket)?
        };
        if ticket.expires <= Instant::now() || !ticket.opens(opening) || !ticket.principal.is_live()
        {
            return Err(BadTicket);
        }
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::tenancy::principal::Grant;
    use crate::tenancy::scopes::Scopes;

    fn token(id: &str) -> Principal {
        Principal(Arc::new(Grant {
            token_id: id.into(),
            user: "alice".into(),
            scopes: Scopes::USER_DEFAULT,
            environments: None,
            expires_at: None,
            revoked: CancellationToken::new(),
        }))
    }

    fn issue(tickets: &Tickets, who: &Principal) -> String {
        tickets.issue(who.clone(), TicketTarget::Environment("e".into()), None)
    }

    #[test]
    fn a_token_that_floods_loses_its_own_oldest_tickets_and_no_one_elses() {
        let tickets = Tickets::new(Duration::from_secs(60));
        let (flood, other) = (token("tok_flood"), token("tok_other"));
        let others = issue(&tickets, &other);
        let flooded: Vec<String> = (0..MAX_PER_TOKEN + 10)
            .map(|_| issue(&tickets, &flood))
            .collect();
        let opening = Opening::Environment("e");
        // The flooding token's ten oldest are gone, its newest all work, once each.
        for secret in &flooded[..10] {
            assert_eq!(tickets.redeem(secret, opening).err(), Some(BadTicket));
        }
        for secret in &flooded[10..] {
            assert!(tickets.redeem(secret, opening).is_ok());
            assert_eq!(tickets.redeem(secret, opening).err(), Some(BadTicket));
        }
        assert!(tickets.redeem(&others, opening).is_ok());
        let inner = tickets.inner.locked();
        assert!(inner.by_hash.is_empty() && inner.by_token.is_empty());
    }

    #[test]
    fn expired_tickets_are_dropped_as_new_ones_are_issued() {
        let tickets = Tickets::new(Duration::ZERO);
        let who = token("tok_a");
        let first = issue(&tickets, &who);
        issue(&tickets, &who);
        assert_eq!(
            tickets.redeem(&first, Opening::Environment("e")).err(),
            Some(BadTicket)
        );
        // Only the last one issued is held (the expired one went when it came).
        assert_eq!(tickets.inner.locked().by_hash.len(), 1);
    }
}
