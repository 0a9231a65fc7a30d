//! The cellfleet control plane.
//!
//! Layers, from the inside out:
//! - pure decisions: [`placement`], [`lifecycle`], [`context`], [`audit`], [`manifest`] — no I/O;
//! - [`store`]: the one persistence chokepoint (SQLite or PostgreSQL through sqlx);
//! - [`service`]: operations that load state, ask the pure core, and persist the result together
//!   with its audit record;
//! - [`http`]: the authenticated HTTP API (thin handlers: authorize → parse → service → respond);
//! - [`cli`]: the `cellfleet` binary — the server (`serve`, `up`) and the operator CLI.

pub mod audit;
pub mod audit_key;
pub mod auth;
pub mod cli;
pub mod context;
pub mod http;
pub mod lifecycle;
pub mod local;
pub mod manifest;
pub mod moves;
pub mod placement;
pub mod provider;
pub mod runbooks;
#[cfg(test)]
mod runbooks_tests;
pub mod server;
pub mod service;
pub mod store;
pub mod strict_yaml;
pub mod trains;
#[cfg(test)]
mod trains_tests;
