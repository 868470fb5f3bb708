//! The Leases this node coordinates through (its group's slots, and for a control-plane node the
//! control-plane Lease): what the agent sees of each, the Node of each holder it waits for, and a
//! keeper task per Lease that renews the ones this node holds.
//!
//! The Leases are watched (by name) only while this node wants one or holds one: an idle node
//! reads them once at start, to learn whether it still holds one from before a restart, and
//! then watches nothing of them until it is flagged.
//!
//! "This node holds it" is judged from this agent's own successful writes (a take, a renewal),
//! not from the watch alone: a Lease renewed by nobody for two thirds of its TTL, taken by
//! another node, or deleted, is lost at once, and the drain that needed it stops.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::select_all;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::Api;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Tasks;
use super::watch::{Latest, Seen, Watched};
use crate::lease::{self, HolderNode, LeaseClient, LeaseError, LeaseView, Observer, Record};
use crate::machine::Phase;
use crate::metrics::Metrics;
use crate::node;

/// A holder that has not renewed for this share of the TTL stops acting on its Lease: others
/// may take it once the whole TTL has passed on their clocks (client-go's renew deadline).
const RENEW_DEADLINE_SHARE: (u32, u32) = (2, 3);
/// After a failed renewal, try again this soon: the deadline leaves several attempts.
const RENEW_RETRY: Duration = Duration::from_secs(5);

/// What this node's hold on one Lease is, as its own writes tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tenure {
    /// Not held by this node.
    NotHeld,
    /// Held, and renewed within the renew deadline.
    Held,
    /// Lost: taken by another node, deleted, or not renewed in time (why).
    Lost(String),
}

/// What the main loop tells a keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// This node does not hold the Lease (never took it, or released it).
    No,
    /// This agent just wrote the Lease as held (a take, a renewal) at this instant.
    Written(Instant),
    /// The Lease names this node, but this process did not write it (it restarted): renew at
    /// once to prove it.
    Seen,
}

/// One Lease.
struct Slot {
    client: LeaseClient,
    /// The watch on the Lease, while engaged.
    watch: Option<Watched<Lease>>,
    seen: Latest<Lease>,
    observer: Observer,
    /// A watch on the Node of the Lease's holder, while another node holds it, this node wants
    /// it and the holder is suspect (late to renew, or its Lease deleted): a deleted,
    /// long-NotReady (but not rebooting) or, for a deleted Lease, idle holder frees it before its
    /// TTL. A holder that renews on time is not watched: none of that can apply to it yet.
    holder: Option<HolderWatch>,
    holder_node: HolderNode,
    /// Whether a holder NotReady for too long loses the Lease (never for the control-plane
    /// Lease: a control-plane node is NotReady exactly while it reboots).
    not_ready_takeover: bool,
    hold: watch::Sender<Hold>,
    /// Written by the keeper, and by a take (which proves the hold at once).
    tenure: Arc<watch::Sender<Tenure>>,
    tenure_rx: watch::Receiver<Tenure>,
}

/// Whether the Leases are watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Just started: whether this node still holds a Lease is not known yet.
    Unknown,
    /// Not watched: this node neither wants nor holds a Lease.
    Dormant,
    /// Watched, and the holders' Nodes too while this node wants a Lease.
    Engaged,
}

/// The Leases of one node.
pub(super) struct Slots {
    slots: Vec<Slot>,
    mode: Mode,
    /// Whether this node wanted a Lease at the last judgement.
    wants: bool,
    /// The Leases' namespace, for watches.
    leases: Api<Lease>,
    /// How many of `slots` are the group's (the control-plane Lease, if any, comes after).
    group: usize,
    /// The group slot this node holds, or would take, or waits for.
    slot: usize,
    me: String,
    ttl: Duration,
    not_ready_limit: Duration,
    watch_client: Client,
    metrics: Metrics,
}

/// How the Leases look to the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Judged {
    /// The Leases this node needs, judged together.
    pub(super) view: LeaseView,
    /// The slot an Acquire takes: the first needed one that is not ours.
    pub(super) take: usize,
    /// This node holds some of what it needs, not all (or holds a Lease it lost and should give
    /// back).
    pub(super) partly_held: bool,
}

