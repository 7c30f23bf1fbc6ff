//! Command-line front ends: thin layers over the library (anyhow lives only here).
pub mod docker;
pub mod gpu;
pub mod run;
