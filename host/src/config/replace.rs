//! `[providers.NAME] replace_builtin`: the operator's consent for one drop-in file to
//! replace the built-in provider called NAME, named by file name or by SHA-256. Without
//! it a drop-in claiming a built-in's name is refused and the built-in stays: a file
//! in the providers directory must not inherit a built-in's default grant or the
//! operator's config (secrets) meant for it by picking its name.

use serde::Deserialize;

use super::ConfigError;

/// Names of the providers compiled into the binary, in the order `build.rs` lists
/// them; generated there with the engine's list of their components, so the two agree.
const BUILTIN_PROVIDERS: &[&str] = include!(concat!(env!("OUT_DIR"), "/builtin_names.rs"));

/// The operator's consent (`[providers.NAME] replace_builtin`) for one drop-in to
/// replace the built-in provider NAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuiltinReplacement {
    /// The drop-in file of this name in the providers directory.
    File(String),
    /// The drop-in whose component bytes have this SHA-256 (lowercase hex).
    Sha256(String),
}

/// `replace_builtin = { file = "x.wasm" }` or `{ sha256 = "…" }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileReplace {
    file: Option<String>,
    sha256: Option<String>,
}

impl FileReplace {
    /// Checks the entry of `[providers.name]`: `name` must be a built-in, exactly one
    /// of `file` (a plain `*.wasm` file name) or `sha256` (64 hex digits) given.
    pub(super) fn validate(self, name: &str) -> Result<BuiltinReplacement, ConfigError> {
        let invalid =
            |why: String| ConfigError::Invalid(format!("providers.{name}.replace_builtin: {why}"));
        if !BUILTIN_PROVIDERS.contains(&name) {
            return Err(invalid(format!(
                "{name} is not a built-in provider (built-ins: {})",
                BUILTIN_PROVIDERS.join(", ")
            )));
        }
        match (self.file, self.sha256) {
            (Some(file), None) => {
                let plain = !file.starts_with('.')
                    && file.ends_with(".wasm")
                    && !file.contains('/')
                    && file.len() <= 255;
                if plain {
                    Ok(BuiltinReplacement::File(file))
                } else {
                    Err(invalid(format!(
                        "file {file:?} must be the name of a *.wasm file in the providers directory"
                    )))
                }
            }
            (None, Some(sha)) => {
                if sha.len() == 64 && sha.bytes().all(|c| c.is_ascii_hexdigit()) {
                    Ok(BuiltinReplacement::Sha256(sha.to_ascii_lowercase()))
                } else {
                    Err(invalid(format!(
                        "sha256 {sha:?} must be 64 hexadecimal digits"
                    )))
                }
            }
            _ => Err(invalid("give exactly one of `file` or `sha256`".into())),
        }
    }
}
