//! Checking histories of client operations for linearizability (used by the fault-injection tests and
//! `nimbus check`).
//!
//! [`analyze`] turns the workload's records into one register history per key and checks each with
//! [`linearizable::check`]. Before that it maps modify indexes to values, from every ok answer that named
//! both (a write's index, a read's `ETag`): with unique values, an index names exactly one value and a value
//! exactly one index, and any answer contradicting that is reported as a violation. A 412 whose
//! `current_index` maps to a known value (or is null) is then checked as a read of that value (or of an
//! absent key), which implies what the 412 itself says; one whose index is not known stays a failed
//! condition. Also reported: per-kind counts, and acknowledged writes lost by the final reads.

pub mod linearizable;
pub mod workload;

use linearizable::{check, Op, Verdict};
use std::collections::{BTreeMap, HashMap};
use workload::{IndexSeen, Kind, Outcome, Record};

/// The process id given to the reads made after the faults stop (every key on every node).
pub const FINAL_READ_PROCESS: u64 = u64::MAX;

/// Outcomes of one kind of request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Definite answers (checked), including `refused`.
    pub ok: usize,
    /// Of the `ok` writes: those that changed nothing (412, or 404 for a delete).
    pub refused: usize,
    /// Definite failures: nothing applied, nothing observed (not checked).
    pub failed: usize,
    /// Writes whose outcome is unknown (timeouts, resets, ...), checked as possibly applied.
    pub indeterminate: usize,
}

/// What a checked history amounts to.
#[derive(Debug, Clone)]
pub struct Report {
    /// Records with a definite answer ([`Outcome::Ok`]), all kinds together.
    pub ok: usize,
    /// Records that definitely failed ([`Outcome::Failed`]).
    pub failed: usize,
    /// Records whose outcome is unknown ([`Outcome::Indeterminate`]).
    pub indeterminate: usize,
    /// Keys with a history to check.
    pub keys: usize,
    /// Operations given to the checker (ok ones and indeterminate writes).
    pub checked: usize,
    /// 412 answers checked as reads, their `current_index` being known (the others stay failed conditions).
    pub refusals_as_reads: usize,
    /// The outcome counts per kind of request.
    pub by_kind: BTreeMap<Kind, Counts>,
    /// One entry per key whose history is not linearizable (or could not be checked), and one per answer
    /// that contradicts another about modify indexes.
    pub violations: Vec<String>,
    /// Final reads that returned a value an acknowledged change had replaced before the read began
    /// (invoked after that value's write completed, completed before the read was invoked).
    pub lost_writes: usize,
}

impl Report {
    /// One line per kind of request: `ok` (of which 412/404), failed, indeterminate; then how many 412s
    /// were checked as reads.
    pub fn by_kind_table(&self) -> String {
        let mut lines: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, c)| {
                format!(
                    "  {:<18} ok {:>6} (412/404 {:>5})  failed {:>5}  indeterminate {:>4}",
                    k.label(),
                    c.ok,
                    c.refused,
                    c.failed,
                    c.indeterminate
                )
            })
            .collect();
        lines.push(format!(
            "  412 answers checked as reads of the value their current_index names: {}",
            self.refusals_as_reads
        ));
        lines.join("\n")
    }
}

/// Whether an ok operation changed the key.
fn took_effect(op: &Op) -> bool {
    matches!(
        op,
        Op::Write(_)
            | Op::Cas { ok: true, .. }
            | Op::Create { ok: true, .. }
            | Op::Delete {
                existed: Some(true)
            }
    )
}

/// The value an ok record's answer ties to its [`IndexSeen::At`] index: the value written or read.
fn indexed_value(r: &Record) -> Option<(u64, u64)> {
    let IndexSeen::At(i) = r.index else {
        return None;
    };
    if r.outcome != Outcome::Ok {
        return None;
    }
    match r.op {
        Op::Read(v) => v,
        ref op if took_effect(op) => op.written(),
        _ => None,
    }
    .map(|v| (i, v))
}

fn describe(r: &Record) -> String {
    format!(
        "p{} node {} {} {:?} {:?} {:?} [{}..{}] {}",
        r.process,
        r.node,
        r.kind.label(),
        r.op,
        r.outcome,
        r.index,
        r.invoke,
        r.complete,
        r.detail
    )
}

