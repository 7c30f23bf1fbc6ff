//! vidi-operator: lets a heavy GPU job (Vidi 1.5 9B) borrow a shared GPU.
//!
//! `plan` decides (pure, no I/O); `kube` and `docker` observe the world and act on it.

pub mod api;
pub mod docker;
pub mod gpu;
pub mod kube;
pub mod plan;
pub mod plugin;
pub mod release;
pub mod telemetry;
