//! The WIT round trip: the real built-in `local-process` component, loaded and called
//! through the generated bindings, with every type crossing the boundary both ways.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::config::{CommandPattern, Grant};

const T: Duration = Duration::from_secs(20);

async fn local_process() -> (Engine, Arc<LoadedProvider>) {
    let engine = Engine::new(LimitsConfig::default(), Default::default()).expect("engine");
    let (_, bytes) = builtin::BUILTINS[0];
    let provider = engine
        .load(bytes.to_vec(), ProviderSource::BuiltIn)
        .await
        .expect("local-process loads");
    (engine, provider)
}

/// What environment `env-1` at `workspace` gives its instance, and the reader of the
/// state it persists.
fn setup(
    provider: &LoadedProvider,
    workspace: &std::path::Path,
    state_dir: std::path::PathBuf,
    made: Option<[(u64, u64); 2]>,
    grant: Grant,
) -> (InstanceSetup, StateReader) {
    let (state, rx) = persisted::channel(Default::default());
    let setup = InstanceSetup {
        env_id: "env-1".into(),
        workspace: workspace.to_owned(),
        state_dir,
        made,
        request: provider.description.request(),
        grant,
        runtime: Arc::new(NoRuntime),
        state,
        refusals: Default::default(),
    };
    (setup, rx)
}

async fn instance(
    engine: &Engine,
    provider: &LoadedProvider,
    workspace: &std::path::Path,
    grant: Grant,
) -> (ProviderHandle, StateReader) {
    let state_dir = workspace.join(".provider-state");
    let (setup, rx) = self::setup(provider, workspace, state_dir, None, grant);
    (
        engine
            .instantiate(provider, setup)
            .await
            .expect("instantiate"),
        rx,
    )
}

fn init(workspace: &std::path::Path, config: serde_json::Value) -> Call {
    Call::Start(Box::new(InitVars {
        environment_id: "env-1".into(),
        environment_name: "one".into(),
        config: config.as_object().cloned().unwrap_or_default(),
        resource_id: None,
        runtime_url: "ws://127.0.0.1:1/ws/runtime/env-1".into(),
        runtime_token: "1.abc".into(),
        project_path: None,
        workspace_host_path: workspace.display().to_string(),
    }))
}

fn sleep_grant() -> Grant {
    Grant {
        commands: vec![CommandPattern::new("sleep".into(), vec!["*".into()]).expect("pattern")],
        env: vec!["PATH".into()],
        set_env: vec!["TETHER_*".into()],
        ..Grant::default()
    }
}

#[tokio::test]
async fn info_crosses_the_boundary() {
    let (_, p) = local_process().await;
    let d = &p.description;
    assert_eq!(d.name, "local-process");
    assert!(!d.version.is_empty());
    assert!(d.commands.iter().any(|c| c.matches(
        "tether",
        &["runtime".to_owned()],
        &Default::default()
    )));
    assert_eq!(d.config_schema["type"], "object");
    assert_eq!(p.sha256.len(), 64);
}

#[tokio::test]
async fn start_files_health_and_stop_round_trip() {
    let (engine, p) = local_process().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (h, events) = instance(&engine, &p, dir.path(), sleep_grant()).await;

    let started = h
        .call(
            init(dir.path(), json!({"command": "sleep", "args": ["30"]})),
            T,
        )
        .await
        .expect("start");
    let Reply::Started(outcome) = started else {
        panic!("start replied {started:?}")
    };
    assert_eq!(outcome.resource_id, dir.path().display().to_string());
    assert!(outcome.metadata.contains_key("pid"));
    let persisted = events.next().await.expect("state changes");
    assert_eq!(persisted.resource_id, Some(outcome.resource_id.clone()));

    let health = h.call(Call::Health, T).await.expect("health");
    assert!(matches!(
        health,
        Reply::Health(HealthReport {
            state: HealthState::Healthy,
            ..
        })
    ));

    h.call(Call::WriteFile("a/b.txt".into(), "ünïcode ✓".into()), T)
        .await
        .expect("write");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a/b.txt")).unwrap(),
        "ünïcode ✓"
    );
    let read = h
        .call(Call::ReadFile("a/b.txt".into()), T)
        .await
        .expect("read");
    assert!(matches!(read, Reply::Text(ref t) if t == "ünïcode ✓"));

    let missing = h.call(Call::ReadFile("nope.txt".into()), T).await;
    assert!(
        matches!(
            missing,
            Err(CallError::Provider(ProviderFailure {
                kind: FailureKind::NotFound,
                ..
            }))
        ),
        "{missing:?}"
    );
    let escape = h.call(Call::ReadFile("../../etc/passwd".into()), T).await;
    assert!(
        matches!(
            escape,
            Err(CallError::Provider(ProviderFailure {
                kind: FailureKind::InvalidInput,
                ..
            }))
        ),
        "{escape:?}"
    );
    let diff = h.call(Call::DiffFiles, T).await;
    assert!(matches!(
        diff,
        Err(CallError::Provider(ProviderFailure {
            kind: FailureKind::Unsupported,
            ..
        }))
    ));

    h.call(Call::Stop, T).await.expect("stop");
    let health = h.call(Call::Health, T).await.expect("health after stop");
    assert!(matches!(
        health,
        Reply::Health(HealthReport {
            state: HealthState::Unhealthy,
            ..
        })
    ));
    h.shutdown().await;
    assert!(matches!(
        h.call(Call::Health, T).await,
        Err(CallError::Closed(_))
    ));
}