/// Settings of the Leases.
pub(super) struct Settings<'a> {
    pub(super) names: Vec<String>,
    pub(super) group: usize,
    pub(super) namespace: &'a str,
    pub(super) me: &'a str,
    pub(super) ttl: Duration,
    pub(super) renew_every: Duration,
    pub(super) not_ready_limit: Duration,
    pub(super) stall: Duration,
}

impl Slots {
    /// A keeper for every Lease in `settings`, spawned into `tasks` (the watches start when the
    /// node wants or holds a Lease: see [`Slots::refresh`]). `stall` says
    /// since when the main loop has been unable to act; past `settings.stall` the keepers stop
    /// renewing, so that the Leases expire and others take over.
    pub(super) fn start(
        tasks: &mut Tasks,
        settings: Settings<'_>,
        client: &Client,
        watch_client: &Client,
        stall: &watch::Receiver<Option<Instant>>,
        metrics: &Metrics,
    ) -> Self {
        let (num, den) = RENEW_DEADLINE_SHARE;
        let deadline = settings.ttl * num / den;
        let slots = settings
            .names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let client = LeaseClient::new(
                    Api::namespaced(client.clone(), settings.namespace),
                    &name,
                    settings.me,
                    settings.ttl,
                );
                let (hold, hold_rx) = watch::channel(Hold::No);
                let (tenure, tenure_rx) = watch::channel(Tenure::NotHeld);
                let tenure = Arc::new(tenure);
                tasks.spawn(keep(
                    client.clone(),
                    hold_rx,
                    tenure.clone(),
                    stall.clone(),
                    Timing {
                        every: settings.renew_every,
                        deadline,
                        stall: settings.stall,
                    },
                    metrics.clone(),
                ));
                Slot {
                    client,
                    watch: None,
                    seen: Latest::default(),
                    observer: Observer::new(Instant::now()),
                    holder: None,
                    holder_node: HolderNode::Unknown,
                    not_ready_takeover: i < settings.group,
                    hold,
                    tenure,
                    tenure_rx,
                }
            })
            .collect();
        Self {
            slots,
            mode: Mode::Unknown,
            wants: false,
            leases: Api::namespaced(watch_client.clone(), settings.namespace),
            group: settings.group,
            slot: 0,
            me: settings.me.to_owned(),
            ttl: settings.ttl,
            not_ready_limit: settings.not_ready_limit,
            watch_client: watch_client.clone(),
            metrics: metrics.clone(),
        }
    }

    /// Starts watching the Leases when this node wants one (`wants`) or, on start, when one
    /// still names it (read once); then takes in what the watches delivered. A watch saying a
    /// Lease is gone while this agent knows it present (perhaps from its own fresh write) is
    /// believed only after a read.
    pub(super) async fn refresh(&mut self, wants: bool) -> anyhow::Result<()> {
        if self.mode != Mode::Engaged {
            if wants || (self.mode == Mode::Unknown && self.one_names_me().await?) {
                self.engage();
            } else {
                self.mode = Mode::Dormant;
                return Ok(());
            }
        }
        for slot in &mut self.slots {
            let Some(watch) = slot.watch.as_mut() else {
                continue;
            };
            let seen = watch.rx.borrow_and_update().clone();
            if slot.seen.contradicts(&seen) {
                let now = slot.client.get().await.context("reading the lease again")?;
                slot.seen
                    .offer(now.map_or(Seen::Missing, |l| Seen::Present(Box::new(l))));
            } else {
                slot.seen.offer(seen);
            }
        }
        Ok(())
    }

    /// Whether a Lease names this node, read once at start (it may have restarted while
    /// holding one: mid-cycle, or in the post-reboot health gate).
    async fn one_names_me(&self) -> anyhow::Result<bool> {
        for slot in &self.slots {
            let lease = slot
                .client
                .get()
                .await
                .context("reading the leases at start")?;
            if lease.is_some_and(|l| Record::from_lease(&l).holder.as_deref() == Some(&self.me)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Starts watching every Lease, judging each afresh (expiry is counted from now on).
    fn engage(&mut self) {
        let now = Instant::now();
        for slot in &mut self.slots {
            slot.watch = Some(Watched::start(
                self.leases.clone(),
                slot.client.name(),
                &self.metrics,
                "lease",
            ));
            slot.seen = Latest::default();
            slot.observer = Observer::new(now);
        }
        self.mode = Mode::Engaged;
        tracing::debug!("watching the leases");
    }

    /// Stops every watch: this node neither wants nor holds a Lease.
    fn disengage(&mut self) {
        for slot in &mut self.slots {
            slot.watch = None;
            slot.holder = None;
            slot.holder_node = HolderNode::Unknown;
            slot.seen = Latest::default();
        }
        self.mode = Mode::Dormant;
        tracing::debug!("no longer watching the leases");
    }

    /// An error if a watch task ended (supervision: the agent then exits).
    pub(super) fn check(&self) -> anyhow::Result<()> {
        for slot in &self.slots {
            if let Some(w) = &slot.watch {
                w.check()?;
            }
            if let Some(h) = &slot.holder {
                h.watch.check()?;
            }
        }
        Ok(())
    }

    /// The Leases judged for the state machine; `None` until every watch has synced and every
    /// Lease that names this node has been proven ours (or lost) by a renewal. `wants` says
    /// whether this node wants a Lease (only then are holders' Nodes watched). Unwatched, they
    /// are judged free: this node neither wants nor holds one, so nothing is taken on that view.
    /// Once this node neither wants nor holds one, the watches stop.
    pub(super) fn judge(&mut self, wants: bool, now: Instant) -> Option<Judged> {
        self.wants = wants;
        if self.mode != Mode::Engaged {
            return Some(Judged {
                view: LeaseView::Free,
                take: self.slot,
                partly_held: false,
            });
        }
        let mut views = Vec::with_capacity(self.slots.len());
        let mut confirming = false;
        // A Lease that names this node but whose hold was lost (not renewed in time): not ours
        // to act on, but ours to give back.
        let mut stale = false;
        for slot in &mut self.slots {
            let record = match &slot.seen.current {
                Seen::Present(l) => Some(Record::from_lease(l)),
                Seen::Missing => None,
                Seen::Unsynced => return None,
            };
            slot.observer.observe(record.as_ref(), now);
            let mut view = slot.observer.view(&self.me, self.ttl, now);
            let tenure = slot.tenure_rx.borrow_and_update().clone();
            if view == LeaseView::Mine {
                match &tenure {
                    Tenure::Held => {}
                    Tenure::Lost(_) => {
                        view = LeaseView::Free;
                        stale = true;
                    }
                    Tenure::NotHeld => {
                        slot.hold.send_if_modified(|h| {
                            let start = *h == Hold::No;
                            if start {
                                *h = Hold::Seen;
                            }
                            start
                        });
                        confirming = true;
                    }
                }
            }
            let suspect = slot
                .observer
                .suspect_at(&self.me, self.ttl)
                .is_some_and(|t| now >= t);
            match &mut view {
                LeaseView::Held { holder, expired } if wants && suspect => {
                    if slot.holder.as_ref().is_none_or(|h| h.name != *holder) {
                        slot.holder = Some(HolderWatch::start(
                            &self.watch_client,
                            holder,
                            &self.metrics,
                        ));
                    }
                    if let Some(h) = slot.holder.as_mut() {
                        slot.holder_node = h.observe(now);
                    }
                    if !*expired
                        && slot.observer.holder_gone(
                            slot.holder_node,
                            slot.not_ready_takeover,
                            self.not_ready_limit,
                            now,
                        )
                    {
                        tracing::warn!(%holder, lease = slot.client.name(), node = ?slot.holder_node, deleted = slot.observer.deleted(), "the lease holder's node is gone or out of its cycle: the lease may be taken over");
                        *expired = true;
                    }
                }
                _ => {
                    slot.holder = None;
                    slot.holder_node = HolderNode::Unknown;
                }
            }
            views.push(view);
        }
        if confirming {
            return None;
        }
        let holding = stale
            || views.contains(&LeaseView::Mine)
            || self
                .slots
                .iter()
                .any(|s| *s.tenure_rx.borrow() != Tenure::NotHeld);
        if !wants && !holding {
            self.disengage();
        }
        let groups = &views[..self.group];
        let start = lease::start_slot(&self.me, groups.len());
        self.slot = lease::pick_slot(groups, start);
        let needed = self.needed();
        let needed_views: Vec<LeaseView> = needed.iter().map(|&i| views[i].clone()).collect();
        let (view, decider) = lease::combine(&needed_views);
        Some(Judged {
            take: decider.map_or(self.slot, |k| needed[k]),
            partly_held: stale
                || (view != LeaseView::Mine && needed_views.contains(&LeaseView::Mine)),
            view,
        })
    }

    /// The Leases this node needs at once: the control-plane Lease first (so a control-plane
    /// node waiting for it holds nothing of its group's), then its group slot.
    fn needed(&self) -> Vec<usize> {
        (self.group..self.slots.len()).chain([self.slot]).collect()
    }

    /// Takes Lease `i` (free, ours, or as judged expired), owned by this node's Node. `Ok(false)`
    /// when another node was faster.
    pub(super) async fn acquire(
        &mut self,
        i: usize,
        owner: Option<&OwnerReference>,
    ) -> anyhow::Result<bool> {
        anyhow::ensure!(
            self.mode == Mode::Engaged,
            "not taking a lease that is not watched"
        );
        let slot = &mut self.slots[i];
        let version = slot
            .seen
            .current
            .get()
            .and_then(|l| l.metadata.resource_version.clone())
            .unwrap_or_default();
        let delay = lease::take_delay(&self.me, i, self.group, &version);
        if let Some(w) = slot.watch.as_mut().filter(|_| !delay.is_zero())
            && tokio::time::timeout(delay, w.rx.changed()).await.is_ok()
        {
            // The Lease changed while this node held back (another node most likely took it):
            // decide again on what it is now.
            tracing::debug!(
                lease = slot.client.name(),
                "the lease changed before this node took it"
            );
            return Ok(false);
        }
        // The Lease as judged: a deleted one's last record is not what is there now (nothing).
        let judged = if slot.observer.deleted() {
            None
        } else {
            slot.observer.last()
        };
        match slot
            .client
            .acquire_from(judged, owner, slot.seen.known())
            .await
        {
            Ok(lease) => {
                tracing::info!(node = %self.me, lease = slot.client.name(), "took the lease");
                slot.hold.send_replace(Hold::Written(Instant::now()));
                slot.tenure.send_replace(Tenure::Held);
                slot.seen.offer(Seen::Present(Box::new(lease)));
                Ok(true)
            }
            Err(LeaseError::Taken(current)) => {
                // Lost a race: record the Lease as it just read it (the watch may lag), so the
                // next decision sees it held and another slot may be tried at once.
                let holder = Record::from_lease(&current).holder.unwrap_or_default();
                tracing::info!(%holder, lease = slot.client.name(), "another node took the lease first");
                slot.seen.offer(Seen::Present(current));
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fencing, right before a reboot: renews every Lease this node needs. Success proves, at
    /// this instant, that this node holds all of them. Returns why not otherwise.
    pub(super) async fn fence(&mut self) -> Result<(), String> {
        for i in self.needed() {
            let slot = &mut self.slots[i];
            if *slot.tenure.borrow() != Tenure::Held {
                return Err(format!("lease {} is not held", slot.client.name()));
            }
            match slot.client.renew_from(slot.seen.known()).await {
                Ok(l) => {
                    slot.hold.send_replace(Hold::Written(Instant::now()));
                    slot.seen.offer(Seen::Present(Box::new(l)));
                }
                Err(e) => {
                    self.metrics.errors.with_label_values(&["fence"]).inc();
                    return Err(format!("lease {}: {e}", slot.client.name()));
                }
            }
        }
        Ok(())
    }

    /// Releases every Lease this node holds (by its last view or its own writes).
    pub(super) async fn release(&mut self) -> anyhow::Result<()> {
        let me = self.me.clone();
        let mut held = self.held();
        if held.is_empty() {
            held.push(self.slot);
        }
        for i in held {
            let slot = &mut self.slots[i];
            // Stop renewing first: a release that fails leaves the Lease to expire.
            slot.hold.send_replace(Hold::No);
            let lease = slot
                .client
                .release_from(slot.seen.known())
                .await
                .context("releasing the lease")?;
            if let Some(l) = lease {
                if Record::from_lease(&l).holder.is_none() {
                    tracing::info!(node = %me, lease = slot.client.name(), "released the lease");
                }
                slot.seen.offer(Seen::Present(Box::new(l)));
            }
        }
        Ok(())
    }

    /// The Leases this node holds, by its last view of them or its own writes.
    pub(super) fn held(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                *s.tenure.borrow() == Tenure::Held
                    || s.seen.current.get().is_some_and(|l| {
                        Record::from_lease(l).holder.as_deref() == Some(self.me.as_str())
                    })
            })
            .collect()
    }

    /// The names of the Leases this node holds, as [`Slots::held`] judges them.
    pub(super) fn held_names(&self) -> Vec<&str> {
        self.held()
            .into_iter()
            .map(|i| self.slots[i].client.name())
            .collect()
    }

    /// Resolves when a Lease, a watched holder's Node or a keeper's verdict changes, or a
    /// watch ended (which [`Slots::check`] then reports).
    pub(super) async fn changed(&mut self) {
        let mut all: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
        for slot in &mut self.slots {
            if let Some(w) = slot.watch.as_mut() {
                all.push(Box::pin(async {
                    let _ = w.rx.changed().await;
                }));
            }
            all.push(Box::pin(async {
                let _ = slot.tenure_rx.changed().await;
            }));
            if let Some(h) = slot.holder.as_mut() {
                all.push(Box::pin(async {
                    let _ = h.watch.rx.changed().await;
                }));
            }
        }
        if all.is_empty() {
            std::future::pending::<()>().await;
        }
        select_all(all).await;
    }

    /// When a judgement may change with time alone: a holder's Lease expiring, a holder
    /// becoming suspect (while this node wants a Lease), or a NotReady holder's limit passing.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        if self.mode != Mode::Engaged {
            return None;
        }
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    s.observer.expires_at(&self.me, self.ttl),
                    s.observer
                        .suspect_at(&self.me, self.ttl)
                        .filter(|t| self.wants && s.holder.is_none() && *t > Instant::now()),
                    s.observer.holder_gone_at(
                        s.holder_node,
                        s.not_ready_takeover,
                        self.not_ready_limit,
                    ),
                ]
            })
            .flatten()
            .min()
    }
}

