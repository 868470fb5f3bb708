//! The baton: one `coordination.k8s.io/v1` Lease whose holder is the node allowed to disrupt
//! itself. The decision "may I take it?" is pure ([`Observer`]); the writes ([`LeaseClient`])
//! always carry the resourceVersion they were based on, so a 409 means someone else wrote first:
//! re-read, never overwrite.
//!
//! Expiry is judged as client-go does: by how long the observed `renewTime` has stayed unchanged
//! on this agent's monotonic clock, not by comparing wall clocks across nodes; the duration is the
//! holder's declared one, capped by this agent's `--lock-ttl`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

use crate::machine::Phase;

/// Who holds the Lease, from this agent's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseView {
    /// This node holds it.
    Mine,
    /// Nobody holds it.
    Free,
    /// Another node holds it; `expired` once it stopped renewing for longer than its duration.
    Held {
        /// The holder's identity (its node name).
        holder: String,
        /// Whether the holder stopped renewing long enough for others to take over.
        expired: bool,
    },
}

impl LeaseView {
    /// Whether this node may try to take the Lease.
    pub fn may_take(&self) -> bool {
        matches!(
            self,
            LeaseView::Free | LeaseView::Held { expired: true, .. }
        )
    }
}

/// The Lease names of `concurrency` slots: `name` (so one slot keeps the historical name),
/// then `name-1`, `name-2`, ...
pub fn slot_names(name: &str, concurrency: u16) -> Vec<String> {
    (0..concurrency.max(1))
        .map(|i| {
            if i == 0 {
                name.to_owned()
            } else {
                format!("{name}-{i}")
            }
        })
        .collect()
}

/// The Lease name for the group whose label value is `value` (`--group-by-label`): a valid
/// name whatever the value holds, distinct for distinct values (a short hash keeps apart values
/// that clean up alike). Nodes without the label share the group `none`.
pub fn group_lock_name(lock_name: &str, value: &str) -> String {
    if value.is_empty() {
        return format!("{lock_name}-none");
    }
    let clean: String = value
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-');
    let short: String = clean.chars().take(40).collect();
    let mut h: u32 = 0x811c_9dc5;
    for b in value.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("{lock_name}-{short}-{:06x}", h & 0xff_ffff)
}

/// Which slot this agent works with: the one it holds; else the first it may take, looking from
/// slot `start` on (agents start at different slots, so they rarely race for the same one);
/// else the first (to wait on). "May I take a slot?" is then [`LeaseView::may_take`] of it.
pub fn pick_slot(views: &[LeaseView], start: usize) -> usize {
    let n = views.len().max(1);
    views
        .iter()
        .position(|v| *v == LeaseView::Mine)
        .or_else(|| {
            (0..n)
                .map(|i| (start + i) % n)
                .find(|&i| views[i].may_take())
        })
        .unwrap_or(0)
}

/// The Leases one node needs at once (its slot, and for a control-plane node the control-plane
/// Lease), judged together: `Mine` when all are ours; else held by the first other holder that
/// has not expired; else takeable. Also returns the index of the Lease that decides (the one
/// to wait on, or the first to take), `None` when all are ours.
pub fn combine(views: &[LeaseView]) -> (LeaseView, Option<usize>) {
    if let Some(i) = views
        .iter()
        .position(|v| matches!(v, LeaseView::Held { expired: false, .. }))
    {
        return (views[i].clone(), Some(i));
    }
    match views.iter().position(|v| *v != LeaseView::Mine) {
        Some(i) => (views[i].clone(), Some(i)),
        None => (LeaseView::Mine, None),
    }
}

/// Node labels that mark a control-plane node (the second is the pre-1.24 name, still set by
/// some distributions).
pub const CONTROL_PLANE_LABELS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// Which Leases a node coordinates through, from its labels: the base name of its group's
/// slots, and whether it also needs the control-plane Lease (only when slots or groups alone
/// could let two control-plane nodes go at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordination {
    /// The name of the first slot (`--lock-name`, or the group's).
    pub base: String,
    /// Whether the control-plane Lease is needed too.
    pub control_plane: bool,
}

impl Coordination {
    /// The coordination for a node with `labels`.
    pub fn for_node(
        lock_name: &str,
        concurrency: u16,
        group_by_label: Option<&str>,
        serialize_control_plane: bool,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        let base = match group_by_label {
            None => lock_name.to_owned(),
            Some(key) => group_lock_name(lock_name, labels.get(key).map_or("", String::as_str)),
        };
        let parallel = concurrency > 1 || group_by_label.is_some();
        Self {
            base,
            control_plane: parallel
                && serialize_control_plane
                && CONTROL_PLANE_LABELS.iter().any(|l| labels.contains_key(*l)),
        }
    }
}

/// The name of the extra Lease every control-plane node also holds during its cycle, so that
/// groups or slots never take two control-plane nodes at once.
pub fn control_plane_lock_name(lock_name: &str) -> String {
    format!("{lock_name}-control-plane")
}

