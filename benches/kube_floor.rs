//! The floor under the controller's CPU per job lifecycle: what kube-rs itself (client, watcher,
//! reflector, Event recorder; the crates the operator is built on) costs per request and per
//! watched change on this machine, with no planning, no indexes and no mappers.
//!
//! One client thread runs a current-thread tokio runtime, as `vidi-operator run` does; the API
//! stand-in runs on other threads. The client thread's own CPU time (`/proc/thread-self/schedstat`,
//! nanoseconds) is measured around:
//! 1. `patch`: a merge patch of one Deployment through `Api::patch`, awaited until the watch has
//!    put the new version into a reflector store (one request, one decoded watch event: what each
//!    co-tenant write, status write or pod creation costs the operator at least);
//! 2. `event`: one Event published through kube-runtime's `Recorder` (a request, no watch);
//! 3. `watched`: a change made by someone else (the stand-in itself), seen by the watch only.
//!
//! `cargo bench --bench kube_floor`. `benches/controller.rs` prints how many of each a lifecycle
//! takes, measures the same prices (`floor::measure`, fewer of each) right after its own run, and
//! prints their sum: the least CPU a lifecycle can cost with these crates at that moment.
mod floor;

use kube_standin::Standin;

const NS: &str = "floor";
const N: u64 = 2000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("kube floor benchmark: run it with `cargo bench --bench kube_floor`");
        return;
    }
    let server = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let api = server.block_on(Standin::start());
    let prices = floor::measure(&api, NS, N);
    println!();
    println!("kube-rs floor on this machine (client thread CPU, {N} of each):");
    println!("  patch + its watch event into a store   {:>8.1} µs", prices.patch_us);
    println!("  Event published (Recorder)             {:>8.1} µs", prices.event_us);
    println!(
        "  someone else's change, watched          {:>8.1} µs",
        prices.watched_us
    );
    println!(
        "  a job lifecycle of 10 echoed writes, 6 Events and 14 changes by others: {:.2} ms",
        prices.lifecycle_ms(10.0, 6.0, 14.0)
    );
}