/// How a keeper renews.
#[derive(Debug, Clone, Copy)]
struct Timing {
    every: Duration,
    deadline: Duration,
    stall: Duration,
}

/// Renews one Lease while this node holds it, and says when the hold is lost: taken or deleted
/// (a renewal finds another holder or none), or not renewed within the deadline. Stops renewing
/// while the main loop has been stalled for too long, so that the Lease expires.
async fn keep(
    lease: LeaseClient,
    mut hold: watch::Receiver<Hold>,
    tenure: Arc<watch::Sender<Tenure>>,
    stall: watch::Receiver<Option<Instant>>,
    timing: Timing,
    metrics: Metrics,
) -> (&'static str, anyhow::Result<()>) {
    let name = lease.name().to_owned();
    'held: loop {
        // Wait for a hold.
        let (mut last_ok, mut next) = loop {
            match *hold.borrow_and_update() {
                Hold::Written(t) => {
                    tenure.send_replace(Tenure::Held);
                    break (t, timing.every);
                }
                Hold::Seen => break (Instant::now(), Duration::ZERO),
                Hold::No => {}
            }
            if hold.changed().await.is_err() {
                return ("lease keeper", Ok(()));
            }
        };
        let mut stalled_logged = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                r = hold.changed() => {
                    if r.is_err() {
                        return ("lease keeper", Ok(()));
                    }
                    match *hold.borrow_and_update() {
                        Hold::No => {
                            tenure.send_replace(Tenure::NotHeld);
                            continue 'held;
                        }
                        Hold::Written(t) => {
                            tenure.send_replace(Tenure::Held);
                            (last_ok, next) = (t, timing.every);
                        }
                        Hold::Seen => {}
                    }
                    continue;
                }
            }
            let stalled = (*stall.borrow()).is_some_and(|t| t.elapsed() >= timing.stall);
            if stalled {
                if !stalled_logged {
                    tracing::warn!(lease = %name, "the agent cannot act: no longer renewing, so that the lease expires and others may go");
                    stalled_logged = true;
                }
                next = timing.every;
            } else {
                stalled_logged = false;
                match lease.renew().await {
                    Ok(_) => {
                        last_ok = Instant::now();
                        next = timing.every;
                        tenure.send_replace(Tenure::Held);
                        tracing::debug!(lease = %name, "renewed the lease");
                    }
                    Err(LeaseError::HeldByOther(holder)) => {
                        let why = if holder.is_empty() {
                            "it was released or deleted by someone else".to_owned()
                        } else {
                            format!("{holder} holds it now")
                        };
                        tracing::warn!(lease = %name, reason = %why, "the lease is lost");
                        tenure.send_replace(Tenure::Lost(why));
                        lost(&mut hold, &tenure).await;
                        continue 'held;
                    }
                    Err(e) => {
                        metrics.errors.with_label_values(&["lease"]).inc();
                        tracing::warn!(lease = %name, error = %e, "could not renew the lease");
                        next = RENEW_RETRY.min(timing.every);
                    }
                }
            }
            if last_ok.elapsed() > timing.deadline {
                let why = format!("not renewed for {}", node::human(timing.deadline));
                tracing::warn!(lease = %name, reason = %why, "the lease is lost");
                tenure.send_replace(Tenure::Lost(why));
                lost(&mut hold, &tenure).await;
                continue 'held;
            }
        }
    }
}