/// Maps indexes to values and sharpens 412 answers (see the module doc). Returns the operation to check
/// for each record; contradictions go to `report.violations`.
fn sharpen(records: &[Record], report: &mut Report) -> Vec<Option<Op>> {
    let violations = &mut report.violations;
    let mut by_index: HashMap<u64, (u64, usize)> = HashMap::new();
    let mut by_value: HashMap<u64, (u64, usize)> = HashMap::new();
    for (n, r) in records.iter().enumerate() {
        let Some((i, v)) = indexed_value(r) else {
            continue;
        };
        let (v0, n0) = *by_index.entry(i).or_insert((v, n));
        let (i0, n1) = *by_value.entry(v).or_insert((i, n));
        if v0 != v || i0 != i {
            let other = if v0 != v { n0 } else { n1 };
            violations.push(format!(
                "key {}: answers disagree on modify indexes (index {i} = value {v} here):\n  {}\n  {}",
                r.key,
                describe(&records[other]),
                describe(r)
            ));
        }
    }
    records
        .iter()
        .map(|r| {
            let refused = matches!(
                r.op,
                Op::Cas { ok: false, .. } | Op::Create { ok: false, .. }
            );
            if r.outcome != Outcome::Ok || !refused {
                return Some(r.op.clone());
            }
            let current = match r.index {
                IndexSeen::At(c) => match by_index.get(&c) {
                    Some(&(v, _)) => Some(Some(v)),
                    None => return Some(r.op.clone()),
                },
                IndexSeen::Absent => Some(None),
                IndexSeen::Unknown => None,
            };
            let contradicts = match (&r.op, current) {
                (Op::Cas { expect, .. }, Some(c)) => c == Some(*expect),
                (Op::Create { .. }, Some(c)) => c.is_none(),
                _ => false,
            };
            if contradicts {
                violations.push(format!(
                    "key {}: a 412 whose current_index satisfies the condition:\n  {}",
                    r.key,
                    describe(r)
                ));
            }
            report.refusals_as_reads += usize::from(current.is_some());
            Some(current.map_or_else(|| r.op.clone(), Op::Read))
        })
        .collect()
}

