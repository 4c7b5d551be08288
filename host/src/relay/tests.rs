//! Hub behaviour without sockets: routing, holding, resume and the slow-peer policy.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::config::RelayConfig;

fn hub(window: usize) -> Arc<Hub> {
    let config = RelayConfig {
        window_messages: window,
        max_connections: 4,
        ..RelayConfig::default()
    };
    Relay::new(config).hub("e")
}

fn drain(outbox: &Outbox) -> Vec<Value> {
    let mut out = Vec::new();
    while outbox.take(&mut out) == Take::Frames {}
    out.iter()
        .map(|t| serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string())))
        .collect()
}

fn resume(session: &str, last: u64) -> Option<Resume> {
    Some(Resume {
        session: session.into(),
        last,
        holder: String::new(),
    })
}

#[test]
fn routes_by_thread_and_broadcasts_without_one() {
    let hub = hub(16);
    let rt = hub.attach_runtime(None).unwrap();
    let t1 = hub.attach_app(Some("t1".into()), None, None).unwrap();
    let t2 = hub.attach_app(Some("t2".into()), None, None).unwrap();
    hub.from_runtime(rt.id(), "\"for-t1\"", Some("t1"));
    hub.from_runtime(rt.id(), "\"for-all\"", None);
    assert_eq!(drain(&t1), vec![json!("for-t1"), json!("for-all")]);
    assert_eq!(drain(&t2), vec![json!("for-all")]);
}

#[test]
fn a_runtime_frame_the_relay_cannot_read_still_goes_only_to_its_thread() {
    let hub = hub(16);
    let rt = hub.attach_runtime(None).unwrap();
    let t1 = hub.attach_app(Some("t1".into()), None, None).unwrap();
    let t2 = hub.attach_app(Some("t2".into()), None, None).unwrap();
    let inbound = inbound::Inbound::Runtime(inbound::RuntimeInbound {
        hub: hub.clone(),
        conn: rt.id(),
        on_detached: None,
    });
    for text in [
        r#"{"type": 5, "threadId": "t1", "n": 1}"#,
        r#"{"type": "x", "received": "many", "threadId": "t1", "n": 2}"#,
        r#"{"type": 5, "threadId": 7, "n": 3}"#,
        r#"{"type": 5, "threadId": null, "n": 4}"#,
        "not json",
    ] {
        inbound.receive(text.into());
    }
    let n = |frames: Vec<Value>| -> Vec<Value> {
        frames
            .into_iter()
            .map(|f| f.get("n").cloned().unwrap_or(f))
            .collect()
    };
    assert_eq!(
        n(drain(&t1)),
        vec![json!(1), json!(2), json!(4), json!("not json")]
    );
    assert_eq!(n(drain(&t2)), vec![json!(4), json!("not json")]);
}

#[test]
fn messages_wait_for_the_runtime_in_order() {
    let hub = hub(16);
    hub.to_runtime("1").unwrap();
    hub.to_runtime("2").unwrap();
    let rt = hub.attach_runtime(None).unwrap();
    assert_eq!(drain(&rt), vec![json!(1), json!(2)]);
    // A plain connection acknowledges as it writes: a new one gets nothing again.
    assert!(hub.detach_runtime(rt.id()));
    let rt = hub.attach_runtime(None).unwrap();
    assert!(drain(&rt).is_empty());
}

#[test]
fn held_messages_are_bounded() {
    let hub = hub(2);
    hub.to_runtime("1").unwrap();
    hub.to_runtime("2").unwrap();
    assert_eq!(hub.to_runtime("3"), Err(RelayError::PendingFull(2)));
}

