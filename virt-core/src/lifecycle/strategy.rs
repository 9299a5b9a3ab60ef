//! KubeVirt's run strategies as pure functions: what a user request does to a VM, and what the VM
//! controller does about the VM's instance. No I/O, no clocks: the controller feeds these the
//! objects' state and carries out the answer, and property tests drive them through random
//! histories.
//!
//! The semantics follow KubeVirt's user guide (run strategies) and its VM controller:
//!
//! | strategy       | controller                                     | start            | stop               | restart |
//! |----------------|------------------------------------------------|------------------|--------------------|---------|
//! | Always         | an instance always runs; a finished one is replaced | refused (runs) | becomes Halted   | new instance |
//! | RerunOnFailure | replaces a Failed instance, keeps a Succeeded one  | new instance     | stop request       | new instance |
//! | Manual         | nothing by itself                              | start request    | stop request       | new instance |
//! | Halted         | no instance: a live or finished one is removed | becomes Always   | refused (stopped)  | refused |
//! | Once           | one instance, never replaced                   | refused          | becomes Halted     | refused |

use crate::model::{RunStrategy, VmiPhase};

/// A user's request on a VM (`virtctl start|stop|restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// Start the VM.
    Start,
    /// Stop the VM.
    Stop,
    /// Stop the VM's instance and start a new one.
    Restart,
}

/// A queued start or stop (KubeVirt's `status.stateChangeRequests`), carried out by the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateChange {
    /// Start an instance.
    Start,
    /// Stop the instance.
    Stop,
}

impl StateChange {
    /// The `action` as KubeVirt writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "Start",
            Self::Stop => "Stop",
        }
    }

    /// Reads an `action`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Start" => Some(Self::Start),
            "Stop" => Some(Self::Stop),
            _ => None,
        }
    }
}

/// The VM's instance, as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceView {
    /// Its phase.
    pub phase: VmiPhase,
    /// Deletion has been asked for (it is stopping, or gone once it has).
    pub deleting: bool,
}

impl InstanceView {
    /// A live instance: not finished, not being deleted.
    pub fn is_live(&self) -> bool {
        !self.phase.is_final() && !self.deleting
    }
}

/// What a request changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestOutcome {
    /// The run strategy to write into the VM's spec, when it changes.
    pub new_strategy: Option<RunStrategy>,
    /// State changes to queue, in order.
    pub queue: Vec<StateChange>,
}

/// Why a request is refused; the text is what the user reads (KubeVirt's words where it has them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The strategy does not take this request.
    #[error("{strategy} does not support manual {request} requests")]
    NotSupported {
        /// The VM's run strategy.
        strategy: &'static str,
        /// `start`, `stop` or `restart`.
        request: &'static str,
    },
    /// Start of a VM whose instance runs.
    #[error("VM is already running")]
    AlreadyRunning,
    /// Stop or restart of a VM without a live instance.
    #[error("VM is not running")]
    NotRunning,
}

fn request_name(r: Request) -> &'static str {
    match r {
        Request::Start => "start",
        Request::Stop => "stop",
        Request::Restart => "restart",
    }
}

/// What `request` does to a VM with `strategy` whose instance is `vmi`.
pub fn request(
    strategy: RunStrategy,
    vmi: Option<InstanceView>,
    request: Request,
) -> Result<RequestOutcome, RequestError> {
    let live = vmi.is_some_and(|v| v.is_live());
    let not_supported =
        || RequestError::NotSupported { strategy: strategy.as_str(), request: request_name(request) };
    let queue = |q: &[StateChange]| Ok(RequestOutcome { new_strategy: None, queue: q.to_vec() });
    match (strategy, request) {
        (RunStrategy::WaitAsReceiver, _) => Err(not_supported()),
        (_, Request::Start) if live => Err(RequestError::AlreadyRunning),
        (RunStrategy::Always | RunStrategy::Once, Request::Start) => Err(not_supported()),
        (RunStrategy::Halted, Request::Start) => {
            Ok(RequestOutcome { new_strategy: Some(RunStrategy::Always), queue: vec![] })
        }
        (RunStrategy::RerunOnFailure | RunStrategy::Manual, Request::Start) => queue(&[StateChange::Start]),
        (_, Request::Stop | Request::Restart) if !live => {
            match (strategy, request) {
                (RunStrategy::Manual, Request::Restart) => queue(&[StateChange::Start]),
                // A stop of a halted VM whose instance is still being removed is no error.
                (RunStrategy::Halted, Request::Stop) if vmi.is_some() => queue(&[]),
                (RunStrategy::Once, Request::Restart) => Err(not_supported()),
                // Always with a finished instance: the controller replaces it anyway; a restart
                // is what the user gets, so accept it.
                (RunStrategy::Always, Request::Restart) => queue(&[StateChange::Stop, StateChange::Start]),
                (RunStrategy::Always | RunStrategy::Once, Request::Stop) => {
                    Ok(RequestOutcome { new_strategy: Some(RunStrategy::Halted), queue: vec![] })
                }
                (RunStrategy::RerunOnFailure, Request::Restart) => {
                    queue(&[StateChange::Stop, StateChange::Start])
                }
                _ => Err(RequestError::NotRunning),
            }
        }
        (RunStrategy::Halted, _) => Err(RequestError::NotRunning),
        (RunStrategy::Always | RunStrategy::Once, Request::Stop) => {
            Ok(RequestOutcome { new_strategy: Some(RunStrategy::Halted), queue: vec![] })
        }
        (RunStrategy::Once, Request::Restart) => Err(not_supported()),
        (RunStrategy::RerunOnFailure | RunStrategy::Manual, Request::Stop) => queue(&[StateChange::Stop]),
        (_, Request::Restart) => queue(&[StateChange::Stop, StateChange::Start]),
    }
}

