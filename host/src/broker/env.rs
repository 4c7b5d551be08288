//! The environment of a brokered child and the program it runs: the operator's
//! pass-through variables (`env`), the variables a provider may set (`set_env`,
//! exact names or `PREFIX*`), never a loader or tool-configuration variable unless
//! `set_env` names it exactly, and the program resolved against the host's `PATH`
//! before the child's environment exists, so a provider-set `PATH` cannot choose it.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Denied;
use crate::config::{Grant, valid_env_name};

/// Longest value a provider may set, in bytes.
pub(super) const MAX_VALUE: usize = 32 << 10;
/// Most variables one spawn may set.
pub(super) const MAX_VARS: usize = 64;

/// Prefixes of variables that load code or configure a tool (the dynamic loader,
/// interpreters, git, shells, TLS, ssh, curl, compilers, Kerberos, Docker, package
/// managers). A `set_env` wildcard never admits them.
const TOOL_PREFIXES: &[&str] = &[
    "LD_",
    "DYLD_",
    "GIT_",
    "BASH_",
    "PYTHON",
    "PERL",
    "RUBY",
    "NODE_",
    "NPM_",
    "JAVA_",
    "_JAVA_",
    "JDK_",
    "LUA_",
    "GCONV_",
    "GLIBC_",
    "MALLOC_",
    "OPENSSL_",
    "SSL",
    "SSH_",
    "XDG_",
    "LESS",
    "GEM_",
    "BUNDLE_",
    "CARGO_",
    "RUSTC",
    "RUSTUP_",
    "GO",
    "CC",
    "CXX",
    "CFLAGS",
    "LDFLAGS",
    "CURL_",
    "GCC_",
    "KRB5",
    "DOCKER_",
    // Runtimes that load a profiler, startup hook or agent named by a variable, and
    // Erlang's flags (`-eval`).
    "CORECLR_",
    "DOTNET_",
    "COMPLUS_",
    "ERL_",
    // Package managers: an index, registry, config file or certificate of the
    // provider's choosing installs (and runs) its code. `npm_config_*` is `NPM_`.
    "PIP_",
    "PIPX_",
    "PIPENV_",
    "UV_",
    "POETRY_",
    "PDM_",
    "CONDA",
    "YARN_",
    "PNPM_",
    "BUN_",
    "DENO_",
    "COREPACK_",
    "COMPOSER",
    // Build tools: flags, wrappers and search paths of compilers and linkers.
    "CGO_",
    "CPP",
    "PKG_CONFIG",
    "RUSTDOC",
    // Programs other tools run: rsync's remote shell, Subversion's and CVS's ssh
    // and editor, systemd's pager and editor, Terraform's CLI config and arguments.
    "RSYNC_",
    "SVN_",
    "CVS",
    "SYSTEMD_",
    "TF_CLI_",
    // Tools' plugin and module directories, config files and load paths.
    "HELM_",
    "ANSIBLE_",
    "NIX_",
    "JULIA_",
    "GUILE_",
    "TCL",
    "R_LIBS",
    "GTK_",
    "GIO_",
    "GST_PLUGIN",
    "QT_PLUGIN",
    "GNUPG",
    // Proxies by another name.
    "SOCKS",
];

