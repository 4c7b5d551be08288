//! Reading `tether.toml`: defaults, overrides, grants and refusals.

use std::net::IpAddr;

use super::*;

fn load(text: &str) -> Result<ServeConfig, ConfigError> {
    let dir = tempfile::tempdir().map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let path = dir.path().join("tether.toml");
    std::fs::write(&path, text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    ServeConfig::load(
        "127.0.0.1:0"
            .parse()
            .map_err(|_| ConfigError::Invalid("addr".into()))?,
        dir.path().to_owned(),
        &path,
    )
}

#[test]
fn missing_file_gives_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = ServeConfig::load(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().to_owned(),
        &dir.path().join("nope.toml"),
    )
    .unwrap();
    assert_eq!(c.lifecycle.start_timeout, Duration::from_secs(60));
    assert_eq!(c.grant_for("local-process").commands.len(), 1);
    assert!(c.grant_for("someone-else").commands.is_empty());
}

#[test]
fn operator_grant_replaces_default() {
    let c = load(
        "[providers.local-process]\ncommands = [{ program = \"python3\", args = [\"-m\", \"*\"] }]\n",
    )
    .unwrap();
    let g = c.grant_for("local-process");
    assert_eq!(g.commands.len(), 1);
    assert_eq!(g.commands[0].program(), "python3");
}

