//! In-place release hooks: a co-tenant that can free its GPU memory without stopping (ComfyUI's
//! `POST /free`, vLLM's `POST /sleep` and `POST /wake_up`) says how, and the operator calls that
//! instead of scaling it down; if it fails, or the memory does not go free, it stops it after all.
//!
//! Declared as `release:` on `coTenants.refs[i]` and `coTenants.commands[i]`, or as annotations
//! (Kubernetes) or labels (Docker containers) on the workload: [`RELEASE`], [`RELEASE_URL`],
//! [`RESUME_URL`], [`RELEASE_BODY`], [`RELEASE_TIMEOUT`], [`RELEASE_FREE_WITHIN`].
use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::FieldError;

/// Annotation or label: `http`, `comfyui` or `vllm` (a [`ReleasePreset`]): the workload offers an
/// in-place release hook.
pub const RELEASE: &str = "vidi.dev/release";
/// Annotation or label: the URL the operator POSTs to free the GPU memory.
pub const RELEASE_URL: &str = "vidi.dev/release-url";
/// Annotation or label: the URL it POSTs to get the memory back (required with `vllm`).
pub const RESUME_URL: &str = "vidi.dev/resume-url";
/// Annotation or label: the JSON body of the release call (preset `http` only).
pub const RELEASE_BODY: &str = "vidi.dev/release-body";
/// Annotation or label: seconds each call may take (default 10).
pub const RELEASE_TIMEOUT: &str = "vidi.dev/release-timeout-seconds";
/// Annotation or label: seconds the GPU gate waits for the memory to go free after the release
/// answered, before the co-tenant is stopped instead (default 60).
pub const RELEASE_FREE_WITHIN: &str = "vidi.dev/release-free-within-seconds";
/// Annotation the operator writes on a co-tenant held in place, in the same write as
/// `vidi.dev/held-by`: the hook and how far the release got (a [`ReleaseMark`] as JSON), so a
/// crash at any point still resumes it.
pub const RELEASED: &str = "vidi.dev/released";

/// What the release call looks like.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReleasePreset {
    /// `POST url` with `body` (default none); `POST resumeUrl` on restore, if set.
    #[default]
    Http,
    /// ComfyUI: `POST url` (e.g. `http://comfyui:8188/free`) with
    /// `{"unload_models": true, "free_memory": true}`; it loads its models again on the next
    /// prompt, so `resumeUrl` is optional.
    Comfyui,
    /// vLLM (started with `--enable-sleep-mode`): `POST url` (e.g.
    /// `http://vllm:8000/sleep?level=1`), `POST resumeUrl` (e.g. `http://vllm:8000/wake_up`).
    Vllm,
}

impl std::fmt::Display for ReleasePreset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReleasePreset::Http => "http",
            ReleasePreset::Comfyui => "comfyui",
            ReleasePreset::Vllm => "vllm",
        })
    }
}

/// How a co-tenant frees its GPU memory in place, and takes it back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.preset != 'vllm' || has(self.resumeUrl)").message("preset vllm needs resumeUrl (its /wake_up)"))]
#[x_kube(validation = Rule::new("self.preset == 'http' || !has(self.body)").message("body is only for preset http (comfyui and vllm have their own)"))]
pub struct ReleaseHook {
    /// `http` (default), `comfyui` or `vllm`: the method and body of the calls.
    #[serde(default)]
    pub preset: ReleasePreset,
    /// The URL POSTed to free the GPU memory, e.g. `http://127.0.0.1:8188/free`.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must start with http:// or https://"))]
    #[schemars(length(min = 8, max = 2048))]
    pub url: String,
    /// The URL POSTed to take the memory back when the job ends, e.g.
    /// `http://127.0.0.1:8000/wake_up`. Without it the co-tenant is left to reload on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("resumeUrl must start with http:// or https://"))]
    #[schemars(length(min = 8, max = 2048))]
    pub resume_url: Option<String>,
    /// JSON body of the release call (preset `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub body: Option<String>,
    /// Seconds each call may take before it counts as failed (default 10).
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: i64,
    /// Seconds the GPU gate waits for the memory to go free once the release answered, before
    /// the co-tenant is stopped instead and Vidi tries again (default 60; at most the operator's
    /// gate timeout).
    #[serde(default = "default_free_within_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub free_within_seconds: i64,
}

