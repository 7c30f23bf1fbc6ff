//! The HTTP face: path parsing, verbs, content types, list and watch.

use crate::error::ApiError;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{DeleteOpts, PatchType, State, StoredEvent, with_version};
use crate::{Access, AccessRecord, Cut, Gvr, ResourceInfo, Shared};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

pub(crate) fn respond(code: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: &ApiError) -> Response {
    respond(e.code, &e.to_status())
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// Parsed `/api/v1/...` or `/apis/g/v/...` path.
struct Target {
    gvr: Gvr,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Result<Option<Target>, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let ns_scoped =
        rest[0] == "namespaces" && rest.len() >= 3 && !(group.is_empty() && matches!(rest[2], "status" | "finalize"));
    let (ns, rest) = if ns_scoped {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    if rest.len() > 3 || rest.iter().any(|s| s.is_empty()) {
        return Err(ApiError::no_route());
    }
    Ok(Some(Target {
        gvr: Gvr::new(group, version, rest[0]),
        ns,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    }))
}

fn verb(method: &Method, t: &Target, q: &Query) -> Option<&'static str> {
    let item = t.name.is_some();
    Some(match (method.as_str(), item) {
        ("GET", true) => "get",
        ("GET", false) if q.flag("watch") => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    })
}

fn media_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn metadata_only(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=PartialObjectMetadata"))
}

fn partial(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

fn parse_body(media: &str, body: &[u8]) -> Result<Value, ApiError> {
    match media {
        "application/json" | "" => {
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding body: {e}")))
        }
        "application/yaml" => {
            let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
            serde_saphyr::from_str(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        other => Err(unsupported(other)),
    }
}

fn unsupported(media: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format ({media}) - accepted media types include: application/json, application/yaml"
        ),
    )
}

fn delete_opts(q: &Query, body: &[u8]) -> Result<DeleteOpts, ApiError> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let grace = v
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| q.get("gracePeriodSeconds").and_then(|s| s.parse().ok()));
    let policy = v
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| q.get("propagationPolicy").map(String::from));
    if let Some(p) = &policy
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::bad_request(format!("unsupported propagationPolicy {p:?}")));
    }
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(String::from);
    Ok(DeleteOpts {
        grace,
        uid: s("/preconditions/uid"),
        rv: s("/preconditions/resourceVersion"),
        orphan: policy.as_deref() == Some("Orphan") || v.get("orphanDependents").and_then(Value::as_bool) == Some(true),
    })
}

/// `/clients/<id>/rest`: the client's name and the path it asked for.
fn client_of(path: &str) -> (Option<String>, String) {
    match path.strip_prefix("/clients/").and_then(|rest| rest.split_once('/')) {
        Some((id, rest)) if !id.is_empty() => (Some(id.to_string()), format!("/{rest}")),
        _ => (None, path.to_string()),
    }
}

/// Resolves once client `id` is not cut off in the way `held` says (or the server stops).
async fn until_not(shared: &Arc<Shared>, id: &Option<String>, held: impl Fn(Option<Cut>) -> bool) {
    let Some(id) = id else { return };
    let mut rx = shared.notify.subscribe();
    loop {
        rx.borrow_and_update();
        if !held(shared.lock().cuts.get(id).copied()) {
            return;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = shared.cancel.cancelled() => return,
        }
    }
}

async fn handle(AxState(shared): AxState<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (client, path) = client_of(parts.uri.path());
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => return error(&ApiError::bad_request(format!("cannot read body: {e}"))),
    };
    // A hung client's request is served once the cut heals, even if the client has gone: it
    // runs in its own task, which dropping this handler does not cancel.
    let hung = client
        .as_ref()
        .is_some_and(|id| shared.lock().cuts.get(id) == Some(&Cut::Hang));
    if let (true, Some(id)) = (hung, client.clone()) {
        *shared.lock().held.entry(id.clone()).or_default() += 1;
        shared.poke();
        let task = tokio::spawn(async move {
            until_not(&shared, &client, |c| c == Some(Cut::Hang)).await;
            let answer = serve(shared.clone(), client, path, parts, body).await;
            if let Some(n) = shared.lock().held.get_mut(&id) {
                *n = n.saturating_sub(1);
            }
            shared.poke();
            answer
        });
        return match task.await {
            Ok(r) => r,
            Err(e) => error(&ApiError::new(500, "InternalError", e.to_string())),
        };
    }
    let latency = shared.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    serve(shared, client, path, parts, body).await
}

