//! One Vidi job per GPU pool at a time (invariant 3). Jobs of a pool run oldest first.
use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::api::{Phase, VidiJobSpec, VidiJobStatus};

use super::snapshot::{JobKey, Rival};

/// Jobs with the same pool key compete for one GPU: the GPU resource plus the node selector.
pub fn pool_key(spec: &VidiJobSpec) -> String {
    let selector: BTreeMap<_, _> = spec.gpu.node_selector.iter().collect();
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}|{}", spec.gpu.resource_name, labels.join(","))
}

/// The pool a job competes in: the one it recorded on leaving the queue while it is active (so a
/// `spec.gpu` edit mid-run cannot let a rival of the old pool start beside it), else its spec's.
pub fn job_pool(spec: &VidiJobSpec, status: &VidiJobStatus) -> String {
    match &status.pool {
        Some(pool) if status.phase.is_active() => pool.clone(),
        _ => pool_key(spec),
    }
}

/// Whether this job may leave the queue, and if not whom it waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turn {
    /// No other job of the pool is active and none waiting is older.
    Go,
    /// Next in line behind `active`: may join holds already in place (so back-to-back jobs keep
    /// the co-tenants suspended between them).
    Next { active: JobKey },
    /// Waits behind `blocker` (active, or older and waiting).
    Wait { blocker: JobKey, position: usize },
}

/// Decides the turn of the job `me` (created at `created`) among its pool's `rivals`.
pub fn turn(me: &JobKey, created: Timestamp, rivals: &[Rival]) -> Turn {
    // An active job being deleted still holds the GPU until its cleanup has stopped Vidi.
    let active = rivals
        .iter()
        .filter(|r| r.key != *me && r.phase.is_active())
        .min_by_key(|r| order(r));
    if let Some(active) = active {
        let ahead = waiting_ahead(me, created, rivals);
        return match ahead.first() {
            None => Turn::Next {
                active: active.key.clone(),
            },
            Some(first) => Turn::Wait {
                blocker: first.key.clone(),
                position: ahead.len() + 1,
            },
        };
    }
    let ahead = waiting_ahead(me, created, rivals);
    match ahead.first() {
        None => Turn::Go,
        Some(first) => Turn::Wait {
            blocker: first.key.clone(),
            position: ahead.len(),
        },
    }
}

fn order(r: &Rival) -> (Timestamp, &JobKey) {
    (r.created, &r.key)
}

/// Waiting rivals that go before `me`, oldest first.
fn waiting_ahead<'a>(me: &JobKey, created: Timestamp, rivals: &'a [Rival]) -> Vec<&'a Rival> {
    let mut ahead: Vec<&Rival> = rivals
        .iter()
        .filter(|r| r.key != *me && !r.deleting && !r.suspended)
        .filter(|r| matches!(r.phase, Phase::Pending | Phase::Queued))
        .filter(|r| (r.created, &r.key) < (created, me))
        .collect();
    ahead.sort_by(|a, b| order(a).cmp(&order(b)));
    ahead
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rival(name: &str, secs: i64, phase: Phase) -> Rival {
        Rival {
            key: JobKey::new("ns", name),
            created: Timestamp::from_second(secs).unwrap(),
            phase,
            suspended: false,
            deleting: false,
        }
    }

    #[test]
    fn alone_goes() {
        assert_eq!(
            turn(&JobKey::new("ns", "a"), Timestamp::from_second(10).unwrap(), &[]),
            Turn::Go
        );
    }

    #[test]
    fn oldest_waiting_goes_first_and_others_queue_behind_it() {
        let rivals = [rival("a", 1, Phase::Queued), rival("c", 3, Phase::Pending)];
        let me = JobKey::new("ns", "b");
        assert_eq!(
            turn(&me, Timestamp::from_second(2).unwrap(), &rivals),
            Turn::Wait {
                blocker: JobKey::new("ns", "a"),
                position: 1
            }
        );
        assert_eq!(
            turn(
                &JobKey::new("ns", "a"),
                Timestamp::from_second(1).unwrap(),
                &rivals[1..]
            ),
            Turn::Go
        );
    }

    #[test]
    fn an_active_job_blocks_everyone_and_the_next_may_join_its_holds() {
        let rivals = [rival("z", 9, Phase::Running), rival("a", 1, Phase::Queued)];
        assert_eq!(
            turn(
                &JobKey::new("ns", "a"),
                Timestamp::from_second(1).unwrap(),
                &rivals[..1]
            ),
            Turn::Next {
                active: JobKey::new("ns", "z")
            }
        );
        assert_eq!(
            turn(&JobKey::new("ns", "b"), Timestamp::from_second(2).unwrap(), &rivals),
            Turn::Wait {
                blocker: JobKey::new("ns", "a"),
                position: 2
            }
        );
    }

    #[test]
    fn finished_deleting_and_suspended_rivals_do_not_block() {
        let mut suspended = rival("s", 1, Phase::Pending);
        suspended.suspended = true;
        let mut deleting = rival("d", 1, Phase::Queued);
        deleting.deleting = true;
        let rivals = [
            rival("x", 1, Phase::Succeeded),
            rival("y", 1, Phase::Failed),
            suspended,
            deleting,
        ];
        assert_eq!(
            turn(&JobKey::new("ns", "b"), Timestamp::from_second(5).unwrap(), &rivals),
            Turn::Go
        );
        let mut active_deleting = rival("r", 1, Phase::Running);
        active_deleting.deleting = true;
        assert_eq!(
            turn(
                &JobKey::new("ns", "b"),
                Timestamp::from_second(5).unwrap(),
                &[active_deleting]
            ),
            Turn::Next {
                active: JobKey::new("ns", "r")
            }
        );
    }

    #[test]
    fn pool_key_ignores_selector_order() {
        let mut a: VidiJobSpec = serde_json::from_value(serde_json::json!({
            "video": {"url": "https://x/v.mp4"}, "query": "q", "model": {"weights": {"claimName": "w"}},
            "gpu": {"nodeSelector": {"b": "2", "a": "1"}}
        }))
        .unwrap();
        let k = pool_key(&a);
        a.gpu.node_selector = [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into();
        assert_eq!(pool_key(&a), k);
        assert_eq!(k, "nvidia.com/gpu|a=1,b=2");
    }
}
