//! The text view of a [`Report`]: sections with aligned columns; colours (ANSI) only when
//! asked, i.e. on a terminal.

use std::fmt::Write as _;

use super::{Report, Tier};

/// How many lines a long list shows in text before "N more (-o json lists all)".
const LIST_MAX: usize = 10;

/// A duration for people: its two largest units (`42s`, `3m5s`, `2h10m`, `3d4h`).
pub fn duration(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let text = if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    };
    format!("{sign}{text}")
}

/// Colours, or none.
#[derive(Debug, Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn wrap(self, code: &str, text: &str) -> String {
        if self.0 && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn bold(self, t: &str) -> String {
        self.wrap("1", t)
    }
    fn red(self, t: &str) -> String {
        self.wrap("31", t)
    }
    fn yellow(self, t: &str) -> String {
        self.wrap("33", t)
    }
    fn green(self, t: &str) -> String {
        self.wrap("32", t)
    }
    fn dim(self, t: &str) -> String {
        self.wrap("2", t)
    }
}

/// A cell: its text, and a colour applied after padding (so columns stay aligned).
type Cell = (String, Option<fn(Paint, &str) -> String>);

fn plain(s: impl Into<String>) -> Cell {
    (s.into(), None)
}

/// Rows under a header, columns padded to their widest cell; the last column is not padded.
fn table(out: &mut String, p: Paint, header: &[&str], rows: &[Vec<Cell>]) {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, (text, _)) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(text.chars().count());
        }
    }
    let line = |cells: Vec<Cell>| {
        let mut l = String::from("  ");
        let last = cells.len().saturating_sub(1);
        for (i, (text, colour)) in cells.into_iter().enumerate() {
            let pad = if i == last {
                0
            } else {
                width[i] + 2 - text.chars().count()
            };
            let shown = match colour {
                Some(c) => c(p, &text),
                None => text,
            };
            l.push_str(&shown);
            l.push_str(&" ".repeat(pad));
        }
        l.trim_end().to_owned()
    };
    let head: Vec<Cell> = header
        .iter()
        .map(|h| {
            (
                (*h).to_owned(),
                Some(Paint::dim as fn(Paint, &str) -> String),
            )
        })
        .collect();
    let _ = writeln!(out, "{}", line(head));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.clone()));
    }
}

fn more(out: &mut String, p: Paint, shown: usize, all: usize) {
    if all > shown {
        let _ = writeln!(
            out,
            "  {}",
            p.dim(&format!("… and {} more (-o json lists all)", all - shown))
        );
    }
}

