//! `kubectl vidi result NAME`: the segments Vidi found, and where the preview page is.
use kube::Client;
use serde::Serialize;

use super::{Error, Table, get_job};
use crate::api::{Phase, Precision};

/// A finished job's answer.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultReport {
    pub namespace: String,
    pub name: String,
    pub query: String,
    pub summary: String,
    pub segments: Vec<SegmentRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_seconds: Option<f64>,
    /// The preview page in the job's output folder (`status.result.preview`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// The output volume the preview path is relative to, when the job has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_claim: Option<String>,
}

/// One segment, in seconds from the start of the video.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentRow {
    pub start_seconds: f64,
    pub end_seconds: f64,
    pub duration_seconds: f64,
}

/// `HH:MM:SS.s` (tenths only when there are any).
pub fn clock(seconds: f64) -> String {
    let tenths = (seconds.max(0.0) * 10.0).round() as u64;
    let (whole, frac) = (tenths / 10, tenths % 10);
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    if frac == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}.{frac}")
    }
}

impl ResultReport {
    /// `START END DURATION` per segment, then the summary and the preview's location.
    pub fn table(&self) -> String {
        let mut t = Table::new(&["START", "END", "DURATION"]);
        for s in &self.segments {
            t.row(vec![
                clock(s.start_seconds),
                clock(s.end_seconds),
                format!("{:.1}s", s.duration_seconds),
            ]);
        }
        let mut out = t.render();
        out.push_str(&format!("\n{}\n", self.summary));
        match (&self.preview, &self.output_claim) {
            (Some(p), Some(claim)) => out.push_str(&format!("preview: {p} (on PersistentVolumeClaim {claim})\n")),
            (Some(p), None) => out.push_str(&format!("preview: {p}\n")),
            (None, _) => out.push_str("preview: none (the job has no spec.output volume)\n"),
        }
        out
    }
}

/// Reads the result of VidiJob `namespace/name`; a job without one says its phase and why.
pub async fn result(client: &Client, namespace: &str, name: &str) -> Result<ResultReport, Error> {
    let job = get_job(client, namespace, name).await?;
    let status = job.status.clone().unwrap_or_default();
    let Some(result) = status.result else {
        let why = match (status.phase, status.reason) {
            (Phase::Failed, Some(r)) => format!(" ({r}): {}", status.message.unwrap_or_default()),
            (Phase::Failed, None) => format!(": {}", status.message.unwrap_or_default()),
            (p, _) if !p.is_terminal() => "; `kubectl vidi wait` waits until it finishes".to_string(),
            _ => String::new(),
        };
        return Err(Error::NoResult {
            namespace: namespace.into(),
            name: name.into(),
            phase: status.phase.to_string(),
            why,
        });
    };
    Ok(ResultReport {
        namespace: namespace.into(),
        name: name.into(),
        query: job.spec.query.clone(),
        summary: result.summary,
        segments: result
            .segments
            .iter()
            .map(|s| SegmentRow {
                start_seconds: s.start_seconds,
                end_seconds: s.end_seconds,
                duration_seconds: ((s.end_seconds - s.start_seconds) * 10.0).round() / 10.0,
            })
            .collect(),
        precision: result.precision,
        video_seconds: result.video_seconds,
        preview: result.preview,
        output_claim: job
            .spec
            .output
            .as_ref()
            .and_then(|o| o.volume.as_ref())
            .map(|v| v.claim_name.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::clock;

    #[test]
    fn clock_shows_tenths_only_when_there_are_any() {
        assert_eq!(clock(65.0), "00:01:05");
        assert_eq!(clock(3723.4), "01:02:03.4");
        assert_eq!(clock(-1.0), "00:00:00");
    }
}
