//! The HTTP calls of in-place release hooks ([`crate::api::ReleaseHook`]), shared by both
//! runtimes: a POST with the hook's body and timeout, counted done only on a 2xx answer.
//!
//! Uses the hyper stack kube already brings (hyper-util's client, rustls with the system's
//! roots for https), so no second HTTP or TLS stack is compiled in.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::api::ReleaseHook;

/// Why a release or resume call did not count as done.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("POST {url}: {message}")]
    Failed { url: String, message: String },
    #[error("POST {url}: no answer within {}", humantime::format_duration(*timeout))]
    TimedOut { url: String, timeout: Duration },
}

/// Which call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Release,
    Resume,
}

/// Makes `call` of `hook`. `Ok(false)` when there is nothing to call (no resume URL).
pub async fn call(hook: &ReleaseHook, call: Call) -> Result<bool, CallError> {
    let (url, body) = match call {
        Call::Release => (hook.url.as_str(), hook.release_body()),
        Call::Resume => match &hook.resume_url {
            Some(url) => (url.as_str(), None),
            None => return Ok(false),
        },
    };
    post(url, body, hook.timeout()).await.map(|()| true)
}

/// POSTs `body` (JSON) to `url`; done on a 2xx answer within `timeout` (the whole exchange,
/// connecting included).
pub async fn post(url: &str, body: Option<String>, timeout: Duration) -> Result<(), CallError> {
    let failed = |message: String| CallError::Failed {
        url: url.to_string(),
        message,
    };
    let uri: http::Uri = url.parse().map_err(|e| failed(format!("not a URL ({e})")))?;
    let mut request = http::Request::post(uri).header(http::header::USER_AGENT, "vidi-operator");
    if body.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| failed(e.to_string()))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| failed(format!("no TLS roots ({e})")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let exchange = async {
        let response = client.request(request).await.map_err(|e| failed(error_chain(&e)))?;
        let status = response.status();
        // The answer's text helps when it is an error; a few hundred bytes are enough.
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(300)
                    .collect::<String>()
            })
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(failed(format!("HTTP {status}: {}", text.trim())))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(CallError::TimedOut {
            url: url.to_string(),
            timeout,
        }),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
