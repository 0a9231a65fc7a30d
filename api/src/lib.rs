//! The cellfleet wire contract.
//!
//! Everything that crosses a process boundary between the control plane, the operator CLI, cell
//! agents and edge routers is defined here once: typed ids ([`ids`]) that are validated when they
//! are built or deserialized, and the JSON documents of the HTTP API ([`model`]). Keeping them in
//! one small crate means a field renamed on the server breaks the CLI at compile time, not in the
//! field.

pub mod agent;
pub mod exposition;
pub mod failpoints;
pub mod ids;
pub mod model;
pub mod moves;
pub mod runbooks;
pub mod trains;
pub mod workload;

pub use agent::*;
pub use ids::{CellName, Env, Generation, IdError, RegionName, TenantId};
pub use model::*;
pub use moves::*;
pub use runbooks::*;
pub use trains::*;
pub use workload::{CellTenant, CellTenants, WorkloadHealth};

/// The `apiVersion` every manifest document must carry.
pub const API_VERSION: &str = "cellfleet.io/v1";
