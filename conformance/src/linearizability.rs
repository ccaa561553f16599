//! Linearizability checking of histories of compare-and-set registers.
//!
//! The search is Wing & Gong's, with Lowe's memoisation of (linearized set, state) pairs
//! and the linked-list of call/return entries of porcupine. The model is P-compositional
//! (Herlihy & Wing): a history is linearizable iff its restriction to every key is, so
//! every key is checked on its own.
//!
//! A register holds a value or nothing (the key is absent). Operations:
//! - a read, which returns the current value;
//! - a write of a fresh value, unconditional (a put) or conditional on the current value
//!   (a compare-and-set: etcd's `Txn(If mod_revision == r Then Put Else Get)` where `r` is
//!   the revision of a value read earlier; values are unique per write, so comparing the
//!   mod revision is comparing the value);
//! - a write may be acknowledged, refused (the compare failed; the failure branch read
//!   the current value), or have an unknown outcome (timeout, connection lost): such an
//!   operation may have taken effect at any time after its invocation, or never.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// A register's content: `None` is "the key does not exist".
pub type Value = Option<String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Read,
    /// Write `value` if `cond` is `None` (a put) or the current value equals `cond`.
    Write {
        cond: Option<Value>,
        value: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// What a read returned.
    Read(Value),
    /// The write was acknowledged: it took effect.
    Written,
    /// The compare failed; the current value was this.
    Refused(Value),
    /// No answer: it may or may not have taken effect, at any time after the invocation.
    Unknown,
}

/// One operation of a history. Times are in any monotonic unit (nanoseconds here).
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub invoke: u64,
    /// When the answer arrived; ignored for [`Output::Unknown`] (it never did).
    pub ret: u64,
    pub input: Input,
    pub output: Output,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |v: &Value| v.clone().unwrap_or_else(|| "<absent>".into());
        match (&self.input, &self.output) {
            (Input::Read, Output::Read(x)) => write!(f, "read() -> {}", v(x)),
            (Input::Read, o) => write!(f, "read() -> {o:?}"),
            (Input::Write { cond, value }, o) => {
                match cond {
                    None => write!(f, "put({value})")?,
                    Some(c) => write!(f, "cas({} -> {value})", v(c))?,
                }
                match o {
                    Output::Written => write!(f, " -> ok"),
                    Output::Refused(x) => write!(f, " -> refused, current {}", v(x)),
                    Output::Unknown => write!(f, " -> unknown"),
                    Output::Read(x) => write!(f, " -> read {}", v(x)),
                }
            }
        }?;
        let ret = if self.output == Output::Unknown {
            "never".to_string()
        } else {
            self.ret.to_string()
        };
        write!(f, " [client {}, {}..{ret}]", self.client, self.invoke)
    }
}

/// Why a history is not linearizable (or could not be decided).
#[derive(Clone, Debug)]
pub struct Violation {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}: {}", self.key, self.message)
    }
}

/// Search steps allowed per key before giving up (reported as a violation: undecided).
const MAX_STEPS: u64 = 20_000_000;

/// Checks every key's sub-history; every register starts absent.
pub fn check(ops: &[Op]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        check_key(&ops).map_err(|message| Violation {
            key: key.to_string(),
            message,
        })?;
    }
    Ok(())
}

/// A set of possible register states (interned values, 0 = absent), sorted.
type States = Vec<u32>;

/// An operation with interned values.
#[derive(Clone, Copy)]
enum Step {
    Read(u32),
    /// cond: u32::MAX = unconditional.
    Written {
        cond: u32,
        value: u32,
    },
    Refused {
        cond: u32,
        current: u32,
    },
    Unknown {
        cond: u32,
        value: u32,
    },
}

const ANY: u32 = u32::MAX;

