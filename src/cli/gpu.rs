//! `vidi-operator gpu ...`: look at the GPUs, or wait until one has enough free memory.
//!
//! Exit codes are the library's (`gpu::EXIT_*`): the Kubernetes runtime runs `gpu gate` as
//! an init container and classifies its exit with the same constants.
use super::{OutputFormat, print_out, print_value};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use vidi_operator::gpu::{self, DeviceSelector, GateError, GateReport, GpuProbe, NvmlProbe, Reading, format_bytes};

/// How often `gpu gate` tells the user it is still waiting (it polls more often).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct GpuArgs {
    #[command(subcommand)]
    command: GpuCommand,
}

#[derive(clap::Subcommand)]
enum GpuCommand {
    /// Show each GPU's memory and the processes holding it.
    Status(StatusArgs),
    /// Wait until a GPU has enough free memory, then print what was measured as JSON.
    ///
    /// Exit codes: 0 passed; 2 bad arguments, or a --min-free larger than the GPU;
    /// 4 timed out (the memory never became free); 5 no GPU, NVML error or no such device.
    Gate(GateArgs),
}

#[derive(clap::Args)]
struct StatusArgs {
    /// A table, or the readings as JSON or YAML.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: OutputFormat,
    /// The same as `-o json` (kept for scripts written before `-o`).
    #[arg(long, hide = true)]
    json: bool,
}

#[derive(clap::Args)]
struct GateArgs {
    /// Free memory to wait for: bytes, or e.g. 20GiB, 20Gi, 18G (decimal), 5000MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_min_free)]
    min_free: u64,
    /// The GPU to watch: NVML index or UUID (GPU-…).
    #[arg(long, value_name = "N|UUID", default_value = "0")]
    device: DeviceSelector,
    /// Give up after this long (e.g. 10m, 90s).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How often to read the GPU.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Also write the report (or, on failure, the error) here, for Kubernetes to read as the
    /// container's termination message (e.g. /dev/termination-log).
    #[arg(long, value_name = "PATH")]
    termination_log: Option<PathBuf>,
}

fn parse_min_free(s: &str) -> Result<u64, gpu::SizeParseError> {
    gpu::parse_size("--min-free", s)
}

pub async fn run(args: GpuArgs) -> anyhow::Result<()> {
    vidi_operator::telemetry::init_logging_on_request();
    match args.command {
        GpuCommand::Status(a) => status(a),
        GpuCommand::Gate(a) => gate(a).await,
    }
}

/// Prints the error and exits with its code; the binary's main would map every error to 1.
fn exit_with(code: i32, message: &str) -> ! {
    let _ = std::io::stdout().flush();
    eprintln!("error: {message}");
    std::process::exit(code)
}

