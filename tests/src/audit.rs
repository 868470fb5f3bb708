//! Reading the API server's audit log ([`crate::cluster::Options::audit`]): every request, its
//! stages merged by audit ID, so a watch is one request that starts and, later, completes.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result};
use jiff::Timestamp;

/// One request, as the audit log tells it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Who sent it (`baton/<version> (node <name>)` for an agent).
    pub user_agent: String,
    /// `get`, `list`, `watch`, `update`, ...
    pub verb: String,
    /// `nodes`, `leases`, ... (with `/subresource` when there is one).
    pub resource: String,
    /// The object's name, for a request about one object.
    pub name: String,
    /// The request's path and query.
    pub uri: String,
    /// When the API server received it.
    pub received: Timestamp,
    /// When it completed, if it did (a watch still open has not).
    pub completed: Option<Timestamp>,
    /// The response's status code, once completed.
    pub code: Option<i64>,
}

impl Request {
    /// The node of the baton agent that sent it, if an agent did.
    pub fn baton_node(&self) -> Option<&str> {
        let rest = self.user_agent.strip_prefix("baton/")?;
        rest.split_once("(node ")?.1.strip_suffix(')')
    }

    /// Whether a baton agent sent it.
    pub fn is_baton(&self) -> bool {
        self.baton_node().is_some()
    }

    /// `verb resource`, e.g. `watch leases`.
    pub fn kind(&self) -> String {
        format!("{} {}", self.verb, self.resource)
    }

    /// Whether it is a watch open at instant `t`.
    pub fn watching_at(&self, t: Timestamp) -> bool {
        self.verb == "watch" && self.received <= t && self.completed.is_none_or(|c| c > t)
    }

    /// A query parameter of the request, decoded (`fieldSelector` → `metadata.name=baton`).
    pub fn query(&self, key: &str) -> Option<String> {
        let query = self.uri.split_once('?')?.1;
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| decode(v))
        })
    }
}

/// Percent-decodes a query value.
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&v[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every request in the audit log at `path`, in the order received.
pub fn read(path: &Path) -> Result<Vec<Request>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut by_id: HashMap<String, Request> = HashMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let time = |k: &str| v[k].as_str().and_then(|t| t.parse::<Timestamp>().ok());
        let Some(received) = time("requestReceivedTimestamp") else {
            continue;
        };
        let resource = match v["objectRef"]["subresource"].as_str() {
            Some(sub) => format!(
                "{}/{sub}",
                v["objectRef"]["resource"].as_str().unwrap_or("?")
            ),
            None => v["objectRef"]["resource"]
                .as_str()
                .unwrap_or("-")
                .to_owned(),
        };
        let entry = by_id.entry(s("auditID")).or_insert_with(|| Request {
            user_agent: s("userAgent"),
            verb: s("verb"),
            resource,
            name: v["objectRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            uri: s("requestURI"),
            received,
            completed: None,
            code: None,
        });
        if v["stage"].as_str() == Some("ResponseComplete") {
            entry.completed = time("stageTimestamp");
            entry.code = v["responseStatus"]["code"].as_i64();
        }
    }
    let mut all: Vec<Request> = by_id.into_values().collect();
    all.sort_by_key(|r| r.received);
    Ok(all)
}

/// How many of `reqs` there are by `verb resource`.
pub fn by_kind<'a>(reqs: impl IntoIterator<Item = &'a Request>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in reqs {
        *counts.entry(r.kind()).or_insert(0) += 1;
    }
    counts
}

/// The most watches of `reqs` open at once, and when.
pub fn peak_watches<'a>(reqs: impl IntoIterator<Item = &'a Request>) -> (usize, Option<Timestamp>) {
    // +1 at each start, -1 at each end; ends sort before starts at the same instant.
    let mut edges: Vec<(Timestamp, i8)> = Vec::new();
    for r in reqs.into_iter().filter(|r| r.verb == "watch") {
        edges.push((r.received, 1));
        if let Some(c) = r.completed {
            edges.push((c, -1));
        }
    }
    edges.sort();
    let (mut open, mut peak, mut at) = (0i64, 0i64, None);
    for (t, d) in edges {
        open += i64::from(d);
        if open > peak {
            peak = open;
            at = Some(t);
        }
    }
    (usize::try_from(peak).unwrap_or(0), at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        let r = Request {
            user_agent: "baton/0.1.0 (node n-1)".into(),
            verb: "watch".into(),
            resource: "leases".into(),
            name: String::new(),
            uri: "/apis/coordination.k8s.io/v1/namespaces/x/leases?allowWatchBookmarks=true&fieldSelector=metadata.name%3Dbaton-1&timeoutSeconds=412&watch=true".into(),
            received: Timestamp::UNIX_EPOCH,
            completed: None,
            code: None,
        };
        assert_eq!(r.baton_node(), Some("n-1"));
        assert_eq!(
            r.query("fieldSelector").as_deref(),
            Some("metadata.name=baton-1")
        );
        assert_eq!(r.query("timeoutSeconds").as_deref(), Some("412"));
        assert_eq!(r.query("missing"), None);
        assert!(r.watching_at(Timestamp::UNIX_EPOCH));
    }
}