#[test]
fn a_resuming_runtime_gets_exactly_what_it_had_not_acknowledged() {
    let hub = hub(16);
    for i in 1..=5 {
        hub.to_runtime(json!({"n": i}).to_string()).unwrap();
    }
    let rt = hub.attach_runtime(resume("r", 0)).unwrap();
    let got = drain(&rt);
    assert_eq!(got[0]["type"], "relayResumed");
    assert_eq!(got[1], json!({"relaySeq": 1, "n": 1}));
    assert_eq!(got.len(), 6);
    hub.acknowledge(StreamKey::Runtime, rt.id(), 2);
    hub.detach_runtime(rt.id());
    // It had received up to 3 (but acknowledged only 2): replay starts at 4.
    let rt = hub.attach_runtime(resume("r", 3)).unwrap();
    let got = drain(&rt);
    assert_eq!(got[0]["next"], 4);
    let seqs: Vec<_> = got[1..].iter().map(|m| m["relaySeq"].clone()).collect();
    assert_eq!(seqs, vec![json!(4), json!(5)]);
}

#[test]
fn a_stopped_runtime_s_successor_gets_nothing_held_before_the_stop() {
    let hub = hub(16);
    for i in 1..=3 {
        hub.to_runtime(json!({"n": i}).to_string()).unwrap();
    }
    // Written to a runtime that never acknowledges.
    let rt = hub.attach_runtime(resume("r", 0)).unwrap();
    assert_eq!(drain(&rt).len(), 4);
    hub.detach_runtime(rt.id());
    // Held while it is away, then the environment is stopped on purpose.
    hub.to_runtime(json!({"n": 4}).to_string()).unwrap();
    hub.end_runtime(
        protocol::CLOSE_GONE,
        "environment stopped",
        AppSessions::End,
    );
    // The next runtime process runs nothing from before the stop: the apps were told
    // to treat it as not done, and they send again what they still want.
    let rt = hub.attach_runtime(resume("new-process", 0)).unwrap();
    let got = drain(&rt);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "relayResumed");
    hub.to_runtime(json!({"n": 5}).to_string()).unwrap();
    assert_eq!(drain(&rt), [json!({"relaySeq": 5, "n": 5})]);
}

#[test]
fn a_stop_writes_apps_what_is_held_for_them_then_closes_them() {
    let hub = hub(16);
    let rt = hub.attach_runtime(resume("r", 0)).unwrap();
    drain(&rt);
    let connected = hub.attach_app(None, resume("a", 0), None).unwrap();
    let plain = hub.attach_app(None, None, None).unwrap();
    let cut = hub.attach_app(None, resume("b", 0), None).unwrap();
    for o in [&connected, &plain, &cut] {
        drain(o);
    }
    hub.detach_app(cut.key(), cut.id());
    // Answers on their way when the environment stops.
    hub.from_runtime(rt.id(), json!({"answer": 1}).to_string(), None);
    hub.end_runtime(
        protocol::CLOSE_GONE,
        "environment stopped",
        AppSessions::End,
    );
    // What a later run relays is not for the ended sessions.
    hub.broadcast(json!({"later": true}).to_string());
    for o in [&connected, &plain] {
        let got = drain(o);
        assert_eq!(
            got.last().map(|m| m["answer"].clone()),
            Some(json!(1)),
            "{got:?}"
        );
        assert_eq!(o.take(&mut Vec::new()), Take::Closed(o.close_reason()));
        assert_eq!(o.close_reason().map(|r| r.code), Some(protocol::CLOSE_GONE));
    }
    // Frames sent after the stop are not relayed.
    assert!(!hub.received(connected.key(), connected.id()));
    // The session cut at the stop gets the same when it resumes: what was held, then
    // the close, and as often as it resumes until it expires.
    for _ in 0..2 {
        let again = hub.attach_app(None, resume("b", 0), None).unwrap();
        let got = drain(&again);
        assert_eq!(got[0]["type"], "relayResumed");
        assert_eq!(got[1]["answer"], 1, "{got:?}");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            again.close_reason().map(|r| r.code),
            Some(protocol::CLOSE_GONE)
        );
    }
    // A new session is not ended.
    let fresh = hub.attach_app(None, resume("c", 0), None).unwrap();
    hub.broadcast(json!({"later": true}).to_string());
    assert_eq!(drain(&fresh)[1]["later"], true);
    assert_eq!(fresh.close_reason(), None);
}