/// What the controller does next about a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Create an instance (there is none).
    Create,
    /// Delete the finished instance and create a new one.
    Replace,
    /// Stop the live instance gracefully and delete it.
    Stop,
    /// Delete a finished instance (none should exist).
    DeleteFinished,
    /// Drop the first queued state change: it is moot.
    Dequeue,
    /// Wait: an instance is being deleted, or a restart is held back after failures.
    Wait,
}

/// The controller's view of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmView {
    /// The run strategy in force.
    pub strategy: RunStrategy,
    /// The controller has already acted on this strategy (KubeVirt's `status.runStrategy` equals
    /// the spec's): a new RerunOnFailure or Once VM starts, one that stopped later does not.
    pub strategy_applied: bool,
    /// Its instance, if one exists.
    pub vmi: Option<InstanceView>,
    /// The first queued state change.
    pub next_request: Option<StateChange>,
    /// A restart after a failure is held back (crash-loop back-off) until later.
    pub backing_off: bool,
}

/// The controller's next step for `vm`. [`Action::Create`] and [`Action::Replace`] consume a
/// queued [`StateChange::Start`], [`Action::Stop`] a queued [`StateChange::Stop`]. Call again after
/// carrying it out, until [`Action::None`] or [`Action::Wait`].
pub fn sync(vm: &VmView) -> Action {
    if vm.vmi.is_some_and(|v| v.deleting) {
        return Action::Wait;
    }
    let live = vm.vmi.is_some_and(|v| v.is_live());
    let finished = vm.vmi.map(|v| v.phase).filter(|p| p.is_final());
    match vm.next_request {
        Some(StateChange::Stop) => return if live { Action::Stop } else { Action::Dequeue },
        Some(StateChange::Start) => {
            return match (live, finished) {
                (true, _) => Action::Dequeue,
                (false, Some(_)) => Action::Replace,
                (false, None) => Action::Create,
            };
        }
        None => {}
    }
    let failed_waiting = finished == Some(VmiPhase::Failed) && vm.backing_off;
    match vm.strategy {
        RunStrategy::Always => match (live, finished) {
            (true, _) => Action::None,
            (false, Some(_)) if failed_waiting => Action::Wait,
            (false, Some(_)) => Action::Replace,
            (false, None) => Action::Create,
        },
        RunStrategy::RerunOnFailure => match (live, finished) {
            (true, _) | (false, Some(VmiPhase::Succeeded)) => Action::None,
            (false, Some(_)) if failed_waiting => Action::Wait,
            (false, Some(_)) => Action::Replace,
            (false, None) if !vm.strategy_applied => Action::Create,
            (false, None) => Action::None,
        },
        RunStrategy::Once => match (live, finished) {
            (false, None) if !vm.strategy_applied => Action::Create,
            _ => Action::None,
        },
        RunStrategy::Halted => match (live, finished) {
            (true, _) => Action::Stop,
            (false, Some(_)) => Action::DeleteFinished,
            (false, None) => Action::None,
        },
        RunStrategy::Manual | RunStrategy::WaitAsReceiver => Action::None,
    }
}