async fn serve(
    shared: Arc<Shared>,
    client: Option<String>,
    path: String,
    parts: axum::http::request::Parts,
    body: Bytes,
) -> Response {
    let q = Query(
        form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect(),
    );
    match path.as_str() {
        "/version" => {
            return respond(
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-standin", "platform": "linux/amd64"}),
            );
        }
        "/healthz" | "/readyz" | "/livez" => return Response::new(Body::from("ok")),
        "/api" => {
            return respond(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            );
        }
        "/apis" => return respond(200, &group_list(&shared.lock())),
        _ => {}
    }
    let target = match parse_path(&path) {
        Ok(Some(t)) => t,
        Ok(None) => {
            let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
            let (g, v) = if segs[0] == "api" {
                ("", segs[1])
            } else {
                (segs[1], segs[2])
            };
            return match resource_list(&shared.lock(), g, v) {
                Some(l) => respond(200, &l),
                None => error(&ApiError::no_route()),
            };
        }
        Err(e) => return error(&e),
    };
    if target.sub.as_deref() == Some("log") && target.gvr == Gvr::pods() && parts.method == Method::GET {
        return crate::logs::serve(&shared, client, &target.ns, &target.name, &q.0);
    }
    let Some(verb) = verb(&parts.method, &target, &q) else {
        return error(&ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({})",
                parts.method
            ),
        ));
    };
    let access = Access {
        verb: verb.into(),
        group: target.gvr.group.clone(),
        resource: target.gvr.plural.clone(),
        subresource: target.sub.clone().unwrap_or_default(),
    };
    let record = |st: &mut State, code: u16| {
        st.record(AccessRecord {
            access: access.clone(),
            namespace: target.ns.clone(),
            name: target.name.clone(),
            code,
            client: client.clone(),
            at: std::time::Instant::now(),
        });
    };
    let meta_only = metadata_only(&parts.headers);
    let prepared = {
        let mut st = shared.lock();
        let checked = (|| -> Result<ResourceInfo, ApiError> {
            let lease_write = access.resource == "leases" && matches!(verb, "create" | "update" | "patch");
            if lease_write
                && client
                    .as_ref()
                    .is_some_and(|id| st.cuts.get(id) == Some(&Cut::LeaseWritesFail))
            {
                return Err(ApiError::from_code(503, "injected: this client's Lease writes fail"));
            }
            let named = format!(
                "{}/{}",
                target.ns.as_deref().unwrap_or_default(),
                target.name.as_deref().unwrap_or_default()
            );
            if let Some((code, message)) = st.injected(&access, &named) {
                return Err(ApiError::from_code(code, message));
            }
            let res = st.resource(&target.gvr).ok_or_else(ApiError::no_route)?;
            if !res.namespaced && target.ns.is_some() {
                return Err(ApiError::no_route());
            }
            if res.namespaced && target.ns.is_none() && !matches!(verb, "list" | "watch") {
                return Err(ApiError::no_route());
            }
            match target.sub.as_deref() {
                None => {}
                Some("status") if res.status_subresource && matches!(verb, "get" | "update" | "patch") => {}
                Some(_) => return Err(ApiError::no_route()),
            }
            if q.get("dryRun").is_some() {
                return Err(ApiError::bad_request("kube-standin does not support dryRun"));
            }
            Ok(res)
        })();
        if let Err(e) = &checked {
            record(&mut st, e.code);
        }
        checked
    };
    let res = match prepared {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let ns = target.ns.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let status = target.sub.is_some();
    let media = media_type(&parts.headers);
    if verb == "watch" {
        return match start_watch(&shared, &res, target.ns.as_deref(), &q, meta_only, client.clone()) {
            Ok(r) => {
                record(&mut shared.lock(), 200);
                r
            }
            Err(e) => {
                record(&mut shared.lock(), e.code);
                error(&e)
            }
        };
    }
    let out: Result<(u16, Value), ApiError> = shared.with(|st| {
        let r = (|| -> Result<(u16, Value), ApiError> {
            match verb {
                "get" => st.get(&res, &ns, &name).map(|o| (200, o)),
                "list" => {
                    let (labels, fields) = selectors(&q, &res)?;
                    let items = st.list(&res, target.ns.as_deref(), &labels, &fields);
                    Ok((200, list_body(&res, items, st.rv)))
                }
                "create" => {
                    let obj = parse_body(&media, &body)?;
                    st.create(&res, &ns, obj, false).map(|o| (201, o))
                }
                "update" => {
                    let obj = parse_body(&media, &body)?;
                    st.update(&res, &ns, &name, obj, status, q.get("fieldManager"))
                        .map(|o| (200, o))
                }
                "patch" => {
                    let ptype = match media.as_str() {
                        "application/merge-patch+json" => PatchType::Merge,
                        "application/json-patch+json" => PatchType::Json,
                        "application/strategic-merge-patch+json" => PatchType::Strategic,
                        "application/apply-patch+yaml" => PatchType::Apply,
                        other => {
                            return Err(ApiError::new(
                                415,
                                "UnsupportedMediaType",
                                format!("the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"),
                            ));
                        }
                    };
                    st.patch(&res, &ns, &name, ptype, &body, status, q.get("fieldManager"))
                        .map(|(o, created)| (if created { 201 } else { 200 }, o))
                }
                "delete" => {
                    let opts = delete_opts(&q, &body)?;
                    st.delete(&res, &ns, &name, &opts).map(|o| (200, o))
                }
                "deletecollection" => {
                    let opts = delete_opts(&q, &body)?;
                    let (labels, fields) = selectors(&q, &res)?;
                    let items = st.list(&res, target.ns.as_deref(), &labels, &fields);
                    let mut deleted = Vec::new();
                    for it in items {
                        let n = crate::store::meta_str(&it, "name").unwrap_or_default().to_string();
                        if let Ok(o) = st.delete(&res, &ns, &n, &opts) {
                            deleted.push(o);
                        }
                    }
                    Ok((200, list_body(&res, deleted, st.rv)))
                }
                _ => Err(ApiError::no_route()),
            }
        })();
        record(st, r.as_ref().map(|(c, _)| *c).unwrap_or_else(|e| e.code));
        r
    });
    match out {
        Ok((code, mut v)) => {
            if meta_only {
                v = if v.get("items").is_some() {
                    let items: Vec<Value> = v["items"].as_array().into_iter().flatten().map(partial).collect();
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": v["metadata"], "items": items})
                } else {
                    partial(&v)
                };
            }
            respond(code, &v)
        }
        Err(e) => error(&e),
    }
}

