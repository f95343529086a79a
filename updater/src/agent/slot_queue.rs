//! Waiting for a patch slot: the preferred slot's Lease watched, the others looked at now and
//! then, an expired slot judged from its holder Node's own state ([`nodeann::takeover`]), and
//! what a takeover writes on the holder. The Leases themselves are [`crate::slots`].

use super::*;

impl Agent {
    /// Whether this node may take slot `name` (as `lease` shows it) now, from the holder
    /// Node's own state: `Ok(None)` free or stale, `Ok(Some(t))` taken from a holder as `t`
    /// says (abandoned or reclaimed); `Err(t)`: not before `t`.
    pub(super) async fn may_take(
        &self,
        name: &str,
        lease: Option<&Lease>,
    ) -> Result<Result<Option<nodeann::Takeover>, Option<DateTime<Utc>>>, kube::Error> {
        let Some(l) = lease else { return Ok(Ok(None)) };
        let Some(h) = slots::holder(l) else {
            return Ok(Ok(None));
        };
        if h == self.opts.node {
            return Ok(Ok(None));
        }
        if !slots::expired(l, Utc::now()) {
            return Ok(Err(slots::expires_at(l)));
        }
        let holder = Api::<Node>::all(self.client().clone()).get_opt(h).await?;
        match nodeann::takeover(holder.as_ref(), name, Utc::now(), self.opts.step_deadline) {
            nodeann::Takeover::Wait(t) => Ok(Err(Some(t))),
            nodeann::Takeover::Stale => Ok(Ok(None)),
            t => Ok(Ok(Some(t))),
        }
    }

    /// Takes slot `name` if [`Self::may_take`] allows it, marking an abandoning holder failed.
    /// `Err(t)`: not now (look again at `t`); `Ok(None)`: lost a race.
    pub(super) async fn claim(
        &self,
        name: &str,
        lease: Option<Lease>,
    ) -> Result<Result<Option<Acquired>, Option<DateTime<Utc>>>, kube::Error> {
        let lease = match lease {
            Some(l) => Some(l),
            None => self.slots.get(name).await?,
        };
        let why = match self.may_take(name, lease.as_ref()).await? {
            Ok(why) => why,
            Err(t) => return Ok(Err(t)),
        };
        let got = self.slots.try_slot(name, lease).await?;
        if let Some(Acquired::TakenOver { from, name }) = &got {
            match why {
                Some(nodeann::Takeover::Abandoned(why)) if from != &self.opts.node => {
                    self.record_takeover(from, name, &why, false).await
                }
                Some(nodeann::Takeover::Reclaimed(why)) if from != &self.opts.node => {
                    self.record_takeover(from, name, &why, true).await
                }
                _ => {
                    info!(node = %self.opts.node, slot = %name, from = %from, "took over a stale slot (its holder is not in a run on it)")
                }
            }
        }
        Ok(Ok(got))
    }

    /// The sorted node names (metadata-only list, cached for an hour).
    pub(super) async fn members(&mut self) -> Result<Vec<String>, kube::Error> {
        if let Some((at, names)) = &self.members {
            if at.elapsed() < Duration::from_secs(3600) {
                return Ok(names.clone());
            }
        }
        let nodes = Api::<Node>::all(self.client().clone())
            .list_metadata(&ListParams::default())
            .await?;
        let mut names: Vec<String> = nodes
            .items
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        names.sort();
        self.members = Some((std::time::Instant::now(), names.clone()));
        Ok(names)
    }

