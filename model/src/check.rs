//! The checker: a breadth-first search over every interleaving, with the properties checked on
//! every transition and in every state, so that the first counterexample found is a shortest
//! one (states equal up to renaming nodes configured alike count once: `class`); and, for configurations that ask for it, liveness: from every reachable state, with no
//! more faults, a goal state is still reachable (under fair scheduling, where an action enabled
//! infinitely often is eventually taken, the goal is then reached).
//!
//! Why not `stateright` (0.31): its `eventually` properties are checked only on paths that end
//! (its docs: "only work correctly on acyclic paths"), and this system's runs never end (clocks
//! tick, agents wait), so liveness needs the state graph itself; and its checker needs states
//! whose equality is the one the properties mean, which here takes a canonical form (capped
//! ages, renumbered renewal tags) that is the same work with or without it. A BFS of 200 lines
//! over 128-bit fingerprints, with a replayed trace, is all the rest needs.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

use crate::Model;
use crate::glue::Notes;
use crate::props::Violation;
use crate::state::State;
use crate::world::{self, Act};

/// A counterexample: the property, and the actions from the initial state.
#[derive(Debug, Clone)]
pub struct Counterexample {
    /// What failed.
    pub violation: Violation,
    /// The actions leading to it.
    pub trace: Vec<Act>,
    /// Liveness (a state from which the goal cannot be reached) rather than safety.
    pub liveness: bool,
}

/// What one exploration found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Distinct states reached.
    pub states: u64,
    /// Transitions taken.
    pub transitions: u64,
    /// The longest shortest path.
    pub depth: u32,
    /// The first counterexample, if any.
    pub counterexample: Option<Counterexample>,
    /// The state limit stopped the search before it was complete.
    pub truncated: bool,
    /// How long it took.
    pub elapsed: Duration,
}

/// A 128-bit fingerprint: two multiply-xorshift lanes over every field the derived `Hash`
/// writes (SipHash, the standard one, took three quarters of the run).
#[derive(Default)]
struct Fp {
    a: u64,
    b: u64,
}

impl Hasher for Fp {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut v = [0u8; 8];
            v[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(v));
        }
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.a = (self.a ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.a ^= self.a >> 29;
        self.b = (self.b.rotate_left(23) ^ v).wrapping_mul(0xff51_afd7_ed55_8ccd);
        self.b ^= self.b >> 32;
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64);
    }

    fn finish(&self) -> u64 {
        self.a ^ self.b
    }
}

/// The fingerprint of `s`'s class: the least over the renamings of nodes that the model cannot
/// tell apart ([`Model::symmetries`]), so that states equal up to node names are one.
fn class(m: &Model, s: &State) -> u128 {
    m.symmetries
        .iter()
        .map(|p| fingerprint(&s.permuted(p, m.nl(), m.k)))
        .fold(fingerprint(s), u128::min)
}

fn fingerprint(s: &State) -> u128 {
    let mut h = Fp {
        a: 0x243f_6a88_85a3_08d3,
        b: 0x1319_8a2e_0370_7344,
    };
    s.hash(&mut h);
    let mix = |mut x: u64| {
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 29)
    };
    (u128::from(mix(h.a)) << 64) | u128::from(mix(h.b))
}

