//! Checks on a `PaymentState` that several tests share. Each returns an error naming
//! the field that is wrong, with the whole state, so a failure explains itself.

use anyhow::{ensure, Result};
use stk_relay_shared::payment::{
    FailureReason, PaymentState, PaymentStatus, ResultCode, FINAL_VERSION, PENDING_VERSION,
};

/// A pending payment `id` of `amount`.
pub fn pending(s: &PaymentState, id: &str, amount: u32) -> Result<()> {
    ensure!(s.checkout_request_id.as_str() == id, "wrong payment: {s:?}");
    ensure!(s.status == PaymentStatus::Pending, "not PENDING: {s:?}");
    ensure!(
        s.version == PENDING_VERSION,
        "pending version is not 1: {s:?}"
    );
    ensure!(s.amount == Some(amount), "amount is not {amount}: {s:?}");
    ensure!(s.result_code.is_none(), "pending with a result code: {s:?}");
    ensure!(s.completed_at.is_none(), "pending with completedAt: {s:?}");
    Ok(())
}

/// A paid payment `id` of `amount` with receipt `receipt`.
pub fn success(s: &PaymentState, id: &str, amount: u32, receipt: &str) -> Result<()> {
    ensure!(s.checkout_request_id.as_str() == id, "wrong payment: {s:?}");
    ensure!(s.status == PaymentStatus::Success, "not SUCCESS: {s:?}");
    ensure!(s.version == FINAL_VERSION, "final version is not 2: {s:?}");
    ensure!(s.amount == Some(amount), "amount is not {amount}: {s:?}");
    ensure!(
        s.mpesa_receipt_number.as_deref() == Some(receipt),
        "receipt is not {receipt}: {s:?}"
    );
    ensure!(
        s.result_code == Some(ResultCode::Code(0)),
        "resultCode is not 0: {s:?}"
    );
    ensure!(s.reason.is_none(), "a success with a reason: {s:?}");
    ensure!(s.completed_at.is_some(), "final without completedAt: {s:?}");
    Ok(())
}

/// A failed payment `id` with Daraja code `code`, classified as `reason`.
pub fn failed(s: &PaymentState, id: &str, code: i64, reason: FailureReason) -> Result<()> {
    ensure!(s.checkout_request_id.as_str() == id, "wrong payment: {s:?}");
    ensure!(s.status == PaymentStatus::Failed, "not FAILED: {s:?}");
    ensure!(s.version == FINAL_VERSION, "final version is not 2: {s:?}");
    ensure!(
        s.result_code == Some(ResultCode::Code(code)),
        "resultCode is not {code}: {s:?}"
    );
    ensure!(s.reason == Some(reason), "reason is not {reason:?}: {s:?}");
    ensure!(
        s.mpesa_receipt_number.is_none(),
        "a failure with a receipt: {s:?}"
    );
    ensure!(s.completed_at.is_some(), "final without completedAt: {s:?}");
    Ok(())
}