#[test]
fn config_only_table_keeps_the_default_grant() {
    let c = load("[providers.local-process]\nconfig = { command = \"x\" }\n").unwrap();
    assert_eq!(c.grant_for("local-process").commands.len(), 1);
    let merged = c.merged_config("local-process", None, &serde_json::Map::new());
    assert_eq!(merged["command"], "x");
    let c = load(
        "[providers.http-sandbox]\nurls = [\"http://127.0.0.1:*\"]\nconfig = { apiKey = \"k\" }\n",
    )
    .unwrap();
    assert_eq!(c.grant_for("http-sandbox").urls.len(), 1);
    assert!(!format!("{c:?}").contains("\"k\""));
    assert!(matches!(
        load("[providers.x]\nconfig = 3\n"),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn a_templates_secrets_go_only_to_the_provider_it_runs_on() {
    let c = load(
        "[templates.chat]\nprovider = \"http-sandbox\"\nscope = \"thread\"\n\
         config = { apiKey = \"k\" }\nsecret_keys = [\"apiKey\"]\n",
    )
    .unwrap();
    let none = serde_json::Map::new();
    let merged = c.merged_config("http-sandbox", Some("chat"), &none);
    assert_eq!(merged["apiKey"], "k");
    // An environment the template made before it moved to `http-sandbox`.
    let merged = c.merged_config("local-process", Some("chat"), &none);
    assert!(merged.get("apiKey").is_none(), "{merged:?}");
}

#[test]
fn relay_section_is_read_and_checked() {
    let c = load("[relay]\nwindow_messages = 20000\nmax_message_kib = 64\n").unwrap();
    assert_eq!(c.relay.window_messages, 20000);
    assert_eq!(c.relay.max_message_bytes, 64 << 10);
    assert!(matches!(
        load("[relay]\nmax_connections = 0\n"),
        Err(ConfigError::Invalid(_))
    ));
    assert!(matches!(
        load("[relay]\nping_interval_secs = 50\n"),
        Err(ConfigError::Invalid(_))
    ));
}

#[test]
fn urls_directories_and_net_settings_parse() {
    let c = load(
        "[providers.x]\nurls = [\"https://*.example.com\"]\ndirectories = [\"/srv/repos\"]\n\
         [net]\nconnect_timeout_ms = 250\nmax_connections = 3\n\
         [net.hosts]\n\"Metadata.Test\" = \"169.254.169.254\"\n",
    )
    .unwrap();
    let g = c.grant_for("x");
    assert_eq!(g.urls[0].to_string(), "https://*.example.com:443");
    assert_eq!(g.directories, vec![PathBuf::from("/srv/repos")]);
    assert_eq!(c.net.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.net.max_connections, 3);
    assert_eq!(
        c.net.hosts.get("metadata.test"),
        Some(&IpAddr::from([169, 254, 169, 254]))
    );
    assert!(matches!(
        load("[providers.x]\nurls = [\"nope\"]\n"),
        Err(ConfigError::Invalid(_))
    ));
    assert!(matches!(
        load("[providers.x]\ndirectories = [\"relative\"]\n"),
        Err(ConfigError::Invalid(_))
    ));
}

#[test]
fn the_compile_cache_defaults_to_the_data_dir_and_can_move_or_be_off() {
    let c = load("").unwrap();
    let dir = c.compile_cache.dir.clone().unwrap();
    assert_eq!(dir, c.data_dir.join(".codebolt/cache"));
    let c = load("[cache]\ndir = \"/var/cache/tether\"\n").unwrap();
    assert_eq!(
        c.compile_cache.dir,
        Some(PathBuf::from("/var/cache/tether"))
    );
    let c = load("[cache]\nenabled = false\n").unwrap();
    assert_eq!(c.compile_cache, CompileCacheConfig::disabled());
    assert!(matches!(
        load("[cache]\ndir = \"cache\"\n"),
        Err(ConfigError::Invalid(_))
    ));
}

#[test]
fn unknown_keys_and_zero_timeouts_are_errors() {
    assert!(matches!(
        load("bogus = 1\n"),
        Err(ConfigError::Parse { .. })
    ));
    assert!(matches!(
        load("[lifecycle]\nstart_timeout_secs = 0\n"),
        Err(ConfigError::Invalid(_))
    ));
}

#[test]
fn durations_and_sizes_beyond_any_intent_are_errors_not_wrapped_or_overflowing() {
    // Each was taken before: a size in KiB shifted past 64 bits came out as 0 bytes,
    // and a near-endless interval overflowed the clock when a deadline was reckoned.
    let cases = [
        (
            "[relay]\nmax_message_kib = 18014398509481984\n",
            "relay.max_message_kib must be at most 65536",
        ),
        (
            "[relay]\nmax_message_kib = 65537\n",
            "relay.max_message_kib must be at most 65536",
        ),
        (
            "[relay]\nwindow_kib = 18014398509481984\n",
            "relay.window_kib must be at most",
        ),
        (
            "[relay]\nping_interval_secs = 9000000000000000000\nidle_timeout_secs = 9100000000000000000\n",
            "relay.ping_interval_secs must be at most 31622400 (a year)",
        ),
        (
            "[relay]\nsession_ttl_secs = 31622401\n",
            "relay.session_ttl_secs must be at most",
        ),
        (
            "[lifecycle]\ncall_timeout_secs = 9000000000000000000\n",
            "lifecycle.call_timeout_secs must be at most",
        ),
        (
            "[health]\ninterval_ms = 9000000000000000000\n",
            "health.interval_ms must be at most",
        ),
        (
            "[net]\nconnect_timeout_ms = 9000000000000000000\n",
            "net.connect_timeout_ms must be at most",
        ),
        (
            "[limits]\nmemory_mib = 17592186044416\n",
            "limits.memory_mib must be 1-1048576",
        ),
        (
            "[limits]\nworkspace_mib = 0\n",
            "limits.workspace_mib must be 1-1073741824",
        ),
        (
            "[limits]\nstate_mib = 1073741825\n",
            "limits.state_mib must be 1-1073741824",
        ),
        (
            "[limits]\nmax_open_files = 0\n",
            "limits.max_open_files must be > 0",
        ),
        (
            "[limits]\nhost_open_files = 0\n",
            "limits.host_open_files must be > 0",
        ),
        (
            "[limits]\ncompile_mib = 63\n",
            "limits.compile_mib must be 64-1048576, not 63",
        ),
        (
            "[limits]\ncompile_secs = 0\n",
            "limits.compile_secs must be > 0",
        ),
    ];
    for (toml, needle) in cases {
        match load(toml) {
            Err(ConfigError::Invalid(why)) => assert!(why.contains(needle), "{toml}: {why}"),
            other => panic!("{toml}: {other:?}"),
        }
    }
    let c = load("[limits]\ncompile_mib = 512\ncompile_secs = 30\n").unwrap();
    assert_eq!(
        (c.limits.compile_bytes, c.limits.compile_time),
        (512 << 20, Duration::from_secs(30))
    );
    let c = load("[limits]\nworkspace_mib = 1073741824\nstate_mib = 1\n").unwrap();
    assert_eq!(
        (c.limits.workspace_bytes, c.limits.state_bytes),
        (1 << 50, 1 << 20)
    );
    let c = load("[relay]\nmax_message_kib = 65536\nsession_ttl_secs = 31622400\n").unwrap();
    assert_eq!(c.relay.max_message_bytes, 64 << 20);
    // A year in milliseconds is the bound, as it is in seconds; a millisecond more is not.
    let c = load("[health]\ninterval_ms = 31622400000\n").unwrap();
    assert_eq!(c.health.interval, Duration::from_secs(31_622_400));
    let err = load("[health]\ninterval_ms = 31622400001\n").unwrap_err();
    assert!(
        err.to_string().contains("at most 31622400000 (a year)"),
        "{err}"
    );
}

#[test]
fn set_env_entries_are_names_or_prefixes_and_env_entries_names() {
    let c = load("[providers.p]\nset_env = [\"TETHER_RUNTIME_URL\", \"APP_*\", \"LD_PRELOAD\"]\n")
        .unwrap();
    assert_eq!(c.grant_for("p").set_env.len(), 3);
    assert!(c.grant_for("p").commands.is_empty());
    for bad in ["[\"*\"]", "[\"A=B\"]", "[\"A*B\"]", "[\"\"]"] {
        let err = load(&format!("[providers.p]\nset_env = {bad}\n")).unwrap_err();
        assert!(err.to_string().contains("providers.p"), "{bad}: {err}");
    }
    assert!(load("[providers.p]\nenv = [\"PATH\\n\"]\n").is_err());
    let defaults = load("").unwrap();
    assert!(
        (defaults.grant_for("git-worktree").set_env.iter()).any(|v| v == "TETHER_RUNTIME_TOKEN")
    );
}

#[test]
fn audit_and_auth_throttle_settings_have_defaults_and_bounds() {
    let d = load("").unwrap();
    assert_eq!(d.audit, AuditConfig::default());
    assert_eq!(d.throttle.max_failures, 20);
    assert_eq!(d.throttle.window, Duration::from_secs(60));
    let c = load(
        "[audit]\nmax_file_mib = 2\nkeep_files = 0\nsampled_per_second = 3\n\
         [auth]\nmax_failures_per_minute = 5\nmax_tracked_addresses = 10\n",
    )
    .unwrap();
    assert_eq!(c.audit.max_file_bytes, 2 << 20);
    assert_eq!((c.audit.keep_files, c.audit.sampled_per_second), (0, 3));
    assert_eq!((c.throttle.max_failures, c.throttle.max_addresses), (5, 10));
    assert!(c.audit_path().ends_with(".codebolt/audit.jsonl"));
    for bad in [
        "[audit]\nmax_file_mib = 0\n",
        "[audit]\nsampled_per_second = 0\n",
        "[auth]\nmax_failures_per_minute = 0\n",
        "[auth]\nmax_tracked_addresses = 0\n",
    ] {
        assert!(matches!(load(bad), Err(ConfigError::Invalid(_))), "{bad}");
    }
    assert!(matches!(
        load("[auth]\ntoken = \"x\"\n"),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn tls_keys_are_read_and_checked() {
    let c = load(
        "[net]\nextra_ca_files = [\"/etc/ca.pem\"]\nuse_builtin_roots = false\n\
         [server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\npublic_url = \"https://t.example\"\n",
    )
    .unwrap();
    assert_eq!(c.net.extra_ca_files, vec![PathBuf::from("/etc/ca.pem")]);
    assert!(!c.net.use_builtin_roots);
    assert_eq!(
        c.serving.runtime_base("127.0.0.1:1".parse().unwrap()),
        "wss://t.example"
    );
    let defaults = load("").unwrap();
    assert!(defaults.net.use_builtin_roots && defaults.serving.tls.is_none());
    let err = load("[net]\nuse_builtin_roots = false\n").unwrap_err();
    assert!(
        err.to_string().contains("needs net.extra_ca_files"),
        "{err}"
    );
    let err = load("[server]\npublic_url = \"https://t.example/path\"\n").unwrap_err();
    assert!(err.to_string().contains("server.public_url"), "{err}");
    assert!(load("[server]\ntls_cert = \"c.pem\"\n").is_err());
}

#[test]
fn sharing_memory_images_is_left_to_the_host_unless_set() {
    assert_eq!(load("").unwrap().limits.share_memory_images, None);
    let set = |v: &str| load(&format!("[limits]\nshare_memory_images = {v}\n"));
    assert_eq!(
        set("false").unwrap().limits.share_memory_images,
        Some(false)
    );
    assert_eq!(set("true").unwrap().limits.share_memory_images, Some(true));
    assert!(set("\"yes\"").is_err(), "not a boolean");
}

#[test]
fn a_config_file_over_one_mebibyte_is_refused_unread() {
    // Comments only: a file just at the limit loads (as the defaults).
    let line = format!("#{}\n", "x".repeat(1022));
    let at_limit = line.repeat((MAX_CONFIG_BYTES / 1024) as usize);
    assert_eq!(at_limit.len() as u64, MAX_CONFIG_BYTES);
    load(&at_limit).unwrap();
    let over = format!("{at_limit}#");
    match load(&over) {
        Err(ConfigError::TooLarge { limit, .. }) => assert_eq!(limit, MAX_CONFIG_BYTES),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let message = load(&over).unwrap_err().to_string();
    assert!(message.contains("at most 1 MiB"), "{message}");
}

#[test]
fn a_tether_toml_others_may_change_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    std::fs::write(&path, "[limits]\nmemory_mib = 128\n").unwrap();
    let load = || ServeConfig::load("127.0.0.1:0".parse().unwrap(), dir.path().into(), &path);
    let mode = |m| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
    mode(0o666);
    let err = load().unwrap_err().to_string();
    assert!(
        err.contains("tether.toml") && err.contains("every user may write it (mode 0666)"),
        "{err}"
    );
    // The group's write is warned of, not refused: user-private groups are common.
    mode(0o664);
    assert_eq!(load().unwrap().limits.memory_bytes, 128 << 20);
    mode(0o644);
    // Another user's file (root's is taken): its owner may make it writable at will.
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = load().unwrap_err().to_string();
        assert!(err.contains("belongs to another user (uid 65534)"), "{err}");
    }
}
