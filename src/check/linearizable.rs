//! A linearizability checker for a single register (Wing & Gong's search with Lowe's memoization, as in
//! "Testing for Linearizability", G. Lowe, 2017).
//!
//! The register is a key: absent, or holding a value. Besides plain writes, reads and deletes it models the
//! REST API's conditional writes. A compare-and-swap names the key's modify index, not its value; since the
//! workload writes every value once, each value has exactly one modify index (the index of the entry that
//! wrote it), so "the key's index is N" is the same as "the key holds the value written at N", and a CAS is
//! modelled on values: [`Op::Cas`] succeeds iff the register holds `expect`. The caller maps indexes to
//! values; the state stays one `Option<u64>`.
//!
//! One history per key. Each operation has an invocation and a completion time; an operation whose outcome
//! is unknown (timeout, connection reset, "outcome unknown" errors) completes at +∞: it either took effect
//! as asked at some point after its invocation, or never. The search gives such an operation a total
//! meaning instead (a CAS or create-only write whose condition does not hold when it is placed changes
//! nothing, as the server would have answered 412), so it can always be placed, and placing it after
//! everything observed is the same as never. [`check_brute_force`] uses the literal definition (omit it, or
//! apply it with its condition holding); the randomized test checks that the two agree. The observed
//! results of unknown operations (`ok`, `existed`) are ignored. Operations that definitely failed without
//! observing anything (503 `not_leader`, ...) must be left out by the caller; definite answers that observed
//! the state (a 412, a 404 delete) stay in, with what they observed.
//!
//! The search linearizes, in order of the event list, an operation whose invocation precedes every pending
//! completion; it backtracks when a completion is reached before its operation was linearized. The cache of
//! (set of linearized operations, register state) pairs already explored keeps the search polynomial on
//! typical histories. Writes must carry unique values: that keeps the state space small, and the CAS
//! modelling above depends on it.
//!
//! Limits: at most `max_steps` search steps per history (default 10 million); beyond it the answer is
//! [`Verdict::Unknown`], never a guess.

use std::collections::HashSet;

/// What an operation did to the register, as far as its answer tells.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Wrote this value.
    Write(u64),
    /// Read this value (`None`: the key did not exist).
    Read(Option<u64>),
    /// Removed the key. `existed`: `Some(true)` if it removed a value (200), `Some(false)` if the key was
    /// already absent (404), `None` if the answer does not say.
    Delete {
        /// Whether a value was there to remove, if the answer says (see the variant).
        existed: Option<bool>,
    },
    /// Compare-and-swap: if the register holds `expect`, replace it with `new` (`None`: a conditional
    /// delete). `ok`: the swap happened (200); `false`: the register did not hold `expect` (412), nothing
    /// changed.
    Cas {
        /// The value the register must hold for the swap to happen.
        expect: u64,
        /// The value written on success; `None` deletes the key.
        new: Option<u64>,
        /// Whether the server answered that the swap happened (200) rather than 412.
        ok: bool,
    },
    /// Create-only write: if the key is absent, write `new`. `ok`: it was created (200); `false`: the key
    /// existed (412), nothing changed.
    Create {
        /// The value written if the key is absent.
        new: u64,
        /// Whether the server answered that the key was created (200) rather than 412.
        ok: bool,
    },
}

impl Op {
    /// The value this operation writes if it takes effect.
    pub fn written(&self) -> Option<u64> {
        match *self {
            Op::Write(v) | Op::Create { new: v, .. } => Some(v),
            Op::Cas { new, .. } => new,
            Op::Read(_) | Op::Delete { .. } => None,
        }
    }
}

