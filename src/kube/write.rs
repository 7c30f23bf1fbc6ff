//! Writes whose answer the operator does not read. kube's `Api` decodes every answer into the
//! whole object (a Deployment with its pod template, a Pod with its spec), which the controller
//! never looks at: what it needs of a write comes back through its watch caches (`seen`). These
//! send the same request through kube's own request builder and client, and check only the
//! status (a refusal is still a `kube::Error::Api` with its code).
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::Request;
use kube::{Client, Resource};
use serde::Serialize;

fn request<K: Resource<DynamicType = ()>>(namespace: &str) -> Request {
    Request::new(K::url_path(&(), Some(namespace)))
}

async fn send(
    client: &Client,
    req: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
) -> Result<(), kube::Error> {
    client
        .request_text(req.map_err(kube::Error::BuildRequest)?)
        .await
        .map(|_| ())
}

/// `Api::<K>::namespaced(client, namespace).patch(name, params, patch)`, answer unread.
pub async fn patch<K: Resource<DynamicType = ()>, P: Serialize>(
    client: &Client,
    namespace: &str,
    name: &str,
    params: &PatchParams,
    patch: &Patch<P>,
) -> Result<(), kube::Error> {
    send(client, request::<K>(namespace).patch(name, params, patch)).await
}

/// `Api::<K>::namespaced(client, namespace).patch_status(name, params, patch)`, answer unread.
pub async fn patch_status<K: Resource<DynamicType = ()>, P: Serialize>(
    client: &Client,
    namespace: &str,
    name: &str,
    params: &PatchParams,
    patch: &Patch<P>,
) -> Result<(), kube::Error> {
    send(
        client,
        request::<K>(namespace).patch_subresource("status", name, params, patch),
    )
    .await
}

/// `Api::<K>::namespaced(client, namespace).create(params, object)`, answer unread.
pub async fn create<K: Resource<DynamicType = ()> + Serialize>(
    client: &Client,
    namespace: &str,
    params: &PostParams,
    object: &K,
) -> Result<(), kube::Error> {
    let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
    send(client, request::<K>(namespace).create(params, body)).await
}