fn apply(states: &States, step: Step) -> Option<States> {
    let mut out = Vec::new();
    for &s in states {
        match step {
            Step::Read(v) => {
                if s == v {
                    out.push(s);
                }
            }
            Step::Written { cond, value } => {
                if cond == ANY || cond == s {
                    out.push(value);
                }
            }
            Step::Refused { cond, current } => {
                if cond != ANY && cond != s && s == current {
                    out.push(s);
                }
            }
            Step::Unknown { cond, value } => {
                out.push(s);
                if cond == ANY || cond == s {
                    out.push(value);
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() { None } else { Some(out) }
}

const NIL: usize = usize::MAX;

fn check_key(ops: &[&Op]) -> Result<(), String> {
    // Intern values: 0 is "absent".
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut id = |v: &Option<String>| -> u32 {
        match v {
            None => 0,
            Some(s) => {
                let n = ids.len() as u32 + 1;
                *ids.entry(s.clone()).or_insert(n)
            }
        }
    };
    let mut steps = Vec::with_capacity(ops.len());
    for op in ops {
        let step = match (&op.input, &op.output) {
            (Input::Read, Output::Read(v)) => Step::Read(id(v)),
            (Input::Read, o) => return Err(format!("a read cannot have output {o:?}: {op}")),
            (Input::Write { cond, value }, o) => {
                let cond = cond.as_ref().map_or(ANY, &mut id);
                let value = id(&Some(value.clone()));
                match o {
                    Output::Written => Step::Written { cond, value },
                    Output::Refused(cur) if cond != ANY => Step::Refused {
                        cond,
                        current: id(cur),
                    },
                    Output::Unknown => Step::Unknown { cond, value },
                    o => return Err(format!("a write cannot have output {o:?}: {op}")),
                }
            }
        };
        steps.push(step);
    }
    // Entries: calls and returns sorted by time; at equal times calls first (the two
    // operations are then taken as concurrent, the permissive reading).
    let n = ops.len();
    let mut entries: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        let ret = if op.output == Output::Unknown {
            u64::MAX
        } else {
            op.ret.max(op.invoke)
        };
        entries.push((op.invoke, 0, i));
        entries.push((ret, 1, i));
    }
    entries.sort_unstable();
    // Doubly linked list over entry indices; node `2n` is the head.
    let head = 2 * n;
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut ret_of_call = vec![NIL; 2 * n];
    let mut call_node = vec![NIL; n];
    let mut last = head;
    for (e, &(_, kind, op)) in entries.iter().enumerate() {
        next[last] = e;
        prev[e] = last;
        last = e;
        if kind == 0 {
            call_node[op] = e;
        } else {
            ret_of_call[call_node[op]] = e;
        }
    }
    let is_call = |e: usize| entries[e].1 == 0;
    let op_of = |e: usize| entries[e].2;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize, m: usize| {
        for x in [e, m] {
            next[prev[x]] = next[x];
            if next[x] != NIL {
                prev[next[x]] = prev[x];
            }
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize, m: usize| {
        for x in [m, e] {
            next[prev[x]] = x;
            if next[x] != NIL {
                prev[next[x]] = x;
            }
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut states: States = vec![0];
    let mut stack: Vec<(usize, States)> = Vec::new();
    let mut cache: HashSet<(Vec<u64>, States)> = HashSet::new();
    let mut best: Vec<u64> = linearized.clone();
    let mut best_depth = 0;
    let mut entry = next[head];
    let mut budget = MAX_STEPS;
    while next[head] != NIL {
        budget = budget.saturating_sub(1);
        if budget == 0 {
            return Err(format!(
                "undecided: no linearization of {n} operations found within {MAX_STEPS} search steps"
            ));
        }
        if entry == NIL {
            // Cannot happen: every call's return follows it in the list.
            return Err("internal error: reached the end of the history".into());
        }
        if is_call(entry) {
            let op = op_of(entry);
            if let Some(ns) = apply(&states, steps[op]) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), ns.clone())) {
                    let old = std::mem::replace(&mut states, ns);
                    stack.push((entry, old));
                    linearized = lin;
                    lift(&mut next, &mut prev, entry, ret_of_call[entry]);
                    if stack.len() > best_depth {
                        best_depth = stack.len();
                        best.clone_from(&linearized);
                    }
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return whose operation is not linearized yet: undo the last choice.
            let Some((e, s)) = stack.pop() else {
                return Err(explain(ops, &best, best_depth));
            };
            let op = op_of(e);
            linearized[op / 64] &= !(1 << (op % 64));
            states = s;
            unlift(&mut next, &mut prev, e, ret_of_call[e]);
            entry = next[e];
        }
    }
    Ok(())
}

/// Describes the longest linearizable prefix found and the operations it could not
/// extend with (the earliest-returning ones outside it).
fn explain(ops: &[&Op], best: &[u64], depth: usize) -> String {
    let mut rest: Vec<&Op> = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| best[i / 64] & (1 << (i % 64)) == 0)
        .map(|(_, op)| *op)
        .collect();
    rest.sort_by_key(|op| {
        if op.output == Output::Unknown {
            u64::MAX
        } else {
            op.ret
        }
    });
    let mut done: Vec<&Op> = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| best[i / 64] & (1 << (i % 64)) != 0)
        .map(|(_, op)| *op)
        .collect();
    done.sort_by_key(|op| op.ret);
    let last: Vec<String> = done
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(|o| o.to_string())
        .collect();
    let stuck: Vec<String> = rest.iter().take(3).map(|o| o.to_string()).collect();
    format!(
        "not linearizable: at most {depth} of {} operations can be linearized; last of them \
         (by return): {}; none of these can follow: {}",
        ops.len(),
        last.join("; "),
        stuck.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Some(v.to_string())
    }

    fn read(client: usize, t: (u64, u64), v: Value) -> Op {
        Op {
            client,
            key: "k".into(),
            invoke: t.0,
            ret: t.1,
            input: Input::Read,
            output: Output::Read(v),
        }
    }

    fn put(client: usize, t: (u64, u64), v: &str, out: Output) -> Op {
        Op {
            client,
            key: "k".into(),
            invoke: t.0,
            ret: t.1,
            input: Input::Write {
                cond: None,
                value: v.into(),
            },
            output: out,
        }
    }

    fn cas(client: usize, t: (u64, u64), from: Value, v: &str, out: Output) -> Op {
        Op {
            client,
            key: "k".into(),
            invoke: t.0,
            ret: t.1,
            input: Input::Write {
                cond: Some(from),
                value: v.into(),
            },
            output: out,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            read(0, (0, 1), None),
            put(0, (2, 3), "a", Output::Written),
            read(1, (4, 5), s("a")),
            cas(1, (6, 7), s("a"), "b", Output::Written),
            cas(0, (8, 9), s("a"), "c", Output::Refused(s("b"))),
            read(0, (10, 11), s("b")),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        for seen in [None, s("a")] {
            let h = vec![
                put(0, (0, 10), "a", Output::Written),
                read(1, (1, 2), seen.clone()),
            ];
            check(&h).unwrap();
        }
    }

    #[test]
    fn stale_read_is_rejected() {
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            put(0, (2, 3), "b", Output::Written),
            read(1, (4, 5), s("a")),
        ];
        let e = check(&h).unwrap_err();
        assert!(e.message.contains("not linearizable"), "{e}");
        assert!(e.to_string().starts_with("key k:"), "{e}");
    }

    #[test]
    fn read_of_a_never_written_value_is_rejected() {
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            read(1, (2, 3), s("x")),
        ];
        check(&h).unwrap_err();
    }

    #[test]
    fn lost_update_is_rejected() {
        // b is acknowledged after a, then a read sees a again.
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            cas(1, (2, 3), s("a"), "b", Output::Written),
            read(2, (4, 5), s("a")),
        ];
        check(&h).unwrap_err();
    }

    #[test]
    fn two_cas_winners_from_one_value_are_rejected() {
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            cas(1, (2, 10), s("a"), "b", Output::Written),
            cas(2, (3, 11), s("a"), "c", Output::Written),
        ];
        check(&h).unwrap_err();
        // One winner, one loser that saw the winner's value: fine.
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            cas(1, (2, 10), s("a"), "b", Output::Written),
            cas(2, (3, 11), s("a"), "c", Output::Refused(s("b"))),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn refused_cas_whose_compare_held_is_rejected() {
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            cas(1, (2, 3), s("a"), "b", Output::Refused(s("a"))),
        ];
        check(&h).unwrap_err();
    }

    #[test]
    fn cas_on_an_absent_key() {
        let h = vec![
            cas(0, (0, 1), None, "a", Output::Written),
            cas(1, (2, 3), None, "b", Output::Refused(s("a"))),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn unknown_outcome_may_take_effect_late_or_never() {
        // Seen long after the client gave up.
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            cas(1, (2, 3), s("a"), "b", Output::Unknown),
            read(2, (100, 101), s("b")),
        ];
        check(&h).unwrap();
        // Never seen.
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            cas(1, (2, 3), s("a"), "b", Output::Unknown),
            read(2, (100, 101), s("a")),
        ];
        check(&h).unwrap();
        // An unknown put after another write: takes effect after it.
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            put(1, (2, 3), "b", Output::Unknown),
            cas(0, (4, 5), s("a"), "c", Output::Written),
            read(2, (6, 7), s("b")),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn unknown_outcome_cannot_take_effect_before_its_invocation_or_twice() {
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            read(2, (2, 3), s("b")),
            cas(1, (4, 5), s("a"), "b", Output::Unknown),
        ];
        check(&h).unwrap_err();
        // Seen, then gone, then seen again.
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            put(1, (2, 3), "b", Output::Unknown),
            read(2, (4, 5), s("b")),
            read(2, (6, 7), s("a")),
        ];
        check(&h).unwrap_err();
    }

    #[test]
    fn unknown_cas_cannot_apply_when_its_compare_fails() {
        let h = vec![
            put(0, (0, 1), "a", Output::Written),
            put(0, (2, 3), "b", Output::Written),
            cas(1, (4, 5), s("a"), "c", Output::Unknown),
            read(2, (6, 7), s("c")),
        ];
        check(&h).unwrap_err();
    }

    #[test]
    fn keys_are_independent() {
        let mut h = vec![
            put(0, (0, 1), "a", Output::Written),
            read(1, (2, 3), s("a")),
        ];
        let mut other = put(0, (0, 1), "x", Output::Written);
        other.key = "j".into();
        h.push(other);
        let mut stale = read(1, (2, 3), None);
        stale.key = "j".into();
        h.push(stale);
        let e = check(&h).unwrap_err();
        assert_eq!(e.key, "j");
    }

    /// A tiny deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Simulates clients on a real register: each operation takes effect at one point
    /// inside its interval, so the history is linearizable by construction.
    fn simulated(seed: u64, clients: usize, per_client: usize, unknown: bool) -> Vec<Op> {
        let mut rng = Rng(seed);
        // Events: (linearization point, client, index); intervals around them.
        let mut points = Vec::new();
        for c in 0..clients {
            let mut t = rng.below(10);
            for i in 0..per_client {
                let invoke = t;
                let point = invoke + 1 + rng.below(20);
                let ret = point + 1 + rng.below(20);
                points.push((point, c, i, invoke, ret));
                t = ret + 1 + rng.below(5);
            }
        }
        points.sort_unstable();
        let mut reg: Value = None;
        let mut known: Vec<Value> = vec![None];
        let mut ops = Vec::new();
        for (_, c, i, invoke, ret) in points {
            let value = format!("c{c}-{i}");
            let op = match rng.below(4) {
                0 => Op {
                    client: c,
                    key: "k".into(),
                    invoke,
                    ret,
                    input: Input::Read,
                    output: Output::Read(reg.clone()),
                },
                1 => {
                    reg = Some(value.clone());
                    Op {
                        client: c,
                        key: "k".into(),
                        invoke,
                        ret,
                        input: Input::Write { cond: None, value },
                        output: Output::Written,
                    }
                }
                _ => {
                    // CAS from the current value or from a recent stale one.
                    let from = if rng.below(2) == 0 {
                        reg.clone()
                    } else {
                        known[known.len() - 1 - rng.below(known.len().min(3) as u64) as usize]
                            .clone()
                    };
                    let lost = unknown && rng.below(8) == 0;
                    let output = if from == reg {
                        if lost && rng.below(2) == 0 {
                            // Timed out without taking effect.
                            Output::Unknown
                        } else {
                            reg = Some(value.clone());
                            if lost {
                                Output::Unknown
                            } else {
                                Output::Written
                            }
                        }
                    } else if lost {
                        Output::Unknown
                    } else {
                        Output::Refused(reg.clone())
                    };
                    Op {
                        client: c,
                        key: "k".into(),
                        invoke,
                        ret,
                        input: Input::Write {
                            cond: Some(from),
                            value,
                        },
                        output,
                    }
                }
            };
            if !known.contains(&reg) {
                known.push(reg.clone());
            }
            ops.push(op);
        }
        ops
    }

    #[test]
    fn simulated_linearizable_histories_are_accepted() {
        for seed in 1..20 {
            let h = simulated(seed * 7919, 6, 60, seed % 2 == 0);
            check(&h).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    }

    #[test]
    fn corrupted_simulated_histories_are_rejected() {
        // Make a successful CAS in the middle claim a value nobody else can explain:
        // a read right after it (in real time, after everything) sees a stale value.
        for seed in 1..10 {
            let mut h = simulated(seed * 104_729, 4, 40, false);
            let end = h.iter().map(|o| o.ret).max().unwrap_or(0);
            let written: Vec<String> = h
                .iter()
                .filter(|o| o.output == Output::Written)
                .filter_map(|o| match &o.input {
                    Input::Write { value, .. } => Some(value.clone()),
                    _ => None,
                })
                .collect();
            if written.len() < 2 {
                continue;
            }
            // The value of the first write, read after the last write returned, is stale
            // unless the first write is the last one (it is not: values are unique and
            // later writes exist).
            let last_writer = h
                .iter()
                .filter(|o| o.output == Output::Written)
                .max_by_key(|o| o.ret)
                .cloned()
                .unwrap();
            let first = written[0].clone();
            if matches!(&last_writer.input, Input::Write { value, .. } if *value == first) {
                continue;
            }
            h.push(read(99, (end + 10, end + 11), Some(first)));
            check(&h).unwrap_err();
        }
    }
}
