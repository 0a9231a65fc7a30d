//! The tenant lifecycle (SPEC §2): `draft → active → suspended → archived → deleted`.
//!
//! One table of legal transitions; everything that changes a tenant's state asks it first, so an
//! illegal transition is refused the same way from the CLI, the API and (later) runbooks.

use cellfleet_api::TenantState;
use chrono::{DateTime, Utc};

/// Something that changes a tenant's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Every environment is placed (done by the control plane, not an operator).
    Activate,
    Suspend,
    Resume,
    Archive,
    Delete,
}

impl Transition {
    pub fn verb(self) -> &'static str {
        match self {
            Transition::Activate => "activate",
            Transition::Suspend => "suspend",
            Transition::Resume => "resume",
            Transition::Archive => "archive",
            Transition::Delete => "delete",
        }
    }

    /// The states this transition may start from, and where it leads.
    fn rule(self) -> (&'static [TenantState], TenantState) {
        use TenantState::*;
        match self {
            Transition::Activate => (&[Draft], Active),
            Transition::Suspend => (&[Active], Suspended),
            Transition::Resume => (&[Suspended], Active),
            // A draft was never placed, so there is nothing to keep running; archiving it is the
            // way to give it up.
            Transition::Archive => (&[Draft, Active, Suspended], Archived),
            Transition::Delete => (&[Archived], Deleted),
        }
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("cannot {verb} a tenant that is {current} (only from {allowed})")]
    Illegal {
        verb: &'static str,
        current: TenantState,
        allowed: String,
    },
    #[error("cannot delete before the archive retention has passed: deletable after {after}")]
    RetentionNotPassed { after: DateTime<Utc> },
}

/// The state after `transition`, or why it is not allowed from `current`.
pub fn next_state(
    current: TenantState,
    transition: Transition,
) -> Result<TenantState, LifecycleError> {
    let (from, to) = transition.rule();
    if from.contains(&current) {
        Ok(to)
    } else {
        Err(LifecycleError::Illegal {
            verb: transition.verb(),
            current,
            allowed: from
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
        })
    }
}

/// When an archived tenant's data may be deleted.
pub fn deletable_after(
    archived_at: DateTime<Utc>,
    retention: std::time::Duration,
) -> DateTime<Utc> {
    archived_at + chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX)
}

/// Checks a delete: legal from the current state and past the retention.
pub fn check_delete(
    current: TenantState,
    archived_at: Option<DateTime<Utc>>,
    retention: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<TenantState, LifecycleError> {
    let next = next_state(current, Transition::Delete)?;
    if let Some(archived_at) = archived_at {
        let after = deletable_after(archived_at, retention);
        if now < after {
            return Err(LifecycleError::RetentionNotPassed { after });
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TenantState::*;

    #[test]
    fn the_legal_path_and_back() {
        assert_eq!(next_state(Draft, Transition::Activate), Ok(Active));
        assert_eq!(next_state(Active, Transition::Suspend), Ok(Suspended));
        assert_eq!(next_state(Suspended, Transition::Resume), Ok(Active));
        assert_eq!(next_state(Suspended, Transition::Archive), Ok(Archived));
        assert_eq!(next_state(Draft, Transition::Archive), Ok(Archived));
    }

    #[test]
    fn every_illegal_transition_is_refused() {
        let all = [Draft, Active, Suspended, Archived, Deleted];
        let transitions = [
            Transition::Activate,
            Transition::Suspend,
            Transition::Resume,
            Transition::Archive,
            Transition::Delete,
        ];
        let mut refused = 0;
        for s in all {
            for t in transitions {
                let (from, _) = t.rule();
                match next_state(s, t) {
                    Ok(_) => assert!(from.contains(&s)),
                    Err(e) => {
                        refused += 1;
                        assert!(!from.contains(&s));
                        assert!(e.to_string().contains(s.as_str()), "{e}");
                    }
                }
            }
        }
        // 25 pairs, 7 legal.
        assert_eq!(refused, 18);
        assert_eq!(
            next_state(Draft, Transition::Suspend)
                .unwrap_err()
                .to_string(),
            "cannot suspend a tenant that is draft (only from active)"
        );
    }

    #[test]
    fn delete_waits_for_the_retention() {
        let archived = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let early = archived + chrono::Duration::hours(23);
        let err = check_delete(Archived, Some(archived), day, early).unwrap_err();
        assert!(
            matches!(err, LifecycleError::RetentionNotPassed { .. }),
            "{err}"
        );
        let late = archived + chrono::Duration::hours(24);
        assert_eq!(
            check_delete(Archived, Some(archived), day, late),
            Ok(Deleted)
        );
        assert!(check_delete(Active, None, day, late).is_err());
    }
}
