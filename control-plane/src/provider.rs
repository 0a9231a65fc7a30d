//! Cell providers: what makes a new cell exist (its directory or cloud stack, its database, its
//! agent) when an operation needs one — today a move `--to dedicated` with no free dedicated
//! cell. The control plane registers the cell first (state `provisioning`, with the endpoint the
//! provider chose), then asks the provider to bring it up, as often as it takes: provisioning
//! is idempotent. The cell is `ready` once its agent has converged and its workload serves.

use std::future::Future;
use std::pin::Pin;

use cellfleet_api::CellName;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Brings cells up.
pub trait CellProvider: Send + Sync + std::fmt::Debug {
    /// The provider's name (`local`), recorded on the cells it makes.
    fn name(&self) -> &str;

    /// Where a new cell will serve its workload (chosen once, before the cell is registered).
    fn endpoint_for(&self, cell: &CellName) -> anyhow::Result<String>;

    /// Makes the registered cell `cell` exist and runs its agent; a second call for a cell that
    /// is up does nothing.
    fn provision<'a>(&'a self, cell: &'a CellName) -> BoxFuture<'a, anyhow::Result<()>>;
}