/// After a loss, waits until the main loop writes the Lease as held again (a new take, not the
/// write the loss came after); a release on the way clears the loss.
async fn lost(hold: &mut watch::Receiver<Hold>, tenure: &watch::Sender<Tenure>) {
    hold.borrow_and_update();
    while hold.changed().await.is_ok() {
        match *hold.borrow_and_update() {
            Hold::Written(_) => return,
            Hold::No => {
                tenure.send_replace(Tenure::NotHeld);
            }
            Hold::Seen => {}
        }
    }
}

/// A watch on the current holder's Node, replaced when the holder changes.
struct HolderWatch {
    name: String,
    watch: Watched<Node>,
    not_ready_since: Option<Instant>,
}

impl HolderWatch {
    fn start(client: &Client, name: &str, metrics: &Metrics) -> Self {
        Self {
            name: name.to_owned(),
            watch: Watched::start(Api::all(client.clone()), name, metrics, "holder node"),
            not_ready_since: None,
        }
    }

    /// What is known of the holder's Node now. An unreadable phase counts as mid-cycle.
    fn observe(&mut self, now: Instant) -> HolderNode {
        match &*self.watch.rx.borrow_and_update() {
            Seen::Unsynced => HolderNode::Unknown,
            Seen::Missing => HolderNode::Missing,
            Seen::Present(n) => {
                if node::is_ready(n) {
                    self.not_ready_since = None;
                } else {
                    self.not_ready_since.get_or_insert(now);
                }
                HolderNode::Seen {
                    not_ready_since: self.not_ready_since,
                    phase: node::state_of(n).map_or(Phase::Draining, |s| s.phase),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Exact-call tests of the keeper and the fence, on a paused clock, against a scripted API.
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower_test::mock::{self, Handle};

    type Mock = Handle<Request<Body>, Response<Body>>;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/baton";
    const TTL: Duration = Duration::from_secs(30);

    fn client() -> (LeaseClient, Mock) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "ns");
        (
            LeaseClient::new(Api::namespaced(client, "ns"), "baton", "me", TTL),
            handle,
        )
    }

    fn lease(holder: &str, rv: &str) -> Response<Body> {
        let body = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "baton", "namespace": "ns", "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 30,
                     "renewTime": "2026-01-01T00:00:00.000000Z"}});
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn unavailable() -> Response<Body> {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": 503, "reason": "ServiceUnavailable", "message": "etcd leader changed"});
        Response::builder()
            .status(503)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    async fn expect(h: &mut Mock, method: &str, reply: Response<Body>) {
        let (req, send) = h.next_request().await.expect("a request");
        assert_eq!((req.method().as_str(), req.uri().path()), (method, PATH));
        send.send_response(reply);
    }

    struct Keeper {
        hold: watch::Sender<Hold>,
        tenure: watch::Receiver<Tenure>,
        _stall: watch::Sender<Option<Instant>>,
    }

    fn keeper(lease: LeaseClient) -> Keeper {
        let (hold, hold_rx) = watch::channel(Hold::No);
        let (tenure_tx, tenure) = watch::channel(Tenure::NotHeld);
        let (stall, stall_rx) = watch::channel(None);
        tokio::spawn(keep(
            lease,
            hold_rx,
            Arc::new(tenure_tx),
            stall_rx,
            Timing {
                every: TTL / 3,
                deadline: TTL * 2 / 3,
                stall: Duration::from_secs(60),
            },
            Metrics::new().unwrap(),
        ));
        Keeper {
            hold,
            tenure,
            _stall: stall,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_that_keep_failing_lose_the_lease_at_the_deadline_not_at_the_ttl() {
        let (lease, mut h) = client();
        let mut k = keeper(lease);
        let taken = Instant::now();
        k.hold.send_replace(Hold::Written(taken));
        k.tenure.wait_for(|t| *t == Tenure::Held).await.unwrap();
        // Every renewal fails (a GET that times out, an API server that answers 503).
        let api = async {
            loop {
                let Some((_, send)) = h.next_request().await else {
                    return;
                };
                send.send_response(unavailable());
            }
        };
        tokio::select! {
            () = api => panic!("the keeper stopped asking"),
            t = k.tenure.wait_for(|t| matches!(t, Tenure::Lost(_))) => {
                let why = t.unwrap().clone();
                assert_eq!(why, Tenure::Lost("not renewed for 20s".into()));
            }
        }
        let lost_after = taken.elapsed();
        assert!(
            lost_after > TTL * 2 / 3 && lost_after < TTL,
            "lost after {lost_after:?}: before others may take it over"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_finds_another_holder_loses_the_lease_at_once() {
        let (lease, mut h) = client();
        let mut k = keeper(lease);
        k.hold.send_replace(Hold::Written(Instant::now()));
        expect(&mut h, "GET", lease_held_by("other")).await;
        let t = k
            .tenure
            .wait_for(|t| matches!(t, Tenure::Lost(_)))
            .await
            .unwrap()
            .clone();
        assert_eq!(t, Tenure::Lost("other holds it now".into()));
        // A release clears the loss; a new take holds again.
        k.hold.send_replace(Hold::No);
        k.tenure.wait_for(|t| *t == Tenure::NotHeld).await.unwrap();
        k.hold.send_replace(Hold::Written(Instant::now()));
        k.tenure.wait_for(|t| *t == Tenure::Held).await.unwrap();
    }

    fn lease_held_by(holder: &str) -> Response<Body> {
        lease(holder, "7")
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_this_process_did_not_write_is_renewed_before_it_counts_as_held() {
        let (lease_client, mut h) = client();
        let mut k = keeper(lease_client);
        k.hold.send_replace(Hold::Seen);
        // Renewed at once: a read, then the write.
        expect(&mut h, "GET", lease("me", "5")).await;
        assert_eq!(*k.tenure.borrow(), Tenure::NotHeld, "not before the write");
        expect(&mut h, "PUT", lease("me", "6")).await;
        k.tenure.wait_for(|t| *t == Tenure::Held).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_agent_stops_renewing_so_that_its_lease_expires() {
        let (lease, mut h) = client();
        let (hold, hold_rx) = watch::channel(Hold::No);
        let (tenure_tx, mut tenure) = watch::channel(Tenure::NotHeld);
        let (stall, stall_rx) = watch::channel(None);
        tokio::spawn(keep(
            lease,
            hold_rx,
            Arc::new(tenure_tx),
            stall_rx,
            Timing {
                every: TTL / 3,
                deadline: TTL * 2 / 3,
                stall: Duration::from_secs(5),
            },
            Metrics::new().unwrap(),
        ));
        hold.send_replace(Hold::Written(Instant::now()));
        tenure.wait_for(|t| *t == Tenure::Held).await.unwrap();
        // The main loop has been failing for longer than the stall limit.
        stall.send_replace(Some(Instant::now() - Duration::from_secs(10)));
        // No request at all until the hold is lost at the deadline.
        tokio::select! {
            r = h.next_request() => panic!("renewed while stalled: {:?}", r.map(|(r, _)| r.uri().clone())),
            t = tenure.wait_for(|t| matches!(t, Tenure::Lost(_))) => { t.unwrap(); }
        }
    }

    fn not_found() -> Response<Body> {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": 404, "reason": "NotFound", "message": "leases \"baton\" not found"});
        Response::builder()
            .status(404)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    /// One engaged slot over `lease`, whose watch is `rx`.
    fn one_slot(lease: LeaseClient, rx: watch::Receiver<Seen<Lease>>) -> Slots {
        let (hold, _) = watch::channel(Hold::No);
        let (tenure, tenure_rx) = watch::channel(Tenure::NotHeld);
        let (service, _unused) = mock::pair::<Request<Body>, Response<Body>>();
        let spare = Client::new(service, "ns");
        Slots {
            mode: Mode::Engaged,
            wants: true,
            leases: Api::namespaced(spare.clone(), "ns"),
            slots: vec![Slot {
                client: lease,
                watch: Some(Watched::fake(rx)),
                seen: Latest::default(),
                observer: Observer::new(Instant::now()),
                holder: None,
                holder_node: HolderNode::Unknown,
                not_ready_takeover: true,
                hold,
                tenure: Arc::new(tenure),
                tenure_rx,
            }],
            group: 1,
            slot: 0,
            me: "me".into(),
            ttl: TTL,
            not_ready_limit: Duration::from_secs(60),
            watch_client: spare,
            metrics: Metrics::new().unwrap(),
        }
    }

    fn lease_object(holder: &str, rv: &str) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "baton", "namespace": "ns", "resourceVersion": rv},
            "spec": {"holderIdentity": holder},
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_deletion_from_the_watch_is_read_again_before_it_undoes_a_fresh_write() {
        let (lease_client, mut h) = client();
        let (tx, rx) = watch::channel(Seen::Unsynced);
        let mut slots = one_slot(lease_client, rx);
        // This agent just created the Lease (its own write, version 10)...
        slots.slots[0]
            .seen
            .offer(Seen::Present(Box::new(lease_object("me", "10"))));
        // ...and the watch, lagging, reports a deletion from before it.
        tx.send_replace(Seen::Missing);
        // Read again (a deadline on the paused clock: the read must come).
        let api = tokio::time::timeout(Duration::from_secs(10), async {
            expect(&mut h, "GET", lease("me", "10")).await;
        });
        let (refreshed, asked) = tokio::join!(slots.refresh(true), api);
        refreshed.unwrap();
        asked.expect("no read before believing the deletion");
        assert!(
            slots.slots[0].seen.current.get().is_some(),
            "the fresh write was rolled back by a stale deletion"
        );
        // A deletion the read confirms is believed.
        tx.send_replace(Seen::Missing);
        let api = async { expect(&mut h, "GET", not_found()).await };
        let (refreshed, ()) = tokio::join!(slots.refresh(true), api);
        refreshed.unwrap();
        assert!(matches!(slots.slots[0].seen.current, Seen::Missing));
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_refuses_a_reboot_when_another_node_holds_the_lease() {
        // What the fence protects against: this node still believes it holds the Lease (its
        // keeper has not renewed since), but another node took it.
        let (lease, mut h) = client();
        let (_tx, rx) = watch::channel(Seen::Unsynced);
        let mut slots = one_slot(lease, rx);
        slots.slots[0].tenure.send_replace(Tenure::Held);
        let api = async {
            expect(&mut h, "GET", lease_held_by("other")).await;
        };
        let (fenced, ()) = tokio::join!(slots.fence(), api);
        let why = fenced.unwrap_err();
        assert!(why.contains("held by other"), "{why}");
        // And nothing else was asked: no write.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), h.next_request())
                .await
                .is_err()
        );
    }
}
