//! The transition table of AXP Intent Lifecycle v1, and the errors of lifecycle operations.

use super::{Status, WaitingReason};

/// Whether an intent may move from `from` to `to`. This is the only place that decides.
///
/// The table is the spec's (§1.3), plus `TIMED_OUT` from any non-terminal status: the spec
/// defines the status and its deadline semantics but gives it no transitions.
pub fn check_transition(from: Status, to: Status) -> Result<(), LifecycleError> {
    use Status::*;
    if from.is_terminal() {
        return Err(LifecycleError::Terminal { status: from });
    }
    let legal = match from {
        Created => matches!(to, Submitted),
        Submitted => matches!(to, Delivered | InProgress | Waiting | Failed | Canceled | TimedOut),
        Delivered => matches!(to, Acknowledged | InProgress | Waiting | Failed | Canceled | TimedOut),
        Acknowledged => matches!(to, InProgress | Waiting | Failed | Canceled | TimedOut),
        InProgress => matches!(to, Waiting | Completed | Failed | Canceled | TimedOut),
        Waiting => matches!(to, InProgress | Failed | Canceled | TimedOut),
        Completed | Failed | Canceled | TimedOut => false,
    };
    if legal { Ok(()) } else { Err(LifecycleError::Illegal { from, to }) }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LifecycleError {
    #[error("intent is already {status}, a terminal status; nothing can change it")]
    Terminal { status: Status },
    #[error("an intent in {from} cannot move to {to}")]
    Illegal { from: Status, to: Status },
    #[error(
        "status WAITING needs a waiting_reason (one of WAITING_FOR_HUMAN, WAITING_FOR_TOOL, WAITING_FOR_AGENT, WAITING_FOR_TIME)"
    )]
    WaitingReasonRequired,
    #[error("waiting_reason is only allowed with status WAITING, not {status}")]
    WaitingReasonNotAllowed { status: Status },
    #[error("event of intent {got} applied to intent {expected}")]
    OtherIntent { expected: String, got: String },
    #[error("event seq {got} does not follow seq {have}; the events in between are missing")]
    Gap { have: u64, got: u64 },
    #[error("{handler} already handles this intent; transfer it to another address")]
    SameHandler { handler: String },
}

impl LifecycleError {
    /// Stable machine code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            LifecycleError::Terminal { .. } => "intent_terminal",
            LifecycleError::Illegal { .. } => "illegal_transition",
            LifecycleError::WaitingReasonRequired => "waiting_reason_required",
            LifecycleError::WaitingReasonNotAllowed { .. } => "waiting_reason_not_allowed",
            LifecycleError::OtherIntent { .. } => "other_intent",
            LifecycleError::Gap { .. } => "seq_gap",
            LifecycleError::SameHandler { .. } => "same_handler",
        }
    }

    /// Conflicts with the intent's current state, as opposed to a malformed request.
    pub fn is_conflict(&self) -> bool {
        matches!(self, LifecycleError::Terminal { .. } | LifecycleError::Illegal { .. })
    }
}

/// Checks that a waiting reason accompanies WAITING and nothing else.
pub(super) fn check_waiting_reason(to: Status, reason: Option<WaitingReason>) -> Result<(), LifecycleError> {
    match (to, reason) {
        (Status::Waiting, None) => Err(LifecycleError::WaitingReasonRequired),
        (Status::Waiting, Some(_)) => Ok(()),
        (status, Some(_)) => Err(LifecycleError::WaitingReasonNotAllowed { status }),
        (_, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    /// The spec's table written out as data, independent of the `match` above.
    const LEGAL: &[(Status, &[Status])] = &[
        (Created, &[Submitted]),
        (Submitted, &[Delivered, InProgress, Waiting, Failed, Canceled, TimedOut]),
        (Delivered, &[Acknowledged, InProgress, Waiting, Failed, Canceled, TimedOut]),
        (Acknowledged, &[InProgress, Waiting, Failed, Canceled, TimedOut]),
        (InProgress, &[Waiting, Completed, Failed, Canceled, TimedOut]),
        (Waiting, &[InProgress, Failed, Canceled, TimedOut]),
    ];

    #[test]
    fn every_pair_of_statuses_follows_the_table() {
        for from in Status::ALL {
            for to in Status::ALL {
                let expected = LEGAL.iter().any(|(f, tos)| *f == from && tos.contains(&to));
                let got = check_transition(from, to);
                assert_eq!(got.is_ok(), expected, "{from} -> {to}: {got:?}");
                if from.is_terminal() {
                    assert_eq!(got, Err(LifecycleError::Terminal { status: from }));
                }
            }
        }
    }

    #[test]
    fn completed_only_from_in_progress_and_no_self_transitions() {
        for from in Status::ALL {
            assert_eq!(check_transition(from, Completed).is_ok(), from == InProgress);
            assert!(check_transition(from, from).is_err());
        }
    }

    #[test]
    fn waiting_reason_goes_with_waiting_only() {
        assert_eq!(check_waiting_reason(Waiting, None), Err(LifecycleError::WaitingReasonRequired));
        assert!(check_waiting_reason(Waiting, Some(WaitingReason::WaitingForTool)).is_ok());
        assert_eq!(
            check_waiting_reason(InProgress, Some(WaitingReason::WaitingForTool)),
            Err(LifecycleError::WaitingReasonNotAllowed { status: InProgress })
        );
        assert!(check_waiting_reason(InProgress, None).is_ok());
    }
}
