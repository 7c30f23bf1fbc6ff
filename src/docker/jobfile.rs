//! Reads a VidiJob YAML file for `docker run`: the same format `kubectl apply` takes.
//!
//! Strict like the API server: serde would silently drop a misspelt field (`coTenant:`) and
//! read `query: 42` as the text "42", and a job that then suspends nothing, or the wrong thing,
//! is worse than an error. The document is checked against the CRD itself, so the check can
//! never drift from what `kubectl apply` would accept: unknown fields, types, enums, lengths,
//! ranges and required fields by walking its OpenAPI schema, and its CEL rules
//! (`x-kubernetes-validations`) by kube's CEL evaluator. Every problem is reported at once,
//! each naming its field and where it is in the file (`job.yaml:12:5: spec.query: …`); nothing
//! is touched before the file passes.
//!
//! Messages are in the user's terms, never the libraries': the file is read once into a tree
//! that keeps each node's line and column ([`serde_saphyr::Spanned`]), errors of the YAML
//! parser are translated by kind (more than one document, a key given twice, syntax), and the
//! typed read reports a field path ([`serde_path_to_error`]) with the expected type in words.
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use kube::CustomResourceExt as _;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

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
    /// Not readable as one YAML document.
    #[error("{}: {message}", at_text(.origin, .at))]
    Yaml {
        origin: String,
        at: Option<At>,
        message: String,
    },
    #[error("{origin} is not a valid VidiJob:\n  {}", list(.origin, .errors))]
    Invalid { origin: String, errors: Vec<Located> },
}

/// A line and column in the job file, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl At {
    fn of(location: Location) -> Option<At> {
        (location != Location::UNKNOWN && location.line() > 0).then(|| At {
            line: location.line(),
            column: location.column(),
        })
    }
}

/// A problem with a field, and where that field is in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub at: Option<At>,
    pub error: FieldError,
}

fn at_text(origin: &str, at: &Option<At>) -> String {
    match at {
        Some(at) => format!("{origin}:{at}"),
        None => origin.to_string(),
    }
}

fn list(origin: &str, errors: &[Located]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", at_text(origin, &e.at), e.error))
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Reads and checks the job file at `path` (`-` reads standard input).
pub fn load(path: &Path) -> Result<VidiJob, JobFileError> {
    read(path).map(|(job, _)| job)
}

/// The job file a job was read from, to say where a field is in it.
pub struct Source {
    origin: String,
    places: Places,
}

impl Source {
    /// `FILE:LINE:COLUMN: field: message` for a field of the file (a flag such as `--gpus` has
    /// no place in it: `--gpus: message`).
    pub fn describe(&self, error: &FieldError) -> String {
        let located = self.places.locate(error.clone());
        match located.at {
            Some(at) => format!("{}:{at}: {}", self.origin, located.error),
            None => located.error.to_string(),
        }
    }
}

/// [`load`], keeping where each field is for later messages.
pub fn read(path: &Path) -> Result<(VidiJob, Source), JobFileError> {
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
    parse_with_places(&text, &origin)
}

/// Parses and checks a job; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<VidiJob, JobFileError> {
    parse_with_places(text, origin).map(|(job, _)| job)
}

fn parse_with_places(text: &str, origin: &str) -> Result<(VidiJob, Source), JobFileError> {
    let tree: Spanned<Node> = serde_saphyr::from_str(text).map_err(|e| yaml_error(origin, &e))?;
    let mut places = Places::default();
    let doc = places.record(tree, String::new(), None);
    let Value::Object(top) = &doc else {
        return Err(JobFileError::Yaml {
            origin: origin.to_string(),
            at: places.at(""),
            message: if doc.is_null() {
                "the file is empty: expected a VidiJob (apiVersion, kind, metadata and spec)".to_string()
            } else {
                format!(
                    "expected a mapping with apiVersion, kind, metadata and spec, got {}",
                    shown_value(&doc)
                )
            },
        });
    };
    let invalid = |errors: Vec<FieldError>| JobFileError::Invalid {
        origin: origin.to_string(),
        errors: errors.into_iter().map(|e| places.locate(e)).collect(),
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
        return Err(invalid(errors));
    }
    // What the schema cannot say about types (e.g. an int32's range): the path of the field
    // serde refused, and what it expected in words.
    let job: VidiJob = serde_path_to_error::deserialize(&doc).map_err(|e| {
        let path = e.path().to_string();
        invalid(vec![typed_error(&path, &e.into_inner().to_string())])
    })?;
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
        return Err(invalid(errors));
    }
    Ok((
        job,
        Source {
            origin: origin.to_string(),
            places,
        },
    ))
}

