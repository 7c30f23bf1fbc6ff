//! One Vidi job per GPU pool at a time (invariant 3). Jobs of a pool leave the queue by
//! `spec.priority` (higher first), then oldest first; a running job is never interrupted.
use std::cmp::Reverse;
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

/// A job's place in its pool's queue: higher priority, then older, then by name.
pub type Place<'a> = (Reverse<i32>, Timestamp, &'a JobKey);

/// The queue place of a job.
pub fn place(key: &JobKey, created: Timestamp, priority: i32) -> Place<'_> {
    (Reverse(priority), created, key)
}

/// Decides the turn of the job `me` (at queue place `mine`) among its pool's `rivals`.
pub fn turn(mine: Place<'_>, rivals: &[Rival]) -> Turn {
    let me = mine.2;
    // An active job being deleted still holds the GPU until its cleanup has stopped Vidi.
    let active = rivals
        .iter()
        .filter(|r| r.key != *me && r.phase.is_active())
        .min_by_key(|r| order(r));
    if let Some(active) = active {
        let ahead = waiting_ahead(mine, rivals);
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
    let ahead = waiting_ahead(mine, rivals);
    match ahead.first() {
        None => Turn::Go,
        Some(first) => Turn::Wait {
            blocker: first.key.clone(),
            position: ahead.len(),
        },
    }
}

/// A rival's queue place.
pub fn order(r: &Rival) -> Place<'_> {
    place(&r.key, r.created, r.priority)
}

/// Waiting rivals that go before `mine`, in queue order.
fn waiting_ahead<'a>(mine: Place<'_>, rivals: &'a [Rival]) -> Vec<&'a Rival> {
    let me = mine.2;
    let mut ahead: Vec<&Rival> = rivals
        .iter()
        .filter(|r| r.key != *me && !r.deleting && !r.suspended)
        .filter(|r| matches!(r.phase, Phase::Pending | Phase::Queued))
        .filter(|r| order(r) < mine)
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
            priority: 0,
            phase,
            suspended: false,
            deleting: false,
        }
    }

    #[test]
    fn alone_goes() {
        assert_eq!(
            turn(
                place(&JobKey::new("ns", "a"), Timestamp::from_second(10).unwrap(), 0),
                &[]
            ),
            Turn::Go
        );
    }

    #[test]
    fn oldest_waiting_goes_first_and_others_queue_behind_it() {
        let rivals = [rival("a", 1, Phase::Queued), rival("c", 3, Phase::Pending)];
        let me = JobKey::new("ns", "b");
        assert_eq!(
            turn(place(&me, Timestamp::from_second(2).unwrap(), 0), &rivals),
            Turn::Wait {
                blocker: JobKey::new("ns", "a"),
                position: 1
            }
        );
        assert_eq!(
            turn(
                place(&JobKey::new("ns", "a"), Timestamp::from_second(1).unwrap(), 0),
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
                place(&JobKey::new("ns", "a"), Timestamp::from_second(1).unwrap(), 0),
                &rivals[..1]
            ),
            Turn::Next {
                active: JobKey::new("ns", "z")
            }
        );
        assert_eq!(
            turn(
                place(&JobKey::new("ns", "b"), Timestamp::from_second(2).unwrap(), 0),
                &rivals
            ),
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
            turn(
                place(&JobKey::new("ns", "b"), Timestamp::from_second(5).unwrap(), 0),
                &rivals
            ),
            Turn::Go
        );
        let mut active_deleting = rival("r", 1, Phase::Running);
        active_deleting.deleting = true;
        assert_eq!(
            turn(
                place(&JobKey::new("ns", "b"), Timestamp::from_second(5).unwrap(), 0),
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

    #[test]
    fn higher_priority_leaves_the_queue_first_then_the_oldest() {
        let mut urgent = rival("urgent", 9, Phase::Queued);
        urgent.priority = 10;
        let rivals = [rival("old", 1, Phase::Queued), urgent];
        let at = |s| Timestamp::from_second(s).unwrap();
        // The old job waits behind the younger urgent one.
        assert_eq!(
            turn(place(&JobKey::new("ns", "old"), at(1), 0), &rivals[1..]),
            Turn::Wait {
                blocker: JobKey::new("ns", "urgent"),
                position: 1
            }
        );
        // The urgent one goes although it is younger.
        assert_eq!(
            turn(place(&JobKey::new("ns", "urgent"), at(9), 10), &rivals[..1]),
            Turn::Go
        );
        // A new job of the same priority as the old one queues behind both.
        assert_eq!(
            turn(place(&JobKey::new("ns", "new"), at(20), 0), &rivals),
            Turn::Wait {
                blocker: JobKey::new("ns", "urgent"),
                position: 2
            }
        );
        // A running job is never overtaken: the urgent one is next, behind it.
        let running = [rival("old", 1, Phase::Running)];
        assert_eq!(
            turn(place(&JobKey::new("ns", "urgent"), at(9), 10), &running),
            Turn::Next {
                active: JobKey::new("ns", "old")
            }
        );
    }
}
