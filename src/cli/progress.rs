//! How `docker run` (and `recover`, `build`) shows what it does. The runtime emits typed
//! [`Event`]s; this module renders them three ways:
//!
//! - **terminal** (stderr is a terminal that is not `TERM=dumb`): a live display with `indicatif`:
//!   a line per co-tenant stopping or starting with its elapsed time, a bar of free vs needed GPU
//!   memory while the gate waits, Vidi running with its elapsed time and deadline. Finished steps
//!   scroll up as one line each; Vidi's output and the planner's notices are printed above.
//! - **plain** (anything else, or `--progress plain`): one line per step on stderr, the same
//!   text as the terminal's history, for logs and CI.
//! - **JSON Lines** (`-o json` on `docker run`): one compact JSON object per line on stdout, each
//!   with `"event"` and `"time"`; the last line is `{"event":"result",…}` (or
//!   `{"event":"error",…}` when the run could not be done). Stderr still gets the terminal or
//!   plain rendering, for the person watching.
//!
//! GPU readings arrive every poll; plain and JSON show one only when what it says changed
//! (one line per step change, not per tick), the terminal moves its bar on each.
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use jiff::Timestamp;
use vidi_operator::docker::events::{Event, Progress};
use vidi_operator::gpu::format_bytes;

/// `--progress`: how progress is shown on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A live display when stderr is a terminal (and TERM is not `dumb`), else plain lines.
    Auto,
    /// One line per step, also in a terminal (e.g. to copy a log).
    Plain,
}

/// The one place progress and messages for people go during a command.
pub struct Reporter {
    human: Human,
    /// JSON Lines on stdout.
    json: bool,
    steps: Mutex<StepFilter>,
}

enum Human {
    Live(Live),
    Plain,
}

impl Reporter {
    /// `json_lines`: also write every event as a JSON line on stdout (`docker run -o json`).
    pub fn new(mode: ProgressMode, json_lines: bool) -> Arc<Reporter> {
        // indicatif draws only on a terminal that is not `TERM=dumb`; anywhere else, lines.
        let target = ProgressDrawTarget::stderr();
        let human = if mode == ProgressMode::Auto && !target.is_hidden() {
            Human::Live(Live::new(target, false))
        } else {
            Human::Plain
        };
        Arc::new(Reporter {
            human,
            json: json_lines,
            steps: Mutex::new(StepFilter::default()),
        })
    }

    /// The sink to hand to the Docker session.
    pub fn progress(self: &Arc<Self>) -> Progress {
        let me = self.clone();
        Arc::new(move |e: &Event| me.event(e))
    }

    pub fn event(&self, e: &Event) {
        let is_step = lock(&self.steps).is_step(e);
        match &self.human {
            Human::Live(live) => live.event(e),
            Human::Plain if is_step => plain(e),
            Human::Plain => {}
        }
        if self.json && is_step {
            self.on_stdout(|| json_line(&serde_json::json!({ "time": Timestamp::now() }), e));
        }
    }

    /// A message for people on stderr (above the live display, if there is one).
    pub fn line(&self, text: &str) {
        match &self.human {
            Human::Live(live) => live.println(text),
            Human::Plain => say(text),
        }
    }

    /// The last JSON line (`{"event":"result",…}` or `{"event":"error",…}`); nothing unless
    /// stdout carries JSON Lines.
    pub fn json_final(&self, event: &str, fields: serde_json::Value) {
        if !self.json {
            return;
        }
        let mut line = serde_json::json!({ "event": event, "time": Timestamp::now() });
        if let (Some(l), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
            l.extend(f);
        }
        self.on_stdout(|| write_stdout_line(&line.to_string()));
    }

    /// Writes to stdout with the live display out of the way (both may be one terminal).
    fn on_stdout(&self, write: impl FnOnce()) {
        match &self.human {
            Human::Live(live) => live.multi.suspend(write),
            Human::Plain => write(),
        }
    }