fn selectors(q: &Query, res: &ResourceInfo) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?,
        FieldSelector::parse(q.get("fieldSelector").unwrap_or_default(), &res.plural)?,
    ))
}

fn list_body(res: &ResourceInfo, items: Vec<Value>, rv: u64) -> Value {
    json!({
        "apiVersion": res.api_version(),
        "kind": format!("{}List", res.kind),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

fn group_list(st: &State) -> Value {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in st.resources.values().filter(|r| !r.group.is_empty()) {
        let vs = groups.entry(r.group.clone()).or_default();
        if !vs.contains(&r.version) {
            vs.push(r.version.clone());
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(st: &State, group: &str, version: &str) -> Option<Value> {
    let mut out = Vec::new();
    for r in st
        .resources
        .values()
        .filter(|r| r.group == group && r.version == version)
    {
        out.push(json!({
            "name": r.plural, "singularName": r.kind.to_ascii_lowercase(), "namespaced": r.namespaced, "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if r.status_subresource {
            out.push(
                json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                            "kind": r.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
    }
    if out.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}))
}

// ---- watch ------------------------------------------------------------------------------------

struct Watch {
    shared: Arc<Shared>,
    res: ResourceInfo,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    meta_only: bool,
    /// The client that opened the watch: while it hangs, nothing is delivered.
    client: Option<String>,
    last: u64,
    epoch: u64,
    drop_epoch: u64,
    pending: VecDeque<Bytes>,
    done: bool,
    deadline: tokio::time::Instant,
    bookmarks: Option<tokio::time::Interval>,
    rx: tokio::sync::watch::Receiver<u64>,
}

/// One watch event as kube-apiserver writes it: `type` before `object` (Go's field order). A
/// map serialized in key order would put `object` first, which makes a client's decoder buffer
/// the whole object before it knows the event's type: work no real API server asks of it.
fn line(etype: &str, object: Value) -> Bytes {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(b"{\"type\":");
    let _ = serde_json::to_writer(&mut v, etype);
    v.extend_from_slice(b",\"object\":");
    let _ = serde_json::to_writer(&mut v, &object);
    v.extend_from_slice(b"}\n");
    Bytes::from(v)
}

fn gone(last: u64, now: u64) -> Bytes {
    line(
        "ERROR",
        ApiError::gone(format!("too old resource version: {last} ({now})")).to_status(),
    )
}

impl Watch {
    fn render(&self, obj: &Value) -> Value {
        let o = with_version(obj, &self.res);
        if self.meta_only { partial(&o) } else { o }
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn translate(&self, e: &StoredEvent) -> Option<Bytes> {
        if e.group != self.res.group || e.plural != self.res.plural || self.ns.as_ref().is_some_and(|n| *n != e.ns) {
            return None;
        }
        let now = self.matches(&e.object);
        let etype = match e.etype {
            "MODIFIED" => {
                let before = e.prev.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => "MODIFIED",
                    (false, true) => "ADDED",
                    (true, false) => "DELETED",
                    (false, false) => return None,
                }
            }
            t if now => t,
            _ => return None,
        };
        Some(line(etype, self.render(&e.object)))
    }

    fn collect(&mut self) {
        let shared = Arc::clone(&self.shared);
        let st = shared.lock();
        if st.watch_drop_epoch != self.drop_epoch {
            self.done = true;
            return;
        }
        if st.watch_epoch != self.epoch || self.last < st.compacted_through {
            self.pending.push_back(gone(self.last, st.rv));
            self.done = true;
            return;
        }
        let start = st.history.partition_point(|e| e.rv <= self.last);
        for e in st.history.range(start..) {
            if let Some(b) = self.translate(e) {
                self.pending.push_back(b);
            }
        }
        self.last = st.rv;
    }

    fn bookmark(&self, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": self.last.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            json!({"apiVersion": self.res.api_version(), "kind": self.res.kind, "metadata": meta}),
        )
    }

    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            until_not(&self.shared, &self.client, |c| c == Some(Cut::Hang)).await;
            if let Some(b) = self.pending.pop_front() {
                return Some((Ok(b), self));
            }
            if self.done {
                return None;
            }
            self.rx.borrow_and_update();
            self.collect();
            if !self.pending.is_empty() || self.done {
                continue;
            }
            let Watch {
                rx,
                bookmarks,
                deadline,
                shared,
                ..
            } = &mut self;
            let tick = async {
                match bookmarks {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let mut bookmark = false;
            tokio::select! {
                r = rx.changed() => if r.is_err() { self.done = true },
                _ = tokio::time::sleep_until(*deadline) => self.done = true,
                _ = shared.cancel.cancelled() => self.done = true,
                _ = tick => bookmark = true,
            }
            if bookmark {
                self.collect();
                if !self.done {
                    let b = self.bookmark(false);
                    self.pending.push_back(b);
                }
            }
        }
    }
}

fn start_watch(
    shared: &Arc<Shared>,
    res: &ResourceInfo,
    ns: Option<&str>,
    q: &Query,
    meta_only: bool,
    client: Option<String>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(q, res)?;
    let send_initial = q.flag("sendInitialEvents");
    if send_initial && q.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "ListOptions",
            "",
            "meta.k8s.io",
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    let allow_bookmarks = q.flag("allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let rv_param = q.get("resourceVersion").unwrap_or_default();
    let st = shared.lock();
    let mut w = Watch {
        shared: Arc::clone(shared),
        res: res.clone(),
        ns: ns.map(String::from),
        labels,
        fields,
        meta_only,
        client,
        last: st.rv,
        epoch: st.watch_epoch,
        drop_epoch: st.watch_drop_epoch,
        pending: VecDeque::new(),
        done: false,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        bookmarks: None,
        rx: shared.notify.subscribe(),
    };
    if allow_bookmarks {
        let period = st.bookmark_interval;
        w.bookmarks = Some(tokio::time::interval_at(tokio::time::Instant::now() + period, period));
    }
    if send_initial || rv_param.is_empty() || rv_param == "0" {
        for o in st.list(res, ns, &w.labels, &w.fields) {
            let b = line("ADDED", w.render(&o));
            w.pending.push_back(b);
        }
        if send_initial && allow_bookmarks {
            let b = w.bookmark(true);
            w.pending.push_back(b);
        }
    } else {
        let rv: u64 = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv_param:?}")))?;
        w.last = rv;
        if rv < st.compacted_through {
            w.pending.push_back(gone(rv, st.rv));
            w.done = true;
        }
    }
    drop(st);
    let stream = futures::stream::unfold(w, Watch::next);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}