/// FNV-1a over `parts`, then mixed (splitmix64's finalizer: names that differ in their last
/// character only still spread evenly): stable across processes and releases, unlike std's
/// hasher.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A stable starting slot for node `me` among `n` slots.
pub fn start_slot(me: &str, n: usize) -> usize {
    let h = fnv(&[me]);
    usize::try_from(h % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
}

/// A node whose starting slot is not the one that just became free holds back this long before
/// taking it: longer than a watch event takes to reach the other waiting agents, so that a node
/// whose starting slot it is takes it first and the others see that before they write.
const TAKE_STEP: Duration = Duration::from_millis(100);
/// ...plus up to this much, different per node and per release: the nodes that hold back do not
/// then all write at the same instant either.
const TAKE_SPREAD: Duration = Duration::from_millis(200);
/// The nodes whose starting slot it is spread their takes over this much (about a tenth of the
/// waiting nodes start at each slot): the first take reaches most of the others before they
/// write, for at most this much added to a hand-off.
const FIRST_SPREAD: Duration = Duration::from_millis(50);

/// How long node `me` holds back before taking group slot `slot` (of `n`), free at Lease
/// version `version`: up to [`FIRST_SPREAD`] when it is the node's starting slot, none for a
/// Lease that is not a group slot (`slot` ≥ `n`: the control-plane Lease). When every waiting
/// node wrote at once, all but one write were refused (409) and each refusal read the Lease
/// again: a hand-off cost two requests per waiting node.
pub fn take_delay(me: &str, slot: usize, n: usize, version: &str) -> Duration {
    if slot >= n {
        return Duration::ZERO;
    }
    let permille = u32::try_from(fnv(&[me, version]) % 1000).unwrap_or(0);
    if slot == start_slot(me, n) {
        FIRST_SPREAD * permille / 1000
    } else {
        TAKE_STEP + TAKE_SPREAD * permille / 1000
    }
}

/// The parts of a Lease that matter for the decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The holder; `None` or empty means free.
    pub holder: Option<String>,
    /// The last renewal, as written by the holder (compared for change only, never to a clock).
    pub renew_time: Option<String>,
    /// The holder's declared lease duration (`None` when absent, zero or negative).
    pub duration: Option<Duration>,
}

impl Record {
    /// Extracts the record from a Lease object.
    pub fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string()),
            duration: spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        }
    }

    /// How long the holder may go without renewing before others may take over: its declared
    /// duration, but never longer than `local_ttl` (`--lock-ttl`), so a Lease written with a
    /// huge duration cannot hold everyone up; `local_ttl` when it declared none.
    pub fn ttl(&self, local_ttl: Duration) -> Duration {
        self.duration.map_or(local_ttl, |d| d.min(local_ttl))
    }
}

/// How often a holder with this TTL renews: three renewals fit in one TTL, so one or two failed
/// writes never cost the lock; at most every minute, to keep API writes rare.
pub fn renew_interval(ttl: Duration) -> Duration {
    (ttl / 3).min(Duration::from_secs(60))
}

/// How late a renewal may be before its holder is suspect: one failed renewal retried (the
/// keeper retries after 5 s) is not.
const OVERDUE_GRACE: Duration = Duration::from_secs(5);

/// Tracks when the observed Lease last changed, on the local monotonic clock.
#[derive(Debug, Clone)]
pub struct Observer {
    last: Option<Record>,
    changed_at: Instant,
    /// The Lease was deleted while held: `last` is its final record, which nobody renews now.
    deleted: bool,
}

impl Observer {
    /// An observer that has seen nothing yet.
    pub fn new(now: Instant) -> Self {
        Self {
            last: None,
            changed_at: now,
            deleted: false,
        }
    }

    /// Records an observation of the Lease (`None`: it does not exist).
    ///
    /// A Lease deleted while held (by hand; baton releases by clearing the holder) keeps counting
    /// as held by its last holder, who is no longer renewing: it expires like any silent holder's,
    /// or earlier once that holder's Node shows it out of its cycle ([`Observer::holder_gone`]).
    /// Otherwise the next node could create it and start while the last holder still drains.
    pub fn observe(&mut self, record: Option<&Record>, now: Instant) {
        let Some(record) = record else {
            let held = self.last.as_ref().is_some_and(|l| l.holder.is_some());
            if !held {
                self.changed_at = now;
                self.last = Some(Record::default());
            }
            self.deleted = held;
            return;
        };
        let changed = self.deleted
            || self.last.as_ref().is_none_or(|last| {
                last.holder != record.holder || last.renew_time != record.renew_time
            });
        if changed {
            self.changed_at = now;
        }
        self.deleted = false;
        self.last = Some(record.clone());
    }

    /// The Lease as seen by node `me`; the holder expires after [`Record::ttl`] of `local_ttl`.
    /// A deleted Lease is no longer `me`'s.
    pub fn view(&self, me: &str, local_ttl: Duration, now: Instant) -> LeaseView {
        let Some(record) = &self.last else {
            return LeaseView::Free;
        };
        match &record.holder {
            None => LeaseView::Free,
            Some(h) if h == me && self.deleted => LeaseView::Free,
            Some(h) if h == me => LeaseView::Mine,
            Some(h) => LeaseView::Held {
                holder: h.clone(),
                expired: now.duration_since(self.changed_at) > record.ttl(local_ttl),
            },
        }
    }