/// A YAML node as written, each part with where it is (`Spanned`).
enum Node {
    Scalar(Value),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
}

/// A mapping key as text (`1:` and `true:` are keys too).
struct Key(String);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        // Beyond 64 bits: kept as a number, so the schema says "expected an integer, got …".
        Ok(Node::Scalar(
            i64::try_from(v).map_or_else(|_| float(v as f64), Value::from),
        ))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(
            u64::try_from(v).map_or_else(|_| float(v as f64), Value::from),
        ))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Map(entries))
    }
}

/// A float as JSON has it (NaN and infinities have no JSON number: null, like serde_json).
fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'v> Visitor<'v> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key (text)")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Key, E> {
                Ok(Key("null".to_string()))
            }
            fn visit_none<E>(self) -> Result<Key, E> {
                Ok(Key("null".to_string()))
            }
            fn visit_seq<A: SeqAccess<'v>>(self, _: A) -> Result<Key, A::Error> {
                Err(de::Error::custom("a list cannot be a key: keys are field names"))
            }
            fn visit_map<A: MapAccess<'v>>(self, _: A) -> Result<Key, A::Error> {
                Err(de::Error::custom("a mapping cannot be a key: keys are field names"))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

/// Where each field is: its path as errors name it (`spec.coTenants.refs[0].name`) → the
/// place of its key (for a mapping entry) and of its value.
#[derive(Default)]
struct Places(HashMap<String, Place>);

struct Place {
    key: Option<Location>,
    value: Location,
    /// A list or mapping: a problem with all of it points at its key.
    container: bool,
}

impl Places {
    /// Turns the tree into JSON for the checks, noting where each path is.
    fn record(&mut self, node: Spanned<Node>, path: String, key: Option<Location>) -> Value {
        let place = Place {
            key,
            value: node.referenced,
            container: !matches!(node.value, Node::Scalar(_)),
        };
        self.0.insert(path.clone(), place);
        match node.value {
            Node::Scalar(v) => v,
            Node::Seq(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.record(item, format!("{path}[{i}]"), None))
                    .collect(),
            ),
            Node::Map(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        let child = if path.is_empty() {
                            k.value.0.clone()
                        } else {
                            format!("{path}.{}", k.value.0)
                        };
                        let value = self.record(v, child, Some(k.referenced));
                        (k.value.0, value)
                    })
                    .collect(),
            ),
        }
    }

    /// Where the value at `path` is.
    fn at(&self, path: &str) -> Option<At> {
        self.0.get(path).and_then(|p| At::of(p.value))
    }

    /// Where to point for a problem with `field`: its value (what is wrong with it), its key
    /// for an unknown field or a whole list or mapping, and for a field that is missing the
    /// key of the nearest field that is there (the mapping it belongs in). Flags (`--gpus`)
    /// are not in the file.
    fn locate(&self, error: FieldError) -> Located {
        if error.field.starts_with("--") {
            return Located { at: None, error };
        }
        let mut path = error.field.as_str();
        let mut exact = true;
        let at = loop {
            if let Some(p) = self.0.get(path) {
                let unknown = error.message.starts_with("unknown field");
                let place = match p.key {
                    Some(k) if unknown || !exact || p.container => k,
                    _ => p.value,
                };
                break At::of(place);
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None if !path.is_empty() => path = "",
                None => break None,
            }
            exact = false;
        };
        Located { at, error }
    }
}