    /// Ends the live display (what is still running is left as it was last drawn), so that
    /// what comes next on stdout or stderr is not drawn over.
    pub fn finish(&self) {
        if let Human::Live(live) = &self.human {
            live.finish();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A line on stderr; a stderr that is gone (closed pipe, hung-up terminal) loses the line and
/// nothing else.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn plain(e: &Event) {
    match e {
        // Vidi's own output comes prefixed with its container's name.
        Event::VidiOutput { .. } => say(&e.to_string()),
        _ => say(&format!("vidi-operator: {e}")),
    }
}

fn json_line(time: &serde_json::Value, e: &Event) {
    let Ok(mut value) = serde_json::to_value(e) else { return };
    if let (Some(v), Some(t)) = (value.as_object_mut(), time.as_object()) {
        v.extend(t.clone());
    }
    write_stdout_line(&value.to_string());
}

/// One line on stdout, flushed so a reader sees it at once; a reader that went away loses it.
fn write_stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Decides which events are a step worth a line: every event except a GPU reading that says
/// what the last one said (free and needed memory as shown, and who holds it).
#[derive(Default)]
struct StepFilter {
    last_reading: Option<String>,
}

impl StepFilter {
    fn is_step(&mut self, e: &Event) -> bool {
        match e {
            Event::GateWaiting { .. } => {
                self.last_reading = None;
                true
            }
            Event::GateReading { .. } => {
                let text = e.to_string();
                if self.last_reading.as_deref() == Some(text.as_str()) {
                    return false;
                }
                self.last_reading = Some(text);
                true
            }
            _ => true,
        }
    }
}

const TICK: Duration = Duration::from_millis(120);

/// The live terminal display: one bar per step in progress; a finished step leaves one line.
struct Live {
    multi: MultiProgress,
    state: Mutex<LiveState>,
}

#[derive(Default)]
struct LiveState {
    lock: Option<ProgressBar>,
    co_tenants: HashMap<String, ProgressBar>,
    gate: Option<ProgressBar>,
    vidi: HashMap<String, ProgressBar>,
    /// Every line printed above the bars (tests only).
    history: Option<Vec<String>>,
}

fn spinner_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_strings(&["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", "·"])
}

fn elapsed_key(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:.0}s", state.elapsed().as_secs_f64().floor());
}

fn deadline_style(deadline: Option<Timestamp>) -> ProgressStyle {
    spinner_style("{spinner:.cyan} {msg} {elapsed}{deadline}")
        .with_key("elapsed", elapsed_key)
        .with_key("deadline", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&deadline_text(deadline, Timestamp::now()));
        })
}

/// ` · deadline in 4m 12s` (nothing without a deadline).
fn deadline_text(deadline: Option<Timestamp>, now: Timestamp) -> String {
    match deadline {
        Some(d) => {
            let left = (d.as_second() - now.as_second()).max(0) as u64;
            format!(
                " · deadline in {}",
                humantime::format_duration(Duration::from_secs(left))
            )
        }
        None => String::new(),
    }
}

fn gate_style() -> ProgressStyle {
    spinner_style("{spinner:.cyan} {prefix} [{bar:24.cyan/blue}] {free} free of {needed} needed · {elapsed} {msg:.dim}")
        .progress_chars("=> ")
        .with_key("elapsed", elapsed_key)
        .with_key("free", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", format_bytes(s.pos()));
        })
        .with_key("needed", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", format_bytes(s.len().unwrap_or_default()));
        })
}

impl Live {
    fn new(target: ProgressDrawTarget, record: bool) -> Live {
        Live {
            multi: MultiProgress::with_draw_target(target),
            state: Mutex::new(LiveState {
                history: record.then(Vec::new),
                ..LiveState::default()
            }),
        }
    }

    fn println(&self, text: &str) {
        let mut st = lock(&self.state);
        self.print_locked(&mut st, text);
    }