#[test]
fn an_idle_stop_keeps_the_apps_sessions() {
    let hub = hub(16);
    let app = hub.attach_app(None, resume("a", 0), None).unwrap();
    drain(&app);
    hub.detach_app(app.key(), app.id());
    hub.end_runtime(
        protocol::CLOSE_GONE,
        "environment stopped",
        AppSessions::Keep,
    );
    let app = hub.attach_app(None, resume("a", 0), None).unwrap();
    assert_eq!(drain(&app)[0]["reset"], false);
    assert_eq!(app.close_reason(), None);
    assert!(hub.received(app.key(), app.id()));
}

#[test]
fn the_host_counts_and_acknowledges_peer_frames_per_session() {
    let hub = hub(16);
    let rt = hub.attach_runtime(resume("r", 0)).unwrap();
    let _app = hub.attach_app(None, None, None).unwrap();
    for _ in 0..3 {
        hub.from_runtime(rt.id(), "{}", None);
    }
    assert_eq!(rt.pending_ack(), Some(protocol::ack_frame(3)));
    assert_eq!(rt.pending_ack(), None);
    hub.detach_runtime(rt.id());
    let rt = hub.attach_runtime(resume("r", 0)).unwrap();
    assert_eq!(drain(&rt)[0]["received"], 3);
    // A new session (a restarted runtime) starts counting afresh.
    let rt = hub.attach_runtime(resume("other", 0)).unwrap();
    assert_eq!(drain(&rt)[0]["received"], 0);
}

#[test]
fn a_slow_plain_app_is_closed_and_others_keep_receiving() {
    let hub = hub(4);
    let rt = hub.attach_runtime(None).unwrap();
    let slow = hub.attach_app(None, None, None).unwrap();
    let fast = hub.attach_app(None, None, None).unwrap();
    for i in 0..10 {
        hub.from_runtime(rt.id(), i.to_string(), None);
        assert_eq!(drain(&fast), vec![json!(i)]);
    }
    let mut out = Vec::new();
    assert!(matches!(
        slow.take(&mut out),
        Take::Closed(Some(CloseReason {
            code: CLOSE_TOO_SLOW,
            ..
        }))
    ));
}

#[test]
fn a_slow_resumable_app_is_closed_and_told_what_it_lost() {
    let hub = hub(4);
    let rt = hub.attach_runtime(None).unwrap();
    let app = hub.attach_app(None, resume("a", 0), None).unwrap();
    for i in 1..=6 {
        hub.from_runtime(rt.id(), json!({"n": i}).to_string(), None);
    }
    let mut out = Vec::new();
    assert!(matches!(
        app.take(&mut out),
        Take::Closed(Some(CloseReason {
            code: CLOSE_TOO_SLOW,
            ..
        }))
    ));
    hub.detach_app(app.key(), app.id());
    let app = hub.attach_app(None, resume("a", 0), None).unwrap();
    let got = drain(&app);
    assert_eq!(
        got[1],
        json!({"type": "relayLost", "from": 1, "to": 2, "count": 2})
    );
    let ns: Vec<_> = got[2..].iter().map(|m| m["n"].clone()).collect();
    assert_eq!(ns, vec![json!(3), json!(4), json!(5), json!(6)]);
}

#[test]
fn connections_are_limited_per_environment() {
    let hub = hub(4);
    let _kept: Vec<_> = (0..4)
        .map(|_| hub.attach_app(None, None, None).unwrap())
        .collect();
    assert_eq!(
        hub.attach_app(None, None, None).unwrap_err(),
        RelayError::TooManyConnections(4)
    );
}

#[test]
fn a_new_runtime_replaces_the_old_one() {
    let hub = hub(4);
    let old = hub.attach_runtime(None).unwrap();
    let new = hub.attach_runtime(None).unwrap();
    let mut out = Vec::new();
    assert!(matches!(
        old.take(&mut out),
        Take::Closed(Some(CloseReason {
            code: CLOSE_REPLACED,
            ..
        }))
    ));
    assert!(!hub.detach_runtime(old.id()));
    assert!(hub.runtime_connected());
    assert!(hub.detach_runtime(new.id()));
    assert!(!hub.runtime_connected());
}