/// `status.printableStatus` of a VM, as `kubectl get vm` shows it.
pub fn printable_status(
    vmi: Option<VmiPhase>,
    deleting: bool,
    paused: bool,
    backing_off: bool,
) -> &'static str {
    match vmi {
        None => "Stopped",
        Some(_) if deleting => "Stopping",
        Some(VmiPhase::Pending | VmiPhase::Scheduling) => "Provisioning",
        Some(VmiPhase::Scheduled) => "Starting",
        Some(VmiPhase::Running) if paused => "Paused",
        Some(VmiPhase::Running) => "Running",
        Some(VmiPhase::Failed) if backing_off => "CrashLoopBackOff",
        Some(VmiPhase::Succeeded | VmiPhase::Failed) => "Stopped",
        Some(VmiPhase::WaitingForSync | VmiPhase::Unknown) => "Unknown",
    }
}

/// What a VM's DataVolumes (its `dataVolumeTemplates`) say about its instance, as KubeVirt's VM
/// controller sees them: the instance is created once all are populated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumesView {
    /// None, or all populated (`Succeeded`).
    Ready,
    /// One is still being populated: no instance is created yet.
    Provisioning,
    /// One failed.
    Failed,
}

impl VolumesView {
    /// The view of several DataVolumes, given whether each succeeded (`Some(true)`), failed
    /// (`Some(false)`) or is still being populated (`None`): a failure wins, then provisioning.
    pub fn of(states: impl IntoIterator<Item = Option<bool>>) -> Self {
        states.into_iter().fold(Self::Ready, |acc, s| match (acc, s) {
            (Self::Failed, _) | (_, Some(false)) => Self::Failed,
            (_, None) => Self::Provisioning,
            (acc, Some(true)) => acc,
        })
    }
}

