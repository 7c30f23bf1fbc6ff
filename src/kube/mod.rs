//! The Kubernetes runtime: observe VidiJobs, co-tenants and pods; plan; act.
pub mod rbac;
