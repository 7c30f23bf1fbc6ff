//! Reads a VidiJob YAML file for `docker run`: the same format `kubectl apply` takes.
//!
//! Strict like the API server: serde would silently drop a misspelt field (`coTenant:`) and
//! read `query: 42` as the text "42", and a job that then suspends nothing, or the wrong thing,
//! is worse than an error. The document is checked against the CRD itself, so the check can
//! never drift from what `kubectl apply` would accept: unknown fields, types, enums, lengths,
//! ranges and required fields by walking its OpenAPI schema, and its CEL rules
//! (`x-kubernetes-validations`) by kube's CEL evaluator. Every problem is reported at once,
//! each naming its field; nothing is touched before the file passes.
use std::path::Path;

use kube::CustomResourceExt as _;
use serde_json::Value;

use crate::api::{FieldError, Runtime, VidiJob, validate};

pub const API_VERSION: &str = "vidi.dev/v1alpha1";
pub const KIND: &str = "VidiJob";

#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("cannot read the job file {origin}: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not a valid VidiJob: {message}")]
    Yaml { origin: String, message: String },
    #[error("{origin} is not a valid VidiJob:\n  {}", list(.errors))]
    Invalid { origin: String, errors: Vec<FieldError> },
}

fn list(errors: &[FieldError]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  ")
}

/// Reads and checks the job file at `path` (`-` reads standard input).
pub fn load(path: &Path) -> Result<VidiJob, JobFileError> {
    let origin = path.display().to_string();
    let text = if origin == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|source| JobFileError::Read {
        origin: origin.clone(),
        source,
    })?;
    parse(&text, &origin)
}

/// Parses and checks a job; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<VidiJob, JobFileError> {
    let yaml = |message: String| JobFileError::Yaml {
        origin: origin.to_string(),
        message,
    };
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| yaml(e.to_string()))?;
    let Value::Object(top) = &doc else {
        return Err(yaml(
            "expected a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    };
    let mut errors = Vec::new();
    match top.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        other => errors.push(FieldError::new(
            "apiVersion",
            format!("expected {API_VERSION:?}, got {}", shown(other)),
        )),
    }
    match top.get("kind").and_then(Value::as_str) {
        Some(KIND) => {}
        other => errors.push(FieldError::new(
            "kind",
            format!("expected {KIND:?}, got {}", shown(other)),
        )),
    }
    schema_problems(&doc, &mut errors);
    if !errors.is_empty() {
        return Err(JobFileError::Invalid {
            origin: origin.to_string(),
            errors,
        });
    }
    // Types, required fields and enum values; serde-saphyr's message carries the line.
    let job: VidiJob = serde_saphyr::from_str(text).map_err(|e| yaml(e.to_string()))?;
    match job.metadata.name.as_deref() {
        None | Some("") => errors.push(FieldError::new(
            "metadata.name",
            "expected the job's name; it is missing",
        )),
        Some(name) if !is_dns_label(name) => errors.push(FieldError::new(
            "metadata.name",
            format!(
                "expected a DNS label (lowercase letters, digits and '-', at most 53 characters, \
                 starting and ending with a letter or digit), got {name:?}"
            ),
        )),
        Some(_) => {}
    }
    // The rules the schema cannot express; a field the schema already refused is not repeated.
    for e in validate(&job.spec, Runtime::Docker) {
        if !errors.iter().any(|seen| seen.field == e.field) {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        return Err(JobFileError::Invalid {
            origin: origin.to_string(),
            errors,
        });
    }
    Ok(job)
}

fn shown(v: Option<&str>) -> String {
    v.map_or_else(|| "nothing".to_string(), |s| format!("{s:?}"))
}

/// Container names are `<job>-vidi-<n>` and must stay within 63 characters with room for the
/// suffix; the job name also becomes a label value.
fn is_dns_label(name: &str) -> bool {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    ok_chars && name.len() <= 53 && ends_ok(name.bytes().next()) && ends_ok(name.bytes().last())
}

/// The CRD's OpenAPI schema of the whole object.
fn crd_schema() -> Option<Value> {
    let crd = VidiJob::crd();
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| serde_json::to_value(&s.open_api_v3_schema).ok())
}

/// Everything the CRD refuses in `doc`: unknown fields, types, enums, lengths, ranges, required
/// fields, then (on a well-typed document) its CEL rules.
fn schema_problems(doc: &Value, errors: &mut Vec<FieldError>) {
    let Value::Object(top) = doc else { return };
    for key in top.keys() {
        if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "spec" | "status") {
            errors.push(FieldError::new(
                key.as_str(),
                "unknown field; expected apiVersion, kind, metadata and spec",
            ));
        }
    }
    let Some(schema) = crd_schema() else { return };
    match (top.get("spec"), schema.pointer("/properties/spec")) {
        (Some(spec), Some(spec_schema)) => walk(spec, spec_schema, "spec", errors),
        (None, _) => errors.push(FieldError::new("spec", "required field is missing")),
        _ => {}
    }
    if !errors.is_empty() {
        return;
    }
    let mut object = doc.clone();
    if let Some(o) = object.as_object_mut() {
        // Only the spec is the user's; CEL rules on status are the operator's business.
        o.remove("status");
    }
    if let Err(cel) = kube::core::cel::Validator::new().validate(&schema, &object, None) {
        for e in cel.into_vec() {
            let field = if e.field_path.is_empty() {
                "spec".to_string()
            } else {
                e.field_path
            };
            errors.push(FieldError::new(field, e.message));
        }
    }
}

