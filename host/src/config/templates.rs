//! `[templates.NAME]` in `tether.toml`: what an environment made on an app's first
//! connect looks like (provider, config, restart policy) and what one is made per
//! (`scope`: one per user, per thread or per workspace). The lifecycle provisions
//! from them (`lifecycle/provision.rs`); this only reads and checks them.
//!
//! Config values named in `secret_keys` are never written to a record and never
//! shown (`GET /api/v1/templates` lists the key names only): they join the config the
//! provider is handed at start, like the operator's provider config.
//!
//! [`templates_digest`] names a host's templates in one SHA-256, so hosts of a cluster can tell
//! whether they have the same ones (`cluster/templates.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::ConfigError;
use super::digest::{canonical_digest, sorted};

/// Most templates a host may define.
pub const MAX_TEMPLATES: usize = 1000;
/// What [`templates_digest`] hashes first: a later change of the canonical form changes this,
/// rather than letting two forms of one set of templates be taken for a difference.
const DIGEST_DOMAIN: &[u8] = b"tether templates v1\n";

/// What one environment of a template is made per: `user` (one per user), `thread`
/// (per user and `?thread=`), `workspace` (per user and `?workspace=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TemplateScope {
    /// One per user.
    User,
    /// One per user and thread (`?thread=`).
    Thread,
    /// One per user and workspace (`?workspace=`).
    Workspace,
}

impl TemplateScope {
    /// Its name in the contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Thread => "thread",
            Self::Workspace => "workspace",
        }
    }
}

/// The restart policy a template pins (the store's policy, named as in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TemplateRestart {
    /// Leave a failed environment in `error`.
    Never,
    /// Restart with backoff up to the retry cap.
    #[default]
    OnFailure,
    /// Restart with backoff, without a cap.
    Always,
}

impl TemplateRestart {
    /// Its name in the contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::OnFailure => "on-failure",
            Self::Always => "always",
        }
    }
}

/// One template, validated.
#[derive(Clone, PartialEq)]
pub struct Template {
    /// Its name (passes [`crate::names`]).
    pub name: String,
    /// The provider its environments run on.
    pub provider: String,
    /// Config written to each environment's record (secret keys left out).
    pub config: Map<String, Value>,
    /// Config values handed to the provider at start only, never stored or shown.
    secrets: Map<String, Value>,
    /// What one environment is made per.
    pub scope: TemplateScope,
    /// What to do when one fails.
    pub restart_policy: TemplateRestart,
    /// Most environments of this template one user may have.
    pub max_per_user: usize,
    /// Idle time after which an environment is stopped (`None`: never).
    pub idle_stop_secs: Option<u64>,
}

/// `max_per_user` when a template does not say: any `relay` token can make one
/// environment per thread or workspace it names, so without a cap an app could make
/// environments (and running instances) without end where the operator set no quota.
const DEFAULT_MAX_PER_USER: usize = 100;
/// Most `max_per_user` may be.
const MAX_MAX_PER_USER: usize = 1_000_000;

impl Template {
    /// The values of its `secret_keys`: handed to the provider, never shown.
    pub fn secrets(&self) -> &Map<String, Value> {
        &self.secrets
    }

    /// `environment` with the template's secret values laid over it.
    pub fn with_secrets(&self, environment: &Map<String, Value>) -> Map<String, Value> {
        let mut merged = environment.clone();
        for (key, value) in &self.secrets {
            merged.insert(key.clone(), value.clone());
        }
        merged
    }

