//! What a finished attempt means, per the Vidi container contract (DESIGN.md): exit 0 with a
//! compact JSON result, 2 bad input, 3 CUDA out of memory, 1 anything else; plus the GPU gate's
//! own exit codes and the runtime's OOMKilled / DeadlineExceeded.
use serde::Deserialize;

use crate::api::{FailureReason, Precision, Segment, VidiResult};
use crate::gpu::{EXIT_BAD_ARGS, EXIT_GATE_TIMEOUT, EXIT_NO_GPU};

use super::snapshot::Termination;

/// Vidi's exit codes.
pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_OUT_OF_GPU_MEMORY: i32 = 3;

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Retrying cannot help.
    Never,
    /// Retry if failures stay within backoffLimit.
    Backoff,
    /// Out of GPU memory: retry lower (with precision auto), without counting a failure.
    LowerPrecision,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptEnd {
    Succeeded(VidiResult),
    Failed {
        reason: FailureReason,
        message: String,
        retry: Retry,
    },
}

/// The compact JSON Vidi writes to its termination log on success.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TerminationResult {
    segments: Vec<(f64, f64)>,
    #[serde(default)]
    precision: Option<Precision>,
    #[serde(default)]
    video_seconds: Option<f64>,
    #[serde(default)]
    peak_vram_bytes: Option<u64>,
    /// Where the wrapper wrote preview.html (a path inside the container).
    #[serde(default)]
    preview: Option<String>,
}

/// Reads Vidi's compact result JSON.
pub fn parse_result(message: &str) -> Result<VidiResult, String> {
    let parsed: TerminationResult = serde_json::from_str(message.trim())
        .map_err(|e| format!("expected the contract's result JSON ({{\"segments\":[[start,end],…]}}): {e}"))?;
    let mut segments = Vec::with_capacity(parsed.segments.len());
    for (i, (start, end)) in parsed.segments.into_iter().enumerate() {
        if !(start.is_finite() && end.is_finite() && start >= 0.0 && end >= start) {
            return Err(format!("segments[{i}] = [{start}, {end}] is not a range of seconds"));
        }
        segments.push(Segment {
            start_seconds: start,
            end_seconds: end,
        });
    }
    Ok(VidiResult {
        summary: summarize(&segments),
        segments,
        precision: parsed.precision,
        video_seconds: parsed.video_seconds,
        peak_vram_bytes: parsed.peak_vram_bytes,
        // Only its name: the folder is the job's output folder, wherever the runtime mounted it.
        preview: parsed
            .preview
            .as_deref()
            .and_then(|p| std::path::Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned()),
    })
}

/// `2 segments: 00:01:05-00:01:12, 00:03:00-00:03:04`.
pub fn summarize(segments: &[Segment]) -> String {
    if segments.is_empty() {
        return "no matching segment".to_string();
    }
    let shown: Vec<String> = segments
        .iter()
        .take(5)
        .map(|s| format!("{}-{}", clock(s.start_seconds), clock(s.end_seconds)))
        .collect();
    let more = if segments.len() > 5 {
        format!(", … ({} more)", segments.len() - 5)
    } else {
        String::new()
    };
    let noun = if segments.len() == 1 { "segment" } else { "segments" };
    format!("{} {noun}: {}{more}", segments.len(), shown.join(", "))
}

fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn detail(t: &Termination) -> String {
    match t.message.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => format!(": {}", m.chars().take(512).collect::<String>()),
        None => String::new(),
    }
}

