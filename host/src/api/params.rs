//! A request's query string, each parameter given at most once. Read into a map,
//! two values of one name would keep the last; a proxy or log in front may go by the
//! first, so a repeated name is refused (as a body's repeated field is), naming it.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;

use super::ApiError;
use crate::untrusted::named;

/// The query's parameters by name, percent-decoded.
#[derive(Debug, Default)]
pub(crate) struct Params(pub(crate) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("the query string: {}", e.body_text())))?;
        unique(pairs).map(Params)
    }
}

/// `pairs` by name; an error naming the first name given twice.
fn unique(pairs: Vec<(String, String)>) -> Result<HashMap<String, String>, ApiError> {
    let mut params = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if params.contains_key(&name) {
            return Err(ApiError::bad_request(format!(
                "query parameter {} is given twice; give each once",
                named(&name)
            )));
        }
        params.insert(name, value);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_given_twice_is_refused_and_others_kept() {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let params = unique(vec![pair("a", "1"), pair("b", "2")]).ok();
        assert_eq!(params.and_then(|p| p.get("b").cloned()), Some("2".into()));
        assert!(unique(vec![pair("a", "1"), pair("a", "1")]).is_err());
    }
}
