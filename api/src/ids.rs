//! Typed identifiers, validated where they enter the system.
//!
//! A `TenantId` can only be built from a string that is a valid DNS label, so once a value has
//! this type nothing downstream needs to re-check it, and a cell name can never be passed where a
//! tenant id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 63 characters (got {0})")]
    TooLong(usize),
    #[error("may only contain lowercase letters, digits and '-' (found {0:?})")]
    BadChar(char),
    #[error("must start and end with a letter or digit")]
    BadEdge,
}

/// Checks the DNS-label rule shared by tenant ids, cell names and region names:
/// 1–63 characters of `[a-z0-9-]`, not starting or ending with `-`.
pub fn validate_dns_label(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    let len = s.chars().count();
    if len > 63 {
        return Err(IdError::TooLong(len));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(IdError::BadChar(c));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(IdError::BadEdge);
    }
    Ok(())
}

/// The DNS-label rule as a JSON Schema pattern (ECMA-262), for the OpenAPI document: clients and
/// fuzzers then know which strings the server takes.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// The schema of every DNS-label id: a string of 1–63 characters matching [`DNS_LABEL_PATTERN`].
pub fn dns_label_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .max_length(Some(63))
        .pattern(Some(DNS_LABEL_PATTERN))
        .into()
}

macro_rules! dns_label_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                dns_label_schema()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_dns_label(&s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

dns_label_id!(
    /// A tenant's immutable id: a DNS label (1–63 chars of `[a-z0-9-]`).
    TenantId
);
dns_label_id!(
    /// A cell's name, e.g. `euw1-pool-1`.
    CellName
);
dns_label_id!(
    /// A region's name, e.g. `eu-west-1`.
    RegionName
);
dns_label_id!(
    /// An environment tier: `prod`, `staging`, `dev`, …
    Env
);

impl Env {
    /// The default environment of a tenant that lists none.
    pub fn prod() -> Self {
        Self("prod".to_owned())
    }
}

/// The generation of a placement: increases every time a `(tenant, env)` changes cell, so agents
/// and routers can reject anything older than what they have seen.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct Generation(pub i64);

impl Generation {
    pub const FIRST: Generation = Generation(1);

    pub fn next(self) -> Self {
        Generation(self.0 + 1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_validated() {
        assert!(TenantId::new("acme").is_ok());
        assert!(TenantId::new("a").is_ok());
        assert!(TenantId::new("acme-2").is_ok());
        assert_eq!(TenantId::new(""), Err(IdError::Empty));
        assert_eq!(TenantId::new("-acme"), Err(IdError::BadEdge));
        assert_eq!(TenantId::new("acme-"), Err(IdError::BadEdge));
        assert_eq!(TenantId::new("Acme"), Err(IdError::BadChar('A')));
        assert_eq!(TenantId::new("ac_me"), Err(IdError::BadChar('_')));
        assert_eq!(TenantId::new("a".repeat(64)), Err(IdError::TooLong(64)));
        assert!(TenantId::new("a".repeat(63)).is_ok());
    }

    #[test]
    fn deserializing_rejects_invalid_ids() {
        let err = serde_json::from_str::<TenantId>("\"Bad Id\"").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
        let ok: CellName = serde_json::from_str("\"euw1-pool-1\"").unwrap();
        assert_eq!(ok.as_str(), "euw1-pool-1");
    }
}
