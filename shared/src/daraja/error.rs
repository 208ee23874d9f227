//! [`DarajaError`]: every way a call to Daraja can fail, typed so that callers can decide
//! what to tell the buyer and whether anything may have happened upstream.
//!
//! Messages and `Debug` output never contain the access token, the consumer secret, the
//! passkey or the `Password` field, and never a full phone number: none of them is ever
//! put into an error.

use crate::daraja::types::codes;

/// The Apigee spike-arrest fault code, as found in `fault.detail.errorcode`.
pub const SPIKE_ARREST_FAULT: &str = "policies.ratelimit.SpikeArrestViolation";

#[derive(Debug, Clone, thiserror::Error)]
pub enum DarajaError {
    /// Daraja answered with its error body `{requestId, errorCode, errorMessage}`, or the
    /// Apigee gateway with a `fault` body (then `error_code` is `fault.detail.errorcode`,
    /// e.g. [`SPIKE_ARREST_FAULT`], and `request_id` is empty).
    #[error(
        "Daraja answered HTTP {status} {error_code}: {error_message} (requestId {request_id:?})"
    )]
    Api {
        status: u16,
        error_code: String,
        error_message: String,
        request_id: String,
    },
    /// The OAuth token request was refused (bad consumer key/secret, grant type, an app
    /// without the M-Pesa Express product…). Nothing was pushed or queried.
    #[error("Daraja OAuth failed with HTTP {status} {error_code}: {error_message}")]
    Auth {
        status: u16,
        error_code: String,
        error_message: String,
    },
    /// No answer in time. `may_have_reached_daraja` is false only when the connection
    /// was never established (or the time ran out while fetching the token), so the
    /// request was certainly not sent.
    #[error("Daraja did not answer in time (may have reached Daraja: {may_have_reached_daraja})")]
    Timeout { may_have_reached_daraja: bool },
    /// The request was never sent: connection refused, DNS or TLS failure.
    #[error("could not reach Daraja: {0}")]
    Transport(String),
    /// The connection broke after the request was sent, before a full answer came back.
    /// Daraja may have processed the request.
    #[error("connection to Daraja was lost mid-request: {0}")]
    ConnectionLost(String),
    /// Daraja answered with a body we cannot decode, or one that is too large.
    #[error("unexpected response from Daraja (HTTP {status}): {detail}")]
    UnexpectedResponse { status: u16, detail: String },
    /// The request was not sent because one of our own values is unusable.
    #[error("invalid Daraja request: {0}")]
    InvalidRequest(String),
    /// The client could not be built from its settings.
    #[error("invalid Daraja client configuration: {0}")]
    Config(String),
}

impl DarajaError {
    /// Daraja's (or Apigee's) error code, for API and OAuth errors.
    pub fn daraja_error_code(&self) -> Option<&str> {
        match self {
            Self::Api { error_code, .. } | Self::Auth { error_code, .. } => Some(error_code),
            _ => None,
        }
    }

    /// Whether the call ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// Whether Daraja rejected the access token (`404.001.03`, or any HTTP 401).
    pub fn is_invalid_token(&self) -> bool {
        match self {
            Self::Api {
                status, error_code, ..
            } => *status == 401 || error_code == codes::INVALID_ACCESS_TOKEN,
            _ => false,
        }
    }

    /// Whether Daraja asked us to slow down: a spike-arrest fault, or `500.003.02`
    /// ("System is busy" / "Spike Arrest Violation"), or `500.003.03` (quota).
    pub fn is_rate_limited(&self) -> bool {
        match self {
            Self::Api { error_code, .. } => {
                error_code == SPIKE_ARREST_FAULT
                    || error_code == codes::SYSTEM_BUSY
                    || error_code == codes::QUOTA
                    || error_code.ends_with("SpikeArrestViolation")
                    || error_code.ends_with("QuotaViolation")
            }
            _ => false,
        }
    }

    /// Whether the request may have been processed by Daraja, which decides whether a
    /// push may be reported as "not sent" (false) or must be treated as possibly live
    /// (true). Conservative: any 5xx answer, a timeout after connecting, a broken
    /// connection and an undecodable answer all count as "may have".
    pub fn may_have_reached_daraja(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status >= 500,
            Self::Timeout {
                may_have_reached_daraja,
            } => *may_have_reached_daraja,
            Self::ConnectionLost(_) | Self::UnexpectedResponse { .. } => true,
            Self::Auth { .. } | Self::Transport(_) | Self::InvalidRequest(_) | Self::Config(_) => {
                false
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> DarajaError {
        DarajaError::Api {
            status,
            error_code: code.into(),
            error_message: "m".into(),
            request_id: "r".into(),
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(
            api(400, "400.002.02").daraja_error_code(),
            Some("400.002.02")
        );
        assert_eq!(DarajaError::Transport("x".into()).daraja_error_code(), None);
        assert!(api(404, "404.001.03").is_invalid_token());
        assert!(api(401, "401.003.01").is_invalid_token());
        assert!(!api(400, "400.002.02").is_invalid_token());
        assert!(api(429, SPIKE_ARREST_FAULT).is_rate_limited());
        assert!(api(500, "500.003.02").is_rate_limited());
        assert!(!api(500, "500.001.1001").is_rate_limited());
        assert!(DarajaError::Timeout {
            may_have_reached_daraja: false
        }
        .is_timeout());
        assert!(!api(400, "400.002.02").may_have_reached_daraja());
        assert!(api(500, "500.003.01").may_have_reached_daraja());
        assert!(DarajaError::Timeout {
            may_have_reached_daraja: true
        }
        .may_have_reached_daraja());
        assert!(!DarajaError::Transport("refused".into()).may_have_reached_daraja());
        assert!(DarajaError::ConnectionLost("reset".into()).may_have_reached_daraja());
    }
}