    /// Waits for a slot (its preferred one by watching it, the others now and then), marks the
    /// previous holder of a taken-over slot failed. `None` if the node stopped being due.
    #[instrument(skip_all, fields(node = %self.opts.node))]
    pub(super) async fn wait_for_slot(
        &mut self,
        cm_rx: &mut CmRx,
        dcm_rx: &mut CmRx,
    ) -> Result<Option<Acquired>, Stop> {
        if let Some(name) = self.slots.mine().await? {
            if let Ok(Some(a)) = self.claim(&name, None).await? {
                return Ok(Some(a));
            }
        }
        let names = self.members().await?;
        let rank = names.iter().position(|n| *n == self.opts.node).unwrap_or(0) as u32;
        let n = self
            .patch
            .as_ref()
            .map_or(1, |p| p.max_concurrency.slots(names.len()));
        let preferred = slots::slot_name(rank % n);
        let (mut lease_rx, _w) = spawn_watch::<Lease>(
            self.client().clone(),
            Some(self.opts.namespace.clone()),
            Some(format!("metadata.name={preferred}")),
            None,
            self.opts.watch_timeout,
        );
        let mut next_steal = tokio::time::Instant::now();
        // The lease version last tried, so a lost race is not retried on the same stale view.
        let mut tried: Option<Option<String>> = None;
        // The released version of the preferred slot last seen, and when this node's turn at
        // it comes (a release wakes every waiter; only the one next in line claims at once).
        let mut turn_at: Option<(Option<String>, tokio::time::Instant)> = None;
        // Slots whose holder keeps them for now: not looked at again until then or a change.
        let mut not_yet = slots::NotYet::default();
        loop {
            // Everything free, expired, or ours, now and then.
            if tokio::time::Instant::now() >= next_steal {
                // One slot is the preferred one, which the watch already follows: after this
                // first look there is nothing else to look at (and a fleet of waiters would
                // list it for nothing).
                let every = if n > 1 {
                    self.opts.steal_interval
                } else {
                    Duration::from_secs(365 * 86_400)
                };
                next_steal = tokio::time::Instant::now() + every;
                let leases = self.slots.list().await?;
                let mut candidates: Vec<(u32, Option<Lease>)> = (0..n).map(|i| (i, None)).collect();
                for l in leases {
                    if let Some(i) = l.metadata.name.as_deref().and_then(slots::slot_index) {
                        if i < n {
                            candidates[i as usize].1 = Some(l);
                        }
                    }
                }
                // Preferred first, then the rest.
                candidates.rotate_left((rank % n) as usize);
                for (i, l) in candidates {
                    let free = match &l {
                        None => true,
                        Some(l) => {
                            slots::holder(l).is_none()
                                || slots::holder(l) == Some(self.opts.node.as_str())
                                || slots::expired(l, Utc::now())
                        }
                    };
                    let name = slots::slot_name(i);
                    if free && not_yet.until(&name, l.as_ref(), Utc::now()).is_none() {
                        match self.claim(&name, l.clone()).await? {
                            Ok(Some(a)) => return Ok(Some(a)),
                            Err(Some(t)) => not_yet.note(&name, l.as_ref(), t),
                            Ok(None) | Err(None) => {}
                        }
                    }
                }
            }
            let snapshot = lease_rx.borrow_and_update().clone();
            let mut wake = next_steal;
            if let Some(snap) = snapshot {
                let lease = snap.get(&preferred).cloned();
                let free = match &lease {
                    None => true,
                    Some(l) => slots::holder(l).is_none() || slots::expired(l, Utc::now()),
                };
                let rv = lease
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone());
                let mut not_before = lease.as_ref().and_then(slots::expires_at);
                let later = not_yet.until(&preferred, lease.as_ref(), Utc::now());
                let my_turn = match lease.as_ref().filter(|l| slots::holder(l).is_none()) {
                    Some(l) => {
                        if turn_at.as_ref().is_none_or(|(v, _)| *v != rv) {
                            let k = slots::released_by(l)
                                .and_then(|r| slots::turn(&names, n, rank % n, r, &self.opts.node));
                            let wait = slots::claim_delay(k.unwrap_or(1), self.opts.claim_stagger);
                            turn_at = Some((rv.clone(), tokio::time::Instant::now() + wait));
                        }
                        turn_at.as_ref().map(|t| t.1)
                    }
                    None => None,
                };
                if later.is_some() {
                    not_before = later;
                } else if let Some(t) = my_turn.filter(|t| *t > tokio::time::Instant::now()) {
                    // Released, and not this node's turn yet: the watch shows it taken, or
                    // this node claims at its turn.
                    wake = wake.min(t);
                } else if free && tried != Some(rv.clone()) {
                    match self.claim(&preferred, lease.clone()).await? {
                        Ok(Some(a)) => return Ok(Some(a)),
                        Ok(None) => {
                            // Lost the race: wait for the watch to show the winner (or a timer).
                            tried = Some(rv);
                            continue;
                        }
                        // Its holder keeps it for now (rebooting, slow, or the API was away).
                        Err(t) => {
                            if let Some(t) = t {
                                not_yet.note(&preferred, lease.as_ref(), t);
                            }
                            not_before = t;
                        }
                    }
                }
                if let Some(exp) = not_before {
                    let d = (exp - Utc::now()).to_std().unwrap_or(Duration::ZERO)
                        + Duration::from_millis(50);
                    wake = wake.min(tokio::time::Instant::now() + d);
                }
            }
            tokio::select! {
                r = lease_rx.changed() => { if r.is_err() { return Ok(None); } }
                r = cm_rx.changed() => {
                    r.map_err(|e| Stop::Other(e.into()))?;
                    let cms = cm_rx.borrow_and_update().clone().unwrap_or_default();
                    let dcms = dcm_rx.borrow().clone().unwrap_or_default();
                    self.load_policies(&cms, &dcms).await;
                    if self.patch.as_ref().is_none_or(|p| p.paused) {
                        return Ok(None);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Writes what a takeover did to the holder it took the slot from, by the state machine
    /// from the holder's step as it is now. A holder gone at `slot-held` (it had not cordoned)
    /// is aborted back to idle with its run not counted (`last-run-start` removed), so it
    /// starts again when its agent is back. A holder gone later in its run is abandoned
    /// (`failed`) and left as it was, for a human to check. The write is conditional on the
    /// holder Node as read: a holder that moved on meanwhile is read again.
    pub(super) async fn record_takeover(&self, from: &str, slot: &str, why: &str, reclaimed: bool) {
        let by = &self.opts.node;
        let (msg, reason, end): (String, &str, Transition) = if reclaimed {
            (
                format!("patch slot {slot} taken over by {by}: this node was {why}; it had not cordoned, so nothing was done to it, and its run starts again when its agent is back"),
                "OSPatchSlotReclaimed",
                Step::abort,
            )
        } else {
            (
                format!("patch slot {slot} taken over by {by}: this node was {why}; the node is left as it was (possibly cordoned) for a human to check; `kubectl ospatch now {from}` clears it"),
                "OSPatchFailed",
                Step::abandon,
            )
        };
        let written = loop {
            let holder = match Api::<Node>::all(self.client().clone()).get_opt(from).await {
                Ok(Some(n)) => n,
                Ok(None) => break Ok(false),
                Err(e) => break Err(e),
            };
            let at = nodeann::step_of(&holder);
            if reclaimed && at != Step::SlotHeld {
                // It came back and cordoned meanwhile: its own agent finds the slot gone.
                info!(node = %from, slot, "not reclaiming: the holder is at {at} now");
                break Ok(false);
            }
            let step = match end(at) {
                Ok(s) => s,
                Err(e) => {
                    // Back meanwhile (idle, or already failed): nothing to record.
                    info!(node = %from, slot, "not recording the takeover: {e}");
                    break Ok(false);
                }
            };
            let mut keys = vec![
                (nodeann::STEP, Some(step.as_str().to_string())),
                (nodeann::STEP_SINCE, Some(now_rfc3339())),
                (nodeann::LAST_MESSAGE, Some(msg.clone())),
                (nodeann::SLOT, None),
            ];
            if reclaimed {
                keys.extend([
                    (nodeann::STEP_DEADLINE, None),
                    (nodeann::LAST_RUN_START, None),
                    (nodeann::REQUEST_SERVED, None),
                ]);
            } else {
                keys.push((nodeann::LAST_RESULT, Some("failed".into())));
            }
            let patch = nodeann::annotations_patch(&keys);
            match self.patch_if_unchanged(from, &holder, patch).await {
                Ok(true) => break Ok(true),
                Ok(false) => continue,
                Err(e) => break Err(e),
            }
        };
        match written {
            Ok(true) => {
                warn!(node = %from, "{msg}");
                let _ = event(self.client(), from, true, reason, &msg).await;
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, node = %from, "recording the takeover on the node"),
        }
    }

    /// Renews a held slot every third of its duration as written on the Lease from now on; the
    /// flag turns true if the slot turns out to be someone else's. Started as soon as a slot is
    /// got, before anything else is written, so a slow API cannot let a fresh slot expire.
    pub(super) fn renewer(&self, slot: &str) -> (Arc<AtomicBool>, AbortOnDrop) {
        let lost = Arc::new(AtomicBool::new(false));
        let slots = self.slots.clone();
        let flag = lost.clone();
        let slot = slot.to_string();
        let every = slots::renew_every(self.opts.lease_duration);
        let task = AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match slots.renew(&slot).await {
                    Ok(true) => {}
                    Ok(false) => {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => warn!(error = %e, "renewing the slot"),
                }
            }
        }));
        (lost, task)
    }
}