/// Checks `value` against its structural `schema` the way the API server does, naming each
/// offending field by its path.
fn walk(value: &Value, schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(FieldError::new(
                path,
                format!("expected {}, got null", expected(schema)),
            ));
        }
        return;
    }
    if !type_ok(value, schema) {
        errors.push(FieldError::new(
            path,
            format!("expected {}, got {}", expected(schema), shown_value(value)),
        ));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let list: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        errors.push(FieldError::new(
            path,
            format!("expected one of {}, got {}", list.join(", "), shown_value(value)),
        ));
    }
    let limit = |key: &str| schema.get(key).and_then(Value::as_f64);
    match value {
        Value::String(text) => {
            let n = text.chars().count() as f64;
            if limit("minLength").is_some_and(|min| n < min) {
                errors.push(FieldError::new(
                    path,
                    format!(
                        "expected at least {} characters, got {n}",
                        limit("minLength").unwrap_or_default()
                    ),
                ));
            }
            if limit("maxLength").is_some_and(|max| n > max) {
                errors.push(FieldError::new(
                    path,
                    format!(
                        "expected at most {} characters, got {n}",
                        limit("maxLength").unwrap_or_default()
                    ),
                ));
            }
        }
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or_default();
            if let Some(min) = limit("minimum").filter(|min| n < *min) {
                errors.push(FieldError::new(path, format!("expected at least {min}, got {number}")));
            }
            if let Some(max) = limit("maximum").filter(|max| n > *max) {
                errors.push(FieldError::new(path, format!("expected at most {max}, got {number}")));
            }
        }
        Value::Array(items) => {
            if let Some(max) = limit("maxItems").filter(|max| items.len() as f64 > *max) {
                errors.push(FieldError::new(
                    path,
                    format!("expected at most {max} items, got {}", items.len()),
                ));
            }
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk(v, s, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            let props = properties(schema);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if let Some(key) = required.as_str()
                    && !map.contains_key(key)
                {
                    errors.push(FieldError::new(format!("{path}.{key}"), "required field is missing"));
                }
            }
            if props.is_empty() && additional.is_none() {
                return;
            }
            for (key, v) in map {
                let child = format!("{path}.{key}");
                if let Some(s) = props.iter().find_map(|p| p.get(key)) {
                    walk(v, s, &child, errors);
                } else if let Some(s) = additional {
                    walk(v, s, &child, errors);
                } else {
                    let mut known: Vec<&str> = props.iter().flat_map(|p| p.keys().map(String::as_str)).collect();
                    known.sort_unstable();
                    errors.push(FieldError::new(
                        child,
                        format!("unknown field; expected one of: {}", known.join(", ")),
                    ));
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// Whether `value` has the schema's `type` (an int-or-string field takes either).
fn type_ok(value: &Value, schema: &Value) -> bool {
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return value.is_string() || value.is_i64() || value.is_u64();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("array") => value.is_array(),
        Some("object") => value.is_object(),
        _ => true,
    }
}

fn expected(schema: &Value) -> String {
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return "an integer or a string".into();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => "a string (quote it)".into(),
        Some("integer") => "an integer".into(),
        Some("number") => "a number".into(),
        Some("boolean") => "true or false".into(),
        Some("array") => "a list".into(),
        Some("object") => "a mapping".into(),
        other => other.unwrap_or("a value").to_string(),
    }
}

fn shown_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Number(n) => format!("the number {n}"),
        Value::Bool(b) => format!("{b}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
        Value::Null => "null".into(),
    }
}

/// The `properties` of a schema, including those of its allOf/anyOf/oneOf branches.
fn properties(schema: &Value) -> Vec<&serde_json::Map<String, Value>> {
    let mut out: Vec<&serde_json::Map<String, Value>> = schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .collect();
    for key in ["allOf", "anyOf", "oneOf"] {
        for branch in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            out.extend(properties(branch));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: vidi.dev/v1alpha1
kind: VidiJob
metadata:
  name: find-dog
spec:
  video: {hostPath: /data/v.mp4}
  query: a dog catches a frisbee
  model:
    weights: {hostPath: /models/vidi}
  coTenants:
    refs: [{kind: Container, name: mcn_cosyvoice}]
    commands:
      - {name: comfyui, stop: "pkill -f main.py", start: "true", check: "pgrep -f main.py"}
"#;

    fn errors(text: &str) -> String {
        parse(text, "job.yaml").unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_docker_job() {
        let job = parse(GOOD, "job.yaml").unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("find-dog"));
        assert_eq!(job.spec.co_tenants.commands[0].name, "comfyui");
    }

    #[test]
    fn names_unknown_fields() {
        let e = errors(&GOOD.replace("coTenants:", "coTenant:"));
        assert!(e.contains("spec.coTenant: unknown field"), "{e}");
        let e = errors(&GOOD.replace("name: mcn_cosyvoice", "nmae: mcn_cosyvoice"));
        assert!(e.contains("spec.coTenants.refs[0].nmae: unknown field"), "{e}");
    }

    #[test]
    fn names_invalid_fields() {
        let e = errors(&GOOD.replace("query: a dog catches a frisbee", "query: ' '"));
        assert!(e.contains("spec.query"), "{e}");
        let e = errors(&GOOD.replace("kind: VidiJob", "kind: Job"));
        assert!(e.contains("kind: expected \"VidiJob\""), "{e}");
        let e = errors(&GOOD.replace("hostPath: /models/vidi", "claimName: weights"));
        assert!(e.contains("spec.model.weights.claimName"), "{e}");
        let e = errors(&GOOD.replace("name: find-dog", "name: Find_Dog"));
        assert!(e.contains("metadata.name"), "{e}");
        let e = errors(&GOOD.replace("kind: Container", "kind: Deployment"));
        assert!(e.contains("spec.coTenants.refs[0].kind"), "{e}");
        assert!(errors("spec: [").contains("not a valid VidiJob"));
    }
}