/// Fingerprints are already uniform: the table uses their low bits as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u128 keys")
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Explores `m` breadth first, up to `limit` states.
pub fn explore(m: &Model, limit: u64) -> Outcome {
    let started = Instant::now();
    let init = world::initial(m);
    let mut index: HashMap<u128, u32, BuildHasherDefault<Identity>> = HashMap::default();
    // For each state: its parent and the action from it (the initial state's parent is itself).
    let mut parents: Vec<(u32, Act, u32)> = vec![(0, Act::Tick, 0)];
    index.insert(class(m, &init), 0);
    let mut queue: VecDeque<(State, u32)> = VecDeque::from([(init, 0)]);
    let mut acts = Vec::new();
    let mut notes = Notes::default();
    let mut transitions = 0u64;
    let mut depth = 0;
    let mut truncated = false;
    // Liveness: the edges that are not faults, and which states are goals.
    let mut edges: Vec<(u32, u32)> = Vec::new();
    let mut goals: Vec<bool> = Vec::new();
    if m.cfg.liveness {
        goals.push(world::goal(m, &queue[0].0));
    }
    let trace_to = |parents: &Vec<(u32, Act, u32)>, mut i: u32| {
        let mut t = Vec::new();
        while i != 0 {
            let (p, a, _) = parents[i as usize];
            t.push(a);
            i = p;
        }
        t.reverse();
        t
    };
    let mut report_at = 1_000_000u64;
    while let Some((s, i)) = queue.pop_front() {
        if index.len() as u64 >= report_at && std::env::var_os("BATON_MODEL_PROGRESS").is_some() {
            eprintln!(
                "  … {} states, depth {depth}, queue {}, {:.0?}",
                index.len(),
                queue.len(),
                started.elapsed()
            );
            report_at += 1_000_000;
        }
        world::actions(m, &s, &mut acts);
        for &act in &acts {
            transitions += 1;
            let next = match world::next(m, &s, act, &mut notes) {
                Ok(t) => t,
                Err(violation) => {
                    let mut trace = trace_to(&parents, i);
                    trace.push(act);
                    return Outcome {
                        states: index.len() as u64,
                        transitions,
                        depth,
                        counterexample: Some(Counterexample {
                            violation,
                            trace,
                            liveness: false,
                        }),
                        truncated,
                        elapsed: started.elapsed(),
                    };
                }
            };
            let fp = class(m, &next);
            let j = match index.get(&fp) {
                Some(&j) => j,
                None => {
                    if index.len() as u64 >= limit {
                        truncated = true;
                        continue;
                    }
                    let j = u32::try_from(parents.len()).expect("fewer than 2^32 states");
                    let d = parents[i as usize].2 + 1;
                    depth = depth.max(d);
                    parents.push((i, act, d));
                    index.insert(fp, j);
                    if m.cfg.liveness {
                        goals.push(world::goal(m, &next));
                    }
                    queue.push_back((next, j));
                    j
                }
            };
            if m.cfg.liveness && !act.is_fault() && i != j {
                edges.push((i, j));
            }
        }
    }
    let mut counterexample = None;
    if m.cfg.liveness
        && !truncated
        && let Some(stuck) = stuck_state(&goals, &edges)
    {
        counterexample = Some(Counterexample {
            violation: Violation {
                property: "liveness",
                detail: "from the last state, with no more faults, no run reaches the goal \
                             (every flag served, every node out of its cycle and uncordoned, \
                             every Lease free)"
                    .to_owned(),
            },
            trace: trace_to(&parents, stuck),
            liveness: true,
        });
    }
    Outcome {
        states: index.len() as u64,
        transitions,
        depth,
        counterexample,
        truncated,
        elapsed: started.elapsed(),
    }
}

/// A state (the nearest to the start) from which no goal is reachable by `edges`, if any.
fn stuck_state(goals: &[bool], edges: &[(u32, u32)]) -> Option<u32> {
    let n = goals.len();
    // Reverse adjacency, compressed.
    let mut count = vec![0u32; n + 1];
    for &(_, to) in edges {
        count[to as usize + 1] += 1;
    }
    for i in 0..n {
        count[i + 1] += count[i];
    }
    let mut fill = count.clone();
    let mut from = vec![0u32; edges.len()];
    for &(f, to) in edges {
        from[fill[to as usize] as usize] = f;
        fill[to as usize] += 1;
    }
    let mut reaches = goals.to_vec();
    let mut queue: VecDeque<u32> = (0..n as u32).filter(|&i| goals[i as usize]).collect();
    while let Some(t) = queue.pop_front() {
        for &f in &from[count[t as usize] as usize..count[t as usize + 1] as usize] {
            if !reaches[f as usize] {
                reaches[f as usize] = true;
                queue.push_back(f);
            }
        }
    }
    // States are numbered in BFS order: the first one found is a nearest one.
    (0..n as u32).find(|&i| !reaches[i as usize])
}

/// Replays `trace` from the initial state, with what each transition did, as lines.
pub fn explain(m: &Model, trace: &[Act]) -> Vec<String> {
    let mut s = world::initial(m);
    let mut out = Vec::new();
    for (k, &act) in trace.iter().enumerate() {
        let mut notes = Notes {
            on: true,
            lines: Vec::new(),
        };
        let result = world::next(m, &s, act, &mut notes);
        let mut line = format!("{:>3}. {}", k + 1, act.show(m));
        if !notes.lines.is_empty() {
            line.push_str(&format!(" — {}", notes.lines.join("; ")));
        }
        out.push(line);
        match result {
            Ok(t) => s = t,
            Err(v) => {
                out.push(format!("     ✗ {}: {}", v.property, v.detail));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_state_and_its_renaming_are_one_class_and_other_states_are_not() {
        let m = Model::new(Config::base("t", 2));
        let mut notes = Notes::default();
        let mut s = world::initial(&m);
        for act in [Act::SeeLease(0, 0), Act::SeeNode(0), Act::Decide(0)] {
            s = world::next(&m, &s, act, &mut notes).expect("no violation");
        }
        assert!(
            s.leases[0].is_some_and(|r| r.holder == Some(0)),
            "n0 took the Lease"
        );
        let swapped = s.permuted(&[1, 0], m.nl(), m.k);
        assert!(swapped.leases[0].is_some_and(|r| r.holder == Some(1)));
        assert_ne!(fingerprint(&s), fingerprint(&swapped));
        assert_eq!(class(&m, &s), class(&m, &swapped));
        assert_eq!(swapped.permuted(&[1, 0], m.nl(), m.k), s);
        assert_ne!(class(&m, &s), class(&m, &world::initial(&m)));
    }
}
