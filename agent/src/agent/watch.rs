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

    /// Whether `seen` says the object is gone while this agent knows it present: a watch can
    /// deliver a deletion from before this agent's own fresh write, so such news is read again
    /// before it is believed.
    pub(super) fn contradicts(&self, seen: &Seen<K>) -> bool {
        matches!((&self.current, seen), (Seen::Present(_), Seen::Missing))
    }
}

/// Mirrors one named object into `tx`, for ever, backing off on errors.
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
    let mut stream = std::pin::pin!(watcher::watch_object(api, &name).default_backoff());
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Some(o)) => {
                let _ = tx.send(Seen::Present(Box::new(o)));
            }
            Ok(None) => {
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
