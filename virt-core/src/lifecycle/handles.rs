//! The lifecycle's requests, by the kind they are about: each handle borrows the [`Lifecycle`]
//! and holds the calls of one responsibility (`lc.vms().create(..)`, `lc.vmis().pause(..)`,
//! `lc.migrations().create(..)`), so that a REST layer, a CLI or an embedder finds them where the
//! kind is, and the lifecycle itself keeps only its construction and its controller.

use super::Lifecycle;

/// VirtualMachines: create, replace, get, list, delete (with a propagation policy), and the
/// `virtctl` verbs start, stop and restart ([`Lifecycle::vms`]).
#[derive(Clone, Copy)]
pub struct Vms<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// VirtualMachineInstances: create, get, list, delete, the machine behind one, and the verbs on
/// a running one (pause, unpause, soft reboot, the guest agent's) ([`Lifecycle::vmis`]).
#[derive(Clone, Copy)]
pub struct Vmis<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// VirtualMachineInstanceMigrations: create, get, list, delete ([`Lifecycle::migrations`]).
#[derive(Clone, Copy)]
pub struct Migrations<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// MigrationPolicies (cluster-scoped): create or replace, get, list, delete
/// ([`Lifecycle::migration_policies`]).
#[derive(Clone, Copy)]
pub struct MigrationPolicies<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// Namespaces: list, exists, create, delete ([`Lifecycle::namespaces`]).
#[derive(Clone, Copy)]
pub struct Namespaces<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// Instancetypes and preferences (namespaced and cluster-wide): create or replace, get, list,
/// delete ([`Lifecycle::catalog`]).
#[derive(Clone, Copy)]
pub struct CatalogObjects<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// The lifecycle's vm ctl (internal).
#[derive(Clone, Copy)]
pub(super) struct VmController<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// The lifecycle's vmi ctl (internal).
#[derive(Clone, Copy)]
pub(super) struct VmiController<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// The lifecycle's migration ctl (internal).
#[derive(Clone, Copy)]
pub(super) struct MigrationController<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// The lifecycle's persist (internal).
#[derive(Clone, Copy)]
pub(super) struct Persistence<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// The lifecycle's gc (internal).
#[derive(Clone, Copy)]
pub(super) struct Collector<'a> {
    pub(super) lc: &'a Lifecycle,
}

/// The lifecycle's reconciler (internal).
#[derive(Clone, Copy)]
pub(super) struct Reconciler<'a> {
    pub(super) lc: &'a Lifecycle,
}

impl Lifecycle {
    /// The VirtualMachine requests.
    pub fn vms(&self) -> Vms<'_> {
        Vms { lc: self }
    }

    /// The VirtualMachineInstance requests.
    pub fn vmis(&self) -> Vmis<'_> {
        Vmis { lc: self }
    }

    /// The VirtualMachineInstanceMigration requests.
    pub fn migrations(&self) -> Migrations<'_> {
        Migrations { lc: self }
    }

    /// The MigrationPolicy requests.
    pub fn migration_policies(&self) -> MigrationPolicies<'_> {
        MigrationPolicies { lc: self }
    }

    /// The Namespace requests.
    pub fn namespaces(&self) -> Namespaces<'_> {
        Namespaces { lc: self }
    }

    /// The instancetype and preference requests.
    pub fn catalog(&self) -> CatalogObjects<'_> {
        CatalogObjects { lc: self }
    }

    pub(super) fn vm_ctl(&self) -> VmController<'_> {
        VmController { lc: self }
    }

    pub(super) fn vmi_ctl(&self) -> VmiController<'_> {
        VmiController { lc: self }
    }

    pub(super) fn migration_ctl(&self) -> MigrationController<'_> {
        MigrationController { lc: self }
    }

    pub(super) fn persist(&self) -> Persistence<'_> {
        Persistence { lc: self }
    }

    pub(super) fn gc(&self) -> Collector<'_> {
        Collector { lc: self }
    }

    pub(super) fn reconciler(&self) -> Reconciler<'_> {
        Reconciler { lc: self }
    }
}
