//! Randomized simulation of Raft clusters under faults, one seed per run, checking the Raft properties after
//! every step (see `sim/mod.rs`) and liveness once the faults stop.
//!
//! - `cargo test --release --test raft_sim` runs `SEEDS` seeds (default 1000) starting at `SEED_BASE`.
//! - `SEED=1234 cargo test --release --test raft_sim -- --nocapture` replays one seed exactly.
//! - `SEEDS=100000 cargo test --release --test raft_sim` runs 100,000 (about 100 minutes on 2 cores).

mod sim;

use hash_nimbus::raft::*;
use sim::{Faults, Sim};
use std::collections::BTreeSet;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be an unsigned integer, got {v:?}"))
    })
}

/// One membership change through the leader: a learner is promoted, a node outside the cluster is added
/// as a learner, or (when `remove`, and more than two voters remain) a random voter is removed. After the
/// faults (`remove` false) only when no change is under way.
fn membership_step(sim: &mut Sim, rng: &mut Rng, remove: bool) {
    let Some(l) = sim.leader() else {
        return;
    };
    let raft = sim.raft(l);
    // During the faults, changes are asked for even while one is under way: the core must refuse them.
    if !remove && !raft.membership_committed() {
        return;
    }
    let m = raft.membership().clone();
    let outside: Vec<u64> = sim.ids().into_iter().filter(|&i| !m.contains(i)).collect();
    let change = if let Some(&learner) = m.learners.iter().next() {
        MembershipChange::Promote(learner)
    } else if let Some(&out) = outside.first() {
        MembershipChange::AddLearner(out)
    } else if remove && m.voters.len() > 2 {
        let voters: Vec<u64> = m.voters.iter().copied().collect();
        MembershipChange::Remove(voters[rng.below(voters.len() as u64) as usize])
    } else {
        return;
    };
    sim.change_membership(l, change);
}