/// The text view; `colour` adds ANSI colours.
pub fn text(r: &Report, colour: bool) -> String {
    let p = Paint(colour);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} namespace {} at {}",
        p.bold("baton status:"),
        r.namespace,
        r.generated_at
    );

    // Cluster pause.
    if r.pause.paused {
        let _ = writeln!(
            out,
            "{} {} {} (ConfigMap {}{}): {}  `baton resume` lifts it",
            p.bold("Cluster pause:"),
            p.yellow("PAUSED"),
            r.pause
                .for_seconds
                .map_or_else(String::new, |s| format!("for {}", duration(s))),
            r.pause.config_map,
            r.pause
                .since
                .as_deref()
                .map_or_else(String::new, |s| format!(", since {s}")),
            r.pause.reason.as_deref().unwrap_or("no reason given"),
        );
    } else {
        let _ = writeln!(
            out,
            "{} {} (no ConfigMap {})",
            p.bold("Cluster pause:"),
            p.green("not paused"),
            r.pause.config_map
        );
    }

    // Slots.
    let _ = writeln!(
        out,
        "\n{} {}",
        p.bold("Slots"),
        p.dim("(TTL left = renewTime + leaseDurationSeconds - now: an estimate from wall clocks)")
    );
    if r.slots.is_empty() {
        let _ = writeln!(
            out,
            "  no Lease yet (one appears when a node first takes it)"
        );
    } else {
        let grouped = r.slots.iter().any(|s| s.group.is_some());
        let mut header = vec!["LEASE"];
        if grouped {
            header.push("GROUP");
        }
        header.extend(["HOLDER", "PHASE", "HELD", "TTL LEFT", "NOTE"]);
        let rows: Vec<Vec<Cell>> = r
            .slots
            .iter()
            .map(|s| {
                let mut row = vec![plain(s.lease.clone())];
                if grouped {
                    row.push(plain(if s.control_plane {
                        "control-plane".to_owned()
                    } else {
                        s.group.clone().unwrap_or_else(|| "-".into())
                    }));
                }
                match &s.holder {
                    None => {
                        row.push((
                            "free".into(),
                            Some(Paint::green as fn(Paint, &str) -> String),
                        ));
                        row.extend([plain(""), plain(""), plain(""), plain("")]);
                    }
                    Some(h) => {
                        row.push(plain(h.clone()));
                        row.push(plain(match (s.phase, s.phase_seconds) {
                            (Some(ph), Some(secs)) => format!("{ph} for {}", duration(secs)),
                            (Some(ph), None) => ph.to_owned(),
                            (None, _) => "?".to_owned(),
                        }));
                        row.push(plain(s.held_seconds.map_or("?".into(), duration)));
                        row.push(match s.ttl_left_seconds_estimate {
                            Some(t) if t >= 0 => plain(format!("~{}", duration(t))),
                            Some(t) => (
                                format!("overdue ~{}", duration(-t)),
                                Some(Paint::red as fn(Paint, &str) -> String),
                            ),
                            None => plain("?"),
                        });
                        row.push(plain(s.note.clone().unwrap_or_default()));
                    }
                }
                row
            })
            .collect();
        table(&mut out, p, &header, &rows);
    }

    // Queue.
    let _ = writeln!(
        out,
        "\n{} {}",
        p.bold("Queue"),
        p.dim("(in the order they would go: next (only a slot missing), timed (earliest end first), held; ties by node name)")
    );
    if r.queue.is_empty() {
        let _ = writeln!(out, "  no flagged node waits");
    } else {
        let rows: Vec<Vec<Cell>> = r
            .queue
            .iter()
            .map(|q| {
                let mut why: Vec<String> = q.reasons.iter().map(|w| w.text.clone()).collect();
                if let Some(req) = &q.requested {
                    why.push(if req.trim().is_empty() {
                        "requested by hand".to_owned()
                    } else {
                        format!("requested: {req}")
                    });
                }
                let tier = match q.tier {
                    Tier::Next => ("next".to_owned(), None),
                    Tier::Timed => ("timed".to_owned(), None),
                    Tier::Held => (
                        "held".to_owned(),
                        Some(Paint::yellow as fn(Paint, &str) -> String),
                    ),
                };
                vec![
                    plain(q.position.to_string()),
                    plain(q.node.clone()),
                    tier,
                    plain(why.join("; ")),
                ]
            })
            .collect();
        table(&mut out, p, &["#", "NODE", "TIER", "WAITS FOR"], &rows);
    }

    // In flight.
    let _ = writeln!(out, "\n{}", p.bold("In flight"));
    if r.in_flight.is_empty() {
        let _ = writeln!(out, "  no node in a cycle");
    } else {
        let rows: Vec<Vec<Cell>> = r
            .in_flight
            .iter()
            .map(|f| {
                let phase = match f.seconds {
                    Some(s) => format!("{} for {}", f.phase, duration(s)),
                    None => f.phase.to_owned(),
                };
                let mut detail = Vec::new();
                if f.reboot_attempts > 0 {
                    detail.push(format!(
                        "{} reboot trigger(s){}",
                        f.reboot_attempts,
                        f.reboot_triggered_at
                            .as_deref()
                            .map_or_else(String::new, |t| format!(", last at {t}"))
                    ));
                }
                if !f.node_ready {
                    detail.push("Node NotReady".into());
                }
                if f.holds.is_empty() {
                    detail.push("holds no Lease".into());
                }
                if let Some(e) = &f.last_error {
                    detail.push(format!("last error: {e}"));
                }
                vec![
                    plain(f.node.clone()),
                    plain(phase),
                    plain(f.pods_left.map_or("-".into(), |n| n.to_string())),
                    (
                        detail.join("; "),
                        f.last_error
                            .as_ref()
                            .map(|_| Paint::yellow as fn(Paint, &str) -> String),
                    ),
                ]
            })
            .collect();
        table(
            &mut out,
            p,
            &["NODE", "PHASE", "PODS LEFT", "DETAIL"],
            &rows,
        );
    }

    // Paused nodes.
    let _ = writeln!(out, "\n{}", p.bold("Paused nodes"));
    if r.paused_nodes.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let rows: Vec<Vec<Cell>> = r
            .paused_nodes
            .iter()
            .map(|n| vec![plain(n.node.clone()), plain(n.reason.clone())])
            .collect();
        table(&mut out, p, &["NODE", "REASON"], &rows);
    }

    // History.
    let h = &r.history;
    let _ = writeln!(out, "\n{}", p.bold("History"));
    let _ = writeln!(out, "  last reboots:");
    if h.last_reboots.is_empty() {
        let _ = writeln!(out, "    none recorded");
    }
    for l in h.last_reboots.iter().take(LIST_MAX) {
        let _ = writeln!(
            out,
            "    {}  {} ago ({})",
            l.node,
            duration(l.seconds_ago),
            l.at
        );
    }
    more(
        &mut out,
        p,
        LIST_MAX.min(h.last_reboots.len()),
        h.last_reboots.len(),
    );
    let _ = writeln!(
        out,
        "  failures {}:",
        p.dim("(baton's warning Events; the API server keeps Events for its --event-ttl, 1h by default)")
    );
    if h.failures.is_empty() {
        let _ = writeln!(out, "    none");
    }
    for f in h.failures.iter().take(LIST_MAX) {
        let _ = writeln!(
            out,
            "    {}  {}  {}{}  {}",
            f.at.as_deref().unwrap_or("?"),
            f.node,
            p.red(&f.reason),
            if f.count > 1 {
                format!(" (x{})", f.count)
            } else {
                String::new()
            },
            f.note
        );
    }
    more(
        &mut out,
        p,
        LIST_MAX.min(h.failures.len()),
        h.failures.len(),
    );
    let _ = writeln!(out, "  gave up (waiting for a human):");
    if h.gave_up.is_empty() {
        let _ = writeln!(out, "    none");
    }
    for g in &h.gave_up {
        let _ = writeln!(out, "    {}  {}", p.red(&g.node), g.detail);
    }

    // Agents.
    let a = &r.agents;
    let _ = writeln!(
        out,
        "\n{} {} pod(s) matching {} in {}, {} Ready",
        p.bold("Agents:"),
        a.pods,
        a.selector,
        r.namespace,
        a.ready
    );
    if a.pods == 0 {
        let _ = writeln!(
            out,
            "  {}",
            p.dim(
                "no agent pod found (agents run elsewhere, or with other labels: --agent-selector)"
            )
        );
    }
    for n in &a.not_ready {
        let _ = writeln!(
            out,
            "  {} {} on {}: {}",
            p.red("not Ready:"),
            n.pod,
            n.node.as_deref().unwrap_or("no node yet"),
            n.state
        );
    }

    if !r.problems.is_empty() {
        let _ = writeln!(out, "\n{}", p.bold("Problems"));
        for pr in &r.problems {
            let _ = writeln!(out, "  {}: {}", p.red(&pr.node), pr.problem);
        }
    }
    out
}