/// Whole names of such variables.
const TOOL_NAMES: &[&str] = &[
    "PATH",
    "IFS",
    "ENV",
    "HOME",
    "SHELL",
    "SHELLOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "CDPATH",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "BROWSER",
    "CLASSPATH",
    "LOCPATH",
    "NLSPATH",
    "HOSTALIASES",
    "RESOLV_HOST_CONF",
    "TMPDIR",
    "CURL_CA_BUNDLE",
    "RUSTFLAGS",
    "RUST_MIN_STACK",
    // Shells' and tools' own configuration files.
    "ZDOTDIR",
    "INPUTRC",
    "WGETRC",
    "TERMINFO",
    "KUBECONFIG",
    "REQUESTS_CA_BUNDLE",
    "COMPILER_PATH",
    // Files and programs these tools load or run: PHP's ini (`auto_prepend_file`),
    // the AWS config (`credential_process`), vim's startup commands, sudo's askpass,
    // Maven's and Gradle's JVM options (`-javaagent`), Mercurial's hooks, R's
    // profiles, make's extra makefiles and flags, man's pager, shells' history file.
    "PHPRC",
    "PHP_INI_SCAN_DIR",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "VIMINIT",
    "EXINIT",
    "MYVIMRC",
    "SUDO_ASKPASS",
    "MAVEN_OPTS",
    "GRADLE_OPTS",
    "HGRCPATH",
    "R_PROFILE",
    "R_PROFILE_USER",
    "R_ENVIRON",
    "R_ENVIRON_USER",
    "MAKEFILES",
    "MAKEFLAGS",
    "MFLAGS",
    "MANPAGER",
    "TERMINFO_DIRS",
    "HISTFILE",
    // More programs tools run (tar's `--to-command`, zip's `-TT`, editors, gh's
    // pager and browser), compilers' programs and search paths, and TLS roots.
    "TAR_OPTIONS",
    "ZIPOPT",
    "SUDO_EDITOR",
    "FCEDIT",
    "HGEDITOR",
    "GH_PAGER",
    "GH_EDITOR",
    "GH_BROWSER",
    "LD",
    "AR",
    "AS",
    "NM",
    "RANLIB",
    "LIBS",
    "LDLIBS",
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "LIBRARY_PATH",
    "AWS_CA_BUNDLE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    // Where tools send their traffic: through whoever the provider names.
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
];

/// Whether `name` is a loader or tool-configuration variable (compared without
/// regard to case: some tools read lower-case spellings).
pub(super) fn is_tool_variable(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    TOOL_NAMES.contains(&upper.as_str()) || TOOL_PREFIXES.iter().any(|p| upper.starts_with(p))
}

/// Whether the grant lets the provider set `name`: an exact entry admits anything,
/// a `PREFIX*` entry anything but a tool variable.
fn settable(grant: &Grant, name: &str) -> Result<(), Denied> {
    if grant.set_env.iter().any(|e| e == name) {
        return Ok(());
    }
    let by_wildcard = (grant.set_env.iter())
        .filter_map(|e| e.strip_suffix('*'))
        .any(|prefix| name.starts_with(prefix));
    match (by_wildcard, is_tool_variable(name)) {
        (true, false) => Ok(()),
        (true, true) => Err(Denied::EnvToolVariable(name.to_owned())),
        (false, _) => Err(Denied::EnvNotGranted(name.to_owned())),
    }
}

/// The child's whole environment: the granted pass-through variables the host
/// has, then the provider's own, each checked against the grant.
pub(super) fn child_env(
    grant: &Grant,
    requested: &[(String, String)],
) -> Result<Vec<(String, OsString)>, Denied> {
    if requested.len() > MAX_VARS {
        return Err(Denied::EnvTooLarge(format!(
            "{} variables (at most {MAX_VARS})",
            requested.len()
        )));
    }
    let mut vars: Vec<(String, OsString)> = (grant.env.iter())
        .filter_map(|name| std::env::var_os(name).map(|v| (name.clone(), v)))
        .collect();
    for (name, value) in requested {
        if !valid_env_name(name) {
            return Err(Denied::EnvName(crate::untrusted::named(name)));
        }
        if value.len() > MAX_VALUE || value.contains('\0') {
            return Err(Denied::EnvTooLarge(format!(
                "the value of {name} ({} bytes; at most {MAX_VALUE}, no NUL)",
                value.len()
            )));
        }
        settable(grant, name)?;
        vars.retain(|(n, _)| n != name);
        vars.push((name.clone(), value.into()));
    }
    Ok(vars)
}

