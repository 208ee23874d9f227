//! How a simulated push ends: chosen by the **last three digits of `PhoneNumber`**, from
//! one table, [`OUTCOMES`]. Any number not in the table succeeds.
//!
//! | last 3 digits | what happens |
//! |---|---|
//! | any other (e.g. `000`–`099`) | success: `ResultCode` 0 with metadata and a receipt |
//! | `101` | 1 — insufficient funds |
//! | `117` | 17 — rule limited |
//! | `119` | 1019 — transaction has expired |
//! | `125` | 1025 — error while sending the push |
//! | `126` | 26 — system busy |
//! | `132` | 1032 — cancelled by the user |
//! | `137` | 1037 — phone unreachable (DS timeout) |
//! | `201` | 2001 — wrong PIN |
//! | `228` | 2028 — not permitted by product assignment |
//! | `806` | 8006 — security credential locked |
//! | `222` | success, and the callback is sent **twice** (duplicate delivery) |
//! | `333` | manual: no callback until `POST /sim/complete` |
//! | `999` | success, but the callback is **never sent** (lost); STK Query reports it |
//! | `444` | stuck: no callback, and STK Query answers "being processed" **forever** (HTTP 500, `500.001.1001`), even after `POST /sim/complete`, which still sends a (late) callback |
//!
//! A paybill push whose `PartyB` is not the shortcode (or a till push whose `PartyB` is
//! not the configured till) ends with 2028 whatever the phone, as Daraja does.

use stk_relay_shared::payment::ResultCode;

/// What the simulator does after accepting a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// After the callback delay, send one callback with this result code.
    Result(i64),
    /// Success, with the callback sent twice.
    Duplicate,
    /// Success, with no callback at all; STK Query reports it.
    Lost,
    /// Stay pending until `POST /sim/complete`.
    Manual,
    /// Stuck: no callback, and STK Query answers "being processed" forever, even once
    /// `POST /sim/complete` has decided the push (its callback then comes late).
    Processing,
}

impl Behaviour {
    /// The result code the push ends with, if decided automatically.
    pub fn result_code(self) -> Option<i64> {
        match self {
            Self::Result(c) => Some(c),
            Self::Duplicate | Self::Lost => Some(0),
            Self::Manual | Self::Processing => None,
        }
    }

    /// Whether STK Query answers "being processed" whatever the push's result.
    pub fn query_stuck(self) -> bool {
        matches!(self, Self::Processing)
    }
}

/// The one table: last three digits of `PhoneNumber` → behaviour.
pub const OUTCOMES: &[(&str, Behaviour)] = &[
    ("101", Behaviour::Result(1)),
    ("117", Behaviour::Result(17)),
    ("119", Behaviour::Result(1019)),
    ("125", Behaviour::Result(1025)),
    ("126", Behaviour::Result(26)),
    ("132", Behaviour::Result(1032)),
    ("137", Behaviour::Result(1037)),
    ("201", Behaviour::Result(2001)),
    ("228", Behaviour::Result(2028)),
    ("806", Behaviour::Result(8006)),
    ("222", Behaviour::Duplicate),
    ("333", Behaviour::Manual),
    ("999", Behaviour::Lost),
    ("444", Behaviour::Processing),
];

/// The behaviour for a 12-digit MSISDN.
pub fn behaviour_for(phone: &str) -> Behaviour {
    let tail = phone.get(phone.len().saturating_sub(3)..).unwrap_or("");
    OUTCOMES
        .iter()
        .find(|(digits, _)| *digits == tail)
        .map(|(_, b)| *b)
        .unwrap_or(Behaviour::Result(0))
}

/// Realistic `ResultDesc` texts (`shared/daraja.md` §5).
pub const RESULT_DESCS: &[(i64, &str)] = &[
    (0, "The service request is processed successfully."),
    (1, "The balance is insufficient for the transaction."),
    (17, "Rule limited"),
    (26, "System busy"),
    (
        1001,
        "Unable to lock subscriber, a transaction is already in process for the current subscriber",
    ),
    (1019, "Transaction has expired"),
    (1025, "An error occurred while sending a push request"),
    (1031, "Request cancelled by user"),
    (1032, "Request cancelled by user"),
    (1036, "SMSC ACK timeout"),
    (1037, "DS timeout user cannot be reached"),
    (2001, "The initiator information is invalid"),
    (
        2028,
        "The request is not permitted according to product assignment",
    ),
    (8006, "The security credential is locked"),
    (9999, "Error while sending push request"),
];

/// The `ResultDesc` for a code.
pub fn result_desc(code: &ResultCode) -> &'static str {
    match code {
        ResultCode::Code(n) => RESULT_DESCS
            .iter()
            .find(|(c, _)| c == n)
            .map(|(_, d)| *d)
            .unwrap_or("The service request failed."),
        ResultCode::Other(_) => "The service request failed.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lookup() {
        assert_eq!(behaviour_for("254708374149"), Behaviour::Result(0));
        assert_eq!(behaviour_for("254700000050"), Behaviour::Result(0));
        assert_eq!(behaviour_for("254700000132"), Behaviour::Result(1032));
        assert_eq!(behaviour_for("254100000137"), Behaviour::Result(1037));
        assert_eq!(behaviour_for("254700000101"), Behaviour::Result(1));
        assert_eq!(behaviour_for("254700000201"), Behaviour::Result(2001));
        assert_eq!(behaviour_for("254700000119"), Behaviour::Result(1019));
        assert_eq!(behaviour_for("254700000222"), Behaviour::Duplicate);
        assert_eq!(behaviour_for("254700000333"), Behaviour::Manual);
        assert_eq!(behaviour_for("254700000999"), Behaviour::Lost);
        assert_eq!(behaviour_for("254700000444"), Behaviour::Processing);
        assert!(Behaviour::Processing.query_stuck());
        assert!(!Behaviour::Manual.query_stuck());
        assert_eq!(Behaviour::Processing.result_code(), None);
        assert_eq!(behaviour_for(""), Behaviour::Result(0));
    }

    #[test]
    fn table_has_no_duplicates_and_every_code_has_a_desc() {
        for (i, (a, _)) in OUTCOMES.iter().enumerate() {
            assert_eq!(a.len(), 3);
            assert!(OUTCOMES[i + 1..].iter().all(|(b, _)| a != b), "{a} twice");
        }
        for (_, b) in OUTCOMES {
            if let Some(code) = b.result_code() {
                assert_ne!(
                    result_desc(&ResultCode::Code(code)),
                    "The service request failed.",
                    "{code}"
                );
            }
        }
        assert_eq!(
            result_desc(&ResultCode::Code(1032)),
            "Request cancelled by user"
        );
    }
}