/// One operation of a history. Times are any monotonic clock; `complete = None` means unknown outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// What the operation did, as far as its answer tells.
    pub op: Op,
    /// When the operation was invoked, on the history's clock.
    pub invoke: u64,
    /// When its answer arrived; `None` if the outcome is unknown (completes at +∞). A time not after
    /// `invoke` is taken as `invoke + 1`.
    pub complete: Option<u64>,
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists: the history is consistent with a single atomic register.
    Linearizable,
    /// No linearization exists. `longest` is the longest linearizable prefix found (indexes into the input),
    /// and `stuck` the operations that could not be placed after it: the place to look.
    NotLinearizable {
        /// The longest linearizable prefix found, as indexes into the input, in linearization order.
        longest: Vec<usize>,
        /// Indexes of operations not in `longest` (at most 8, in input order).
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

/// Applies `op` to `state`: the new state if the operation, with the answer it got, is legal there. An
/// operation of unknown outcome (`known = false`) is always legal: applied as asked, or without effect if
/// its condition does not hold (a read of unknown outcome observed nothing).
fn step(state: Option<u64>, op: &Op, known: bool) -> Option<Option<u64>> {
    match *op {
        Op::Write(v) => Some(Some(v)),
        Op::Read(v) => (!known || v == state).then_some(state),
        Op::Delete { existed } => match existed {
            Some(e) if known => (state.is_some() == e).then_some(None),
            _ => Some(None),
        },
        Op::Cas { expect, new, ok } => {
            let holds = state == Some(expect);
            if !known {
                Some(if holds { new } else { state })
            } else if ok {
                holds.then_some(new)
            } else {
                (!holds).then_some(state)
            }
        }
        Op::Create { new, ok } => {
            let holds = state.is_none();
            if !known {
                Some(if holds { Some(new) } else { state })
            } else if ok {
                holds.then_some(Some(new))
            } else {
                (!holds).then_some(state)
            }
        }
    }
}

/// The literal meaning of an operation of unknown outcome, for [`check_brute_force`]: if it took effect, it
/// did as asked (a CAS found `expect`, a create found no key); otherwise it is left out.
fn step_if_applied(state: Option<u64>, op: &Op) -> Option<Option<u64>> {
    match *op {
        Op::Write(v) => Some(Some(v)),
        Op::Read(v) => (v == state).then_some(state),
        Op::Delete { .. } => Some(None),
        Op::Cas { expect, new, .. } => (state == Some(expect)).then_some(new),
        Op::Create { new, .. } => state.is_none().then_some(Some(new)),
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
            if let Some(new_state) = step(state, &history[i].op, history[i].complete.is_some()) {
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

/// Exhaustive checker for tiny histories (tests only): tries every order consistent with real time. An
/// operation of unknown outcome may be left out, or placed with its condition holding.
pub fn check_brute_force(history: &[Operation]) -> bool {
    fn go(h: &[Operation], used: &mut Vec<bool>, state: Option<u64>) -> bool {
        if (0..h.len()).all(|i| used[i] || h[i].complete.is_none()) {
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
            let next = if h[i].complete.is_some() {
                step(state, &h[i].op, true)
            } else {
                step_if_applied(state, &h[i].op)
            };
            if let Some(s) = next {
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

    fn cas(expect: u64, new: Option<u64>, ok: bool) -> Op {
        Op::Cas { expect, new, ok }
    }

    fn create(new: u64, ok: bool) -> Op {
        Op::Create { new, ok }
    }

    fn del(existed: Option<bool>) -> Op {
        Op::Delete { existed }
    }

    /// Both checkers must give `want` (true: linearizable).
    fn expect(h: &[Operation], want: bool) {
        let fast = check(h, 100_000);
        assert_eq!(
            fast == Verdict::Linearizable,
            want,
            "search on {h:?}: {fast:?}"
        );
        assert_eq!(check_brute_force(h), want, "brute force on {h:?}");
    }

    #[test]
    fn conditional_writes_and_deletes_that_must_be_rejected() {
        use Op::*;
        // A CAS succeeded against a value that had been overwritten before it started.
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(Write(2), 2, Some(3)),
                op(cas(1, Some(3), true), 4, Some(5)),
            ],
            false,
        );
        // Two concurrent CASes from the same value both succeeded (a lost update).
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(cas(1, Some(2), true), 2, Some(10)),
                op(cas(1, Some(3), true), 3, Some(11)),
            ],
            false,
        );
        // A 412 although the register certainly held the expected value.
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(cas(1, Some(2), false), 2, Some(3)),
            ],
            false,
        );
        // A read after a successful CAS saw the old value.
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(cas(1, Some(2), true), 2, Some(3)),
                op(Read(Some(1)), 4, Some(5)),
            ],
            false,
        );
        // A conditional delete succeeded, yet a later read saw the value.
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(cas(1, None, true), 2, Some(3)),
                op(Read(Some(1)), 4, Some(5)),
            ],
            false,
        );
        // A 404 delete while the key certainly existed.
        expect(
            &[op(Write(1), 0, Some(1)), op(del(Some(false)), 2, Some(3))],
            false,
        );
        // A 200 delete of a key that certainly did not exist.
        expect(&[op(del(Some(true)), 0, Some(1))], false);
        // A create-only write succeeded over an existing key; one failed on an absent key.
        expect(
            &[op(Write(1), 0, Some(1)), op(create(2, true), 2, Some(3))],
            false,
        );
        expect(&[op(create(2, false), 0, Some(1))], false);
        // An unknown-outcome CAS may take effect late, but not flicker.
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(cas(1, Some(2), true), 2, None),
                op(Read(Some(2)), 5, Some(6)),
                op(Read(Some(1)), 7, Some(8)),
            ],
            false,
        );
        // An unknown-outcome CAS whose expected value was gone before it started cannot have swapped.
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(Write(2), 2, Some(3)),
                op(cas(1, Some(5), true), 4, None),
                op(Read(Some(5)), 6, Some(7)),
            ],
            false,
        );
    }

    #[test]
    fn conditional_writes_and_deletes_that_must_be_accepted() {
        use Op::*;
        // Concurrent CASes from the same value: one wins, the other gets a 412.
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(cas(1, Some(2), true), 2, Some(10)),
                op(cas(1, Some(3), false), 3, Some(11)),
                op(Read(Some(2)), 12, Some(13)),
            ],
            true,
        );
        // An unknown-outcome CAS that happened, and one whose condition never held (it changed nothing).
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(cas(1, Some(2), true), 2, None),
                op(cas(9, Some(3), true), 2, None),
                op(Read(Some(2)), 5, Some(6)),
            ],
            true,
        );
        // An unknown-outcome CAS that did not happen before an overwrite.
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(cas(1, Some(2), true), 2, None),
                op(Write(3), 3, Some(4)),
                op(Read(Some(3)), 5, Some(6)),
            ],
            true,
        );
        // Two concurrent deletes: one removes the value, the other finds nothing.
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(del(Some(true)), 2, Some(10)),
                op(del(Some(false)), 3, Some(11)),
                op(Read(None), 12, Some(13)),
            ],
            true,
        );
        // Create, a failed create, delete, create again, CAS on the new value.
        expect(
            &[
                op(create(1, true), 0, Some(1)),
                op(create(2, false), 2, Some(3)),
                op(Read(Some(1)), 4, Some(5)),
                op(del(Some(true)), 6, Some(7)),
                op(create(3, true), 8, Some(9)),
                op(cas(3, Some(4), true), 10, Some(11)),
                op(cas(3, Some(5), false), 12, Some(13)),
                op(Read(Some(4)), 14, Some(15)),
            ],
            true,
        );
        // Unknown-outcome create over an existing key, unknown-outcome delete taking effect late.
        expect(
            &[
                op(Write(1), 0, Some(1)),
                op(create(2, true), 2, None),
                op(del(None), 2, None),
                op(Read(Some(1)), 3, Some(4)),
                op(Read(None), 5, Some(6)),
            ],
            true,
        );
        // A 412 from CAS while the key is absent.
        expect(&[op(cas(7, Some(8), false), 0, Some(1))], true);
    }

    /// The search agrees with brute force on thousands of random small histories with every kind of
    /// operation, outcome and unknown outcomes.
    #[test]
    fn agrees_with_brute_force() {
        let mut rng = Rng::new(7);
        let (mut violations, mut linearizable) = (0, 0);
        for _ in 0..5000 {
            let n = 1 + rng.below(7) as usize;
            let mut h = Vec::new();
            let mut next_value = 1;
            let fresh = |next: &mut u64| {
                *next += 1;
                *next - 1
            };
            for _ in 0..n {
                let invoke = rng.below(20);
                let complete = if rng.chance(1, 8) {
                    None
                } else {
                    Some(invoke + 1 + rng.below(10))
                };
                let ok = rng.chance(2, 3);
                let o = match rng.below(8) {
                    0 | 1 => Op::Write(fresh(&mut next_value)),
                    2 | 3 => Op::Read(if rng.chance(1, 4) {
                        None
                    } else {
                        Some(1 + rng.below(next_value))
                    }),
                    4 => del(match rng.below(3) {
                        0 => None,
                        1 => Some(false),
                        _ => Some(true),
                    }),
                    5 | 6 => {
                        let expect = 1 + rng.below(next_value);
                        let new = if rng.chance(1, 4) {
                            None
                        } else {
                            Some(fresh(&mut next_value))
                        };
                        cas(expect, new, ok)
                    }
                    _ => create(fresh(&mut next_value), ok),
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
            if brute {
                linearizable += 1;
            } else {
                violations += 1;
            }
        }
        assert!(
            violations > 500 && linearizable > 500,
            "the random histories must include both verdicts ({violations} violations, {linearizable} linearizable)"
        );
    }
}
