//! WebSocket tickets: so a browser never puts a long-lived token in a URL, it trades
//! its token for a ticket (`POST /api/v1/tickets`) and connects with `?ticket=`. A
//! ticket names one environment, one template or the events stream (see [`TicketTarget`]; and optionally a thread), works once, for at most
//! its time to live (`[tenancy] ticket_ttl_secs`), and only while the token it came from still works. Tickets live in
//! memory only, by the SHA-256 of their secret, bounded in number.

use std::collections::HashMap;
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
    by_hash: Mutex<HashMap<[u8; 32], Ticket>>,
}

impl Tickets {
    /// No tickets yet; each will work for `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            by_hash: Mutex::default(),
        }
    }

    /// How long a ticket works.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A ticket for `principal` to open `target` (on `thread`); the secret is
    /// returned, only its hash kept.
    pub(crate) fn issue(
        &self,
        principal: Principal,
        target: TicketTarget,
        thread: Option<String>,
    ) -> String {
        let secret = format!("{TICKET_PREFIX}{}", random_hex(32));
        let now = Instant::now();
        let ticket = Ticket {
            principal,
            target,
            thread,
            expires: now + self.ttl,
        };
        let mut map = self.by_hash.locked();
        map.retain(|_, t| t.expires > now);
        if map.len() >= MAX_TICKETS {
            // Unused tickets of a flood: the ones closest to expiring go first.
            let mut by_age: Vec<([u8; 32], Instant)> =
                map.iter().map(|(h, t)| (*h, t.expires)).collect();
            by_age.sort_by_key(|(_, at)| *at);
            for (hash, _) in by_age.into_iter().take(map.len() + 1 - MAX_TICKETS) {
                map.remove(&hash);
            }
        }
        map.insert(sha256(&secret), ticket);
        secret
    }

    /// Takes the ticket `secret` (it works once) if it is known, unexpired, for
    /// `opening`, and its token still works.
    pub(crate) fn redeem(&self, secret: &str, opening: Opening<'_>) -> Result<Ticket, BadTicket> {
        let hash = sha256(secret);
        let ticket = {
            let mut map = self.by_hash.locked();
            let found = map
                .get_key_value(&hash)
                .map(|(k, _)| bool::from(k.ct_eq(&hash)));
            if found != Some(true) {
                return Err(BadTicket);
            }
            map.remove(&hash).ok_or(BadTicket)?
        };
        if ticket.expires <= Instant::now() || !ticket.opens(opening) || !ticket.principal.is_live()
        {
            return Err(BadTicket);
        }
        Ok(ticket)
    }
}
