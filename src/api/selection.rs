//! Which workloads a job's `spec.coTenants.selector` selects, one definition for both runtimes:
//! the default (the opt-in label), the checks the API server does not make, and matching with
//! kube's own label-selector semantics over Deployment labels or Docker container labels.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt as _};

use super::{FieldError, YIELD_LABEL};

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

/// GPU memory a workload frees by yielding `replicas` replicas, from its `vidi.dev/gpu-memory`
/// annotation or label (per replica); `None` when it does not say (or says nonsense).
pub fn declared_gpu_memory<'a, M>(annotations: Option<&'a M>, labels: Option<&'a M>, replicas: i32) -> Option<u64>
where
    &'a M: IntoIterator<Item = (&'a String, &'a String)>,
{
    let per_replica = mark(annotations, labels, super::GPU_MEMORY)
        .and_then(|q| super::parse_quantity_bytes(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(q)))?;
    Some(per_replica.saturating_mul(u64::try_from(replicas.max(0)).unwrap_or(0)))
}

/// The cost of yielding one replica: its `vidi.dev/yield-priority` annotation or label, 1 when
/// it does not say.
pub fn yield_priority<'a, M>(annotations: Option<&'a M>, labels: Option<&'a M>) -> u32
where
    &'a M: IntoIterator<Item = (&'a String, &'a String)>,
{
    mark(annotations, labels, super::YIELD_PRIORITY)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
}

/// Seconds one replica takes to be back: its `vidi.dev/restore-seconds` annotation or label,
/// `plan::placement::DEFAULT_RESTORE_SECONDS` when it does not say.
pub fn restore_seconds<'a, M>(annotations: Option<&'a M>, labels: Option<&'a M>) -> u32
where
    &'a M: IntoIterator<Item = (&'a String, &'a String)>,
{
    mark(annotations, labels, super::RESTORE_SECONDS)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(crate::plan::placement::DEFAULT_RESTORE_SECONDS)
}

fn mark<'a, M>(annotations: Option<&'a M>, labels: Option<&'a M>, key: &str) -> Option<String>
where
    &'a M: IntoIterator<Item = (&'a String, &'a String)>,
{
    [annotations, labels]
        .into_iter()
        .flatten()
        .find_map(|m| m.into_iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v.clone()))
}

/// The job's selector (or the default) in kube's form; `None` when it is invalid (`check`
/// says why), which selects nothing.
pub fn compile(selector: Option<&LabelSelector>) -> Option<Selector> {
    Selector::try_from(effective(selector)).ok()
}

/// Whether `labels` match. An empty selector matches everything (as in Kubernetes).
pub fn matches<'a>(selector: &Selector, labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> bool {
    let labels: BTreeMap<String, String> = labels.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    selector.matches(&labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(s: &LabelSelector) -> Selector {
        compile(Some(s)).unwrap_or_else(|| {
            Selector::try_from(LabelSelector {
                match_labels: Some([("never".to_string(), "matches".to_string())].into()),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "never".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                }]),
            })
            .expect("a selector that matches nothing")
        })
    }

    #[test]
    fn default_selects_opted_in_containers() {
        let s = compile(None).expect("the default selector");
        assert!(matches(&s, &labels(&[(YIELD_LABEL, "true")])));
        assert!(!matches(&s, &labels(&[(YIELD_LABEL, "false")])));
        assert!(!matches(&s, &labels(&[])));
        let everything = compile(Some(&LabelSelector::default())).expect("empty selector");
        assert!(
            matches(&everything, &labels(&[])),
            "an empty selector matches everything"
        );
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
        assert!(matches(&sel(&s(req("In", &["tts", "comfy"]))), &tts));
        assert!(!matches(&sel(&s(req("NotIn", &["tts"]))), &tts));
        assert!(matches(&sel(&s(req("Exists", &[]))), &tts));
        assert!(!matches(&sel(&s(req("DoesNotExist", &[]))), &tts));
        assert!(
            compile(Some(&s(req("Near", &[])))).is_none(),
            "an invalid selector selects nothing"
        );
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