fn open_probe() -> NvmlProbe {
    match NvmlProbe::new() {
        Ok(p) => p,
        Err(e) => exit_with(gpu::EXIT_NO_GPU, &e.to_string()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_version: Option<String>,
    gpus: Vec<Reading>,
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let probe = open_probe();
    let gpus = match probe.readings() {
        Ok(g) => g,
        Err(e) => exit_with(gpu::EXIT_NO_GPU, &e.to_string()),
    };
    if gpus.is_empty() {
        exit_with(gpu::EXIT_NO_GPU, "the NVIDIA driver is loaded but lists no GPUs");
    }
    let driver_version = probe.driver_version();
    let format = if args.json { OutputFormat::Json } else { args.output };
    if format != OutputFormat::Table {
        return print_value(&StatusJson { driver_version, gpus }, format);
    }
    print_out(|out| {
        if let Some(v) = &driver_version {
            writeln!(out, "NVIDIA driver {v}")?;
        }
        out.write_all(status_table(&gpus).as_bytes())
    })
}

/// The `gpu status` table, columns padded to their widest cell.
fn status_table(gpus: &[Reading]) -> String {
    let header = ["GPU", "NAME", "UUID", "USED / TOTAL", "FREE", "PROCESSES"];
    let rows: Vec<[String; 6]> = gpus
        .iter()
        .map(|r| {
            let procs = if r.processes.is_empty() {
                "-".to_owned()
            } else {
                r.processes
                    .iter()
                    .map(|p| {
                        let mut s = p.pid.to_string();
                        if let Some(n) = &p.name {
                            s.push(' ');
                            s.push_str(n);
                        }
                        if let Some(b) = p.used_bytes {
                            s.push_str(&format!(" ({})", format_bytes(b)));
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            [
                r.device.index.to_string(),
                r.device.name.clone(),
                r.device.uuid.clone(),
                format!("{} / {}", format_bytes(r.used_bytes), format_bytes(r.total_bytes)),
                format_bytes(r.free_bytes),
                procs,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

async fn gate(args: GateArgs) -> anyhow::Result<()> {
    let probe = match NvmlProbe::new() {
        Ok(p) => p,
        Err(e) => fail(&args, &GateError::Probe(e)),
    };
    let min_free = args.min_free;
    let mut last_said: Option<Instant> = None;
    let result = gpu::wait_for_free(
        &probe,
        &args.device,
        min_free,
        args.timeout,
        args.interval,
        |r: &Reading| {
            if r.free_bytes >= min_free {
                return;
            }
            // One line every few seconds is enough to see progress; one per poll is noise.
            if last_said.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                return;
            }
            last_said = Some(Instant::now());
            eprintln!(
                "waiting for {} free on {}: {} free; {}",
                format_bytes(min_free),
                r.label(),
                format_bytes(r.free_bytes),
                r.holders()
            );
        },
    )
    .await;
    let report = match result {
        Ok(r) => r,
        Err(e) => fail(&args, &e),
    };
    eprintln!(
        "GPU {} ({}): {} free >= {} needed; passed after {:.1}s",
        report.device.index,
        report.device.name,
        format_bytes(report.free_bytes),
        format_bytes(report.min_free_bytes),
        report.waited_millis as f64 / 1000.0
    );
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report).context("writing the report to stdout")?;
    writeln!(out)?;
    drop(out);
    if let Some(path) = &args.termination_log {
        // The gate passed: Vidi may start. A report that cannot be written loses only the
        // numbers in VidiJob.status.gpu, so warn instead of failing the job.
        if let Err(e) = write_termination_log(path, termination_report(&report).as_bytes()) {
            eprintln!("warning: {e:#}");
        }
    }
    Ok(())
}

/// Reports the failure on stderr and in the termination log, then exits with its code.
fn fail(args: &GateArgs, e: &GateError) -> ! {
    let message = e.to_string();
    if let Some(path) = &args.termination_log {
        let text = truncate_to(&message, gpu::TERMINATION_MESSAGE_MAX_BYTES);
        if let Err(we) = write_termination_log(path, text.as_bytes()) {
            eprintln!("warning: {we:#}");
        }
    }
    exit_with(e.exit_code(), &message)
}

/// The compact report JSON, small enough for a termination message (Kubernetes keeps at
/// most 4096 bytes): processes are dropped from the end (the smallest) until it fits.
fn termination_report(report: &GateReport) -> String {
    let mut r = report.clone();
    loop {
        let json = serde_json::to_string(&r).unwrap_or_default();
        if json.len() <= gpu::TERMINATION_MESSAGE_MAX_BYTES || r.processes.is_empty() {
            return json;
        }
        r.processes.pop();
    }
}

fn truncate_to(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn write_termination_log(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing the termination log {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidi_operator::gpu::fake::{GIB, device, process};

    #[test]
    fn table_lists_processes() {
        let mut r = device(0, 80 * GIB, 58 * GIB);
        r.processes = vec![process(1234, "python3", 22 * GIB)];
        let t = status_table(&[r]);
        assert!(t.starts_with("GPU  NAME"), "{t}");
        assert!(t.contains("22.0 GiB / 80.0 GiB"), "{t}");
        assert!(t.contains("1234 python3 (22.0 GiB)"), "{t}");
    }

    #[test]
    fn termination_report_fits() {
        let r = GateReport {
            processes: (0..500).map(|i| process(i, "python3", GIB)).collect(),
            ..GateReport::default()
        };
        let json = termination_report(&r);
        assert!(json.len() <= gpu::TERMINATION_MESSAGE_MAX_BYTES);
        assert!(serde_json::from_str::<GateReport>(&json).is_ok());
    }
}
