//! Command-line front ends: thin layers over the library (anyhow lives only here).
pub mod docker;
pub mod gpu;
pub mod output;
pub mod progress;
pub mod run;

pub use output::{OutputFormat, print_out, print_value, report};
