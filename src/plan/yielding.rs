//! Yielding with the least disruption (`spec.coTenants.policy: Minimal`): the cheapest set of
//! co-tenants whose GPU memory covers what Vidi still needs. Pure and exact.
//!
//! Each candidate yields all its replicas or none; yielding costs `replicas × yield priority`.
//! A candidate whose memory is unknown must yield (it counts for nothing towards the need, since
//! how much it frees is unknown). Among the known ones the cheapest set freeing at least the
//! deficit is found by dynamic programming over cost (costs are small integers): for every total
//! cost, the most memory a set of that cost frees. Ties go to the set found first in input
//! order, so the answer is deterministic.

/// One co-tenant that could yield.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// GPU memory it frees by yielding (all replicas), when known.
    pub memory_bytes: Option<u64>,
    /// Replicas removed × yield priority.
    pub cost: u64,
}

/// The chosen set: indices into the candidates, ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub yield_: Vec<usize>,
    pub cost: u64,
    /// Memory the known members free.
    pub freed_bytes: u64,
}

/// The cheapest set that frees at least `deficit_bytes` (every unknown-memory candidate is in
/// it); `None` when even yielding every candidate frees too little.
pub fn cheapest(candidates: &[Candidate], deficit_bytes: u64) -> Option<Choice> {
    let forced: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].memory_bytes.is_none())
        .collect();
    let known: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].memory_bytes.is_some())
        .collect();
    let forced_cost: u64 = forced.iter().map(|&i| candidates[i].cost).sum();
    let mem = |i: usize| candidates[i].memory_bytes.unwrap_or(0);
    let total_cost: u64 = known.iter().map(|&i| candidates[i].cost).sum();
    // best[c] = (most memory freed at exactly cost c, the set doing it).
    let size = usize::try_from(total_cost).ok()?.checked_add(1)?;
    let mut best: Vec<Option<(u64, Vec<usize>)>> = vec![None; size];
    best[0] = Some((0, Vec::new()));
    for &i in &known {
        let c = candidates[i].cost as usize;
        for at in (c..size).rev() {
            let Some((freed, set)) = &best[at - c] else { continue };
            let freed = freed.saturating_add(mem(i));
            if best[at].as_ref().is_none_or(|(b, _)| freed > *b) {
                let mut set = set.clone();
                set.push(i);
                best[at] = Some((freed, set));
            }
        }
    }
    let (cost, (freed, set)) = best
        .into_iter()
        .enumerate()
        .find_map(|(c, b)| b.filter(|(freed, _)| *freed >= deficit_bytes).map(|b| (c as u64, b)))?;
    let mut yield_: Vec<usize> = forced.into_iter().chain(set).collect();
    yield_.sort_unstable();
    Some(Choice {
        yield_,
        cost: cost + forced_cost,
        freed_bytes: freed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn c(memory_gib: Option<u64>, cost: u64) -> Candidate {
        Candidate {
            memory_bytes: memory_gib.map(|g| g * GIB),
            cost,
        }
    }

    #[test]
    fn yields_the_cheapest_set_that_makes_room() {
        // CosyVoice 3.8 GB (cost 1), ComfyUI 0.4 GB (cost 1), a big model server 12 GB (cost 5).
        let cands = [
            Candidate {
                memory_bytes: Some(3_800_000_000),
                cost: 1,
            },
            Candidate {
                memory_bytes: Some(400_000_000),
                cost: 1,
            },
            c(Some(12), 5),
        ];
        // 3 GB short: CosyVoice alone.
        assert_eq!(cheapest(&cands, 3_000_000_000).unwrap().yield_, vec![0]);
        // 4 GB short: CosyVoice and ComfyUI (cost 2) beat the model server (cost 5).
        assert_eq!(cheapest(&cands, 4_000_000_000).unwrap().yield_, vec![0, 1]);
        // 5 GB short: only the model server covers it.
        let choice = cheapest(&cands, 5 * GIB).unwrap();
        assert_eq!((choice.yield_, choice.cost), (vec![2], 5));
        // Nothing short: nobody yields.
        assert_eq!(cheapest(&cands, 0).unwrap().yield_, Vec::<usize>::new());
        // More than everything frees: impossible.
        assert_eq!(cheapest(&cands, 20 * GIB), None);
    }

    #[test]
    fn unknown_memory_always_yields() {
        let cands = [c(None, 3), c(Some(8), 1)];
        let choice = cheapest(&cands, 0).unwrap();
        assert_eq!((choice.yield_, choice.cost), (vec![0], 3));
        let choice = cheapest(&cands, 6 * GIB).unwrap();
        assert_eq!((choice.yield_, choice.cost), (vec![0, 1], 4));
    }

    /// Every subset, for comparison.
    fn brute_force(cands: &[Candidate], deficit: u64) -> Option<u64> {
        (0u32..(1 << cands.len()))
            .filter_map(|mask| {
                let chosen = |i: usize| mask & (1 << i) != 0;
                if (0..cands.len()).any(|i| cands[i].memory_bytes.is_none() && !chosen(i)) {
                    return None;
                }
                let freed: u64 = (0..cands.len())
                    .filter(|&i| chosen(i))
                    .map(|i| cands[i].memory_bytes.unwrap_or(0))
                    .sum();
                let cost: u64 = (0..cands.len()).filter(|&i| chosen(i)).map(|i| cands[i].cost).sum();
                (freed >= deficit).then_some(cost)
            })
            .min()
    }

    proptest! {
        #[test]
        fn the_choice_is_valid_and_as_cheap_as_brute_force(
            cands in prop::collection::vec(
                (prop::option::weighted(0.85, 0u64..24 * GIB), 0u64..12).prop_map(|(m, cost)| Candidate { memory_bytes: m, cost }),
                0..10,
            ),
            deficit in 0u64..40 * GIB,
        ) {
            let got = cheapest(&cands, deficit);
            prop_assert_eq!(got.as_ref().map(|c| c.cost), brute_force(&cands, deficit));
            if let Some(choice) = got {
                let freed: u64 = choice.yield_.iter().map(|&i| cands[i].memory_bytes.unwrap_or(0)).sum();
                prop_assert!(freed >= deficit);
                prop_assert_eq!(freed, choice.freed_bytes);
                prop_assert_eq!(choice.cost, choice.yield_.iter().map(|&i| cands[i].cost).sum::<u64>());
                for (i, cand) in cands.iter().enumerate() {
                    if cand.memory_bytes.is_none() {
                        prop_assert!(choice.yield_.contains(&i), "unknown memory yields");
                    }
                }
            }
        }
    }
}
