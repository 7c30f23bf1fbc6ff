//! `vidi-operator docker build`: builds an image from a directory through the Engine API (the
//! classic builder: it needs no BuildKit session and works on old engines), streaming its output.
use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt as _;

use super::DockerError;

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct BuildRequest {
    pub tag: String,
    pub build_args: HashMap<String, String>,
    /// Dockerfile path inside the context (default `Dockerfile`).
    pub dockerfile: Option<String>,
    pub no_cache: bool,
}

/// Packs `dir` as the build context (a tar in memory: build contexts here are a Dockerfile and
/// a few scripts; model weights are mounted at run time, never built in).
pub fn context_tar(dir: &Path) -> Result<Vec<u8>, DockerError> {
    let io = |e| DockerError::io("packing the build context", dir, e);
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(DockerError::Build(format!("{} is not a directory", dir.display())));
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(true);
    tar.append_dir_all(".", dir).map_err(io)?;
    tar.into_inner().map_err(io)
}

/// Builds and tags the image; returns its id. `progress` gets the builder's output line by line.
pub async fn build_image(
    docker: &Docker,
    dir: &Path,
    req: &BuildRequest,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<String, DockerError> {
    let dockerfile = req.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into());
    if !dir.join(&dockerfile).is_file() {
        return Err(DockerError::Build(format!(
            "no {dockerfile} in {} (the build context)",
            dir.display()
        )));
    }
    let context = context_tar(dir)?;
    progress(&format!(
        "building {} from {} ({} context)",
        req.tag,
        dir.display(),
        crate::gpu::format_bytes(context.len() as u64)
    ));
    let opts = BuildImageOptionsBuilder::default()
        .dockerfile(&dockerfile)
        .t(&req.tag)
        .rm(true)
        .forcerm(true)
        .nocache(req.no_cache)
        .buildargs(&req.build_args)
        .build();
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(context.into())));
    let mut id = None;
    let mut partial = String::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => return Err(DockerError::Build(error)),
            Err(e) => return Err(DockerError::api("building the image", e)),
        };
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(DockerError::Build(detail));
        }
        if let Some(text) = info.stream {
            partial.push_str(&text);
            while let Some(at) = partial.find('\n') {
                let line: String = partial.drain(..=at).collect();
                let line = line.trim_end();
                if !line.is_empty() {
                    progress(line);
                }
            }
        }
        if let Some(status) = info.status {
            progress(&status);
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            id = Some(aux);
        }
    }
    if !partial.trim().is_empty() {
        progress(partial.trim_end());
    }
    match id {
        Some(id) => Ok(id),
        // Old engines do not always send the aux id; the tag is what matters.
        None => docker
            .inspect_image(&req.tag)
            .await
            .map(|i| i.id.unwrap_or_default())
            .map_err(|e| DockerError::Build(format!("the build ended without producing {}: {e}", req.tag))),
    }
}
