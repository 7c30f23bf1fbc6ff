//! `GET /api/v1/namespaces/<ns>/pods/<pod>/log`: what tests put in with
//! [`crate::Standin::append_log`], as plain text; with `follow=true`, streamed as it comes
//! until the container has terminated or the pod is gone. A container that has not started
//! answers 400 as the kubelet does (`… is waiting to start: PodInitializing`).
use std::sync::Arc;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use crate::error::ApiError;
use crate::store::State;
use crate::{Access, AccessRecord, Gvr, Shared};

pub(crate) fn serve(
    shared: &Arc<Shared>,
    client: Option<String>,
    ns: &Option<String>,
    pod: &Option<String>,
    query: &[(String, String)],
) -> Response {
    let get = |k: &str| query.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
    let follow = matches!(get("follow"), Some("true" | "1"));
    let (ns, pod) = (ns.clone().unwrap_or_default(), pod.clone().unwrap_or_default());
    let checked = {
        let mut st = shared.lock();
        let r = check(&st, &ns, &pod, get("container"));
        st.record(AccessRecord {
            access: Access::new("get", "", "pods", "log"),
            namespace: Some(ns.clone()),
            name: Some(pod.clone()),
            code: r.as_ref().map(|_| 200).unwrap_or_else(|e| e.code),
            client,
            at: std::time::Instant::now(),
        });
        r
    };
    let container = match checked {
        Ok(c) => c,
        Err(e) => return crate::http::respond(e.code, &e.to_status()),
    };
    let key = (ns, pod, container);
    let body = if follow {
        let shared = Arc::clone(shared);
        let rx = shared.notify.subscribe();
        Body::from_stream(futures::stream::unfold(
            (shared, rx, key, 0usize, false),
            |(shared, mut rx, key, mut offset, mut ended)| async move {
                loop {
                    if ended {
                        return None;
                    }
                    let (chunk, done) = {
                        let st = shared.lock();
                        let text = st.logs.get(&key).map(String::as_str).unwrap_or("");
                        let chunk = text.get(offset..).unwrap_or("").to_string();
                        offset = text.len();
                        (chunk, terminated(&st, &key.0, &key.1, &key.2))
                    };
                    ended = done;
                    if !chunk.is_empty() {
                        let next = (shared, rx, key, offset, ended);
                        return Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), next));
                    }
                    if ended {
                        return None;
                    }
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { return None },
                        _ = shared.cancel.cancelled() => return None,
                    }
                }
            },
        ))
    } else {
        Body::from(shared.lock().logs.get(&key).cloned().unwrap_or_default())
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    r
}

fn pod(st: &State, ns: &str, name: &str) -> Result<Value, ApiError> {
    let res = st.resource(&Gvr::pods()).ok_or_else(ApiError::no_route)?;
    st.get(&res, ns, name)
}

fn names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn state<'a>(pod: &'a Value, container: &str) -> Option<&'a Value> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|f| pod["status"][f].as_array())
        .flatten()
        .find(|s| s["name"] == container)
        .map(|s| &s["state"])
}

/// The container to read, or the error the API server gives.
fn check(st: &State, ns: &str, name: &str, container: Option<&str>) -> Result<String, ApiError> {
    let p = pod(st, ns, name)?;
    let main = names(&p, "containers");
    let all: Vec<String> = main.iter().cloned().chain(names(&p, "initContainers")).collect();
    let c = match container {
        Some(c) => c.to_string(),
        None if main.len() == 1 => main[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                main.join(" ")
            )));
        }
    };
    if !all.contains(&c) {
        return Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        )));
    }
    match state(&p, &c) {
        Some(s) if s.get("running").is_some() || s.get("terminated").is_some() => Ok(c),
        Some(s) => Err(ApiError::bad_request(format!(
            "container {c:?} in pod {name:?} is waiting to start: {}",
            s["waiting"]["reason"].as_str().unwrap_or("ContainerCreating")
        ))),
        None => Err(ApiError::bad_request(format!(
            "container {c:?} in pod {name:?} is waiting to start: ContainerCreating"
        ))),
    }
}

/// The container has ended, or its pod is gone: a follow ends.
fn terminated(st: &State, ns: &str, name: &str, container: &str) -> bool {
    match pod(st, ns, name) {
        Err(_) => true,
        Ok(p) => state(&p, container).is_some_and(|s| s.get("terminated").is_some()),
    }
}
