//! Named scenarios, one per Raft rule, driven step by step in the simulated cluster (`sim/`): messages are
//! held until a scenario delivers them, and nodes tick only when told. Every scenario is deterministic.
//! The property checker of `sim/` runs underneath all of them.

mod sim;

use hash_nimbus::raft::*;
use sim::{Outcome, Sim};
use std::collections::BTreeSet;

fn set(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

fn is_election(m: &Message) -> bool {
    matches!(
        m.body,
        MessageBody::PreVote { .. }
            | MessageBody::PreVoteResponse { .. }
            | MessageBody::Vote { .. }
            | MessageBody::VoteResponse { .. }
    )
}

/// Makes `id` campaign and delivers only election traffic until it leads (other messages stay queued).
/// A failed pre-vote (its term is behind) is retried: the rejection taught it the term.
fn win_election(sim: &mut Sim, id: u64) {
    for _ in 0..5 {
        sim.campaign(id);
        for _ in 0..20 {
            if sim.raft(id).is_leader() {
                return;
            }
            sim.deliver_where(is_election, false);
        }
        if sim.raft(id).is_leader() {
            return;
        }
    }
    panic!("n{id} could not win an election");
}

/// Campaign, then let everything flow.
fn elect(sim: &mut Sim, id: u64) {
    win_election(sim, id);
    sim.stabilize();
    assert!(sim.raft(id).is_leader());
}

fn scripted(n: u64, tune: impl Fn(&mut Config) + 'static) -> Sim {
    let mut sim = Sim::new(n, 7, tune);
    sim.auto_deliver = false;
    sim
}

/// Paper §5.4.2 and Figure 8: a leader never commits an entry of an earlier term by counting replicas.
#[test]
fn figure8_old_term_entries_are_not_committed_by_counting() {
    let mut sim = scripted(5, |c| {
        c.check_quorum = false;
        c.max_entries_per_msg = 1;
    });
    elect(&mut sim, 1);
    let t1 = sim.raft(1).term();
    for id in 1..=5 {
        assert_eq!(
            sim.raft(id).log().committed(),
            1,
            "n{id} committed the no-op"
        );
    }
    // (a) n1 replicates X at index 2 to n2 only.
    sim.partition(vec![set(&[1, 2]), set(&[3, 4, 5])]);
    sim.propose(1, b"X".to_vec());
    sim.stabilize();
    assert_eq!(sim.raft(2).log().term(2), Some(t1));
    assert_eq!(sim.raft(1).log().committed(), 1, "2 of 5 is no quorum");
    // (b) n1 crashes; n5 wins with the votes of n3 and n4 and appends its no-op at index 2 in its term,
    // which reaches nobody.
    sim.crash(1);
    sim.partition(vec![set(&[2]), set(&[3, 4, 5])]);
    win_election(&mut sim, 5);
    sim.drop_all();
    let t2 = sim.raft(5).term();
    assert!(t2 > t1);
    assert_eq!(sim.raft(5).log().term(2), Some(t2));
    // (c) n5 crashes; n1 restarts and wins with n2 and n3. Its log ends with X (t1) and its own no-op.
    sim.crash(5);
    sim.restart(1);
    sim.partition(vec![set(&[1, 2, 3]), set(&[4]), set(&[5])]);
    win_election(&mut sim, 1);
    let t3 = sim.raft(1).term();
    assert!(t3 > t2);
    // n1 gets X onto n3 and its own no-op onto n2 only. Now X (an entry of term t1) is on a majority
    // {n1, n2, n3} and n1 knows it, while the no-op of t3 is on {n1, n2}: no majority.
    let holds_index_3 = |m: &Message| matches!(&m.body, MessageBody::Append { entries, .. } if entries.iter().any(|e| e.index == 3));
    let to_n3 = std::cell::Cell::new(0);
    for _ in 0..20 {
        sim.deliver_where(
            |m| {
                if m.to == 3 && holds_index_3(m) {
                    // The first is n1's opening probe, which n3 rejects (it lacks index 2); hold the rest.
                    to_n3.set(to_n3.get() + 1);
                    return to_n3.get() == 1;
                }
                true
            },
            true,
        );
    }
    assert_eq!(sim.raft(3).log().term(2), Some(t1), "X reached n3");
    assert_eq!(sim.raft(3).log().last_index(), 2);
    assert_eq!(sim.raft(2).log().term(3), Some(t3), "the no-op reached n2");
    assert!(
        sim.raft(1).progress().iter().filter(|p| p.1 >= 2).count() >= 2,
        "n1 knows"
    );
    assert_eq!(
        sim.raft(1).log().committed(),
        1,
        "X is on a majority but from an older term: counting replicas must not commit it"
    );
    // (d) Why: n1 crashes, and n5 (whose last entry has the higher term t2) wins with n3 and n4 and
    // overwrites X. Had n1 committed X, a committed entry would now be lost.
    sim.crash(1);
    sim.restart(5);
    sim.partition(vec![set(&[3, 4, 5]), set(&[1]), set(&[2])]);
    elect(&mut sim, 5);
    assert_eq!(
        sim.raft(3).log().term(2),
        Some(t2),
        "X was overwritten on n3"
    );
    assert!(sim
        .nodes
        .values()
        .all(|n| n.applied.iter().all(|(_, _, c)| c != b"X")));
}

/// The same start, but n1 gets its own term's entry onto the majority: then X commits with it (Figure 8 (e)).
#[test]
fn figure8_old_entries_commit_with_a_current_term_entry() {
    let mut sim = scripted(5, |c| c.check_quorum = false);
    elect(&mut sim, 1);
    sim.partition(vec![set(&[1, 2]), set(&[3, 4, 5])]);
    sim.propose(1, b"X".to_vec());
    sim.stabilize();
    sim.crash(1);
    sim.restart(1);
    sim.partition(vec![set(&[1, 2, 3]), set(&[4, 5])]);
    elect(&mut sim, 1);
    let t = sim.raft(1).term();
    assert_eq!(sim.raft(1).log().term(3), Some(t));
    assert_eq!(
        sim.raft(1).log().committed(),
        3,
        "the no-op of the current term commits X with it"
    );
    assert!(sim.nodes[&3]
        .applied
        .iter()
        .any(|(i, _, c)| *i == 2 && c == b"X"));
}

/// Thesis §9.6: a node partitioned away does not raise its term (its pre-votes fail), so when it comes
/// back the leader stays.
#[test]
fn prevote_keeps_the_leader_when_a_partitioned_node_rejoins() {
    let mut sim = Sim::new(3, 11, |_| {});
    sim.run(100);
    let leader = sim.leader().expect("a leader");
    let term = sim.raft(leader).term();
    let loner = (1..=3).find(|&i| i != leader).unwrap();
    sim.partition(vec![
        set(&[loner]),
        (1..=3).filter(|&i| i != loner).collect(),
    ]);
    sim.run(300);
    assert_eq!(
        sim.raft(loner).term(),
        term,
        "pre-vote kept the partitioned node's term"
    );
    sim.heal();
    sim.run(100);
    assert_eq!(sim.leader(), Some(leader), "the leader was not disturbed");
    assert_eq!(sim.raft(leader).term(), term);
    assert_eq!(sim.raft(loner).leader(), Some(leader));
}

/// For contrast: without pre-vote the partitioned node inflates its term and deposes the leader on return.
#[test]
fn without_prevote_a_rejoining_node_disrupts_the_leader() {
    let mut sim = Sim::new(3, 11, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    sim.run(100);
    let leader = sim.leader().expect("a leader");
    let term = sim.raft(leader).term();
    let loner = (1..=3).find(|&i| i != leader).unwrap();
    sim.partition(vec![
        set(&[loner]),
        (1..=3).filter(|&i| i != loner).collect(),
    ]);
    sim.run(300);
    assert!(sim.raft(loner).term() > term + 5, "the term inflated");
    sim.heal();
    sim.run(100);
    assert!(
        sim.raft(sim.leader().unwrap()).term() > term,
        "the old leader was deposed"
    );
}

/// Thesis §6.2: a leader cut off from the majority steps down within an election timeout; the majority
/// elects another; after healing the old leader follows.
#[test]
fn check_quorum_steps_down_an_isolated_leader() {
    let mut sim = Sim::new(3, 5, |_| {});
    sim.run(100);
    let old = sim.leader().unwrap();
    let election = sim.raft(old).config().election_ticks as u64;
    sim.partition(vec![set(&[old]), (1..=3).filter(|&i| i != old).collect()]);
    sim.run(2 * election);
    assert_ne!(
        sim.raft(old).role(),
        Role::Leader,
        "stepped down within two election timeouts"
    );
    sim.run(100);
    let new = sim.leader().unwrap();
    assert_ne!(new, old);
    sim.heal();
    sim.run(50);
    assert_eq!(sim.raft(old).leader(), Some(new));
    // Without check-quorum the isolated leader would lead on alone, forever.
    let mut sim = Sim::new(3, 5, |c| c.check_quorum = false);
    sim.run(100);
    let old = sim.leader().unwrap();
    sim.partition(vec![set(&[old]), (1..=3).filter(|&i| i != old).collect()]);
    sim.run(200);
    assert!(sim.raft(old).is_leader());
}

/// Paper §5.3 (end): a follower with a long divergent suffix is repaired with a few rejections, not one
/// per entry, because its rejection names the conflicting term and where it starts.
///
/// The leader that repairs it must be one elected after the divergence grew on both sides, so that its
/// first probe lands far past the point where the logs part (a leader elected right after the split probes
/// at the split itself and needs no rejection at all).
#[test]
fn conflict_hints_back_up_a_whole_term_at_a_time() {
    let mut sim = Sim::new(5, 3, |c| c.max_entries_per_msg = 64);
    sim.run(100);
    let old = sim.leader().unwrap();
    let rest: BTreeSet<NodeId> = (1..=5).filter(|&i| i != old).collect();
    // The old leader, alone, takes 100 writes that can never commit.
    sim.partition(vec![set(&[old]), rest.clone()]);
    for k in 0..100 {
        sim.propose(old, format!("lost {k}").into_bytes());
    }
    sim.run(100);
    let second = sim.leader().unwrap();
    assert_ne!(second, old);
    for k in 0..30 {
        sim.propose(second, format!("kept {k}").into_bytes());
    }
    sim.run(20);
    // A third leader takes over on the majority side: its probe of the old leader starts at its own end.
    sim.crash(second);
    sim.run(200);
    let third = sim.leader().unwrap();
    assert!(third != old && third != second);
    let split = sim.raft(third).log().last_index();
    assert!(sim.raft(old).log().last_index() > split + 50);
    let before = sim.stats.append_rejects;
    sim.heal();
    sim.run(50);
    let rejects = sim.stats.append_rejects - before;
    // Backing up one entry per rejection would take more than 30 here.
    assert!(
        (1..=3).contains(&rejects),
        "{rejects} rejections to repair a divergence of 100 entries against 30"
    );
    assert_eq!(
        sim.raft(old).log().last_index(),
        sim.raft(third).log().last_index()
    );
    assert!(sim.nodes[&old]
        .applied
        .iter()
        .all(|(_, _, c)| !c.starts_with(b"lost")));
    sim.restart(second);
    sim.run(100);
    sim.check_converged().unwrap();
}

/// Paper §5.2: two candidates split the vote; nobody wins that term; randomized timeouts then elect one.
#[test]
fn split_votes_resolve_in_a_later_term() {
    let mut sim = scripted(4, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    // n1 and n2 time out together and ask for votes in the same term.
    sim.campaign(1);
    sim.campaign(2);
    let term = sim.raft(1).term();
    assert_eq!(sim.raft(2).term(), term);
    // n3 hears n1 first, n4 hears n2 first: 2 votes each, no majority of 4.
    let first = |m: &Message, from: u64, to: u64| m.from == from && m.to == to;
    sim.deliver_where(|m| first(m, 1, 3) || first(m, 2, 4), false);
    sim.deliver_all();
    sim.stabilize();
    assert!(sim
        .nodes
        .values()
        .all(|n| !n.raft.as_ref().unwrap().is_leader()));
    assert_eq!(sim.raft(1).role(), Role::Candidate);
    // Time goes on for everyone: the first randomized timeout to fire wins the next term.
    sim.auto_deliver = true;
    sim.run(200);
    let leader = sim.leader().expect("a leader after the split");
    assert!(sim.raft(leader).term() > term);
}

/// Thesis §6.4: reads on the leader share one heartbeat round; a follower's read is forwarded and
/// confirmed; a leader cut off from the majority never confirms a read.
#[test]
fn read_index_rounds() {
    let mut sim = scripted(3, |_| {});
    elect(&mut sim, 1);
    let w = sim.propose(1, b"v1".to_vec());
    sim.stabilize();
    assert!(matches!(sim.outcomes[&w], Outcome::Written(..)));
    let reads = sim.read_batch(1, 5);
    // One round: exactly one heartbeat per follower went out for the five reads of one driver turn.
    assert_eq!(sim.queued(), 2);
    sim.stabilize();
    let Outcome::Written(w_index, _) = sim.outcomes[&w] else {
        unreachable!()
    };
    for r in &reads {
        assert!(
            matches!(sim.outcomes[r], Outcome::Read(i) if i >= w_index),
            "{:?}",
            sim.outcomes[r]
        );
    }
    let fr = sim.read(2);
    sim.stabilize();
    assert!(matches!(sim.outcomes[&fr], Outcome::Read(i) if i >= w_index));
    // Isolated, the leader cannot confirm; when it steps down the read fails.
    sim.partition(vec![set(&[1]), set(&[2, 3])]);
    let r = sim.read(1);
    sim.stabilize();
    assert!(!sim.outcomes.contains_key(&r), "no quorum, no answer");
    for _ in 0..40 {
        sim.tick_node(1);
    }
    assert_eq!(
        sim.outcomes.get(&r),
        Some(&Outcome::Failed(RequestError::LeaderChanged))
    );
}

/// A follower forwards proposals to the leader; without a known leader a proposal fails at once.
#[test]
fn forwarded_proposals() {
    let mut sim = scripted(3, |_| {});
    let early = sim.propose(2, b"too early".to_vec());
    assert_eq!(
        sim.outcomes[&early],
        Outcome::Failed(RequestError::NotLeader { leader: None })
    );
    elect(&mut sim, 1);
    let w = sim.propose(3, b"via n3".to_vec());
    sim.stabilize();
    assert!(matches!(sim.outcomes[&w], Outcome::Written(2, _)));
    for id in 1..=3 {
        assert!(sim.nodes[&id]
            .applied
            .iter()
            .any(|(_, _, c)| c == b"via n3"));
    }
}

/// The free-space reserve (the driver's `--min-free-bytes`): a leader with writes paused refuses new
/// commands, its own and those forwarded by followers, before appending anything; a follower with writes
/// paused still appends and applies what its leader sends; resumed, the leader takes commands again.
#[test]
fn paused_writes_are_refused_by_the_leader_only() {
    let mut sim = scripted(3, |_| {});
    elect(&mut sim, 1);
    raft_mut(&mut sim, 2).set_writes_paused(true);
    let w = sim.propose(3, b"follower 2 is low, not the leader".to_vec());
    sim.stabilize();
    assert!(
        matches!(sim.outcomes[&w], Outcome::Written(..)),
        "{:?}",
        sim.outcomes[&w]
    );
    assert!(sim.nodes[&2]
        .applied
        .iter()
        .any(|(_, _, c)| c == b"follower 2 is low, not the leader"));
    raft_mut(&mut sim, 2).set_writes_paused(false);

    raft_mut(&mut sim, 1).set_writes_paused(true);
    let last = sim.raft(1).log().last_index();
    let local = sim.propose(1, b"local".to_vec());
    let forwarded = sim.propose(2, b"forwarded".to_vec());
    sim.stabilize();
    for r in [local, forwarded] {
        assert_eq!(
            sim.outcomes[&r],
            Outcome::Failed(RequestError::InsufficientStorage)
        );
    }
    assert_eq!(sim.raft(1).log().last_index(), last, "nothing appended");
    assert!(sim.raft(1).is_leader(), "heartbeats went on");

    raft_mut(&mut sim, 1).set_writes_paused(false);
    let w = sim.propose(2, b"resumed".to_vec());
    sim.stabilize();
    assert!(
        matches!(sim.outcomes[&w], Outcome::Written(..)),
        "{:?}",
        sim.outcomes[&w]
    );
    sim.check_converged().unwrap();
}

/// Persistent state survives crashes: term, vote and log; committed entries are applied again on restart.
#[test]
fn restart_keeps_term_vote_and_log() {
    // Without leases, so the restarted nodes may vote at once (see the lease tests below).
    let mut sim = scripted(3, |c| c.lease_ticks = 0);
    elect(&mut sim, 1);
    for k in 0..5 {
        sim.propose(1, format!("e{k}").into_bytes());
    }
    sim.stabilize();
    let before = (
        sim.raft(2).term(),
        sim.raft(2).vote(),
        sim.raft(2).log().last_index(),
    );
    sim.crash(2);
    sim.crash(1);
    sim.restart(2);
    let after = (
        sim.raft(2).term(),
        sim.raft(2).vote(),
        sim.raft(2).log().last_index(),
    );
    assert_eq!(before, after);
    assert_eq!(
        sim.nodes[&2].applied.len(),
        5,
        "re-applied the committed commands"
    );
    sim.restart(1);
    elect(&mut sim, 2);
    sim.stabilize();
    sim.check_converged().unwrap();
}

/// Thesis §6.4.1: a leader serves reads from its lease only after a quorum acknowledged a heartbeat round
/// of its own term (and after an entry of its term committed), and only for `lease_ticks` after that round
/// started; check-quorum and a lease below the election timeout are what make it safe.
#[test]
fn leases_start_with_an_acknowledged_round_and_expire() {
    let mut sim = scripted(3, |_| {});
    win_election(&mut sim, 1);
    // Elected, but its no-op is not committed and no round was acknowledged: no lease.
    assert_eq!(sim.raft(1).lease_read(), None);
    sim.stabilize();
    let committed = sim.raft(1).log().committed();
    sim.tick_node(1);
    sim.stabilize();
    assert_eq!(sim.raft(1).lease_read(), Some(committed));
    // Cut off, it keeps the lease for `lease_ticks` after the last acknowledged round started, no longer,
    // and stays leader until check-quorum (an election timeout) deposes it.
    sim.partition(vec![set(&[1]), set(&[2, 3])]);
    let lease = u64::from(sim.raft(1).config().lease_ticks);
    let mut held = 0;
    while sim.raft(1).lease_read().is_some() {
        sim.tick_node(1);
        sim.stabilize();
        held += 1;
        assert!(held <= lease, "lease held past {lease} ticks");
    }
    assert_eq!(
        held, lease,
        "valid for lease_ticks after the acknowledged round started"
    );
    assert!(
        sim.raft(1).is_leader(),
        "still leader, but no longer leased"
    );
    // Without check-quorum followers may vote at any time: no leases at all.
    let mut sim = scripted(3, |c| c.check_quorum = false);
    elect(&mut sim, 1);
    sim.tick_node(1);
    sim.stabilize();
    assert_eq!(sim.raft(1).lease_read(), None);
}

/// A follower that acknowledged the leader's round and then restarted must not help elect another leader
/// while that lease may still be held: after booting it refuses votes for an election timeout, as if it
/// had just heard from the leader.
#[test]
fn a_restarted_follower_keeps_the_leases_promise() {
    let mut sim = scripted(3, |_| {});
    elect(&mut sim, 1);
    // n3 falls silent; n2 alone acknowledges the next round, which gives n1 its lease.
    sim.partition(vec![set(&[1, 2]), set(&[3])]);
    sim.tick_node(1);
    sim.stabilize();
    assert!(sim.raft(1).lease_read().is_some());
    // n2 restarts; n3 has not heard from a leader for long and campaigns.
    sim.crash(2);
    sim.restart(2);
    sim.heal();
    sim.partition(vec![set(&[1]), set(&[2, 3])]);
    sim.campaign(3);
    sim.stabilize();
    assert!(
        !sim.raft(3).is_leader() && !sim.raft(2).is_leader(),
        "a new leader while n1 still holds its lease"
    );
    assert!(sim.raft(1).lease_read().is_some());
    // Once n2 has been up for an election timeout, the election can go ahead.
    for _ in 0..sim.raft(2).config().election_ticks {
        sim.tick_node(2);
    }
    sim.stabilize();
    for _ in 0..200 {
        if sim.raft(2).is_leader() || sim.raft(3).is_leader() {
            break;
        }
        sim.tick_node(2);
        sim.tick_node(3);
        sim.stabilize();
    }
    assert!(sim.raft(2).is_leader() || sim.raft(3).is_leader());
}

/// Paper §7: a follower that needs entries the leader compacted away receives the leader's snapshot, then
/// the log after it, and ends identical; the others never need one.
#[test]
fn a_follower_behind_the_compacted_log_gets_the_snapshot() {
    let mut sim = Sim::new(3, 11, |_| {});
    sim.snapshots = Some(sim::SnapshotPolicy { every: 10, keep: 2 });
    sim.run(100);
    let leader = sim.leader().unwrap();
    let lagging = (1..=3).find(|&i| i != leader).unwrap();
    sim.crash(lagging);
    for k in 0..50 {
        sim.propose(leader, format!("w{k}").into_bytes());
        sim.run(1);
    }
    sim.run(20);
    assert!(
        sim.raft(leader).log().first_index() > 10,
        "the leader compacted"
    );
    assert_eq!(sim.stats.snapshots_installed, 0);
    sim.restart(lagging);
    sim.run(100);
    assert_eq!(sim.stats.snapshots_installed, 1, "exactly one transfer");
    sim.check_converged().unwrap();
}

fn raft_mut(sim: &mut Sim, id: u64) -> &mut Raft {
    sim.nodes.get_mut(&id).unwrap().raft.as_mut().unwrap()
}

/// Thesis §4.1 (learners, then promotion): a node outside the cluster neither campaigns nor receives
/// anything; added as a learner it catches up (here by snapshot, the leader having compacted) without
/// voting; promoted, it counts towards quorums.
#[test]
fn a_learner_catches_up_then_is_promoted() {
    let mut sim = Sim::with_voters(4, set(&[1, 2, 3]), 21, |_| {});
    sim.snapshots = Some(sim::SnapshotPolicy { every: 20, keep: 5 });
    sim.run(100);
    let l = sim.leader().unwrap();
    assert_ne!(l, 4, "a non-member never leads");
    for k in 0..60 {
        sim.propose(l, format!("w{k}").into_bytes());
        sim.run(1);
    }
    assert_eq!(sim.raft(4).log().last_index(), 0, "outsiders get nothing");
    assert_eq!(sim.raft(4).term(), 0, "and never campaign");
    let r = sim.change_membership(l, MembershipChange::AddLearner(4));
    sim.run(60);
    assert!(
        matches!(sim.outcomes[&r], Outcome::Written(..)),
        "{:?}",
        sim.outcomes[&r]
    );
    assert!(sim.stats.snapshots_installed >= 1, "caught up by snapshot");
    assert_eq!(
        sim.raft(4).log().last_index(),
        sim.raft(l).log().last_index()
    );
    assert_eq!(sim.raft(4).membership().learners, set(&[4]));
    // A learner never campaigns, however long it hears nothing.
    sim.partition(vec![set(&[4]), set(&[1, 2, 3])]);
    sim.run(200);
    assert_eq!(sim.raft(4).role(), Role::Follower);
    sim.heal();
    sim.run(20);
    let r = sim.change_membership(l, MembershipChange::Promote(4));
    sim.run(60);
    assert!(matches!(sim.outcomes[&r], Outcome::Written(..)));
    for id in 1..=4 {
        assert_eq!(
            sim.raft(id).membership().voters,
            set(&[1, 2, 3, 4]),
            "n{id}"
        );
    }
    // Four voters: a quorum is three. With two of the first three down nothing commits; with n4 up
    // again... the leader and n4 and one more do.
    let others: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
    sim.crash(others[0]);
    sim.crash(others[1]);
    let before = sim.raft(l).log().committed();
    let w = sim.propose(l, b"needs three".to_vec());
    sim.run(5);
    assert_eq!(
        sim.raft(l).log().committed(),
        before,
        "two of four is no quorum"
    );
    sim.restart(others[0]);
    sim.run(100);
    let leader = sim.leader().unwrap();
    sim.propose(leader, b"after".to_vec());
    sim.run(50);
    assert!(sim.raft(leader).log().committed() > before);
    let _ = w;
    sim.restart(others[1]);
    sim.run(100);
    sim.check_converged().unwrap();
}

/// Thesis §4.2.2: a leader that removes itself keeps replicating until the change commits, then steps
/// down; the others elect a leader among themselves and the removed node never campaigns again.
#[test]
fn removing_the_leader_steps_it_down_after_commit() {
    let mut sim = Sim::new(3, 22, |_| {});
    sim.run(100);
    let l = sim.leader().unwrap();
    for k in 0..10 {
        sim.propose(l, format!("w{k}").into_bytes());
    }
    sim.run(10);
    let r = sim.change_membership(l, MembershipChange::Remove(l));
    sim.run(300);
    assert!(
        matches!(sim.outcomes[&r], Outcome::Written(..)),
        "{:?}",
        sim.outcomes[&r]
    );
    let rest: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
    let new = sim.leader().expect("a new leader");
    assert!(rest.contains(&new), "n{new} leads");
    assert!(!sim.raft(l).is_leader());
    for &id in &rest {
        assert_eq!(
            sim.raft(id).membership().voters,
            rest.iter().copied().collect()
        );
    }
    let term = sim.raft(new).term();
    let w = sim.propose(new, b"two voters".to_vec());
    sim.run(300);
    assert!(matches!(sim.outcomes[&w], Outcome::Written(..)));
    assert_eq!(
        sim.raft(new).term(),
        term,
        "the removed node did not disrupt"
    );
    assert!(sim.raft(l).term() <= term);
}

/// Changes that cannot be made are refused with a reason, and nothing is appended.
#[test]
fn bad_membership_changes_are_refused() {
    let mut sim = scripted(3, |_| {});
    win_election(&mut sim, 1);
    // Before an entry of its term commits, a new leader takes no change (Ongaro 2015).
    let r = sim.change_membership(1, MembershipChange::AddLearner(4));
    assert_eq!(sim.outcomes[&r], Outcome::Failed(RequestError::Busy));
    sim.stabilize();
    let last = sim.raft(1).log().last_index();
    for (change, why) in [
        (MembershipChange::Promote(2), "not a learner"),
        (MembershipChange::Remove(9), "not a member"),
        (MembershipChange::AddLearner(3), "already a member"),
    ] {
        let r = sim.change_membership(1, change);
        assert!(
            matches!(&sim.outcomes[&r], Outcome::Failed(RequestError::Refused(m)) if m.contains(why)),
            "{:?}",
            sim.outcomes[&r]
        );
    }
    assert_eq!(sim.raft(1).log().last_index(), last, "nothing appended");
    // One change at a time: the second waits for the first to commit.
    sim.change_membership(1, MembershipChange::AddLearner(4));
    let r = sim.change_membership(1, MembershipChange::AddLearner(5));
    assert!(
        matches!(&sim.outcomes[&r], Outcome::Failed(RequestError::Refused(m)) if m.contains("in progress"))
    );
    // Followers do not take changes.
    let r = sim.change_membership(2, MembershipChange::AddLearner(6));
    assert!(matches!(
        sim.outcomes[&r],
        Outcome::Failed(RequestError::NotLeader { .. })
    ));
    // The last voter stays.
    let mut single = scripted(1, |_| {});
    win_election(&mut single, 1);
    single.stabilize();
    let r = single.change_membership(1, MembershipChange::Remove(1));
    assert!(
        matches!(&single.outcomes[&r], Outcome::Failed(RequestError::Refused(m)) if m.contains("last voter"))
    );
}

/// Thesis §3.10: a transfer brings the target up to date and makes it campaign at once, well before an
/// election timeout; followers do not refuse it for having heard from the old leader; the old leader
/// takes no proposals meanwhile and serves no lease reads once it sent `TimeoutNow`.
#[test]
fn leadership_transfer_elects_the_target_at_once() {
    let mut sim = Sim::new(3, 23, |_| {});
    sim.run(100);
    let l = sim.leader().unwrap();
    let target = (1..=3).find(|&i| i != l).unwrap();
    for k in 0..5 {
        sim.propose(l, format!("w{k}").into_bytes());
    }
    assert!(raft_mut(&mut sim, l).lease_read().is_none() || sim.raft(l).is_leader());
    raft_mut(&mut sim, l).transfer_leadership(target).unwrap();
    sim.process(l);
    let w = sim.propose(l, b"during".to_vec());
    assert_eq!(
        sim.outcomes.get(&w),
        Some(&Outcome::Failed(RequestError::Busy))
    );
    let mut ticks = 0;
    while !sim.raft(target).is_leader() {
        sim.run(1);
        ticks += 1;
        assert!(ticks < 5, "transfer took {ticks} ticks");
    }
    assert!(!sim.raft(l).is_leader());
    assert!(sim.raft(l).lease_read().is_none());
    let refused = raft_mut(&mut sim, target).transfer_leadership(9);
    assert!(matches!(refused, Err(RequestError::Refused(_))));
    sim.run(50);
    sim.check_converged().unwrap();
}

/// The only voter campaigns at its first tick (nobody to disrupt or wait for); a node of a larger
/// cluster still waits out its election timeout.
#[test]
fn a_sole_voter_leads_at_its_first_tick() {
    let mut single = scripted(1, |_| {});
    single.tick_node(1);
    single.deliver_where(|_| true, false);
    assert!(
        single.raft(1).is_leader(),
        "a one-node cluster leads after one tick"
    );

    let mut three = scripted(3, |_| {});
    three.tick_node(1);
    three.deliver_where(|_| true, false);
    assert!(!three.raft(1).is_leader());
    assert!(
        three.raft(1).role() == Role::Follower,
        "one tick is far below the election timeout of a 3-node cluster"
    );
}
