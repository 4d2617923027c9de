//! A linearizability checker for a single register (Wing & Gong's search with Lowe's memoization, as in
//! "Testing for Linearizability", G. Lowe, 2017).
//!
//! One history per key. Each operation has an invocation and a completion time; an operation whose outcome
//! is unknown (timeout, connection reset, "outcome unknown" errors) completes at +∞, so it may take effect at
//! any point after its invocation, or never (taking effect after everything observed is the same as never).
//! Operations that definitely failed must be left out by the caller.
//!
//! The search linearizes, in order of the event list, an operation whose invocation precedes every pending
//! completion; it backtracks when a completion is reached before its operation was linearized. The cache of
//! (set of linearized operations, register state) pairs already explored keeps the search polynomial on
//! typical histories. Writes should carry unique values: that keeps the state space small.
//!
//! Limits: at most `max_steps` search steps per history (default 10 million); beyond it the answer is
//! [`Verdict::Unknown`], never a guess.

use std::collections::HashSet;

/// What an operation did to the register.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Wrote this value.
    Write(u64),
    /// Read this value (`None`: the key did not exist).
    Read(Option<u64>),
    /// Removed the key.
    Delete,
}

/// One operation of a history. Times are any monotonic clock; `complete = None` means unknown outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub op: Op,
    pub invoke: u64,
    pub complete: Option<u64>,
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. `longest` is the longest linearizable prefix found (indexes into the input),
    /// and `stuck` the operations that could not be placed after it: the place to look.
    NotLinearizable {
        longest: Vec<usize>,
        stuck: Vec<usize>,
    },
    /// The search gave up after too many steps.
    Unknown,
}

#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
    /// Linked list over the events still in play.
    prev: usize,
    next: usize,
    /// For a call: the index of its return event.
    partner: usize,
}

/// Applies `op` to `state`: the new state if the operation is legal there.
fn step(state: Option<u64>, op: &Op) -> Option<Option<u64>> {
    match op {
        Op::Write(v) => Some(Some(*v)),
        Op::Delete => Some(None),
        Op::Read(v) => (*v == state).then_some(state),
    }
}

/// Checks one register history starting from an absent key.
pub fn check(history: &[Operation], max_steps: u64) -> Verdict {
    let n = history.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Build the event list: calls at invoke, returns at complete (unknown = after everything).
    let mut times: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in history.iter().enumerate() {
        // At equal times, returns sort before calls: an operation that completed at t precedes one invoked
        // at t.
        // An operation takes at least one time unit, so its own completion never sorts before its call.
        let complete = o
            .complete
            .map_or(u64::MAX, |c| c.max(o.invoke.saturating_add(1)));
        times.push((o.invoke, 1, i));
        times.push((complete, 0, i));
    }
    times.sort();
    // Event 0 is the head sentinel; events 1..=2n follow.
    let head = 0;
    let mut ev = vec![
        Event {
            op: usize::MAX,
            is_call: false,
            prev: 0,
            next: 1,
            partner: 0,
        };
        2 * n + 1
    ];
    let mut call_of = vec![0usize; n];
    let mut ret_of = vec![0usize; n];
    for (k, &(_, kind, i)) in times.iter().enumerate() {
        let e = k + 1;
        ev[e] = Event {
            op: i,
            is_call: kind == 1,
            prev: e - 1,
            next: if e == 2 * n { usize::MAX } else { e + 1 },
            partner: 0,
        };
        if kind == 1 {
            call_of[i] = e;
        } else {
            ret_of[i] = e;
        }
    }
    for i in 0..n {
        ev[call_of[i]].partner = ret_of[i];
    }
    let lift = |ev: &mut Vec<Event>, e: usize| {
        let (p, nx) = (ev[e].prev, ev[e].next);
        ev[p].next = nx;
        if nx != usize::MAX {
            ev[nx].prev = p;
        }
    };
    let unlift = |ev: &mut Vec<Event>, e: usize| {
        let (p, nx) = (ev[e].prev, ev[e].next);
        ev[p].next = e;
        if nx != usize::MAX {
            ev[nx].prev = e;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new(); // (call event, state before)
    let mut state: Option<u64> = None;
    let mut entry = ev[head].next;
    let mut longest: Vec<usize> = Vec::new();
    let mut steps = 0u64;
    while ev[head].next != usize::MAX {
        steps += 1;
        if steps > max_steps {
            return Verdict::Unknown;
        }
        if entry != usize::MAX && ev[entry].is_call {
            let i = ev[entry].op;
            if let Some(new_state) = step(state, &history[i].op) {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), new_state)) {
                    stack.push((entry, state));
                    state = new_state;
                    let partner = ev[entry].partner;
                    lift(&mut ev, entry);
                    lift(&mut ev, partner);
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(e, _)| ev[e].op).collect();
                    }
                    entry = ev[head].next;
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = ev[entry].next;
        } else {
            // A return (or the end) reached: the operations pending here cannot all be placed. Backtrack.
            let Some((e, prev_state)) = stack.pop() else {
                let placed: HashSet<usize> = longest.iter().copied().collect();
                let stuck = (0..n).filter(|i| !placed.contains(i)).take(8).collect();
                return Verdict::NotLinearizable { longest, stuck };
            };
            let i = ev[e].op;
            state = prev_state;
            linearized[i / 64] &= !(1 << (i % 64));
            let partner = ev[e].partner;
            unlift(&mut ev, partner);
            unlift(&mut ev, e);
            entry = ev[e].next;
        }
    }
    Verdict::Linearizable
}

