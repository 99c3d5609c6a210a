//! Lifecycle statuses and waiting reasons, spelled exactly as the AXP schemas spell them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Created,
    Submitted,
    Delivered,
    Acknowledged,
    InProgress,
    Waiting,
    Completed,
    Failed,
    Canceled,
    TimedOut,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Created,
        Status::Submitted,
        Status::Delivered,
        Status::Acknowledged,
        Status::InProgress,
        Status::Waiting,
        Status::Completed,
        Status::Failed,
        Status::Canceled,
        Status::TimedOut,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Canceled | Status::TimedOut)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "CREATED",
            Status::Submitted => "SUBMITTED",
            Status::Delivered => "DELIVERED",
            Status::Acknowledged => "ACKNOWLEDGED",
            Status::InProgress => "IN_PROGRESS",
            Status::Waiting => "WAITING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Canceled => "CANCELED",
            Status::TimedOut => "TIMED_OUT",
        }
    }

    /// The compatibility projection `legacy_status` of the AXME API.
    pub fn legacy(self) -> &'static str {
        match self {
            Status::Created | Status::Submitted | Status::Delivered | Status::Acknowledged => "accepted",
            Status::InProgress => "running",
            Status::Waiting => "blocked",
            Status::Completed => "done",
            Status::Failed | Status::Canceled | Status::TimedOut => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}; expected one of {expected}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
    pub expected: String,
}

impl FromStr for Status {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_uppercase();
        Status::ALL.into_iter().find(|status| status.as_str() == wanted).ok_or_else(|| UnknownName {
            kind: "status",
            value: s.to_owned(),
            expected: Status::ALL.map(Status::as_str).join(", "),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WaitingReason {
    WaitingForHuman,
    WaitingForTool,
    WaitingForAgent,
    WaitingForTime,
}

impl WaitingReason {
    pub const ALL: [WaitingReason; 4] = [
        WaitingReason::WaitingForHuman,
        WaitingReason::WaitingForTool,
        WaitingReason::WaitingForAgent,
        WaitingReason::WaitingForTime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WaitingReason::WaitingForHuman => "WAITING_FOR_HUMAN",
            WaitingReason::WaitingForTool => "WAITING_FOR_TOOL",
            WaitingReason::WaitingForAgent => "WAITING_FOR_AGENT",
            WaitingReason::WaitingForTime => "WAITING_FOR_TIME",
        }
    }
}

impl FromStr for WaitingReason {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_uppercase();
        WaitingReason::ALL.into_iter().find(|reason| reason.as_str() == wanted).ok_or_else(|| UnknownName {
            kind: "waiting_reason",
            value: s.to_owned(),
            expected: WaitingReason::ALL.map(WaitingReason::as_str).join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
        }
        for reason in WaitingReason::ALL {
            assert_eq!(reason.as_str().parse::<WaitingReason>().unwrap(), reason);
        }
        let error = "DONE".parse::<Status>().unwrap_err();
        assert!(error.to_string().contains("TIMED_OUT"), "{error}");
    }

    #[test]
    fn terminal_statuses_are_exactly_four() {
        let terminal: Vec<_> = Status::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, [Status::Completed, Status::Failed, Status::Canceled, Status::TimedOut]);
    }
}
