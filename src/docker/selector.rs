//! Kubernetes label-selector semantics over Docker container labels, so `spec.coTenants.selector`
//! means the same on both runtimes.
use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{FieldError, YIELD_LABEL};

/// The selector a job uses: its own, or `vidi.dev/yield-gpu=true`.
pub fn effective(selector: Option<&LabelSelector>) -> LabelSelector {
    selector.cloned().unwrap_or_else(|| LabelSelector {
        match_labels: Some([(YIELD_LABEL.to_string(), "true".to_string())].into()),
        match_expressions: None,
    })
}

/// Problems the Kubernetes API server would reject: unknown operators, values where none belong.
pub fn check(selector: &LabelSelector) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("spec.coTenants.selector.matchExpressions[{i}]");
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errors.push(FieldError::new(
                format!("{field}.values"),
                format!("operator {} needs at least one value", e.operator),
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errors.push(FieldError::new(
                format!("{field}.values"),
                format!("operator {} takes no values", e.operator),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(FieldError::new(
                format!("{field}.operator"),
                format!("expected In, NotIn, Exists or DoesNotExist, got {other:?}"),
            )),
        }
    }
    errors
}

/// Whether `labels` match. An empty selector matches everything (as in Kubernetes).
pub fn matches(selector: &LabelSelector, labels: &HashMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // `check` reports it; matching nothing is the safe reading of a bad selector.
            _ => false,
        }
    });
    by_label && by_expr
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn default_selects_opted_in_containers() {
        let s = effective(None);
        assert!(matches(&s, &labels(&[(YIELD_LABEL, "true")])));
        assert!(!matches(&s, &labels(&[(YIELD_LABEL, "false")])));
        assert!(!matches(&s, &labels(&[])));
    }

    #[test]
    fn expressions() {
        let req = |op: &str, values: &[&str]| LabelSelectorRequirement {
            key: "app".into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        };
        let s = |r| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![r]),
        };
        let tts = labels(&[("app", "tts")]);
        assert!(matches(&s(req("In", &["tts", "comfy"])), &tts));
        assert!(!matches(&s(req("NotIn", &["tts"])), &tts));
        assert!(matches(&s(req("Exists", &[])), &tts));
        assert!(!matches(&s(req("DoesNotExist", &[])), &tts));
        assert!(!matches(&s(req("Near", &[])), &tts));
        assert_eq!(
            check(&s(req("Near", &[])))[0].field,
            "spec.coTenants.selector.matchExpressions[0].operator"
        );
        assert_eq!(
            check(&s(req("In", &[])))[0].field,
            "spec.coTenants.selector.matchExpressions[0].values"
        );
    }
}
