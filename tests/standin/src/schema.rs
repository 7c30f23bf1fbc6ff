//! Structural-schema handling for custom resources, as the API server does it before storing:
//! unknown fields are pruned (the server's default `fieldValidation=Warn` behaviour), nulls of
//! non-nullable fields are dropped, then `type`, `required`, `enum`, `minLength`/`maxLength`,
//! `minimum`/`maximum`, `minItems`/`maxItems` are checked. Not evaluated: CEL
//! (`x-kubernetes-validations`), `pattern`, `format`, `oneOf`/`anyOf`/`allOf`/`not`, defaults.

use serde_json::{Map, Value};

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn flag(schema: &Value, f: &str) -> bool {
    schema.get(f).and_then(Value::as_bool) == Some(true)
}

/// Prunes and validates `obj` (a whole custom resource) against the version's
/// `openAPIV3Schema`; returns the field errors.
pub(crate) fn apply(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut errs = Vec::new();
    let Some(map) = obj.as_object_mut() else { return errs };
    let props = schema.get("properties").and_then(Value::as_object);
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(&k)) {
            Some(s) => {
                if let Some(v) = map.get_mut(&k) {
                    if v.is_null() && !flag(s, "nullable") {
                        map.remove(&k);
                    } else {
                        check(s, v, &k, &mut errs);
                    }
                }
            }
            None if preserve => {}
            None => {
                map.remove(&k);
            }
        }
    }
    required(schema, map, "", &mut errs);
    errs
}

fn required(schema: &Value, map: &Map<String, Value>, path: &str, errs: &mut Vec<String>) {
    for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = r.as_str()
            && !map.contains_key(r)
        {
            errs.push(format!("{}: Required value", join(path, r)));
        }
    }
}

fn check(schema: &Value, v: &mut Value, path: &str, errs: &mut Vec<String>) {
    if v.is_null() {
        if !flag(schema, "nullable") {
            errs.push(format!(
                "{path}: Invalid value: \"null\": {path} in body must be of type {}",
                schema.get("type").and_then(Value::as_str).unwrap_or("object")
            ));
        }
        return;
    }
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let embedded = flag(schema, "x-kubernetes-embedded-resource");
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == t
            || (t == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !ok {
            errs.push(format!(
                "{path}: Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        errs.push(format!(
            "{path}: Unsupported value: {v}: supported values: {}",
            list.join(", ")
        ));
    }
    match v {
        Value::String(s) => {
            let n = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && n > max
            {
                errs.push(format!("{path}: Too long: may not be more than {max} bytes"));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && n < min
            {
                errs.push(format!(
                    "{path}: Invalid value: \"{s}\": {path} in body should be at least {min} chars long"
                ));
            }
        }
        Value::Number(num) => {
            let x = num.as_f64().unwrap_or_default();
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                errs.push(format!(
                    "{path}: Invalid value: {x}: {path} in body should be less than or equal to {max}"
                ));
            }
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                errs.push(format!(
                    "{path}: Invalid value: {x}: {path} in body should be greater than or equal to {min}"
                ));
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                errs.push(format!("{path}: Too many: {n}: must have at most {max} items"));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                errs.push(format!(
                    "{path}: Invalid value: {n}: {path} in body should have at least {min} items"
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    check(item_schema, it, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields") || embedded;
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props.and_then(|p| p.get(&k)).or(additional.filter(|a| a.is_object()));
                match sub {
                    Some(s) => {
                        if map.get(&k).is_some_and(Value::is_null) && !flag(s, "nullable") {
                            map.remove(&k);
                        } else if let Some(val) = map.get_mut(&k) {
                            check(s, val, &join(path, &k), errs);
                        }
                    }
                    None if preserve || additional.and_then(Value::as_bool) == Some(true) => {}
                    None => {
                        map.remove(&k);
                    }
                }
            }
            required(schema, map, path, errs);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prunes_and_validates() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["query"], "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 10},
                "precision": {"type": "string", "enum": ["auto", "int8"]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "n": {"type": "integer", "minimum": 0, "nullable": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}});
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"query": "q", "bogus": 1, "labels": {"a": "b"}, "n": null, "free": {"x": 1}},
            "status": {"phase": "Running", "unknown": true}, "extra": 1});
        assert!(apply(&schema, &mut o).is_empty());
        assert_eq!(
            o,
            json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"query": "q", "labels": {"a": "b"}, "n": null, "free": {"x": 1}},
            "status": {"phase": "Running"}})
        );
        let mut bad = json!({"spec": {"precision": "fp64", "n": -1, "labels": {"a": 1}}});
        let errs = apply(&schema, &mut bad);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().any(|e| e == "spec.query: Required value"));
    }
}
