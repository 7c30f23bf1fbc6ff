//! GPU memory per container, measured: NVML lists the processes holding GPU memory (host pids);
//! each pid's cgroup names the container it runs in. What `coTenants.policy: Minimal` weighs
//! a container co-tenant by, when the driver lists its processes.
use std::collections::HashMap;

use crate::gpu::Reading;

/// The Docker container (its full id) a host process runs in, from `/proc/<pid>/cgroup`;
/// `None` for a process outside any container (or one that is gone).
pub fn container_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    container_in_cgroup(&text)
}

/// The container id in a cgroup file: the 64 hex digits after `docker/` (cgroupfs driver, v1
/// and v2) or `docker-` (systemd driver: `…/docker-<id>.scope`).
pub fn container_in_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').find_map(|part| {
            let id = part
                .strip_prefix("docker-")
                .map(|p| p.trim_end_matches(".scope"))
                .unwrap_or(part);
            let after_docker = path.contains(&format!("docker/{id}")) || part.starts_with("docker-");
            (after_docker && id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
        })
    })
}

/// GPU memory held per container id, summed over the reading's processes.
pub fn per_container(reading: &Reading) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for p in &reading.processes {
        if let (Some(bytes), Some(id)) = (p.used_bytes, container_of(p.pid)) {
            *out.entry(id).or_default() += bytes;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "625c2aaa4b9d4d64f8ab339f9bc104a0f995b41c701451c299877f9a18e5b20b";

    #[test]
    fn finds_the_container_in_v1_v2_and_systemd_cgroups() {
        assert_eq!(
            container_in_cgroup(&format!("9:name=systemd:/docker/{ID}\n8:pids:/docker/{ID}\n")).as_deref(),
            Some(ID)
        );
        assert_eq!(container_in_cgroup(&format!("0::/docker/{ID}\n")).as_deref(), Some(ID));
        assert_eq!(
            container_in_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n")).as_deref(),
            Some(ID)
        );
        // A host process, and a process in some other kind of cgroup.
        assert_eq!(
            container_in_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n"),
            None
        );
        assert_eq!(container_in_cgroup(&format!("0::/kubepods/pod1/{ID}\n")), None);
    }
}