    /// When the current holder's Lease would expire if it stops renewing now (`None` when the
    /// Lease is free or ours).
    pub fn expires_at(&self, me: &str, local_ttl: Duration) -> Option<Instant> {
        let record = self.last.as_ref()?;
        match &record.holder {
            Some(h) if h != me => Some(self.changed_at + record.ttl(local_ttl)),
            _ => None,
        }
    }

    /// The last observed record (the final one of a deleted Lease).
    pub fn last(&self) -> Option<&Record> {
        self.last.as_ref()
    }

    /// Whether the Lease was deleted while held.
    pub fn deleted(&self) -> bool {
        self.deleted
    }
}

/// What this agent knows of the holder's Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderNode {
    /// Not looked at yet.
    Unknown,
    /// The Node does not exist (deleted).
    Missing,
    /// The Node as last seen.
    Seen {
        /// Since when it has been NotReady (local monotonic clock); `None` while Ready.
        not_ready_since: Option<Instant>,
        /// Its baton phase (`baton.dev/phase`).
        phase: Phase,
    },
}

impl Observer {
    /// Whether the Lease may be taken before its TTL because of what its holder's Node shows (a
    /// stuck lock is the first complaint about kured):
    /// - the Node was deleted;
    /// - the Lease was deleted and its last holder's Node is out of its cycle;
    /// - with `not_ready_takeover`, the Node has been NotReady for longer than `not_ready_limit`
    ///   with no renewal seen meanwhile, and it is not rebooting: a rebooting node is NotReady by
    ///   design, for as long as its firmware and disks take, and only its TTL (or its Node's
    ///   deletion) frees its Lease. The control-plane Lease never uses this rule.
    pub fn holder_gone(
        &self,
        node: HolderNode,
        not_ready_takeover: bool,
        not_ready_limit: Duration,
        now: Instant,
    ) -> bool {
        match node {
            HolderNode::Missing => true,
            HolderNode::Seen {
                phase: Phase::Idle, ..
            } if self.deleted => true,
            _ => self
                .holder_gone_at(node, not_ready_takeover, not_ready_limit)
                .is_some_and(|t| now > t),
        }
    }

    /// When another node's hold becomes suspect, if it is held: its next renewal is overdue
    /// (after [`renew_interval`] of its TTL, and a grace), or at once for a Lease deleted while
    /// held. Only a suspect holder's Node is watched: one that renews on time is neither gone
    /// nor NotReady-without-renewing, so the takeover rules cannot apply to it yet.
    pub fn suspect_at(&self, me: &str, local_ttl: Duration) -> Option<Instant> {
        let record = self.last.as_ref()?;
        match &record.holder {
            Some(h) if h != me && self.deleted => Some(self.changed_at),
            Some(h) if h != me => {
                Some(self.changed_at + renew_interval(record.ttl(local_ttl)) + OVERDUE_GRACE)
            }
            _ => None,
        }
    }

    /// When [`Observer::holder_gone`] would turn true for a NotReady holder, if it will.
    pub fn holder_gone_at(
        &self,
        node: HolderNode,
        not_ready_takeover: bool,
        not_ready_limit: Duration,
    ) -> Option<Instant> {
        match node {
            HolderNode::Seen {
                not_ready_since: Some(since),
                phase,
            } if not_ready_takeover && phase != Phase::Rebooting => {
                Some(since.max(self.changed_at) + not_ready_limit)
            }
            _ => None,
        }
    }
}

/// Why a Lease write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else holds the Lease (or took it while we decided).
    #[error("the lease is held by {0}")]
    HeldByOther(String),
    /// An acquisition found another node holding the Lease: the Lease as it read it (so the
    /// caller need not read it again).
    #[error("the lease is held by {}", Record::from_lease(.0).holder.unwrap_or_default())]
    Taken(Box<Lease>),
    /// The write lost a race (409 Conflict) every time it was retried.
    #[error("the lease kept changing under our writes")]
    Conflict,
    /// The API request failed.
    #[error("lease request failed")]
    Api(#[from] kube::Error),
}

/// How many times a write is retried after a 409 (each time from a fresh read).
const CONFLICT_RETRIES: usize = 3;

/// Reads and writes the Lease for node `me`.
#[derive(Clone)]
pub struct LeaseClient {
    api: Api<Lease>,
    name: String,
    me: String,
    ttl: Duration,
}