    fn print_locked(&self, st: &mut LiveState, text: &str) {
        if let Some(h) = st.history.as_mut() {
            h.push(text.to_string());
        }
        if self.multi.is_hidden() {
            return;
        }
        // A terminal that went away loses the line; nothing else.
        let _ = self.multi.println(text);
    }

    fn spinner(&self, style: ProgressStyle, message: String) -> ProgressBar {
        let pb = self
            .multi
            .add(ProgressBar::new_spinner().with_style(style).with_message(message));
        pb.enable_steady_tick(TICK);
        pb
    }

    /// Ends a step: its bar goes, one line stays.
    fn done(&self, st: &mut LiveState, pb: Option<ProgressBar>, line: &str) {
        if let Some(pb) = pb {
            pb.finish_and_clear();
            self.multi.remove(&pb);
        }
        self.print_locked(st, line);
    }

    fn event(&self, e: &Event) {
        let mut st = lock(&self.state);
        // Any other event means the lock was had.
        if !matches!(e, Event::WaitingForLock { .. })
            && let Some(pb) = st.lock.take()
        {
            pb.finish_and_clear();
            self.multi.remove(&pb);
        }
        match e {
            Event::WaitingForLock { .. } => {
                let msg = e.to_string();
                match &st.lock {
                    Some(pb) => pb.set_message(msg),
                    None => {
                        let pb = self.spinner(
                            spinner_style("{spinner:.cyan} {msg} {elapsed}").with_key("elapsed", elapsed_key),
                            msg,
                        );
                        st.lock = Some(pb);
                    }
                }
            }
            // A co-tenant's step begins: one spinner per co-tenant, replacing its previous one.
            Event::CoTenantStopping { co_tenant, .. }
            | Event::CoTenantStarting { co_tenant, .. }
            | Event::CoTenantReleasing { co_tenant, .. } => {
                let pb = self.spinner(
                    spinner_style("{spinner:.cyan} {msg} {elapsed}").with_key("elapsed", elapsed_key),
                    e.to_string(),
                );
                if let Some(old) = st.co_tenants.insert(co_tenant.clone(), pb) {
                    old.finish_and_clear();
                    self.multi.remove(&old);
                }
            }
            Event::CoTenantReleaseRefused { co_tenant, .. } => {
                let pb = st.co_tenants.remove(co_tenant);
                self.done(&mut st, pb, &format!("! {e}"));
            }
            Event::CoTenantStopped { co_tenant, .. }
            | Event::CoTenantStarted { co_tenant, .. }
            | Event::CoTenantReleased { co_tenant }
            | Event::CoTenantResumed { co_tenant, .. } => {
                let pb = st.co_tenants.remove(co_tenant);
                self.done(&mut st, pb, &format!("✔ {e}"));
            }
            Event::CoTenantGone { co_tenant, .. } => {
                let pb = st.co_tenants.remove(co_tenant);
                self.done(&mut st, pb, &format!("! {e}"));
            }
            Event::GateWaiting { needed_bytes } => {
                let pb = self.multi.add(
                    ProgressBar::new(*needed_bytes)
                        .with_style(gate_style())
                        .with_prefix("GPU memory"),
                );
                pb.enable_steady_tick(TICK);
                if let Some(old) = st.gate.replace(pb) {
                    old.finish_and_clear();
                    self.multi.remove(&old);
                }
            }
            Event::GateReading {
                gpu,
                free_bytes,
                needed_bytes,
                holders,
            } => {
                if let Some(pb) = &st.gate {
                    pb.set_length(*needed_bytes);
                    pb.set_position((*free_bytes).min(*needed_bytes));
                    pb.set_prefix(gpu.clone());
                    pb.set_message(holders.clone());
                }
            }
            Event::GatePassed { .. } => {
                let pb = st.gate.take();
                self.done(&mut st, pb, &format!("✔ {e}"));
            }
            Event::GateFailed { .. } => {
                let pb = st.gate.take();
                self.done(&mut st, pb, &format!("✘ {e}"));
            }
            Event::VidiStarted {
                container,
                attempt,
                precision,
                deadline,
                ..
            } => {
                self.print_locked(&mut st, &e.to_string());
                let pb = self.spinner(
                    deadline_style(*deadline),
                    format!("Vidi attempt {attempt} ({precision}) running in {container}"),
                );
                if let Some(old) = st.vidi.insert(container.clone(), pb) {
                    old.finish_and_clear();
                    self.multi.remove(&old);
                }
            }
            Event::VidiStopping { container } => match st.vidi.get(container) {
                Some(pb) => pb.set_message(e.to_string()),
                None => self.print_locked(&mut st, &e.to_string()),
            },
            Event::VidiExited {
                container, exit_code, ..
            } => {
                let pb = st.vidi.remove(container);
                let mark = if *exit_code == 0 { "✔" } else { "✘" };
                self.done(&mut st, pb, &format!("{mark} {e}"));
            }
            Event::VidiOutput { .. } => self.print_locked(&mut st, &e.to_string()),
            _ if e.is_warning() => self.print_locked(&mut st, &format!("! {e}")),
            _ => self.print_locked(&mut st, &e.to_string()),
        }
    }