#[tokio::test]
async fn calls_that_wait_finish_on_the_executor_in_order() {
    let (engine, p) = local_process().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (h, _events) = instance(&engine, &p, dir.path(), sleep_grant()).await;
    h.call(
        init(dir.path(), json!({"command": "sleep", "args": ["30"]})),
        T,
    )
    .await
    .expect("start");
    // Filesystem calls wait on the blocking pool, so each starts in the caller's task
    // and finishes on the guest executor; health checks answer in the first step.
    for i in 0..5 {
        let path = format!("f{i}.txt");
        h.call(Call::WriteFile(path.clone(), i.to_string()), T)
            .await
            .expect("write");
        let read = h.call(Call::ReadFile(path), T).await.expect("read");
        assert!(matches!(read, Reply::Text(ref t) if *t == i.to_string()));
        h.call(Call::Health, T).await.expect("health");
    }
    h.shutdown().await;
    assert!(matches!(
        h.call(Call::Health, T).await,
        Err(CallError::Closed(_))
    ));
}

#[tokio::test]
async fn an_ungranted_command_is_denied_to_the_provider() {
    let (engine, p) = local_process().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (h, _events) = instance(&engine, &p, dir.path(), sleep_grant()).await;
    let denied = h
        .call(
            init(
                dir.path(),
                json!({"command": "/bin/sh", "args": ["-c", "id"]}),
            ),
            T,
        )
        .await;
    match denied {
        Err(CallError::Provider(f)) => {
            assert_eq!(f.kind, FailureKind::Denied, "{f:?}");
            assert!(f.message.contains("not granted"), "{}", f.message);
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    // A denial is an answer, not a crash: the instance still serves.
    assert!(h.call(Call::Health, T).await.is_ok());
}

#[tokio::test]
async fn a_corrupt_component_is_refused_with_a_reason() {
    let engine = Engine::new(LimitsConfig::default(), Default::default()).expect("engine");
    let err = engine
        .load(b"\0asm garbage".to_vec(), ProviderSource::BuiltIn)
        .await
        .expect_err("garbage must not load");
    assert!(matches!(err, EngineError::NotComponent(_)), "{err}");
    // Past the header, wasmtime's own reason.
    let err = engine
        .load(
            b"\0asm\x0d\0\x01\0garbage".to_vec(),
            ProviderSource::BuiltIn,
        )
        .await
        .expect_err("garbage must not load");
    assert!(matches!(err, EngineError::Compile(_)), "{err}");
}

#[test]
fn initial_images_are_shared_only_where_the_mapping_cap_leaves_room() {
    // Linux's default holds 10,000 instances sharing (about 15,000 at most).
    assert!(super::share_initial_images(Some(65_530)));
    assert!(super::share_initial_images(Some(262_144)));
    // A lower cap keeps sharing's two mappings each for more instances.
    assert!(!super::share_initial_images(Some(40_000)));
    assert!(!super::share_initial_images(None));
}

#[tokio::test]
async fn an_idle_instance_gives_its_stack_back_and_calls_on_after() {
    let (engine, p) = local_process().await;
    let ws = tempfile::tempdir().expect("tempdir");
    let (h, _rx) = instance(&engine, &p, ws.path(), Grant::default()).await;
    h.call(Call::Health, T).await.expect("health");
    let (pages, stacks) = engine.stacks.tracked();
    assert_eq!(stacks, 1, "the instance's stack is known to its slot");
    assert!(pages > 0, "a call touched its stack");

    // Too recent: kept.
    engine.stacks.sweep_ahead(Duration::ZERO);
    assert_eq!(engine.stacks.tracked().0, pages);
    engine.stacks.sweep_ahead(stacks::IDLE * 2);
    assert_eq!(engine.stacks.tracked(), (0, 1), "idle: pages given back");

    // The next calls fault the pages in again and answer as before.
    for _ in 0..3 {
        h.call(Call::Health, T)
            .await
            .expect("health after the sweep");
    }
    assert!(engine.stacks.tracked().0 > 0);
    h.shutdown().await;
    assert_eq!(
        engine.stacks.tracked(),
        (0, 0),
        "the ended instance's slot is gone"
    );
}

/// Descriptors this process holds open on `dir`.
fn open_on(dir: &std::path::Path) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|to| to == dir))
        .count()
}