/// Classifies a finished attempt run at `precision`.
pub fn classify(
    gate: Option<&Termination>,
    main: Option<&Termination>,
    pod_reason: Option<&str>,
    precision: Precision,
) -> AttemptEnd {
    let failed = |reason, message: String, retry| AttemptEnd::Failed { reason, message, retry };
    if pod_reason == Some("DeadlineExceeded") {
        return failed(
            FailureReason::DeadlineExceeded,
            "the Vidi pod ran past activeDeadlineSeconds and was stopped".into(),
            Retry::Never,
        );
    }
    if let Some(g) = gate.filter(|g| g.exit_code != 0) {
        return match g.exit_code {
            // Exit 2 is the gate refusing a threshold above the GPU's total: a lower precision may fit.
            EXIT_GATE_TIMEOUT | EXIT_BAD_ARGS => failed(
                FailureReason::GpuMemoryUnavailable,
                format!(
                    "GPU memory did not become free for {precision} after suspending the co-tenants{}",
                    detail(g)
                ),
                Retry::LowerPrecision,
            ),
            EXIT_NO_GPU => failed(
                FailureReason::NoGpu,
                format!("no usable GPU{}", detail(g)),
                Retry::Never,
            ),
            code => failed(
                FailureReason::Failed,
                format!("the GPU gate exited {code}{}", detail(g)),
                Retry::Backoff,
            ),
        };
    }
    let Some(m) = main else {
        let why = pod_reason.unwrap_or("unknown reason");
        return failed(
            FailureReason::Failed,
            format!("Vidi did not start ({why})"),
            Retry::Backoff,
        );
    };
    if m.reason.as_deref() == Some("OOMKilled") {
        return failed(
            FailureReason::OOMKilled,
            "Vidi was killed for using more host RAM than allowed (exit 137, OOMKilled); loading weights needs far more RAM than VRAM: raise spec.resources.memory".into(),
            Retry::Never,
        );
    }
    match m.exit_code {
        0 => match m.message.as_deref().map(parse_result) {
            Some(Ok(result)) => AttemptEnd::Succeeded(result),
            Some(Err(e)) => failed(
                FailureReason::ResultUnreadable,
                format!("Vidi exited 0 but its result is unreadable: {e}"),
                Retry::Never,
            ),
            None => failed(
                FailureReason::ResultUnreadable,
                "Vidi exited 0 but wrote no termination message".into(),
                Retry::Never,
            ),
        },
        EXIT_BAD_INPUT => failed(
            FailureReason::BadInput,
            format!(
                "Vidi rejected its input (exit 2: video missing or unreadable, or empty query){}",
                detail(m)
            ),
            Retry::Never,
        ),
        EXIT_OUT_OF_GPU_MEMORY => failed(
            FailureReason::OutOfGpuMemory,
            format!("CUDA out of memory at {precision} (exit 3){}", detail(m)),
            Retry::LowerPrecision,
        ),
        code => failed(
            FailureReason::Failed,
            format!("Vidi exited {code}{}", detail(m)),
            Retry::Backoff,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32, reason: Option<&str>, message: Option<&str>) -> Termination {
        Termination {
            exit_code: code,
            reason: reason.map(String::from),
            message: message.map(String::from),
        }
    }

    #[test]
    fn exit_zero_reads_the_contract_json() {
        let msg =
            r#"{"segments":[[65,72.4],[180,184]],"precision":"int8","videoSeconds":600.5,"peakVramBytes":10737418240}"#;
        let AttemptEnd::Succeeded(r) = classify(None, Some(&exit(0, None, Some(msg))), None, Precision::Int8) else {
            panic!("expected success")
        };
        assert_eq!(r.segments.len(), 2);
        assert_eq!(
            r.segments[1],
            Segment {
                start_seconds: 180.0,
                end_seconds: 184.0
            }
        );
        assert_eq!(r.summary, "2 segments: 00:01:05-00:01:12, 00:03:00-00:03:04");
        assert_eq!(r.precision, Some(Precision::Int8));
        assert_eq!(r.peak_vram_bytes, Some(10737418240));
    }

    #[test]
    fn exit_codes_map_to_reasons() {
        let case = |t: Termination| match classify(None, Some(&t), None, Precision::Fp16) {
            AttemptEnd::Failed { reason, retry, .. } => (reason, retry),
            other => panic!("expected failure, got {other:?}"),
        };
        assert_eq!(
            case(exit(2, None, Some("video not found"))),
            (FailureReason::BadInput, Retry::Never)
        );
        assert_eq!(
            case(exit(3, None, None)),
            (FailureReason::OutOfGpuMemory, Retry::LowerPrecision)
        );
        assert_eq!(case(exit(1, None, None)), (FailureReason::Failed, Retry::Backoff));
        assert_eq!(
            case(exit(137, Some("OOMKilled"), None)),
            (FailureReason::OOMKilled, Retry::Never)
        );
        assert_eq!(
            case(exit(0, None, Some("not json"))),
            (FailureReason::ResultUnreadable, Retry::Never)
        );
        assert_eq!(
            case(exit(0, None, Some(r#"{"segments":[[5,1]]}"#))).0,
            FailureReason::ResultUnreadable
        );
    }

    #[test]
    fn gate_and_pod_reasons_come_first() {
        let gate = exit(EXIT_GATE_TIMEOUT, None, Some("12 GiB free, 20 GiB needed"));
        let AttemptEnd::Failed { reason, retry, message } = classify(Some(&gate), None, None, Precision::Fp16) else {
            panic!()
        };
        assert_eq!(
            (reason, retry),
            (FailureReason::GpuMemoryUnavailable, Retry::LowerPrecision)
        );
        assert!(message.contains("12 GiB free"), "{message}");
        let no_gpu = exit(EXIT_NO_GPU, None, None);
        assert!(matches!(
            classify(Some(&no_gpu), None, None, Precision::Fp16),
            AttemptEnd::Failed {
                reason: FailureReason::NoGpu,
                ..
            }
        ));
        assert!(matches!(
            classify(
                None,
                Some(&exit(137, None, None)),
                Some("DeadlineExceeded"),
                Precision::Fp16
            ),
            AttemptEnd::Failed {
                reason: FailureReason::DeadlineExceeded,
                retry: Retry::Never,
                ..
            }
        ));
    }

    #[test]
    fn summary_is_one_line_and_bounded() {
        assert_eq!(summarize(&[]), "no matching segment");
        let many: Vec<Segment> = (0..8)
            .map(|i| Segment {
                start_seconds: i as f64 * 10.0,
                end_seconds: i as f64 * 10.0 + 5.0,
            })
            .collect();
        let s = summarize(&many);
        assert!(s.starts_with("8 segments: 00:00:00-00:00:05"), "{s}");
        assert!(s.ends_with("(3 more)"), "{s}");
    }
}