/// `program` as an absolute path: names with a `/` are taken as given, bare
/// names are looked up in the **host's** `PATH` (never the child's).
pub(super) fn resolve_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(env: &[&str], set_env: &[&str]) -> Grant {
        Grant {
            env: env.iter().map(|s| s.to_string()).collect(),
            set_env: set_env.iter().map(|s| s.to_string()).collect(),
            ..Grant::default()
        }
    }

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_granted_names_are_set() {
        let g = grant(&[], &["TETHER_RUNTIME_URL", "APP_*"]);
        let env = child_env(
            &g,
            &vars(&[("TETHER_RUNTIME_URL", "ws://x"), ("APP_MODE", "a")]),
        )
        .unwrap();
        assert_eq!(env.len(), 2);
        assert_eq!(
            child_env(&g, &vars(&[("LD_PRELOAD", "/tmp/x.so")])),
            Err(Denied::EnvNotGranted("LD_PRELOAD".into()))
        );
        assert_eq!(
            child_env(&g, &vars(&[("PATH", "/evil")])),
            Err(Denied::EnvNotGranted("PATH".into()))
        );
        assert!(matches!(
            child_env(&g, &vars(&[("A=B", "x")])),
            Err(Denied::EnvName(_))
        ));
        assert!(matches!(
            child_env(&g, &vars(&[("APP_X", "a\0b")])),
            Err(Denied::EnvTooLarge(_))
        ));
    }

    #[test]
    fn wildcards_never_admit_tool_variables_exact_names_do() {
        let g = grant(
            &[],
            &[
                "LD_*",
                "G*",
                "P*",
                "S*",
                "h*",
                "H*",
                "A*",
                "C*",
                "D*",
                "E*",
                "M*",
                "V*",
                "NODE_OPTIONS",
            ],
        );
        for name in [
            "LD_PRELOAD",
            "GIT_CONFIG_GLOBAL",
            "GCONV_PATH",
            "PATH",
            "PYTHONPATH",
            "SSLKEYLOGFILE",
            "https_proxy",
            "PHPRC",
            "AWS_CONFIG_FILE",
            "CORECLR_PROFILER_PATH",
            "DOTNET_STARTUP_HOOKS",
            "COMPlus_EnableDiagnostics",
            "ERL_AFLAGS",
            "VIMINIT",
            "SUDO_ASKPASS",
            "MAVEN_OPTS",
            "MAKEFILES",
            "HGRCPATH",
        ] {
            assert_eq!(
                child_env(&g, &vars(&[(name, "x")])),
                Err(Denied::EnvToolVariable(name.into())),
                "{name}"
            );
        }
        // Package managers' indexes and config files, other programs tools run, build
        // flags, TLS roots and proxies, under wildcards of their own.
        let wild = grant(
            &[],
            &[
                "PIP_*",
                "YARN_*",
                "npm_config_*",
                "UV_*",
                "RSYNC_*",
                "TAR_*",
                "CGO_*",
                "SOCKS*",
                "AWS_*",
                "GH_*",
                "RUSTDOC*",
                "CPP*",
                "L*",
                "Z*",
                "T*",
            ],
        );
        for name in [
            "PIP_INDEX_URL",
            "PIP_CONFIG_FILE",
            "YARN_RC_FILENAME",
            "npm_config_registry",
            "UV_INDEX_URL",
            "RSYNC_RSH",
            "TAR_OPTIONS",
            "CGO_LDFLAGS",
            "SOCKS_PROXY",
            "AWS_CA_BUNDLE",
            "GH_PAGER",
            "RUSTDOCFLAGS",
            "CPPFLAGS",
            "LIBRARY_PATH",
            "ZIPOPT",
            "TCLLIBPATH",
        ] {
            assert_eq!(
                child_env(&wild, &vars(&[(name, "x")])),
                Err(Denied::EnvToolVariable(name.into())),
                "{name}"
            );
        }
        assert!(child_env(&g, &vars(&[("NODE_OPTIONS", "x")])).is_ok());
        assert!(child_env(&g, &vars(&[("PLAIN", "x")])).is_ok());
        // A wildcard still admits the ordinary variables next to them.
        assert!(child_env(&g, &vars(&[("AWS_REGION", "eu-west-1")])).is_ok());
        for plain in ["TARGET", "LANG", "ZONE", "AWS_REGION", "GH_REPO"] {
            assert!(child_env(&wild, &vars(&[(plain, "x")])).is_ok(), "{plain}");
        }
        assert!(is_tool_variable("ld_preload"));
        assert!(!is_tool_variable("TETHER_RUNTIME_TOKEN"));
    }

    #[test]
    fn bare_programs_resolve_against_the_host_path() {
        let sh = resolve_program("sh").expect("sh on the host's PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(
            resolve_program("/bin/echo"),
            Some(PathBuf::from("/bin/echo"))
        );
        assert_eq!(resolve_program("no-such-program-here"), None);
    }
}