/// Exhaustive checker for tiny histories (tests only): tries every order consistent with real time.
pub fn check_brute_force(history: &[Operation]) -> bool {
    fn go(h: &[Operation], used: &mut Vec<bool>, state: Option<u64>) -> bool {
        if used.iter().all(|u| *u) {
            return true;
        }
        for i in 0..h.len() {
            // `i` may go next only if no other unplaced operation completed at or before its invocation
            // (the same tie rule as the search: a completion at t precedes an invocation at t).
            let blocked = (0..h.len())
                .any(|j| j != i && !used[j] && h[j].complete.is_some_and(|c| c <= h[i].invoke));
            if used[i] || blocked {
                continue;
            }
            if let Some(s) = step(state, &h[i].op) {
                used[i] = true;
                if go(h, used, s) {
                    return true;
                }
                used[i] = false;
            }
        }
        false
    }
    go(history, &mut vec![false; history.len()], None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Rng;

    fn op(op: Op, invoke: u64, complete: Option<u64>) -> Operation {
        Operation {
            op,
            invoke,
            complete,
        }
    }

    #[test]
    fn simple_cases() {
        use Op::*;
        // Sequential write then read.
        let h = [op(Write(1), 0, Some(1)), op(Read(Some(1)), 2, Some(3))];
        assert_eq!(check(&h, 1000), Verdict::Linearizable);
        // A stale read after a completed write is a violation.
        let h = [
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, Some(3)),
            op(Read(Some(1)), 4, Some(5)),
        ];
        assert!(matches!(check(&h, 1000), Verdict::NotLinearizable { .. }));
        // Concurrent write and read may see either.
        let h = [op(Write(1), 0, Some(10)), op(Read(None), 1, Some(2))];
        assert_eq!(check(&h, 1000), Verdict::Linearizable);
        // An unknown-outcome write may have happened late...
        let h = [
            op(Write(1), 0, None),
            op(Read(None), 5, Some(6)),
            op(Read(Some(1)), 7, Some(8)),
        ];
        assert_eq!(check(&h, 1000), Verdict::Linearizable);
        // ...but not flicker.
        let h = [
            op(Write(1), 0, None),
            op(Read(Some(1)), 5, Some(6)),
            op(Read(None), 7, Some(8)),
        ];
        assert!(matches!(check(&h, 1000), Verdict::NotLinearizable { .. }));
        // A read of a value never written.
        let h = [op(Read(Some(9)), 0, Some(1))];
        assert!(matches!(check(&h, 1000), Verdict::NotLinearizable { .. }));
    }

    /// The search agrees with brute force on thousands of random small histories.
    #[test]
    fn agrees_with_brute_force() {
        let mut rng = Rng::new(7);
        let mut violations = 0;
        for _ in 0..3000 {
            let n = 1 + rng.below(7) as usize;
            let mut h = Vec::new();
            let mut next_value = 1;
            for _ in 0..n {
                let invoke = rng.below(20);
                let complete = if rng.chance(1, 8) {
                    None
                } else {
                    Some(invoke + 1 + rng.below(10))
                };
                let o = match rng.below(4) {
                    0 | 1 => {
                        next_value += 1;
                        Op::Write(next_value - 1)
                    }
                    2 => Op::Read(if rng.chance(1, 4) {
                        None
                    } else {
                        Some(1 + rng.below(next_value))
                    }),
                    _ => Op::Delete,
                };
                h.push(op(o, invoke, complete));
            }
            let fast = check(&h, 1_000_000);
            let brute = check_brute_force(&h);
            assert_eq!(
                fast == Verdict::Linearizable,
                brute,
                "history {h:?}: {fast:?}"
            );
            if !brute {
                violations += 1;
            }
        }
        assert!(
            violations > 100,
            "the random histories must include violations ({violations})"
        );
    }
}