impl std::fmt::Debug for LeaseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseClient")
            .field("name", &self.name)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseClient {
    /// A client for Lease `name` in the API's namespace, held as `me` for `ttl`.
    pub fn new(api: Api<Lease>, name: &str, me: &str, ttl: Duration) -> Self {
        Self {
            api,
            name: name.to_owned(),
            me: me.to_owned(),
            ttl,
        }
    }

    /// Reads the Lease as it is now.
    pub async fn get(&self) -> Result<Option<Lease>, LeaseError> {
        Ok(self.api.get_opt(&self.name).await?)
    }

    /// The Lease a write attempt starts from: on the first attempt, `known` (what the caller
    /// last saw of it: `Some(None)` for none) if given, so the write needs no read first (its
    /// resourceVersion still guards it: a 409 means read it again); else a read.
    async fn current(
        &self,
        known: Option<Option<&Lease>>,
        attempt: usize,
    ) -> Result<(Option<Lease>, bool), kube::Error> {
        match known {
            Some(k) if attempt == 0 => Ok((k.cloned(), false)),
            _ => Ok((self.api.get_opt(&self.name).await?, true)),
        }
    }

    /// Takes the Lease if it is free, ours, or still exactly as `judged` (the record this agent
    /// judged expired). Returns the new Lease.
    pub async fn acquire(
        &self,
        judged: Option<&Record>,
        owner: Option<&OwnerReference>,
    ) -> Result<Lease, LeaseError> {
        self.acquire_from(judged, owner, None).await
    }

    /// [`LeaseClient::acquire`], trying first from `known` (see [`LeaseClient::current`]).
    pub async fn acquire_from(
        &self,
        judged: Option<&Record>,
        owner: Option<&OwnerReference>,
        known: Option<Option<&Lease>>,
    ) -> Result<Lease, LeaseError> {
        // Owned by the holder's Node: if the Node is deleted, the garbage collector deletes the
        // Lease and nobody waits for a holder that will never come back.
        let owners = owner.map(|o| vec![o.clone()]);
        for attempt in 0..CONFLICT_RETRIES {
            let (current, read) = self.current(known, attempt).await?;
            let result = match current {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            owner_references: owners.clone(),
                            ..Default::default()
                        },
                        spec: Some(self.spec(None, 0)),
                    };
                    self.api.create(&PostParams::default(), &lease).await
                }
                Some(lease) => {
                    let record = Record::from_lease(&lease);
                    let takeable = match &record.holder {
                        None => true,
                        Some(h) if *h == self.me => true,
                        Some(_) => judged.is_some_and(|j| {
                            j.holder == record.holder && j.renew_time == record.renew_time
                        }),
                    };
                    if !takeable && !read {
                        // What the caller saw is no verdict: read it.
                        continue;
                    }
                    if !takeable {
                        return Err(LeaseError::Taken(Box::new(lease)));
                    }
                    let transitions = lease
                        .spec
                        .as_ref()
                        .and_then(|s| s.lease_transitions)
                        .unwrap_or(0);
                    let already_mine = record.holder.as_deref() == Some(&self.me);
                    let acquired = lease
                        .spec
                        .as_ref()
                        .and_then(|s| s.acquire_time.clone())
                        .filter(|_| already_mine);
                    let mut next = lease.clone();
                    // Saturates: a Lease at the maximum count must stay takeable (the API
                    // refuses a wrapped, negative count).
                    let transitions = transitions.max(0).saturating_add(i32::from(!already_mine));
                    next.spec = Some(self.spec(acquired, transitions));
                    next.metadata.owner_references = owners.clone();
                    self.api
                        .replace(&self.name, &PostParams::default(), &next)
                        .await
                }
            };
            match result {
                Ok(lease) => return Ok(lease),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LeaseError::Conflict)
    }

    /// The spec of a Lease held by this node; `acquired` keeps the acquire time of a Lease
    /// that was already ours (only a change of holder is an acquisition).
    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let t = now();
        LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(i32::try_from(self.ttl.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: Some(acquired.unwrap_or_else(|| t.clone())),
            renew_time: Some(t),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Renews the Lease; fails with [`LeaseError::HeldByOther`] if it is no longer ours. A
    /// successful renewal proves, at that instant, that this node holds the Lease.
    pub async fn renew(&self) -> Result<Lease, LeaseError> {
        self.renew_from(None).await
    }

    /// [`LeaseClient::renew`], trying first from `known` (see [`LeaseClient::current`]): a
    /// write over what this agent saw succeeds only if nobody wrote since, which proves the hold
    /// as well as a read would.
    pub async fn renew_from(&self, known: Option<Option<&Lease>>) -> Result<Lease, LeaseError> {
        for attempt in 0..CONFLICT_RETRIES {
            let (lease, read) = self.current(known, attempt).await?;
            let holder = lease.as_ref().and_then(|l| Record::from_lease(l).holder);
            let mut lease = match lease {
                Some(l) if holder.as_deref() == Some(&self.me) => l,
                // What the caller saw is no verdict: read it.
                _ if !read => continue,
                _ => return Err(LeaseError::HeldByOther(holder.unwrap_or_default())),
            };
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(now());
                spec.lease_duration_seconds =
                    Some(i32::try_from(self.ttl.as_secs()).unwrap_or(i32::MAX));
            }
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(l) => return Ok(l),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LeaseError::Conflict)
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Releases the Lease if this node holds it. Returns the Lease as it now is (`None` if
    /// it does not exist).
    pub async fn release(&self) -> Result<Option<Lease>, LeaseError> {
        self.release_from(None).await
    }

    /// [`LeaseClient::release`], trying first from `known` (see [`LeaseClient::current`]).
    pub async fn release_from(
        &self,
        known: Option<Option<&Lease>>,
    ) -> Result<Option<Lease>, LeaseError> {
        for attempt in 0..CONFLICT_RETRIES {
            let (lease, read) = self.current(known, attempt).await?;
            let mut lease = match lease {
                Some(l) if Record::from_lease(&l).holder.as_deref() == Some(&self.me) => l,
                // What the caller saw is no verdict: read it.
                _ if !read => continue,
                other => return Ok(other),
            };
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.acquire_time = None;
                spec.renew_time = None;
            }
            lease.metadata.owner_references = None;
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(l) => return Ok(Some(l)),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LeaseError::Conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn rec(holder: Option<&str>, renew: &str) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            renew_time: Some(renew.to_owned()),
            duration: Some(TTL),
        }
    }

    #[test]
    fn a_missing_or_empty_lease_is_free() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        assert_eq!(o.view("a", TTL, t0), LeaseView::Free);
        o.observe(None, t0);
        assert_eq!(o.view("a", TTL, t0), LeaseView::Free);
        o.observe(Some(&rec(None, "r0")), t0);
        assert!(o.view("a", TTL, t0).may_take());
    }

    #[test]
    fn a_renewing_holder_never_expires_and_a_silent_one_does_after_its_duration() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        o.observe(Some(&rec(Some("b"), "r1")), t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            o.view("a", TTL, at(59)),
            LeaseView::Held {
                holder: "b".into(),
                expired: false
            }
        );
        // Renewed at 50 s: the clock restarts from the observation, not from the wall time.
        o.observe(Some(&rec(Some("b"), "r2")), at(50));
        assert!(!o.view("a", TTL, at(109)).may_take());
        assert!(o.view("a", TTL, at(111)).may_take());
        assert_eq!(o.expires_at("a", TTL), Some(at(110)));
        // Seeing the same record again is not a renewal.
        o.observe(Some(&rec(Some("b"), "r2")), at(100));
        assert!(o.view("a", TTL, at(111)).may_take());
    }

    #[test]
    fn a_holder_is_suspect_once_its_renewal_is_overdue_or_its_lease_deleted() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut o = Observer::new(t0);
        assert_eq!(o.suspect_at("a", TTL), None);
        o.observe(Some(&rec(Some("b"), "r1")), t0);
        // A 60 s TTL renews every 20 s; 5 s of grace.
        assert_eq!(o.suspect_at("a", TTL), Some(at(25)));
        // A renewal moves it on; the holder's declared TTL counts (capped by ours).
        o.observe(Some(&rec(Some("b"), "r2")), at(20));
        assert_eq!(o.suspect_at("a", TTL), Some(at(45)));
        assert_eq!(o.suspect_at("a", Duration::from_secs(3600)), Some(at(45)));
        assert_eq!(o.suspect_at("a", Duration::from_secs(30)), Some(at(35)));
        // Our own and a free Lease have no holder to suspect.
        assert_eq!(o.suspect_at("b", TTL), None);
        o.observe(Some(&rec(None, "r3")), at(30));
        assert_eq!(o.suspect_at("a", TTL), None);
        // Deleted while held: at once.
        o.observe(Some(&rec(Some("b"), "r4")), at(40));
        o.observe(None, at(41));
        assert_eq!(o.suspect_at("a", TTL), Some(at(40)));
    }

    #[test]
    fn own_lease_is_mine_whatever_its_age() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        o.observe(Some(&rec(Some("a"), "r1")), t0);
        assert_eq!(
            o.view("a", TTL, t0 + Duration::from_secs(3600)),
            LeaseView::Mine
        );
        assert_eq!(o.expires_at("a", TTL), None);
        assert!(!LeaseView::Mine.may_take());
    }

    fn seen(not_ready_since: Option<Instant>, phase: Phase) -> HolderNode {
        HolderNode::Seen {
            not_ready_since,
            phase,
        }
    }

    #[test]
    fn a_deleted_or_long_not_ready_holder_is_gone_before_its_ttl() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let limit = Duration::from_secs(600);
        let mut o = Observer::new(t0);
        o.observe(Some(&rec(Some("b"), "r1")), t0);
        let gone = |o: &Observer, node, t| o.holder_gone(node, true, limit, t);
        assert!(gone(&o, HolderNode::Missing, t0));
        assert!(!gone(&o, seen(None, Phase::Draining), at(3600)));
        assert!(!gone(&o, HolderNode::Unknown, at(3600)));
        // NotReady since 100 s: gone 600 s later...
        let nr = seen(Some(at(100)), Phase::Draining);
        assert!(!gone(&o, nr, at(700)));
        assert!(gone(&o, nr, at(701)));
        assert_eq!(o.holder_gone_at(nr, true, limit), Some(at(700)));
        // ...unless it renewed meanwhile (a NotReady node whose agent still runs).
        o.observe(Some(&rec(Some("b"), "r2")), at(650));
        assert!(!gone(&o, nr, at(701)));
        assert!(gone(&o, nr, at(1251)));
    }

    #[test]
    fn a_rebooting_holder_keeps_its_lease_however_long_it_is_not_ready() {
        // A slow reboot (firmware, fsck) must not free the slot: another node would go down
        // while this one is still down. Only the TTL or deleting its Node frees it.
        let t0 = Instant::now();
        let limit = Duration::from_secs(60);
        let mut o = Observer::new(t0);
        o.observe(Some(&rec(Some("b"), "r1")), t0);
        let rebooting = seen(Some(t0), Phase::Rebooting);
        let much_later = t0 + Duration::from_secs(3600);
        assert!(!o.holder_gone(rebooting, true, limit, much_later));
        assert_eq!(o.holder_gone_at(rebooting, true, limit), None);
        assert!(o.holder_gone(HolderNode::Missing, true, limit, much_later));
        // The TTL still applies.
        assert!(o.view("a", TTL, much_later).may_take());
    }

    #[test]
    fn a_lease_deleted_while_held_stays_held_until_its_holder_is_out_of_its_cycle() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let limit = Duration::from_secs(600);
        let mut o = Observer::new(t0);
        o.observe(Some(&rec(Some("b"), "r1")), t0);
        o.observe(None, at(5));
        assert!(o.deleted());
        // Still b's for everyone else, no longer renewed: it expires at its TTL...
        assert_eq!(
            o.view("a", TTL, at(10)),
            LeaseView::Held {
                holder: "b".into(),
                expired: false
            }
        );
        assert!(o.view("a", TTL, at(61)).may_take());
        // ...or as soon as b's Node shows it idle (it saw its Lease go, and stopped) or gone.
        assert!(!o.holder_gone(seen(None, Phase::Draining), true, limit, at(10)));
        assert!(o.holder_gone(seen(None, Phase::Idle), true, limit, at(10)));
        assert!(o.holder_gone(HolderNode::Missing, true, limit, at(10)));
        // For b itself, the Lease is gone.
        assert_eq!(o.view("b", TTL, at(10)), LeaseView::Free);
        // Created again (by anyone): an ordinary Lease.
        o.observe(Some(&rec(Some("c"), "r9")), at(20));
        assert!(!o.deleted());
        assert!(!o.holder_gone(seen(None, Phase::Idle), true, limit, at(21)));
        // A free Lease that is deleted is simply free.
        let mut free = Observer::new(t0);
        free.observe(Some(&rec(None, "r1")), t0);
        free.observe(None, at(1));
        assert!(!free.deleted());
        assert_eq!(free.view("a", TTL, at(1)), LeaseView::Free);
    }

    #[test]
    fn expiry_is_judged_on_the_local_clock_whatever_the_written_times_say() {
        // renewTime is compared for change only: a holder whose clock is a year off is judged
        // by how long its record stayed the same here.
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        o.observe(Some(&rec(Some("b"), "1999-01-01T00:00:00Z")), t0);
        assert!(!o.view("a", TTL, t0 + Duration::from_secs(59)).may_take());
        o.observe(
            Some(&rec(Some("b"), "2999-01-01T00:00:00Z")),
            t0 + Duration::from_secs(59),
        );
        assert!(!o.view("a", TTL, t0 + Duration::from_secs(110)).may_take());
        assert!(o.view("a", TTL, t0 + Duration::from_secs(120)).may_take());
    }

    #[test]
    fn coordination_follows_the_labels_and_the_flags() {
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let zone = "topology.kubernetes.io/zone";
        let cp = labels(&[(zone, "a"), ("node-role.kubernetes.io/control-plane", "")]);
        // One slot for the whole cluster already serialises control-plane nodes.
        let c = Coordination::for_node("baton", 1, None, true, &cp);
        assert_eq!((c.base.as_str(), c.control_plane), ("baton", false));
        let c = Coordination::for_node("baton", 2, None, true, &cp);
        assert!(c.control_plane);
        let c = Coordination::for_node("baton", 1, Some(zone), true, &cp);
        assert!(c.control_plane && c.base.starts_with("baton-a-"));
        assert!(!Coordination::for_node("baton", 2, None, false, &cp).control_plane);
        let old = labels(&[("node-role.kubernetes.io/master", "true")]);
        assert!(Coordination::for_node("baton", 2, None, true, &old).control_plane);
        let worker = labels(&[(zone, "a")]);
        assert!(!Coordination::for_node("baton", 2, None, true, &worker).control_plane);
        // A label that appears later changes the answer (the agent then restarts).
        assert_ne!(
            Coordination::for_node("baton", 1, Some(zone), true, &labels(&[])),
            Coordination::for_node("baton", 1, Some(zone), true, &worker)
        );
    }

    #[test]
    fn the_control_plane_lease_survives_a_not_ready_holder_but_not_a_deleted_one() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        o.observe(
            Some(&Record {
                holder: Some("cp-1".into()),
                renew_time: Some("t".into()),
                duration: Some(Duration::from_secs(3600)),
            }),
            t0,
        );
        let limit = Duration::from_secs(60);
        let later = t0 + Duration::from_secs(600);
        let not_ready = seen(Some(t0), Phase::Draining);
        assert!(o.holder_gone(not_ready, true, limit, later));
        assert!(!o.holder_gone(not_ready, false, limit, later));
        assert_eq!(o.holder_gone_at(not_ready, false, limit), None);
        assert!(o.holder_gone(HolderNode::Missing, false, limit, later));
    }

    #[test]
    fn needed_leases_count_as_ours_only_when_all_are() {
        let held = |expired| LeaseView::Held {
            holder: "b".into(),
            expired,
        };
        use LeaseView::{Free, Mine};
        assert_eq!(combine(&[Mine, Mine]), (Mine, None));
        assert_eq!(combine(&[Mine]), (Mine, None));
        // One held by another node decides, even when the other one is ours or free.
        assert_eq!(combine(&[Mine, held(false)]), (held(false), Some(1)));
        assert_eq!(combine(&[Free, held(false)]), (held(false), Some(1)));
        // Else the first that is not ours is taken next.
        assert_eq!(combine(&[Free, Free]), (Free, Some(0)));
        assert_eq!(combine(&[Mine, Free]), (Free, Some(1)));
        assert_eq!(combine(&[held(true), Mine]), (held(true), Some(0)));
        assert!(combine(&[Mine, held(true)]).0.may_take());
    }

    #[test]
    fn slots_are_picked_mine_first_then_the_first_takeable() {
        let held = |expired| LeaseView::Held {
            holder: "x".into(),
            expired,
        };
        assert_eq!(slot_names("baton", 3), ["baton", "baton-1", "baton-2"]);
        assert_eq!(slot_names("baton", 1), ["baton"]);
        let mine = [held(false), LeaseView::Mine, LeaseView::Free];
        assert_eq!(pick_slot(&mine, 2), 1);
        let one_expired = [held(false), held(true), LeaseView::Free];
        assert_eq!(pick_slot(&one_expired, 0), 1);
        assert_eq!(pick_slot(&one_expired, 2), 2);
        let spread = [LeaseView::Free, held(false), LeaseView::Free];
        assert_eq!(pick_slot(&spread, 1), 2);
        assert_eq!(pick_slot(&[held(false), held(false)], 1), 0);
        assert!(start_slot("node-a", 3) < 3);
        assert_eq!(start_slot("node-a", 1), 0);
    }

    #[test]
    fn the_nodes_starting_at_a_freed_slot_take_it_first() {
        let n = 10;
        let nodes: Vec<String> = (0..200).map(|i| format!("node-{i}")).collect();
        let delays = |slot: usize, version: &str| -> Vec<Duration> {
            nodes
                .iter()
                .map(|m| take_delay(m, slot, n, version))
                .collect()
        };
        let first = |d: &[Duration]| d.iter().filter(|d| **d < TAKE_STEP).count();
        // About one node in n goes first, within FIRST_SPREAD; the others hold back longer,
        // each by its own amount.
        let d = delays(3, "41");
        assert!((5..=40).contains(&first(&d)), "{}", first(&d));
        for x in &d {
            assert!(
                *x <= FIRST_SPREAD || (TAKE_STEP..=TAKE_STEP + TAKE_SPREAD).contains(x),
                "{x:?}"
            );
        }
        let mut distinct = d.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 50,
            "the spread is too coarse: {}",
            distinct.len()
        );
        // The order among those holding back changes with each release.
        assert_ne!(d, delays(3, "42"));
        // With one slot, every waiting node starts at it; the control-plane Lease (after the
        // group's) is never held back.
        assert!(take_delay("node-7", 0, 1, "9") <= FIRST_SPREAD);
        assert_eq!(take_delay("node-7", n, n, "9"), Duration::ZERO);
    }

    #[test]
    fn group_names_are_valid_and_distinct() {
        let a = group_lock_name("baton", "eu-west-1a");
        let b = group_lock_name("baton", "EU_WEST_1A");
        assert!(a.starts_with("baton-eu-west-1a-"), "{a}");
        assert_ne!(a, b, "values that clean up alike stay apart");
        assert_eq!(group_lock_name("baton", ""), "baton-none");
        let long = group_lock_name("baton", &"z".repeat(300));
        assert!(long.len() < 63, "{long}");
        for n in [a, b, long] {
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
                "{n}"
            );
        }
    }

    /// Exact-call tests of the Lease writes.
    mod writes {
        use super::*;
        use http::{Request, Response};
        use kube::client::Body;
        use serde_json::json;
        use tower_test::mock::{self, Handle};

        type Mock = Handle<Request<Body>, Response<Body>>;

        const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/baton-system/leases/baton";

        fn client() -> (LeaseClient, Mock) {
            let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
            let api = Api::namespaced(kube::Client::new(service, "default"), "baton-system");
            (LeaseClient::new(api, "baton", "me", TTL), handle)
        }

        fn reply(body: &serde_json::Value) -> Response<Body> {
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap()
        }

        fn lease_json(holder: &str, rv: &str) -> serde_json::Value {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "baton", "namespace": "baton-system", "resourceVersion": rv},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 60,
                         "renewTime": "2026-01-01T00:00:00.000000Z"}})
        }

        fn conflict() -> Response<Body> {
            let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "code": 409, "reason": "Conflict", "message": "the object has been modified"});
            Response::builder()
                .status(409)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap()
        }

        /// Answers the next request, checking its method and, for a write, the resourceVersion
        /// it is based on.
        async fn answer(h: &mut Mock, method: &str, rv: Option<&str>, reply_with: Response<Body>) {
            let (req, send) = h.next_request().await.expect("a request");
            assert_eq!((req.method().as_str(), req.uri().path()), (method, PATH));
            if let Some(rv) = rv {
                let body: serde_json::Value =
                    serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap())
                        .unwrap();
                assert_eq!(body["metadata"]["resourceVersion"], rv);
            }
            send.send_response(reply_with);
        }

        #[tokio::test]
        async fn writes_from_what_the_agent_saw_need_no_read_and_a_conflict_reads_again() {
            let seen_free = serde_json::from_value::<Lease>(lease_json("", "5")).unwrap();
            let seen_mine = serde_json::from_value::<Lease>(lease_json("me", "6")).unwrap();
            // A take straight over the Lease as watched: one PUT.
            let (lease, mut h) = client();
            let server = answer(&mut h, "PUT", Some("5"), reply(&lease_json("me", "6")));
            let (taken, ()) = tokio::join!(
                lease.acquire_from(None, None, Some(Some(&seen_free))),
                server
            );
            assert!(taken.is_ok(), "{taken:?}");
            // Someone wrote first: 409, then a read that finds it taken, and no write.
            let (lease, mut h) = client();
            let server = async {
                answer(&mut h, "PUT", Some("5"), conflict()).await;
                answer(&mut h, "GET", None, reply(&lease_json("other", "7"))).await;
            };
            let (lost, ()) = tokio::join!(
                lease.acquire_from(None, None, Some(Some(&seen_free))),
                server
            );
            assert!(matches!(lost, Err(LeaseError::Taken(_))), "{lost:?}");
            // A renewal (the fence) and a release over the agent's last view: one PUT each.
            let (lease, mut h) = client();
            let server = answer(&mut h, "PUT", Some("6"), reply(&lease_json("me", "7")));
            let (renewed, ()) = tokio::join!(lease.renew_from(Some(Some(&seen_mine))), server);
            assert!(renewed.is_ok(), "{renewed:?}");
            let (lease, mut h) = client();
            let server = answer(&mut h, "PUT", Some("6"), reply(&lease_json("", "7")));
            let (released, ()) = tokio::join!(lease.release_from(Some(Some(&seen_mine))), server);
            assert!(released.is_ok(), "{released:?}");
            // A view that says another node holds it is no verdict for a renewal: it reads.
            let seen_other = serde_json::from_value::<Lease>(lease_json("other", "8")).unwrap();
            let (lease, mut h) = client();
            let server = answer(&mut h, "GET", None, reply(&lease_json("other", "8")));
            let (refused, ()) = tokio::join!(lease.renew_from(Some(Some(&seen_other))), server);
            assert!(
                matches!(&refused, Err(LeaseError::HeldByOther(h)) if h == "other"),
                "{refused:?}"
            );
        }

        #[tokio::test]
        async fn a_free_lease_at_the_maximum_transition_count_can_still_be_taken() {
            let (lease, mut h) = client();
            let server = async {
                let (req, send) = h.next_request().await.expect("a GET");
                assert_eq!((req.method().as_str(), req.uri().path()), ("GET", PATH));
                send.send_response(reply(&json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "baton", "namespace": "baton-system", "resourceVersion": "5"},
                    "spec": {"leaseTransitions": i32::MAX, "leaseDurationSeconds": 60}
                })));
                let (req, send) = h.next_request().await.expect("a PUT");
                assert_eq!((req.method().as_str(), req.uri().path()), ("PUT", PATH));
                let body: serde_json::Value =
                    serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap())
                        .unwrap();
                send.send_response(reply(&body));
                body
            };
            let (taken, sent) = tokio::join!(lease.acquire(None, None), server);
            assert!(taken.is_ok(), "{taken:?}");
            assert_eq!(sent["spec"]["holderIdentity"], "me");
            assert_eq!(
                sent["spec"]["leaseTransitions"],
                i32::MAX,
                "saturated, not wrapped"
            );
            assert_eq!(sent["metadata"]["resourceVersion"], "5");
        }
    }

    #[test]
    fn a_longer_declared_duration_is_capped_by_the_local_ttl() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut o = Observer::new(t0);
        let mut r = rec(Some("b"), "r1");
        r.duration = Some(Duration::from_secs(u64::from(i32::MAX.unsigned_abs())));
        o.observe(Some(&r), t0);
        assert!(!o.view("a", TTL, at(60)).may_take());
        assert!(o.view("a", TTL, at(61)).may_take());
        assert_eq!(o.expires_at("a", TTL), Some(at(60)));
    }

    #[test]
    fn zero_or_negative_declared_durations_count_as_undeclared() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for secs in [0, -5, i32::MIN] {
            let lease: Lease = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "baton"},
                "spec": {"holderIdentity": "b", "renewTime": "2026-01-02T03:04:05.000000Z",
                         "leaseDurationSeconds": secs}
            }))
            .unwrap();
            let r = Record::from_lease(&lease);
            assert_eq!(r.duration, None, "{secs}");
            let mut o = Observer::new(t0);
            o.observe(Some(&r), t0);
            assert!(!o.view("a", TTL, at(11)).may_take(), "{secs}");
            assert!(o.view("a", TTL, at(61)).may_take(), "{secs}");
        }
    }

    #[test]
    fn a_shorter_declared_duration_wins_over_the_local_ttl() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let mut r = rec(Some("b"), "r1");
        r.duration = Some(Duration::from_secs(10));
        o.observe(Some(&r), t0);
        assert!(o.view("a", TTL, t0 + Duration::from_secs(11)).may_take());
        r.duration = None;
        o.observe(Some(&r), t0);
        assert!(!o.view("a", TTL, t0 + Duration::from_secs(11)).may_take());
    }
}
