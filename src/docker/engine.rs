//! Which Docker engine to talk to, chosen as the `docker` CLI chooses it: `DOCKER_HOST` (with
//! `DOCKER_TLS_VERIFY` / `DOCKER_CERT_PATH` for TLS), else the context named by
//! `DOCKER_CONTEXT`, else the `currentContext` of `$DOCKER_CONFIG/config.json` (default
//! `~/.docker`), else the local socket. A context's endpoint and TLS files are read from the
//! CLI's context store (`contexts/meta/<sha256 of the name>/meta.json`,
//! `contexts/tls/<sha256>/docker/{ca,cert,key}.pem`). bollard then connects over a unix socket,
//! TCP, TLS or SSH.
use std::fmt;
use std::path::{Path, PathBuf};

use bollard::{API_DEFAULT_VERSION, Docker};
use sha2::{Digest as _, Sha256};

/// The request timeout connections start with (the session raises it to outlast a stop).
const TIMEOUT_SECS: u64 = 120;
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// The environment the choice depends on (a struct, so tests need not change the process's).
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub docker_host: Option<String>,
    pub docker_context: Option<String>,
    /// `$DOCKER_CONFIG`, else `$HOME/.docker`.
    pub config_dir: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            docker_host: var("DOCKER_HOST"),
            docker_context: var("DOCKER_CONTEXT"),
            config_dir: var("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| Path::new(&h).join(".docker"))),
        }
    }
}

/// The engine chosen, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `unix://…`, `tcp://…`, `https://…` or `ssh://…`.
    pub host: String,
    /// Where the choice came from, for messages.
    pub source: String,
    /// A context's TLS files (ca, cert, key), when it has them.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {})", self.host, self.source)
    }
}

impl Target {
    pub fn connect(&self) -> Result<Docker, bollard::errors::Error> {
        match &self.tls {
            Some((ca, cert, key)) => {
                Docker::connect_with_ssl(&self.host, key, cert, ca, TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
            // DOCKER_HOST with DOCKER_TLS_VERIFY is handled by bollard as the CLI does.
            None => Docker::connect_with_host(&self.host),
        }
    }
}

/// The engine the `docker` CLI would use in `env`; like the CLI, a context that does not exist
/// is an error rather than a silent fall back to the local socket.
pub fn resolve(env: &Env) -> Result<Target, String> {
    if let Some(host) = &env.docker_host {
        return Ok(Target {
            host: host.clone(),
            source: "DOCKER_HOST".into(),
            tls: None,
        });
    }
    let (context, source) = match (&env.docker_context, current_context(env)) {
        (Some(c), _) => (Some(c.clone()), "DOCKER_CONTEXT"),
        (None, Some(c)) => (Some(c), "the current docker context"),
        (None, None) => (None, ""),
    };
    if let Some(name) = context.filter(|c| c != "default")
        && let Some(dir) = &env.config_dir
    {
        let id = hex(&Sha256::digest(name.as_bytes()));
        if let Some(host) = context_host(&dir.join("contexts/meta").join(&id).join("meta.json")) {
            let tls_dir = dir.join("contexts/tls").join(&id).join("docker");
            let files = (
                tls_dir.join("ca.pem"),
                tls_dir.join("cert.pem"),
                tls_dir.join("key.pem"),
            );
            let tls = (files.0.exists() && files.1.exists() && files.2.exists()).then_some(files);
            return Ok(Target {
                host,
                source: format!("{source} {name:?}"),
                tls,
            });
        }
        return Err(format!(
            "docker context {name:?} (from {source}) does not exist in {}; see `docker context ls`",
            dir.join("contexts").display()
        ));
    }
    Ok(Target {
        host: DEFAULT_SOCKET.into(),
        source: "the default socket".into(),
        tls: None,
    })
}

fn current_context(env: &Env) -> Option<String> {
    let text = std::fs::read_to_string(env.config_dir.as_ref()?.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    config
        .get("currentContext")
        .and_then(serde_json::Value::as_str)
        .filter(|c| !c.is_empty())
        .map(String::from)
}

fn context_host(meta: &Path) -> Option<String> {
    let text = std::fs::read_to_string(meta).ok()?;
    let meta: serde_json::Value = serde_json::from_str(&text).ok()?;
    meta.pointer("/Endpoints/docker/Host")
        .and_then(serde_json::Value::as_str)
        .map(String::from)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_context(dir: &Path, name: &str, host: &str, tls: bool) {
        let id = hex(&Sha256::digest(name.as_bytes()));
        let meta = dir.join("contexts/meta").join(&id);
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            serde_json::json!({"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": false}}})
                .to_string(),
        )
        .unwrap();
        if tls {
            let t = dir.join("contexts/tls").join(&id).join("docker");
            std::fs::create_dir_all(&t).unwrap();
            for f in ["ca.pem", "cert.pem", "key.pem"] {
                std::fs::write(t.join(f), b"").unwrap();
            }
        }
    }

    #[test]
    fn the_context_store_is_keyed_by_the_sha256_of_the_name() {
        // `echo -n remote-gpu | sha256sum`: the directory `docker context create remote-gpu`
        // makes under contexts/meta.
        assert_eq!(
            hex(&Sha256::digest(b"remote-gpu")),
            "3dedc5427144ff655c328cb424cbeeded9fe89ec2032d597ccf1345268d425a0"
        );
    }

    #[test]
    fn chooses_the_engine_as_the_docker_cli_does() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().to_path_buf();
        write_context(&cfg, "gpu-box", "ssh://me@gpu-box", false);
        write_context(&cfg, "tls-box", "tcp://10.0.0.5:2376", true);
        std::fs::write(cfg.join("config.json"), r#"{"currentContext": "gpu-box"}"#).unwrap();
        let env = |host: Option<&str>, context: Option<&str>| Env {
            docker_host: host.map(String::from),
            docker_context: context.map(String::from),
            config_dir: Some(cfg.clone()),
        };

        // DOCKER_HOST wins over everything.
        let t = resolve(&env(Some("tcp://127.0.0.1:2375"), Some("tls-box"))).unwrap();
        assert_eq!(
            (t.host.as_str(), t.source.as_str()),
            ("tcp://127.0.0.1:2375", "DOCKER_HOST")
        );
        // Then DOCKER_CONTEXT, with its TLS files.
        let t = resolve(&env(None, Some("tls-box"))).unwrap();
        assert_eq!(t.host, "tcp://10.0.0.5:2376");
        assert_eq!(t.source, "DOCKER_CONTEXT \"tls-box\"");
        assert!(t.tls.as_ref().is_some_and(|(ca, _, _)| ca.ends_with("docker/ca.pem")));
        // Then config.json's currentContext.
        let t = resolve(&env(None, None)).unwrap();
        assert_eq!(t.host, "ssh://me@gpu-box");
        assert!(t.tls.is_none());
        assert_eq!(
            t.to_string(),
            "ssh://me@gpu-box (from the current docker context \"gpu-box\")"
        );
        // "default" and nothing at all mean the local socket.
        let t = resolve(&env(None, Some("default"))).unwrap();
        assert_eq!(t.host, DEFAULT_SOCKET);
        let t = resolve(&Env::default()).unwrap();
        assert_eq!(
            (t.host.as_str(), t.source.as_str()),
            (DEFAULT_SOCKET, "the default socket")
        );
        // A context that does not exist is an error, as in the docker CLI.
        let e = resolve(&env(None, Some("nope"))).unwrap_err();
        assert!(
            e.starts_with("docker context \"nope\" (from DOCKER_CONTEXT) does not exist"),
            "{e}"
        );
    }
}