/// One randomized run. Panics (with the seed in the message) on any violated property.
fn run_seed(seed: u64) -> sim::Stats {
    let mut rng = Rng::new(seed ^ 0x5EED);
    let n = if rng.chance(1, 3) { 5 } else { 3 };
    let pre_vote = !rng.chance(1, 5);
    let check_quorum = !rng.chance(1, 5);
    let max_inflight = 1 + rng.below(8) as usize;
    let max_entries = 1 + rng.below(5) as usize;
    let mut sim = Sim::new(n, seed, move |c| {
        c.pre_vote = pre_vote;
        c.check_quorum = check_quorum;
        c.max_inflight = max_inflight;
        c.max_entries_per_msg = max_entries;
    });
    sim.faults = Faults {
        drop_per_mille: rng.below(200),
        dup_per_mille: rng.below(100),
        max_delay: rng.below(4),
    };
    // Two seeds in three snapshot and compact their logs (drawn from their own generator, so the rest of
    // a seed's schedule is the same either way).
    let mut snap_rng = Rng::new(seed ^ 0x5A4B);
    if !snap_rng.chance(1, 3) {
        sim.snapshots = Some(sim::SnapshotPolicy {
            every: 5 + snap_rng.below(40),
            keep: snap_rng.below(8),
        });
    }
    let ids = sim.ids();
    let mut payload = 0u64;
    let mut members_rng = Rng::new(seed ^ 0x3E3B);
    // Phase 1: faults.
    for _ in 0..400 {
        // Clients: a few writes and reads per tick on random nodes.
        for _ in 0..rng.below(3) {
            let id = ids[rng.below(n) as usize];
            payload += 1;
            sim.propose(id, format!("w{payload}").into_bytes());
        }
        if rng.chance(1, 2) {
            let id = ids[rng.below(n) as usize];
            if payload % 2 == 0 {
                sim.read(id);
            } else {
                sim.read_lease(id);
            }
        }
        // Nemesis.
        match rng.below(100) {
            0..=1 => {
                let id = ids[rng.below(n) as usize];
                sim.crash(id);
            }
            2..=5 => {
                let id = ids[rng.below(n) as usize];
                sim.restart(id);
            }
            6 => {
                // Random split into two sides.
                let mut a = BTreeSet::new();
                let mut b = BTreeSet::new();
                for &id in &ids {
                    if rng.chance(1, 2) {
                        a.insert(id)
                    } else {
                        b.insert(id)
                    };
                }
                sim.partition(vec![a, b]);
            }
            7 => {
                // The leader alone in the minority.
                if let Some(l) = sim.leader() {
                    let rest: BTreeSet<_> = ids.iter().copied().filter(|&i| i != l).collect();
                    sim.partition(vec![BTreeSet::from([l]), rest]);
                }
            }
            8..=10 => sim.heal(),
            // Membership changes, drawn from their own generator (so seeds without them keep their
            // schedule): remove a voter, add a removed node back as a learner, promote a learner.
            11 if members_rng.chance(1, 2) => membership_step(&mut sim, &mut members_rng, true),
            _ => {}
        }
        sim.tick();
    }
    // Phase 2: faults stop; the cluster must converge within a bounded number of ticks.
    sim.heal();
    sim.faults = Faults::default();
    for id in ids.clone() {
        sim.restart(id);
    }
    let mut converged = false;
    for t in 0..600 {
        sim.tick();
        // A write after healing forces the leader to commit in its term, so everything converges.
        if t % 50 == 10 {
            if let Some(l) = sim.leader() {
                payload += 1;
                sim.propose(l, format!("w{payload}").into_bytes());
            }
        }
        // Every node back in as a voter, one change at a time.
        if t % 10 == 5 {
            membership_step(&mut sim, &mut members_rng, false);
        }
        if t > 60 && sim.check_converged().is_ok() {
            converged = true;
            break;
        }
    }
    if !converged {
        let progress = sim.leader().map(|l| sim.raft(l).progress());
        panic!(
            "liveness: not converged 600 ticks after faults stopped: {} (leader's progress {progress:?}) (seed {seed})",
            sim.check_converged().unwrap_err()
        );
    }
    sim.check_reads()
        .unwrap_or_else(|e| panic!("linearizability: {e} (seed {seed})"));
    sim.stats.clone()
}

#[test]
fn simulated_clusters_keep_raft_properties() {
    if let Some(seed) = env_u64("SEED") {
        eprintln!("{:?}", run_seed(seed));
        return;
    }
    let count = env_u64("SEEDS").unwrap_or(1000);
    let base = env_u64("SEED_BASE").unwrap_or(1);
    let start = std::time::Instant::now();
    let mut total = sim::Stats::default();
    for seed in base..base + count {
        let result = std::panic::catch_unwind(|| run_seed(seed));
        if let Ok(s) = &result {
            total.delivered += s.delivered;
            total.dropped += s.dropped;
            total.elections += s.elections;
            total.writes_acked += s.writes_acked;
            total.reads_ok += s.reads_ok;
            total.lease_reads += s.lease_reads;
            total.snapshots += s.snapshots;
            total.snapshots_installed += s.snapshots_installed;
            total.membership_changes += s.membership_changes;
        }
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "seed {seed} failed: {msg}\nreplay with: SEED={seed} cargo test --release --test raft_sim -- --nocapture"
            );
        }
    }
    eprintln!("{count} seeds passed in {:.1?}: {total:?}", start.elapsed());
    // The workload must have done real work, or the properties above prove little.
    assert!(
        total.writes_acked > count * 50,
        "too few writes acknowledged: {total:?}"
    );
    assert!(
        total.reads_ok > count * 20,
        "too few reads answered: {total:?}"
    );
    assert!(total.elections >= count, "too few elections: {total:?}");
    assert!(
        total.lease_reads > count * 5,
        "too few reads served from a lease: {total:?}"
    );
    assert!(
        total.membership_changes > count,
        "too few membership changes: {total:?}"
    );
    assert!(
        total.snapshots_installed > count / 2,
        "too few snapshots installed: {total:?}"
    );
}
