//! Watched objects: the newest version of one named object, from its watch and from this
//! agent's own writes, so that neither a late watch event nor a missed one undoes what the agent
//! knows.

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What a watched object looks like so far.
#[derive(Debug, Clone)]
pub(super) enum Seen<K> {
    /// The first list has not completed.
    Unsynced,
    /// The object does not exist.
    Missing,
    /// The object.
    Present(Box<K>),
}

impl<K> Seen<K> {
    /// The object, if present.
    pub(super) fn get(&self) -> Option<&K> {
        match self {
            Seen::Present(k) => Some(k),
            _ => None,
        }
    }
}

/// An object's resourceVersion as a number (Kubernetes' are, in practice; opaque otherwise).
fn rv_number<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

/// Keeps the newest version of an object from two sources (the watch and our own writes), so a
/// late watch event never rolls back what this agent just wrote.
#[derive(Debug)]
pub(super) struct Latest<K> {
    pub(super) current: Seen<K>,
}

impl<K> Default for Latest<K> {
    fn default() -> Self {
        Self {
            current: Seen::Unsynced,
        }
    }
}

impl<K: Resource + Clone> Latest<K> {
    /// Takes `seen` unless it is an older version of the object than the one kept. A `Missing`
    /// always replaces: callers confirm one with a read first when it contradicts a present
    /// object (see [`Latest::contradicts`]).
    pub(super) fn offer(&mut self, seen: Seen<K>) {
        let newer = match (&self.current, &seen) {
            (Seen::Present(old), Seen::Present(new)) => {
                match (rv_number(&**old), rv_number(&**new)) {
                    (Some(o), Some(n)) => n >= o,
                    _ => true,
                }
            }
            (_, Seen::Unsynced) => false,
            _ => true,
        };
        if newer {
            self.current = seen;
        }
    }

    /// What is known of the object: `Some(None)` when known missing, `None` before the first
    /// sync.
    pub(super) fn known(&self) -> Option<Option<&K>> {
        match &self.current {
            Seen::Unsynced => None,
            Seen::Missing => Some(None),
            Seen::Present(k) => Some(Some(k)),
        }
    }

    /// Whether `seen` says the object is gone while this agent knows it present: a watch can
    /// deliver a deletion from before this agent's own fresh write, so such news is read again
    /// before it is believed.
    pub(super) fn contradicts(&self, seen: &Seen<K>) -> bool {
        matches!((&self.current, seen), (Seen::Present(_), Seen::Missing))
    }
}

/// The server-side timeout of a watch, picked at random in this range per watch, as client-go's
/// reflector does (5–10 min): an idle watch costs one request per 5–10 min, the re-watches of
/// many agents stay spread out, and kube's watcher notices a silently dead connection within it.
const WATCH_TIMEOUT_SECS: std::ops::Range<u64> = 300..600;

/// A random timeout in [`WATCH_TIMEOUT_SECS`] (the standard library's per-process random keys
/// are randomness enough for spreading requests).
fn watch_timeout() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let span = WATCH_TIMEOUT_SECS.end - WATCH_TIMEOUT_SECS.start;
    u32::try_from(WATCH_TIMEOUT_SECS.start + random % span).unwrap_or(u32::MAX)
}

/// Mirrors one named object into `tx`, for ever, backing off on errors. The watch is by name
/// (`fieldSelector=metadata.name=…`), so the API server sends it nothing else.
pub(super) async fn watch_named<K>(
    api: Api<K>,
    name: String,
    tx: watch::Sender<Seen<K>>,
    metrics: Metrics,
    what: &'static str,
) -> (&'static str, anyhow::Result<()>)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(watch_timeout());
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    // Whether the object came in the current (re-)list: if not, it is gone.
    let mut listed = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => listed = false,
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                listed = true;
                let _ = tx.send(Seen::Present(Box::new(o)));
            }
            Ok(watcher::Event::InitDone) if !listed => {
                let _ = tx.send(Seen::Missing);
            }
            Ok(watcher::Event::InitDone) => {}
            Ok(watcher::Event::Delete(_)) => {
                let _ = tx.send(Seen::Missing);
            }
            Err(e) => {
                metrics.errors.with_label_values(&["watch"]).inc();
                tracing::warn!(object = what, error = %e, "watch failed; retrying");
            }
        }
    }
    (what, Err(anyhow::anyhow!("the {what} watch ended")))
}

/// A watch on one named object that runs only while this value lives (the task is aborted on
/// drop). Its task is supervised through [`Watched::check`].
#[derive(Debug)]
pub(super) struct Watched<K> {
    pub(super) rx: watch::Receiver<Seen<K>>,
    task: tokio::task::JoinHandle<(&'static str, anyhow::Result<()>)>,
    what: &'static str,
}

impl<K> Watched<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    /// Starts watching `name` through `api`.
    pub(super) fn start(api: Api<K>, name: &str, metrics: &Metrics, what: &'static str) -> Self {
        let (tx, rx) = watch::channel(Seen::Unsynced);
        let task = tokio::spawn(watch_named(api, name.to_owned(), tx, metrics.clone(), what));
        Self { rx, task, what }
    }
}

impl<K> Watched<K> {
    /// A watch whose reports the test sends through `rx`'s sender.
    #[cfg(test)]
    pub(super) fn fake(rx: watch::Receiver<Seen<K>>) -> Self {
        let task = tokio::spawn(async {
            std::future::pending::<()>().await;
            ("fake", Ok(()))
        });
        Self {
            rx,
            task,
            what: "fake",
        }
    }

    /// An error once the watch task has ended (it never ends by itself): the agent exits, as
    /// for any supervised task.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        if self.task.is_finished() {
            anyhow::bail!("the {} watch ended", self.what);
        }
        Ok(())
    }
}

impl<K> Drop for Watched<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