fn default_timeout_seconds() -> i64 {
    10
}

fn default_free_within_seconds() -> i64 {
    60
}

impl ReleaseHook {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_seconds.clamp(1, 600) as u64)
    }

    /// How long the GPU gate waits for this co-tenant's memory after its release answered.
    pub fn free_within(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.free_within_seconds.clamp(1, 3600) as u64)
    }

    /// The JSON body of the release call.
    pub fn release_body(&self) -> Option<String> {
        match self.preset {
            ReleasePreset::Http => self.body.clone(),
            ReleasePreset::Comfyui => Some(r#"{"unload_models": true, "free_memory": true}"#.into()),
            ReleasePreset::Vllm => None,
        }
    }

    /// Problems a schema cannot see (the body must be JSON; URLs must parse), each naming
    /// `field.…`.
    pub fn check(&self, field: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (name, url) in [("url", Some(&self.url)), ("resumeUrl", self.resume_url.as_ref())] {
            if let Some(url) = url
                && let Err(why) = check_url(url)
            {
                errors.push(FieldError::new(format!("{field}.{name}"), why));
            }
        }
        if let Some(body) = &self.body
            && let Err(e) = serde_json::from_str::<serde_json::Value>(body)
        {
            errors.push(FieldError::new(
                format!("{field}.body"),
                format!("expected JSON, got {body:?} ({e})"),
            ));
        }
        if self.preset == ReleasePreset::Vllm && self.resume_url.is_none() {
            errors.push(FieldError::new(
                format!("{field}.resumeUrl"),
                "preset vllm needs resumeUrl (its /wake_up)",
            ));
        }
        if self.preset != ReleasePreset::Http && self.body.is_some() {
            errors.push(FieldError::new(
                format!("{field}.body"),
                format!("is only for preset http ({} has its own)", self.preset),
            ));
        }
        if !(1..=600).contains(&self.timeout_seconds) {
            errors.push(FieldError::new(
                format!("{field}.timeoutSeconds"),
                format!("expected 1 to 600, got {}", self.timeout_seconds),
            ));
        }
        if !(1..=3600).contains(&self.free_within_seconds) {
            errors.push(FieldError::new(
                format!("{field}.freeWithinSeconds"),
                format!("expected 1 to 3600, got {}", self.free_within_seconds),
            ));
        }
        errors
    }
}

