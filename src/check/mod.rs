//! Checking histories of client operations for linearizability (used by the fault-injection tests and
//! `nimbus check`).
pub mod linearizable;
pub mod workload;

use linearizable::{check, Op, Verdict};
use workload::{Outcome, Record};

/// The process id given to the reads made after the faults stop (every key on every node).
pub const FINAL_READ_PROCESS: u64 = u64::MAX;

/// What a checked history amounts to.
#[derive(Debug, Clone)]
pub struct Report {
    pub ok: usize,
    pub failed: usize,
    pub indeterminate: usize,
    pub keys: usize,
    /// One entry per key whose history is not linearizable (or could not be checked).
    pub violations: Vec<String>,
    pub lost_writes: usize,
}

/// Checks every key's history; also counts acknowledged writes lost by the final reads.
pub fn analyze(records: &[Record]) -> Report {
    let mut r = Report {
        ok: 0,
        failed: 0,
        indeterminate: 0,
        keys: 0,
        violations: Vec::new(),
        lost_writes: 0,
    };
    for rec in records {
        match rec.outcome {
            Outcome::Ok => r.ok += 1,
            Outcome::Failed => r.failed += 1,
            Outcome::Indeterminate => r.indeterminate += 1,
        }
    }
    let histories = workload::histories(records);
    r.keys = histories.len();
    for (key, ops) in &histories {
        let plain: Vec<_> = ops.iter().map(|(o, _)| o.clone()).collect();
        match check(&plain, 20_000_000) {
            Verdict::Linearizable => {}
            Verdict::Unknown => r.violations.push(format!("key {key}: checker gave up")),
            Verdict::NotLinearizable { longest, stuck } => {
                let show: Vec<String> = stuck
                    .iter()
                    .map(|&i| {
                        let rec = &records[ops[i].1];
                        format!(
                            "  p{} node {} {:?} {:?} [{}..{}] {}",
                            rec.process,
                            rec.node,
                            rec.op,
                            rec.outcome,
                            rec.invoke,
                            rec.complete,
                            rec.detail
                        )
                    })
                    .collect();
                r.violations.push(format!(
                    "key {key}: not linearizable after {} of {} ops; could not place:\n{}",
                    longest.len(),
                    ops.len(),
                    show.join("\n")
                ));
            }
        }
        // Lost acknowledged writes: an acknowledged write that completed before the final read began, yet
        // the final read returned a value written (and acknowledged) before that write was even invoked.
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
            let Some(w) = records
                .iter()
                .find(|x| x.op == Op::Write(v) && x.outcome == Outcome::Ok)
            else {
                continue;
            };
            let lost = records.iter().any(|x| {
                x.key == *key
                    && matches!(x.op, Op::Write(_))
                    && x.outcome == Outcome::Ok
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
        Record {
            process,
            node: 0,
            key: "k".into(),
            op,
            outcome,
            invoke,
            complete,
            detail: String::new(),
        }
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
}