#[tokio::test]
async fn directories_are_opened_when_the_guest_first_uses_them_and_closed_with_it() {
    let (engine, p) = local_process().await;
    let ws = tempfile::tempdir().expect("tempdir");
    let root = ws.path().canonicalize().expect("canonical");
    let state = root.join(".provider-state");
    let (h, _rx) = instance(&engine, &p, &root, sleep_grant()).await;
    h.call(Call::Health, T).await.expect("health");
    assert_eq!(open_on(&root), 0, "no file used yet: workspace not open");
    assert_eq!(open_on(&state), 0, "no file used yet: state not open");

    let start = json!({"command": "sleep", "args": ["30"]});
    h.call(init(&root, start), T).await.expect("start");
    h.call(Call::WriteFile("a.txt".into(), "x".into()), T)
        .await
        .expect("write");
    let read = h.call(Call::ReadFile("a.txt".into()), T).await;
    assert!(
        matches!(read, Ok(Reply::Text(ref t)) if t == "x"),
        "{read:?}"
    );
    assert_eq!(open_on(&root), 1, "opened once, on first use, and kept");
    assert_eq!(open_on(&state), 1);

    h.call(Call::Stop, T).await.expect("stop");
    h.shutdown().await;
    assert_eq!(open_on(&root), 0, "closed with the instance");
    assert_eq!(open_on(&state), 0);
}

/// The host made the workspace through no link and noted which directory it is; a
/// path swapped since (here: another directory at it) hands the provider nothing.
#[tokio::test]
async fn a_workspace_other_than_the_one_the_host_made_is_not_preopened() {
    use std::os::unix::fs::MetadataExt;
    let (engine, p) = local_process().await;
    let ws = tempfile::tempdir().expect("tempdir");
    let workspace = ws.path().join("w");
    let state_dir = ws.path().join(".provider-state");
    std::fs::create_dir(&workspace).expect("mkdir");
    std::fs::create_dir(&state_dir).expect("mkdir");
    let id = |p: &std::path::Path| {
        let m = std::fs::metadata(p).expect("stat");
        (m.dev(), m.ino())
    };
    let made = [id(&workspace), id(&state_dir)];
    std::fs::rename(&workspace, ws.path().join("w.aside")).expect("rename");
    std::fs::create_dir(&workspace).expect("mkdir");
    let (setup, _rx) = setup(&p, &workspace, state_dir, Some(made), Grant::default());
    let made = engine.instantiate(&p, setup).await;
    let Err(EngineError::Instantiate(why)) = made else {
        panic!("instantiated over another workspace: {:?}", made.err());
    };
    assert!(
        why.contains("another directory is there than the one the host made"),
        "{why}"
    );
}

#[tokio::test]
async fn a_missing_workspace_is_named_when_the_instance_is_made_or_first_used() {
    let (engine, p) = local_process().await;
    let ws = tempfile::tempdir().expect("tempdir");
    let gone = ws.path().join("gone");
    let state_dir = ws.path().join(".provider-state");
    let (setup, _rx) = setup(&p, &gone, state_dir, None, Grant::default());
    let made = engine.instantiate(&p, setup).await;
    let Err(EngineError::Instantiate(why)) = made else {
        panic!("instantiated over a missing workspace: {:?}", made.err());
    };
    assert!(why.contains(&gone.display().to_string()), "{why}");

    // Removed after the instance was made, before its guest used it: the call fails
    // naming the directory, and nothing else is opened in its place.
    std::fs::create_dir(&gone).expect("mkdir");
    let (h, _rx) = instance(&engine, &p, &gone, sleep_grant()).await;
    let start = json!({"command": "sleep", "args": ["30"]});
    h.call(init(&gone, start), T).await.expect("start");
    std::fs::remove_dir_all(&gone).expect("rmdir");
    let read = h.call(Call::ReadFile("a.txt".into()), T).await;
    let Err(CallError::Trapped(why)) = read else {
        panic!("read in a removed workspace: {read:?}");
    };
    assert!(why.contains(&gone.display().to_string()), "{why}");

    // Replaced by another directory at the same path: not opened in its place.
    std::fs::create_dir(&gone).expect("mkdir");
    let (h, _rx) = instance(&engine, &p, &gone, sleep_grant()).await;
    let start = json!({"command": "sleep", "args": ["30"]});
    h.call(init(&gone, start), T).await.expect("start");
    std::fs::rename(&gone, ws.path().join("moved")).expect("move away");
    std::fs::create_dir(&gone).expect("another directory at the path");
    std::fs::write(gone.join("a.txt"), "not yours").expect("write");
    let read = h.call(Call::ReadFile("a.txt".into()), T).await;
    let Err(CallError::Trapped(why)) = read else {
        panic!("read in a replaced workspace: {read:?}");
    };
    assert!(why.contains("another directory"), "{why}");
}