/// `http://host[:port]/…` or `https://…`, with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// A hook declared with annotations (Kubernetes) or labels (Docker) on a workload; `Ok(None)`
/// without [`RELEASE`]. Errors name the annotation (`what` says which: "annotation"/"label").
pub fn from_marks(marks: &BTreeMap<String, String>, what: &str) -> Result<Option<ReleaseHook>, Vec<FieldError>> {
    let field = |key: &str| format!("{what} {key}");
    let Some(preset) = marks.get(RELEASE) else {
        // The other marks mean nothing without it: say so rather than stop the co-tenant
        // without a word about its hook.
        let stray: Vec<&str> = [
            RELEASE_URL,
            RESUME_URL,
            RELEASE_BODY,
            RELEASE_TIMEOUT,
            RELEASE_FREE_WITHIN,
        ]
        .into_iter()
        .filter(|k| marks.contains_key(*k))
        .collect();
        return match stray.first() {
            None => Ok(None),
            Some(key) => Err(vec![FieldError::new(
                field(key),
                format!("is set without {RELEASE} (http, comfyui or vllm), so the release hook would be ignored"),
            )]),
        };
    };
    let mut errors = Vec::new();
    let preset = match preset.trim() {
        "http" => ReleasePreset::Http,
        "comfyui" => ReleasePreset::Comfyui,
        "vllm" => ReleasePreset::Vllm,
        other => {
            errors.push(FieldError::new(
                field(RELEASE),
                format!("expected http, comfyui or vllm, got {other:?}"),
            ));
            ReleasePreset::Http
        }
    };
    let url = marks.get(RELEASE_URL).map(|u| u.trim().to_string());
    if url.is_none() {
        errors.push(FieldError::new(
            field(RELEASE_URL),
            format!("is required with {RELEASE}, e.g. http://comfyui:8188/free"),
        ));
    }
    // Whole seconds from a mark, its default when absent or unreadable (the range is checked
    // with the rest below).
    let mut seconds = |key: &str, most: i64, default: i64| match marks.get(key) {
        None => default,
        Some(v) => v.trim().parse().unwrap_or_else(|_| {
            errors.push(FieldError::new(
                field(key),
                format!("expected whole seconds (1 to {most}), got {v:?}"),
            ));
            default
        }),
    };
    let timeout_seconds = seconds(RELEASE_TIMEOUT, 600, default_timeout_seconds());
    let free_within_seconds = seconds(RELEASE_FREE_WITHIN, 3600, default_free_within_seconds());
    let hook = ReleaseHook {
        preset,
        url: url.unwrap_or_default(),
        resume_url: marks.get(RESUME_URL).map(|u| u.trim().to_string()),
        body: marks.get(RELEASE_BODY).cloned(),
        timeout_seconds,
        free_within_seconds,
    };
    // Named like the marks they came from; every mark is checked, not only until the first
    // problem (one that could not be read is not blamed twice).
    let checked: Vec<FieldError> = hook
        .check("")
        .into_iter()
        .filter_map(|e| {
            let key = match e.field.trim_start_matches('.') {
                "url" => RELEASE_URL,
                "resumeUrl" => RESUME_URL,
                "body" => RELEASE_BODY,
                "freeWithinSeconds" => RELEASE_FREE_WITHIN,
                _ => RELEASE_TIMEOUT,
            };
            let name = field(key);
            (!errors.iter().any(|seen| seen.field == name)).then(|| FieldError::new(name, e.message))
        })
        .collect();
    errors.extend(checked);
    if errors.is_empty() { Ok(Some(hook)) } else { Err(errors) }
}

/// How far an in-place release got, as recorded on the co-tenant (annotation [`RELEASED`], or
/// the Docker journal's hold) before each call is made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseMark {
    pub state: ReleaseState,
    /// The hook as it was when the hold began: the resume does not depend on the job or the
    /// workload still saying how.
    pub hook: ReleaseHook,
}

