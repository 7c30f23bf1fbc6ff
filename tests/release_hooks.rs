//! The release hooks' HTTP calls (`vidi_operator::release`) against a real HTTP server: what
//! is sent per preset, and that a refusal, a hang and an unreachable co-tenant are errors, the
//! hang cut at the hook's timeout.
mod hook_server;

use std::time::{Duration, Instant};

use hook_server::{Answer, HookServer};
use vidi_operator::api::{ReleaseHook, ReleasePreset};
use vidi_operator::release::{Call, CallError, call};

fn hook(server: &HookServer, preset: ReleasePreset, release: &str, resume: Option<&str>) -> ReleaseHook {
    ReleaseHook {
        preset,
        url: server.url(release),
        resume_url: resume.map(|p| server.url(p)),
        body: None,
        timeout_seconds: 1,
        free_within_seconds: 60,
    }
}

#[tokio::test]
async fn presets_send_what_comfyui_and_vllm_expect() {
    let server = HookServer::start();
    let comfy = hook(&server, ReleasePreset::Comfyui, "/free", None);
    assert!(call(&comfy, Call::Release).await.expect("release"));
    assert!(
        !call(&comfy, Call::Resume).await.expect("nothing to resume"),
        "no resumeUrl: no call"
    );
    let vllm = hook(&server, ReleasePreset::Vllm, "/sleep?level=1", Some("/wake_up"));
    assert!(call(&vllm, Call::Release).await.expect("sleep"));
    assert!(call(&vllm, Call::Resume).await.expect("wake up"));
    let mut custom = hook(&server, ReleasePreset::Http, "/unload", None);
    custom.body = Some(r#"{"model":"all"}"#.into());
    assert!(call(&custom, Call::Release).await.expect("custom"));
    let got: Vec<(String, String)> = server.requests().into_iter().map(|r| (r.line, r.body)).collect();
    assert_eq!(
        got,
        [
            (
                "POST /free".to_string(),
                r#"{"unload_models": true, "free_memory": true}"#.to_string()
            ),
            ("POST /sleep?level=1".into(), String::new()),
            ("POST /wake_up".into(), String::new()),
            ("POST /unload".into(), r#"{"model":"all"}"#.into()),
        ]
    );
}

#[tokio::test]
async fn refused_hanging_and_unreachable_are_errors() {
    let server = HookServer::start();
    server.answer("/free", Answer::Refuse);
    server.answer("/sleep", Answer::Hang);
    let refused = call(&hook(&server, ReleasePreset::Comfyui, "/free", None), Call::Release).await;
    match refused {
        Err(CallError::Failed { message, .. }) => {
            assert!(
                message.contains("HTTP 500") && message.contains("out of luck"),
                "{message}"
            )
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let since = Instant::now();
    let hung = call(
        &hook(&server, ReleasePreset::Vllm, "/sleep?level=1", Some("/wake_up")),
        Call::Release,
    )
    .await;
    assert!(matches!(hung, Err(CallError::TimedOut { .. })), "{hung:?}");
    assert!(since.elapsed() < Duration::from_secs(5), "cut at the 1 s timeout");
    assert_eq!(
        hung.unwrap_err().to_string(),
        format!("POST {}: no answer within 1s", server.url("/sleep?level=1"))
    );
    // Nothing listens on port 9 here.
    let mut gone = hook(&server, ReleasePreset::Http, "/free", None);
    gone.url = "http://127.0.0.1:9/free".into();
    assert!(matches!(
        call(&gone, Call::Release).await,
        Err(CallError::Failed { .. })
    ));
}
