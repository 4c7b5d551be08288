//! `[templates.NAME]` in `tether.toml`: what an environment made on an app's first
//! connect looks like (provider, config, restart policy) and what one is made per
//! (`scope`: one per user, per thread or per workspace). The lifecycle provisions
//! from them (`lifecycle/provision.rs`); this only reads and checks them.
//!
//! Config values named in `secret_keys` are never written to a record and never
//! shown (`GET /api/v1/templates` lists the key names only): they join the config the
//! provider is handed at start, like the operator's provider config.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::ConfigError;

/// Most templates a host may define.
const MAX_TEMPLATES: usize = 1000;

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
    /// `environment` with the template's secret values laid over it.
    pub fn with_secrets(&self, environment: &Map<String, Value>) -> Map<String, Value> {
        let mut merged = environment.clone();
        for (key, value) in &self.secrets {
            merged.insert(key.clone(), value.clone());
        }
        merged
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