/// Where an in-place release stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "is")]
pub enum ReleaseState {
    /// Recorded; the release call is about to be made, or was made and its answer not yet
    /// recorded (a crash): it is made again, then resumed at the end either way.
    Requested,
    /// The co-tenant answered 2xx. The memory counts as free only once the GPU gate passes.
    Released,
    /// The call failed (refused, unreachable, timed out): stop it instead.
    Refused { why: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn presets_from_annotations() {
        assert_eq!(from_marks(&marks(&[]), "annotation"), Ok(None));
        let hook = from_marks(
            &marks(&[(RELEASE, "comfyui"), (RELEASE_URL, "http://comfy:8188/free")]),
            "annotation",
        )
        .unwrap()
        .unwrap();
        assert_eq!(hook.preset, ReleasePreset::Comfyui);
        assert_eq!(hook.timeout_seconds, 10);
        assert_eq!(hook.free_within(), std::time::Duration::from_secs(60));
        assert_eq!(
            hook.release_body().as_deref(),
            Some(r#"{"unload_models": true, "free_memory": true}"#)
        );
        let vllm = from_marks(
            &marks(&[
                (RELEASE, "vllm"),
                (RELEASE_URL, "http://vllm:8000/sleep?level=1"),
                (RESUME_URL, "http://vllm:8000/wake_up"),
                (RELEASE_TIMEOUT, "30"),
                (RELEASE_FREE_WITHIN, " 300 "),
            ]),
            "annotation",
        )
        .unwrap()
        .unwrap();
        assert_eq!(vllm.release_body(), None);
        assert_eq!(vllm.timeout_seconds, 30);
        assert_eq!(vllm.free_within(), std::time::Duration::from_secs(300));
    }

    #[test]
    fn bad_annotations_name_the_annotation() {
        let errors = from_marks(&marks(&[(RELEASE, "grpc")]), "annotation").unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["annotation vidi.dev/release", "annotation vidi.dev/release-url"]
        );
        assert!(
            errors[0].message.contains("expected http, comfyui or vllm"),
            "{errors:?}"
        );

        let errors = from_marks(&marks(&[(RELEASE, "vllm"), (RELEASE_URL, "ftp://x/sleep")]), "label").unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["label vidi.dev/release-url", "label vidi.dev/resume-url"]);

        // Every mark is checked: the body too, not only the timeout that could not be read.
        let errors = from_marks(
            &marks(&[
                (RELEASE, "http"),
                (RELEASE_URL, "http://x/free"),
                (RELEASE_BODY, "{not json"),
                (RELEASE_TIMEOUT, "soon"),
            ]),
            "annotation",
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "annotation vidi.dev/release-timeout-seconds",
                "annotation vidi.dev/release-body"
            ]
        );
        // A URL without the preset would be ignored: refused, naming the mark.
        let errors = from_marks(&marks(&[(RELEASE_URL, "http://x/free")]), "label").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "label vidi.dev/release-url");
        assert!(errors[0].message.contains("without vidi.dev/release"), "{errors:?}");

        for (value, expected) in [
            ("a minute", "expected whole seconds (1 to 3600)"),
            ("0", "expected 1 to 3600, got 0"),
        ] {
            let errors = from_marks(
                &marks(&[
                    (RELEASE, "comfyui"),
                    (RELEASE_URL, "http://comfy:8188/free"),
                    (RELEASE_FREE_WITHIN, value),
                ]),
                "annotation",
            )
            .unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].field, "annotation vidi.dev/release-free-within-seconds");
            assert!(errors[0].message.contains(expected), "{errors:?}");
        }
    }

    #[test]
    fn spec_hook_checks_body_and_urls() {
        let hook = ReleaseHook {
            preset: ReleasePreset::Http,
            url: "http://".into(),
            resume_url: None,
            body: Some("{".into()),
            timeout_seconds: 0,
            free_within_seconds: 3601,
        };
        let fields: Vec<_> = hook
            .check("spec.coTenants.commands[0].release")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.coTenants.commands[0].release.url",
                "spec.coTenants.commands[0].release.body",
                "spec.coTenants.commands[0].release.timeoutSeconds",
                "spec.coTenants.commands[0].release.freeWithinSeconds"
            ]
        );
    }

    #[test]
    fn the_mark_round_trips_as_json() {
        let mark = ReleaseMark {
            state: ReleaseState::Refused { why: "HTTP 500".into() },
            hook: ReleaseHook {
                preset: ReleasePreset::Vllm,
                url: "http://v:8000/sleep?level=1".into(),
                resume_url: Some("http://v:8000/wake_up".into()),
                body: None,
                timeout_seconds: 10,
                free_within_seconds: 90,
            },
        };
        let text = serde_json::to_string(&mark).unwrap();
        assert!(text.contains(r#""is":"refused""#), "{text}");
        assert_eq!(serde_json::from_str::<ReleaseMark>(&text).unwrap(), mark);
        // A mark written before freeWithinSeconds existed reads with its default.
        let old =
            r#"{"state":{"is":"released"},"hook":{"preset":"comfyui","url":"http://c:8188/free","timeoutSeconds":10}}"#;
        let old: ReleaseMark = serde_json::from_str(old).unwrap();
        assert_eq!(old.hook.free_within(), std::time::Duration::from_secs(60));
    }
}
