//! Names the planner gives to what it creates, so creating twice finds the first.

/// The pod (or container) of attempt `number` of job `job`: `<job>-vidi-<number>`, at most 63
/// characters (a DNS label), keeping the suffix.
pub fn attempt(job: &str, number: u32) -> String {
    let suffix = format!("-vidi-{number}");
    let keep = 63 - suffix.len();
    let stem: String = job.chars().take(keep).collect();
    format!("{}{suffix}", stem.trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    #[test]
    fn attempt_names_are_dns_labels() {
        assert_eq!(super::attempt("find-dog", 2), "find-dog-vidi-2");
        let long = "a".repeat(80);
        let name = super::attempt(&long, 10);
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-vidi-10"));
    }
}