    /// Every field that changes what a connect through it makes, as JSON with its
    /// object keys sorted (so the file's order of keys does not count): secret values
    /// are left out (their keys are in), so a digest of it lets no one test a guess.
    fn canonical(&self) -> Value {
        // Destructured whole: a field added to `Template` does not compile here
        // until it is either hashed or said not to change behaviour.
        let Self {
            name: _,
            provider,
            config,
            secrets,
            scope,
            restart_policy,
            max_per_user,
            idle_stop_secs,
        } = self;
        let mut out = Map::new();
        out.insert("config".into(), sorted(&Value::Object(config.clone())));
        out.insert(
            "idleStopSecs".into(),
            idle_stop_secs.map_or(Value::Null, Value::from),
        );
        out.insert("maxPerUser".into(), Value::from(*max_per_user));
        out.insert("provider".into(), Value::from(provider.as_str()));
        out.insert("restartPolicy".into(), Value::from(restart_policy.as_str()));
        out.insert("scope".into(), Value::from(scope.as_str()));
        let keys: BTreeSet<&String> = secrets.keys().collect();
        out.insert(
            "secretKeys".into(),
            Value::from_iter(keys.into_iter().map(|k| Value::from(k.as_str()))),
        );
        Value::Object(out)
    }

    /// How `GET /api/v1/templates` shows it: secret values never, their keys only.
    pub fn shown(&self) -> TemplateView {
        TemplateView {
            name: self.name.clone(),
            provider: self.provider.clone(),
            scope: self.scope,
            config: self.config.clone(),
            secret_keys: self.secrets.keys().cloned().collect(),
            restart_policy: self.restart_policy,
            max_per_user: self.max_per_user,
            idle_stop_secs: self.idle_stop_secs,
        }
    }
}

/// A template as `GET /api/v1/templates` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateView {
    /// Its name, as apps give it in `/ws/app?template=`.
    pub name: String,
    /// The provider its environments run on.
    pub provider: String,
    /// What one environment is made per.
    pub scope: TemplateScope,
    /// Config written to each environment's record (secret keys left out).
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    /// Names of the config keys handed to the provider at start only; their values
    /// are never stored or shown.
    pub secret_keys: Vec<String>,
    /// What to do when one of its environments fails.
    pub restart_policy: TemplateRestart,
    /// Most environments of this template one user may have (100 unless the
    /// template says; the user's `[tenancy]` quotas apply too).
    pub max_per_user: usize,
    /// Idle time after which an environment is stopped (`null`: never).
    #[schema(required = true)]
    pub idle_stop_secs: Option<u64>,
}

impl fmt::Debug for Template {
    /// Secret values are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("scope", &self.scope)
            .field("config", &self.config)
            .field("secret_keys", &self.secrets.keys().collect::<Vec<_>>())
            .field("restart_policy", &self.restart_policy)
            .field("max_per_user", &self.max_per_user)
            .field("idle_stop_secs", &self.idle_stop_secs)
            .finish()
    }
}

/// SHA-256 (lower-case hex) of every template in `templates`, by name: equal for two
/// hosts exactly when their templates make the same environments, whatever the order
/// they are written in; a secret's value never enters it.
pub fn templates_digest(templates: &BTreeMap<String, Template>) -> String {
    let all: Map<String, Value> = (templates.iter())
        .map(|(name, t)| (name.clone(), t.canonical()))
        .collect();
    canonical_digest(DIGEST_DOMAIN, &Value::Object(all))
}

/// `[templates.NAME]` as written (snake_case; the contract's camelCase names are
/// accepted too).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTemplate {
    provider: String,
    scope: TemplateScope,
    #[serde(default)]
    config: Option<toml::Table>,
    #[serde(default, alias = "secretKeys")]
    secret_keys: Vec<String>,
    #[serde(default, alias = "restartPolicy")]
    restart_policy: TemplateRestart,
    #[serde(default, alias = "maxPerUser")]
    max_per_user: Option<usize>,
    #[serde(default, alias = "idleStopSecs")]
    idle_stop_secs: Option<u64>,
}