/// [`printable_status`] with the VM's DataVolumes taken into account, as KubeVirt's:
/// `DataVolumeError` while one failed, `Provisioning` while one is populated and the instance
/// is not created or still pending; a VM being stopped stays `Stopping`.
pub fn printable_status_with_volumes(
    vmi: Option<VmiPhase>,
    deleting: bool,
    paused: bool,
    backing_off: bool,
    volumes: VolumesView,
) -> &'static str {
    let base = printable_status(vmi, deleting, paused, backing_off);
    match (volumes, vmi) {
        (_, Some(_)) if deleting => base,
        (VolumesView::Failed, None | Some(VmiPhase::Pending | VmiPhase::Scheduling)) => "DataVolumeError",
        (VolumesView::Provisioning, None | Some(VmiPhase::Pending | VmiPhase::Scheduling)) => "Provisioning",
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [RunStrategy; 5] = [
        RunStrategy::Always,
        RunStrategy::RerunOnFailure,
        RunStrategy::Manual,
        RunStrategy::Halted,
        RunStrategy::Once,
    ];

    #[test]
    fn data_volumes_gate_the_printable_status_as_kubevirts() {
        assert_eq!(VolumesView::of([]), VolumesView::Ready);
        assert_eq!(VolumesView::of([Some(true), None]), VolumesView::Provisioning);
        assert_eq!(VolumesView::of([None, Some(false), Some(true)]), VolumesView::Failed);
        let p = |vmi, v| printable_status_with_volumes(vmi, false, false, false, v);
        assert_eq!(p(None, VolumesView::Provisioning), "Provisioning");
        assert_eq!(p(None, VolumesView::Failed), "DataVolumeError");
        assert_eq!(p(None, VolumesView::Ready), "Stopped");
        assert_eq!(p(Some(VmiPhase::Running), VolumesView::Ready), "Running");
        assert_eq!(
            printable_status_with_volumes(Some(VmiPhase::Running), true, false, false, VolumesView::Failed),
            "Stopping"
        );
    }

    fn running() -> Option<InstanceView> {
        Some(InstanceView { phase: VmiPhase::Running, deleting: false })
    }

    #[test]
    fn requests_follow_kubevirts_table() {
        use RunStrategy::*;
        // start
        assert_eq!(request(Halted, None, Request::Start).unwrap().new_strategy, Some(Always));
        assert!(matches!(request(Always, None, Request::Start), Err(RequestError::NotSupported { .. })));
        assert_eq!(request(Always, running(), Request::Start), Err(RequestError::AlreadyRunning));
        assert_eq!(request(Manual, None, Request::Start).unwrap().queue, vec![StateChange::Start]);
        assert_eq!(request(RerunOnFailure, None, Request::Start).unwrap().queue, vec![StateChange::Start]);
        assert!(request(Once, None, Request::Start).is_err());
        // stop
        assert_eq!(request(Always, running(), Request::Stop).unwrap().new_strategy, Some(Halted));
        assert_eq!(request(Once, running(), Request::Stop).unwrap().new_strategy, Some(Halted));
        assert_eq!(request(Manual, running(), Request::Stop).unwrap().queue, vec![StateChange::Stop]);
        assert_eq!(request(RerunOnFailure, running(), Request::Stop).unwrap().queue, vec![StateChange::Stop]);
        assert_eq!(request(Halted, None, Request::Stop), Err(RequestError::NotRunning));
        assert_eq!(request(Manual, None, Request::Stop), Err(RequestError::NotRunning));
        // restart
        assert_eq!(
            request(Always, running(), Request::Restart).unwrap().queue,
            vec![StateChange::Stop, StateChange::Start]
        );
        assert_eq!(request(Halted, None, Request::Restart), Err(RequestError::NotRunning));
        assert!(request(Once, running(), Request::Restart).is_err());
        assert_eq!(request(Manual, None, Request::Restart).unwrap().queue, vec![StateChange::Start]);
    }

    #[test]
    fn controller_basics() {
        let v = |strategy, applied, vmi: Option<(VmiPhase, bool)>| VmView {
            strategy,
            strategy_applied: applied,
            vmi: vmi.map(|(phase, deleting)| InstanceView { phase, deleting }),
            next_request: None,
            backing_off: false,
        };
        use RunStrategy::*;
        assert_eq!(sync(&v(Always, true, None)), Action::Create);
        assert_eq!(sync(&v(Always, true, Some((VmiPhase::Succeeded, false)))), Action::Replace);
        assert_eq!(sync(&v(RerunOnFailure, false, None)), Action::Create);
        assert_eq!(sync(&v(RerunOnFailure, true, None)), Action::None);
        assert_eq!(sync(&v(RerunOnFailure, true, Some((VmiPhase::Succeeded, false)))), Action::None);
        assert_eq!(sync(&v(RerunOnFailure, true, Some((VmiPhase::Failed, false)))), Action::Replace);
        let mut backoff = v(RerunOnFailure, true, Some((VmiPhase::Failed, false)));
        backoff.backing_off = true;
        assert_eq!(sync(&backoff), Action::Wait);
        assert_eq!(sync(&v(Once, false, None)), Action::Create);
        assert_eq!(sync(&v(Once, true, None)), Action::None);
        assert_eq!(sync(&v(Once, true, Some((VmiPhase::Failed, false)))), Action::None);
        assert_eq!(sync(&v(Halted, true, Some((VmiPhase::Running, false)))), Action::Stop);
        assert_eq!(sync(&v(Halted, true, Some((VmiPhase::Succeeded, false)))), Action::DeleteFinished);
        assert_eq!(sync(&v(Halted, true, Some((VmiPhase::Running, true)))), Action::Wait);
        assert_eq!(sync(&v(Manual, false, None)), Action::None);
    }

    /// A model world: one VM, its instance, and counters of instances created.
    #[derive(Debug, Clone)]
    struct World {
        strategy: RunStrategy,
        applied: bool,
        vmi: Option<InstanceView>,
        queue: Vec<StateChange>,
        /// Instances created since the strategy last changed.
        created_this_strategy: u32,
    }

    #[derive(Debug, Clone)]
    enum Step {
        User(Request),
        /// The guest shuts down (Succeeded) or crashes (Failed).
        GuestEnds(bool),
        /// Deletion of a stopping instance completes.
        Deleted,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            prop_oneof![Just(Request::Start), Just(Request::Stop), Just(Request::Restart)]
                .prop_map(Step::User),
            any::<bool>().prop_map(Step::GuestEnds),
            Just(Step::Deleted),
        ]
    }

    impl World {
        fn view(&self) -> VmView {
            VmView {
                strategy: self.strategy,
                strategy_applied: self.applied,
                vmi: self.vmi,
                next_request: self.queue.first().copied(),
                backing_off: false,
            }
        }

        fn create(&mut self) {
            assert!(self.vmi.is_none(), "create while an instance exists: {self:?}");
            self.vmi = Some(InstanceView { phase: VmiPhase::Running, deleting: false });
            self.created_this_strategy += 1;
            if self.queue.first() == Some(&StateChange::Start) {
                self.queue.remove(0);
            }
        }

        /// Runs the controller until it rests; returns how many instances it created.
        fn settle(&mut self) -> u32 {
            let mut created = 0;
            for _ in 0..16 {
                let a = sync(&self.view());
                match a {
                    Action::None | Action::Wait => {
                        self.applied = true;
                        return created;
                    }
                    Action::Create => {
                        self.create();
                        created += 1;
                    }
                    Action::Replace => {
                        assert!(
                            self.vmi.is_some_and(|v| v.phase.is_final()),
                            "replace of a live one: {self:?}"
                        );
                        self.vmi = None;
                        self.create();
                        created += 1;
                    }
                    Action::Stop => {
                        let v = self.vmi.as_mut().expect("stop without an instance");
                        assert!(v.is_live());
                        v.deleting = true;
                        if self.queue.first() == Some(&StateChange::Stop) {
                            self.queue.remove(0);
                        }
                    }
                    Action::DeleteFinished => {
                        assert!(self.vmi.is_some_and(|v| v.phase.is_final()));
                        self.vmi = None;
                    }
                    Action::Dequeue => {
                        self.queue.remove(0);
                    }
                }
            }
            panic!("controller does not settle: {self:?}");
        }
    }

    proptest! {
        #[test]
        fn run_strategies_hold_through_random_histories(
            start in prop::sample::select(ALL.to_vec()),
            steps in prop::collection::vec(step(), 0..40),
        ) {
            let mut w = World { strategy: start, applied: false, vmi: None, queue: vec![], created_this_strategy: 0 };
            let created = w.settle();
            match start {
                RunStrategy::Manual | RunStrategy::Halted => prop_assert_eq!(created, 0),
                _ => prop_assert_eq!(created, 1, "{:?} must start when created", start),
            }
            for s in steps {
                let strategy_before = w.strategy;
                let quiet_before = w.queue.is_empty() && !w.vmi.is_some_and(|v| v.deleting);
                let mut failed_live = false;
                match s.clone() {
                    Step::User(r) => {
                        if let Ok(out) = request(w.strategy, w.vmi, r) {
                            if let Some(ns) = out.new_strategy {
                                w.strategy = ns;
                                w.applied = false;
                                w.created_this_strategy = 0;
                            }
                            w.queue.extend(out.queue);
                        }
                    }
                    Step::GuestEnds(ok) => {
                        if let Some(v) = w.vmi.as_mut().filter(|v| !v.phase.is_final()) {
                            v.phase = if ok { VmiPhase::Succeeded } else { VmiPhase::Failed };
                            failed_live = !ok && !v.deleting;
                        }
                        // A stopping instance whose guest ended is deleted.
                        if w.vmi.is_some_and(|v| v.deleting) {
                            w.vmi = None;
                        }
                    }
                    Step::Deleted => {
                        if w.vmi.is_some_and(|v| v.deleting) {
                            w.vmi = None;
                        }
                    }
                }
                let created = w.settle();
                let live = w.vmi.is_some_and(|v| v.is_live());
                let stopping = w.vmi.is_some_and(|v| v.deleting);
                prop_assert!(created <= 1, "two instances created in one step: {:?}", w);
                let by_itself = matches!(s, Step::GuestEnds(_) | Step::Deleted);
                match w.strategy {
                    RunStrategy::Halted => prop_assert!(!live, "Halted with a live instance: {:?}", w),
                    RunStrategy::Always if w.queue.is_empty() => {
                        prop_assert!(live || stopping, "Always without a running instance: {:?}", w)
                    }
                    RunStrategy::RerunOnFailure if w.queue.is_empty() => {
                        prop_assert!(
                            !w.vmi.is_some_and(|v| v.phase == VmiPhase::Failed),
                            "a failed instance was not replaced: {:?}", w
                        );
                        if quiet_before && matches!(s, Step::GuestEnds(true)) {
                            prop_assert_eq!(created, 0, "RerunOnFailure reran a success: {:?}", w);
                        }
                    }
                    RunStrategy::Once if strategy_before == RunStrategy::Once => {
                        prop_assert!(w.created_this_strategy <= 1, "Once ran twice: {:?}", w)
                    }
                    RunStrategy::Manual if by_itself && quiet_before => {
                        prop_assert_eq!(created, 0, "Manual started by itself: {:?}", w)
                    }
                    _ => {}
                }
                if failed_live && strategy_before == RunStrategy::RerunOnFailure && w.queue.is_empty() {
                    prop_assert!(live, "RerunOnFailure did not rerun after a failure: {:?}", w);
                }
            }
        }
    }
}