    fn finish(&self) {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let bars: Vec<ProgressBar> = st
            .lock
            .take()
            .into_iter()
            .chain(st.gate.take())
            .chain(st.co_tenants.drain().map(|(_, pb)| pb))
            .chain(st.vidi.drain().map(|(_, pb)| pb))
            .collect();
        for pb in bars {
            pb.abandon();
        }
    }

    #[cfg(test)]
    fn history(&self) -> Vec<String> {
        lock(&self.state).history.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use vidi_operator::api::Precision;

    use super::*;

    fn live() -> Live {
        Live::new(ProgressDrawTarget::hidden(), true)
    }

    #[test]
    fn a_co_tenant_is_a_spinner_while_it_stops_then_one_line_with_its_time() {
        let l = live();
        l.event(&Event::CoTenantStopping {
            co_tenant: "Container tts".into(),
            timeout_seconds: Some(30),
            command: None,
        });
        {
            let st = lock(&l.state);
            let pb = st.co_tenants.get("Container tts").expect("a bar while it stops");
            assert!(!pb.is_finished());
            assert_eq!(pb.message(), "stopping Container tts (up to 30s before it is killed)");
        }
        l.event(&Event::CoTenantStopped {
            co_tenant: "Container tts".into(),
            elapsed_seconds: 2.04,
        });
        assert!(lock(&l.state).co_tenants.is_empty(), "the bar is gone");
        assert_eq!(l.history(), ["✔ stopped Container tts after 2.0s"]);
        l.event(&Event::CoTenantStarting {
            co_tenant: "Container tts".into(),
            command: None,
        });
        l.event(&Event::CoTenantStarted {
            co_tenant: "Container tts".into(),
            elapsed_seconds: 1.0,
            already_running: false,
            healthy: true,
        });
        assert_eq!(l.history()[1], "✔ started Container tts again (healthy) after 1.0s");
    }

    #[test]
    fn the_gate_is_a_bar_of_free_against_needed_memory() {
        let l = live();
        let gib = 1u64 << 30;
        l.event(&Event::GateWaiting { needed_bytes: 20 * gib });
        l.event(&Event::GateReading {
            gpu: "GPU 0 (RTX 4090)".into(),
            free_bytes: 3 * gib,
            needed_bytes: 20 * gib,
            holders: "held by pid 7 python3".into(),
        });
        {
            let st = lock(&l.state);
            let pb = st.gate.as_ref().expect("the gate bar");
            assert_eq!((pb.position(), pb.length()), (3 * gib, Some(20 * gib)));
            assert_eq!(pb.prefix(), "GPU 0 (RTX 4090)");
            assert_eq!(pb.message(), "held by pid 7 python3");
        }
        l.event(&Event::GatePassed {
            gpu: "GPU 0 (RTX 4090)".into(),
            free_bytes: 22 * gib,
            needed_bytes: 20 * gib,
        });
        assert!(lock(&l.state).gate.is_none());
        assert_eq!(l.history(), ["✔ GPU 0 (RTX 4090): 22.0 GiB free >= 20.0 GiB needed"]);
    }

    #[test]
    fn vidi_runs_with_its_elapsed_time_and_deadline_and_its_output_scrolls_above() {
        let l = live();
        let deadline = Timestamp::now() + jiff::SignedDuration::from_secs(300);
        l.event(&Event::VidiStarted {
            container: "job-vidi-1".into(),
            image: "vidi:latest".into(),
            attempt: 1,
            precision: Precision::Int8,
            deadline: Some(deadline),
        });
        {
            let st = lock(&l.state);
            let pb = st.vidi.get("job-vidi-1").expect("a Vidi bar");
            assert_eq!(pb.message(), "Vidi attempt 1 (int8) running in job-vidi-1");
        }
        assert_eq!(
            deadline_text(Some(deadline), deadline - jiff::SignedDuration::from_secs(252)),
            " · deadline in 4m 12s"
        );
        assert_eq!(
            deadline_text(Some(deadline), deadline + jiff::SignedDuration::from_secs(5)),
            " · deadline in 0s"
        );
        assert_eq!(deadline_text(None, deadline), "");
        l.event(&Event::VidiOutput {
            container: "job-vidi-1".into(),
            line: "loading shards".into(),
        });
        l.event(&Event::VidiExited {
            container: "job-vidi-1".into(),
            exit_code: 3,
            elapsed_seconds: Some(12.0),
        });
        assert!(lock(&l.state).vidi.is_empty());
        let h = l.history();
        assert!(
            h[0].starts_with("started job-vidi-1 from vidi:latest (activeDeadlineSeconds ends at "),
            "{h:?}"
        );
        assert_eq!(h[1], "[job-vidi-1] loading shards");
        assert_eq!(h[2], "✘ job-vidi-1 exited with code 3 after 12.0s");
    }

    #[test]
    fn the_lock_wait_ends_with_the_next_step_and_finish_leaves_no_bar_running() {
        let l = live();
        l.event(&Event::WaitingForLock {
            owner: Some("job a (pid 1)".into()),
        });
        assert!(lock(&l.state).lock.is_some());
        l.event(&Event::CoTenantStopping {
            co_tenant: "Command comfy".into(),
            timeout_seconds: None,
            command: Some("pkill comfy".into()),
        });
        assert!(lock(&l.state).lock.is_none(), "the lock was had");
        let pb = lock(&l.state).co_tenants["Command comfy"].clone();
        l.finish();
        assert!(pb.is_finished(), "finish stops every bar");
        assert!(lock(&l.state).co_tenants.is_empty());
    }

    #[test]
    fn plain_and_json_skip_readings_that_say_nothing_new() {
        let mut f = StepFilter::default();
        let reading = |free: u64| Event::GateReading {
            gpu: "GPU 0".into(),
            free_bytes: free,
            needed_bytes: 20 << 30,
            holders: "held by pid 7".into(),
        };
        assert!(f.is_step(&Event::GateWaiting { needed_bytes: 20 << 30 }));
        assert!(f.is_step(&reading(3 << 30)));
        // The same reading as shown (a few bytes apart is the same 3.0 GiB): no new line.
        assert!(!f.is_step(&reading((3 << 30) + 4096)));
        assert!(f.is_step(&reading(5 << 30)));
        // A new gate starts afresh.
        assert!(f.is_step(&Event::GateWaiting { needed_bytes: 12 << 30 }));
        assert!(f.is_step(&reading(5 << 30)));
    }
}