/// Checks every key's history; also counts acknowledged writes lost by the final reads.
pub fn analyze(records: &[Record]) -> Report {
    let mut r = Report {
        ok: 0,
        failed: 0,
        indeterminate: 0,
        keys: 0,
        checked: 0,
        refusals_as_reads: 0,
        by_kind: BTreeMap::new(),
        violations: Vec::new(),
        lost_writes: 0,
    };
    for rec in records {
        let c = r.by_kind.entry(rec.kind).or_default();
        match rec.outcome {
            Outcome::Ok => {
                r.ok += 1;
                c.ok += 1;
                let changed_nothing = matches!(
                    rec.op,
                    Op::Cas { ok: false, .. }
                        | Op::Create { ok: false, .. }
                        | Op::Delete {
                            existed: Some(false)
                        }
                );
                if changed_nothing {
                    c.refused += 1;
                }
            }
            Outcome::Failed => {
                r.failed += 1;
                c.failed += 1;
            }
            Outcome::Indeterminate => {
                r.indeterminate += 1;
                c.indeterminate += 1;
            }
        }
    }
    let ops = sharpen(records, &mut r);
    let histories = workload::histories(records, &ops);
    r.keys = histories.len();
    for (key, ops) in &histories {
        r.checked += ops.len();
        let plain: Vec<_> = ops.iter().map(|(o, _)| o.clone()).collect();
        match check(&plain, 20_000_000) {
            Verdict::Linearizable => {}
            Verdict::Unknown => r.violations.push(format!("key {key}: checker gave up")),
            Verdict::NotLinearizable { longest, stuck } => {
                let show: Vec<String> = stuck
                    .iter()
                    .map(|&i| format!("  {}", describe(&records[ops[i].1])))
                    .collect();
                r.violations.push(format!(
                    "key {key}: not linearizable after {} of {} ops; could not place:\n{}",
                    longest.len(),
                    ops.len(),
                    show.join("\n")
                ));
            }
        }
        // Lost acknowledged writes: an acknowledged change that completed before the final read began,
        // yet the final read returned a value written (and acknowledged) before that change was invoked.
        let finals: Vec<&Record> = records
            .iter()
            .filter(|x| {
                x.key == *key && x.process == FINAL_READ_PROCESS && x.outcome == Outcome::Ok
            })
            .collect();
        for f in finals {
            let Op::Read(Some(v)) = f.op else { continue };
            // A write whose outcome is unknown may have taken effect at any time after its invocation,
            // so only an acknowledged one bounds when the value was written.
            let Some(w) = records.iter().find(|x| {
                x.outcome == Outcome::Ok && took_effect(&x.op) && x.op.written() == Some(v)
            }) else {
                continue;
            };
            let lost = records.iter().any(|x| {
                x.key == *key
                    && x.outcome == Outcome::Ok
                    && took_effect(&x.op)
                    && x.invoke > w.complete
                    && x.complete < f.invoke
            });
            if lost {
                r.lost_writes += 1;
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(process: u64, op: Op, outcome: Outcome, invoke: u64, complete: u64) -> Record {
        let kind = match op {
            Op::Read(_) if process == FINAL_READ_PROCESS => Kind::FinalRead,
            Op::Read(_) => Kind::Get,
            Op::Write(_) => Kind::Put,
            Op::Delete { .. } => Kind::Delete,
            Op::Cas { .. } => Kind::Cas,
            Op::Create { .. } => Kind::Create,
        };
        Record {
            process,
            node: 0,
            key: "k".into(),
            kind,
            op,
            outcome,
            invoke,
            complete,
            index: IndexSeen::Unknown,
            detail: String::new(),
        }
    }

    fn at(mut r: Record, index: IndexSeen) -> Record {
        r.index = index;
        r
    }

    #[test]
    fn an_indeterminate_write_may_land_late_but_an_overwritten_ack_is_lost() {
        use Outcome::*;
        let base = vec![
            rec(1, Op::Write(1), Ok, 0, 10),
            rec(2, Op::Write(2), Indeterminate, 5, 20),
            rec(3, Op::Write(3), Ok, 30, 40),
        ];
        // The unknown write 2 took effect after write 3: fine.
        let mut h = base.clone();
        h.push(rec(FINAL_READ_PROCESS, Op::Read(Some(2)), Ok, 50, 60));
        let r = analyze(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.lost_writes, 0);
        assert_eq!((r.ok, r.indeterminate), (3, 1));
        // Reading write 1 after write 3 was acknowledged: write 3 was lost.
        let mut h = base;
        h.push(rec(FINAL_READ_PROCESS, Op::Read(Some(1)), Ok, 50, 60));
        let r = analyze(&h);
        assert_eq!(r.lost_writes, 1);
        assert_eq!(r.violations.len(), 1);
    }

    #[test]
    fn a_412_is_checked_as_a_read_of_the_value_its_current_index_names() {
        use IndexSeen::*;
        use Outcome::*;
        let cas = |expect, new| Op::Cas {
            expect,
            new: Some(new),
            ok: false,
        };
        let base = vec![
            at(rec(1, Op::Write(1), Ok, 0, 10), At(5)),
            at(rec(2, Op::Write(2), Ok, 20, 30), At(6)),
        ];
        // The CAS on value 1 fails while value 2 (index 6) is current: fine.
        let mut h = base.clone();
        h.push(at(rec(3, cas(1, 3), Ok, 40, 50), At(6)));
        let r = analyze(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.by_kind[&Kind::Cas].refused, 1);
        // The 412 names index 5 (value 1) after value 2 was acknowledged: a stale observation, although as a
        // bare failed condition (the register did not hold 7) it would pass.
        let mut h = base.clone();
        h.push(at(rec(3, cas(7, 3), Ok, 40, 50), At(5)));
        let r = analyze(&h);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        // A 412 naming the very index the CAS matched contradicts itself.
        let mut h = base.clone();
        h.push(at(rec(3, cas(2, 3), Ok, 40, 50), At(6)));
        let r = analyze(&h);
        assert!(r.violations.iter().any(|v| v.contains("satisfies")));
        // current_index null: the key was absent, which it was not.
        let mut h = base.clone();
        h.push(at(rec(3, cas(1, 3), Ok, 40, 50), Absent));
        assert_eq!(analyze(&h).violations.len(), 1);
        // An unknown index stays a plain failed condition: fine.
        let mut h = base;
        h.push(at(rec(3, cas(1, 3), Ok, 40, 50), At(99)));
        assert!(analyze(&h).violations.is_empty());
    }

    #[test]
    fn answers_that_disagree_on_an_index_are_violations() {
        use IndexSeen::*;
        use Outcome::*;
        // A read's ETag names another index than the write's answer did.
        let h = vec![
            at(rec(1, Op::Write(1), Ok, 0, 10), At(5)),
            at(rec(2, Op::Read(Some(1)), Ok, 20, 30), At(4)),
        ];
        let r = analyze(&h);
        assert!(
            r.violations.iter().any(|v| v.contains("disagree")),
            "{:?}",
            r.violations
        );
        // Two values at one index.
        let h = vec![
            at(rec(1, Op::Write(1), Ok, 0, 10), At(5)),
            at(rec(2, Op::Write(2), Ok, 20, 30), At(5)),
        ];
        assert!(analyze(&h)
            .violations
            .iter()
            .any(|v| v.contains("disagree")));
    }

    #[test]
    fn a_change_acknowledged_after_the_value_was_written_is_lost_if_the_final_read_misses_it() {
        use Outcome::*;
        let h = vec![
            rec(1, Op::Write(1), Ok, 0, 10),
            rec(
                2,
                Op::Delete {
                    existed: Some(true),
                },
                Ok,
                20,
                30,
            ),
            rec(FINAL_READ_PROCESS, Op::Read(Some(1)), Ok, 50, 60),
        ];
        let r = analyze(&h);
        assert_eq!(r.lost_writes, 1);
        assert_eq!(r.by_kind[&Kind::FinalRead].ok, 1);
    }
}