/// A YAML-level error (not one document, a key given twice, not YAML) in the user's terms.
fn yaml_error(origin: &str, e: &serde_saphyr::Error) -> JobFileError {
    use serde_saphyr::{Error as E, MessageFormatter as _, UserMessageFormatter};
    let message = match e.without_snippet() {
        E::MultipleDocuments { .. } => "a second YAML document starts here (a \"---\" line): a job file holds exactly \
                                        one VidiJob; put each job in a file of its own"
            .to_string(),
        E::DuplicateMappingKey { key: Some(k), .. } => {
            format!("{k:?} is given twice in the same mapping; keep one (YAML does not merge them)")
        }
        E::DuplicateMappingKey { key: None, .. } => {
            "a key is given twice in the same mapping; keep one (YAML does not merge them)".to_string()
        }
        E::Eof { .. } => "the file ends in the middle of a value (an unclosed quote, [ or {?)".to_string(),
        other => format!("not valid YAML: {}", UserMessageFormatter.format_message(other)),
    };
    JobFileError::Yaml {
        origin: origin.to_string(),
        at: e.location().and_then(At::of),
        message: in_user_terms(&message),
    }
}

/// A message from serde's typed read (`invalid type: string "ten", expected i64`) as a field
/// problem in words.
fn typed_error(path: &str, message: &str) -> FieldError {
    let field = if path == "." { "" } else { path };
    let quoted = |s: &str, after: &str| {
        s.find(after)
            .map(|i| &s[i + after.len()..])
            .and_then(|rest| rest.find('`').map(|end| rest[..end].to_string()))
    };
    if let Some(name) = quoted(message, "missing field `") {
        return FieldError::new(join(field, &name), "required field is missing");
    }
    if let Some(name) = quoted(message, "unknown field `") {
        return FieldError::new(join(field, &name), "unknown field");
    }
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        && let Some((got, expected)) = rest.rsplit_once(", expected ")
    {
        return FieldError::new(
            field,
            format!("expected {}, got {}", in_words(expected), in_user_terms(got)),
        );
    }
    if let Some(variant) = quoted(message, "unknown variant `") {
        let options = message.split_once("expected ").map_or("", |(_, o)| o).replace('`', "");
        return FieldError::new(field, format!("expected {options}, got {variant:?}"));
    }
    FieldError::new(field, in_user_terms(message))
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// A Rust type serde expected, in words (with the range of a sized integer).
fn in_words(expected: &str) -> String {
    let range = |min: i128, max: i128| format!("an integer from {min} to {max}");
    match expected.trim() {
        "i8" => range(i8::MIN.into(), i8::MAX.into()),
        "i16" => range(i16::MIN.into(), i16::MAX.into()),
        "i32" => range(i32::MIN.into(), i32::MAX.into()),
        "i64" | "isize" => range(i64::MIN.into(), i64::MAX.into()),
        "u8" => range(0, u8::MAX.into()),
        "u16" => range(0, u16::MAX.into()),
        "u32" => range(0, u32::MAX.into()),
        "u64" | "usize" => range(0, u64::MAX.into()),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" | "bool" => "true or false".to_string(),
        "a string" | "a borrowed string" | "string" => "a string (quote it)".to_string(),
        "a sequence" => "a list".to_string(),
        "a map" => "a mapping".to_string(),
        other => in_user_terms(other),
    }
}

/// The last guard against library words in a message: Rust type names and API hints become
/// words. Messages built here never need it; it is for text passed through from a library.
fn in_user_terms(message: &str) -> String {
    let mut out = message.replace("integer `", "the number `");
    for (from, to) in [
        ("a sequence", "a list"),
        ("a map", "a mapping"),
        ("a borrowed string", "a string"),
    ] {
        out = replace_word(&out, from, to);
    }
    for ty in [
        "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize",
    ] {
        out = replace_word(&out, ty, "integer");
    }
    for ty in ["f32", "f64"] {
        out = replace_word(&out, ty, "number");
    }
    out.replace('`', "")
}

/// Replaces `word` where it stands alone (not inside another word).
fn replace_word(text: &str, word: &str, by: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(word) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + word.len()..].chars().next();
        let alone = |c: Option<char>| c.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_');
        out.push_str(&rest[..i]);
        out.push_str(if alone(before) && alone(after) { by } else { word });
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
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

    /// Words only a Rust programmer would understand.
    const LIBRARY_WORDS: [&str; 10] = [
        "from_str",
        "DuplicateKeyPolicy",
        "Options",
        "i32",
        "i64",
        "u32",
        "u64",
        "f64",
        "serde",
        "`",
    ];

    fn assert_plain(e: &str) {
        for w in LIBRARY_WORDS {
            assert!(!e.contains(w), "{w:?} in: {e}");
        }
    }

    #[test]
    fn every_problem_names_its_line_and_column() {
        // line 8 is `  query: 42`; the value starts in column 10.
        let e = errors(&GOOD.replace("query: a dog catches a frisbee", "query: 42"));
        assert!(
            e.contains("job.yaml:8:10: spec.query: expected a string (quote it), got the number 42"),
            "{e}"
        );
        // An unknown field points at its key.
        let e = errors(&GOOD.replace("coTenants:", "coTenant:"));
        assert!(e.contains("job.yaml:11:3: spec.coTenant: unknown field"), "{e}");
        // A missing field points at the mapping it belongs in.
        let e = errors(&GOOD.replace("  query: a dog catches a frisbee\n", ""));
        assert!(e.contains("job.yaml:6:1: spec.query: required field is missing"), "{e}");
        // In a list.
        let e = errors(&GOOD.replace("kind: Container", "kind: Deployment"));
        assert!(e.contains("job.yaml:12:19: spec.coTenants.refs[0].kind:"), "{e}");
        assert_plain(&e);
    }

    #[test]
    fn yaml_mistakes_are_told_in_the_users_terms() {
        let e = errors(&format!("{GOOD}---\n{GOOD}"));
        assert!(
            e.starts_with("job.yaml:17:1: a second YAML document starts here"),
            "{e}"
        );
        assert_plain(&e);
        let e = errors(&GOOD.replace("  query: a dog", "  query: x\n  query: a dog"));
        assert!(
            e.starts_with("job.yaml:9:3: \"query\" is given twice in the same mapping"),
            "{e}"
        );
        assert_plain(&e);
        let e = errors("spec: [");
        assert!(e.starts_with("job.yaml:1:"), "{e}");
        assert_plain(&e);
        let e = errors("- a\n- b\n");
        assert!(e.starts_with("job.yaml:1:1: expected a mapping with apiVersion"), "{e}");
    }

    #[test]
    fn a_number_too_large_for_its_field_says_the_range() {
        // Past what the schema checks: an i64 in a Kubernetes type.
        let e = errors(&GOOD.replace(
            "  query: a dog catches a frisbee",
            "  query: a dog catches a frisbee\n  gpu: {tolerations: [{key: a, tolerationSeconds: 10000000000000000000}]}",
        ));
        assert!(
            e.contains(&format!(
                "job.yaml:9:51: spec.gpu.tolerations[0].tolerationSeconds: expected an integer from {} to {}, got the number 10000000000000000000",
                i64::MIN,
                i64::MAX
            )),
            "{e}"
        );
        assert_plain(&e);
    }

    #[test]
    fn later_problems_are_located_in_the_file_but_flags_are_not() {
        let (_, source) = parse_with_places(GOOD, "job.yaml").unwrap();
        assert_eq!(
            source.describe(&FieldError::new("spec.video.hostPath", "not there")),
            "job.yaml:7:21: spec.video.hostPath: not there"
        );
        assert_eq!(
            source.describe(&FieldError::new("spec.coTenants.refs[0].name", "no such container")),
            "job.yaml:12:36: spec.coTenants.refs[0].name: no such container"
        );
        assert_eq!(source.describe(&FieldError::new("--gpus", "no GPU")), "--gpus: no GPU");
    }

    #[test]
    fn library_words_become_words() {
        assert_eq!(
            typed_error("spec.x", "invalid type: string \"ten\", expected i64").to_string(),
            format!(
                "spec.x: expected an integer from {} to {}, got string \"ten\"",
                i64::MIN,
                i64::MAX
            )
        );
        assert_eq!(
            typed_error("spec", "missing field `query`").to_string(),
            "spec.query: required field is missing"
        );
        assert_eq!(in_user_terms("invalid i32 (u8)"), "invalid integer (integer)");
        assert_eq!(
            in_user_terms("expected a mapping, got a map or a sequence"),
            "expected a mapping, got a mapping or a list"
        );
        assert_eq!(replace_word("fi32 i32x i32", "i32", "n"), "fi32 i32x n");
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
        assert!(errors("spec: [").contains("not valid YAML"));
    }
}