/// Every `[templates.NAME]`, checked.
pub(super) fn templates_config(
    file: BTreeMap<String, FileTemplate>,
) -> Result<BTreeMap<String, Template>, ConfigError> {
    if file.len() > MAX_TEMPLATES {
        return Err(ConfigError::Invalid(format!(
            "{} templates; at most {MAX_TEMPLATES}",
            file.len()
        )));
    }
    let mut templates = BTreeMap::new();
    for (name, t) in file {
        let invalid = |why: String| ConfigError::Invalid(format!("templates.{name}: {why}"));
        crate::names::validate("template", &name).map_err(|e| invalid(e.to_string()))?;
        crate::names::validate("provider", &t.provider).map_err(|e| invalid(e.to_string()))?;
        let mut config = match t.config.map(serde_json::to_value) {
            None => Map::new(),
            Some(Ok(Value::Object(values))) => values,
            Some(Ok(_)) => return Err(invalid("config must be a table".into())),
            Some(Err(e)) => return Err(invalid(format!("config cannot be JSON: {e}"))),
        };
        let keys: BTreeSet<String> = t.secret_keys.into_iter().collect();
        let mut secrets = Map::new();
        for key in keys {
            let value = config.remove(&key).ok_or_else(|| {
                invalid(format!(
                    "secret_keys names {key:?}, which config does not set"
                ))
            })?;
            secrets.insert(key, value);
        }
        let max_per_user = t.max_per_user.unwrap_or(DEFAULT_MAX_PER_USER);
        if !(1..=MAX_MAX_PER_USER).contains(&max_per_user) {
            return Err(invalid(format!(
                "max_per_user must be 1 to {MAX_MAX_PER_USER}"
            )));
        }
        let idle_stop_secs = t.idle_stop_secs.filter(|s| *s > 0);
        // The records' own limit (30 days): a template must not make invalid records.
        if idle_stop_secs.is_some_and(|s| s > 30 * 24 * 60 * 60) {
            return Err(invalid(
                "idle_stop_secs must be at most 2592000 (30 days)".into(),
            ));
        }
        templates.insert(
            name.clone(),
            Template {
                name,
                provider: t.provider,
                config,
                secrets,
                scope: t.scope,
                restart_policy: t.restart_policy,
                max_per_user,
                idle_stop_secs,
            },
        );
    }
    Ok(templates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BTreeMap<String, Template>, ConfigError> {
        let file: BTreeMap<String, FileTemplate> =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        templates_config(file)
    }

    #[test]
    fn a_template_is_read_and_its_secrets_never_shown() {
        let t = parse(
            "[chat]\nprovider = \"local-process\"\nscope = \"thread\"\nrestartPolicy = \"always\"\n\
             idleStopSecs = 30\nmax_per_user = 5\nsecret_keys = [\"apiKey\"]\n\
             config = { apiKey = \"s3cret\", model = \"m\" }\n",
        )
        .unwrap();
        let chat = &t["chat"];
        assert_eq!(chat.scope, TemplateScope::Thread);
        assert_eq!(chat.restart_policy, TemplateRestart::Always);
        assert_eq!((chat.max_per_user, chat.idle_stop_secs), (5, Some(30)));
        let plain = parse("[plain]\nprovider = \"p\"\nscope = \"thread\"\n").unwrap();
        assert_eq!(plain["plain"].max_per_user, DEFAULT_MAX_PER_USER);
        let shown = serde_json::to_string(&chat.shown()).unwrap();
        assert!(
            !shown.contains("s3cret") && shown.contains("apiKey"),
            "{shown}"
        );
        assert!(!format!("{chat:?}").contains("s3cret"));
        assert!(
            !serde_json::to_string(&chat.config)
                .unwrap()
                .contains("s3cret")
        );
        assert_eq!(chat.with_secrets(&chat.config)["apiKey"], "s3cret");
    }

    const CHAT: &str = "[chat]\nprovider = \"local-process\"\nscope = \"thread\"\n\
        max_per_user = 5\nidle_stop_secs = 30\nrestart_policy = \"always\"\n\
        secret_keys = [\"apiKey\"]\n\
        config = { apiKey = \"s3cret\", model = \"m\", limits = { a = 1, b = [{ x = 1, y = 2 }] } }\n";
    const NOTES: &str = "[notes]\nprovider = \"local-process\"\nscope = \"user\"\n";

    fn digest_of(text: &str) -> String {
        templates_digest(&parse(text).unwrap())
    }

    #[test]
    fn the_digest_does_not_depend_on_the_order_things_are_written_in() {
        let one = digest_of(&format!("{CHAT}{NOTES}"));
        assert_eq!(one.len(), 64);
        assert!(
            one.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{one}"
        );
        let reordered = "[notes]\nscope = \"user\"\nprovider = \"local-process\"\n\
            [chat]\nconfig = { limits = { b = [{ y = 2, x = 1 }], a = 1 }, model = \"m\", apiKey = \"s3cret\" }\n\
            secret_keys = [\"apiKey\"]\nrestart_policy = \"always\"\nidle_stop_secs = 30\n\
            max_per_user = 5\nscope = \"thread\"\nprovider = \"local-process\"\n";
        assert_eq!(digest_of(reordered), one);
        // Keys of one config inserted in another order (the JSON maps keep it).
        let mut templates = parse(&format!("{CHAT}{NOTES}")).unwrap();
        let chat = templates.get_mut("chat").unwrap();
        let reversed: Map<String, Value> = (chat.config.clone().into_iter()).rev().collect();
        assert_ne!(
            serde_json::to_string(&reversed).unwrap(),
            serde_json::to_string(&chat.config).unwrap()
        );
        chat.config = reversed;
        assert_eq!(templates_digest(&templates), one);
    }

    #[test]
    fn every_field_that_changes_behaviour_changes_the_digest() {
        let base = format!("{CHAT}{NOTES}");
        let variants = [
            base.replace(
                "provider = \"local-process\"\nscope = \"thread\"",
                "provider = \"other\"\nscope = \"thread\"",
            ),
            base.replace("scope = \"thread\"", "scope = \"workspace\""),
            base.replace("max_per_user = 5", "max_per_user = 6"),
            base.replace("idle_stop_secs = 30", "idle_stop_secs = 31"),
            base.replace("restart_policy = \"always\"", "restart_policy = \"never\""),
            base.replace("model = \"m\"", "model = \"n\""),
            base.replace("x = 1", "x = 2"),
            base.replace("a = 1", "a = 1.0"),
            base.replace(
                "secret_keys = [\"apiKey\"]",
                "secret_keys = [\"apiKey\", \"model\"]",
            ),
            CHAT.to_owned(),
            format!("{CHAT}{}", NOTES.replace("[notes]", "[notebook]")),
            format!("{base}{}", NOTES.replace("[notes]", "[more]")),
            String::new(),
        ];
        let mut seen = BTreeSet::from([digest_of(&base)]);
        for variant in &variants {
            assert_ne!(variant, &base);
            assert!(seen.insert(digest_of(variant)), "{variant}");
        }
        // A secret's value is never hashed: it cannot be tested against a digest.
        assert_eq!(
            digest_of(&base.replace("s3cret", "another")),
            digest_of(&base)
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "[\"../x\"]\nprovider = \"p\"\nscope = \"user\"\n",
            "[a]\nprovider = \"../p\"\nscope = \"user\"\n",
            "[a]\nprovider = \"p\"\nscope = \"galaxy\"\n",
            "[a]\nprovider = \"p\"\nscope = \"user\"\nsecret_keys = [\"k\"]\n",
            "[a]\nprovider = \"p\"\nscope = \"user\"\nmax_per_user = 0\n",
            "[a]\nprovider = \"p\"\nscope = \"user\"\nmax_per_user = 1000001\n",
            "[a]\nprovider = \"p\"\nscope = \"user\"\nbogus = 1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
