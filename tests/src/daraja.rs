//! Daraja-format STK callback bodies (`shared/daraja.md` §4), built in Daraja's exact
//! shape: `ResultCode` a number, `CallbackMetadata` only on success, `Amount`,
//! `TransactionDate` and `PhoneNumber` as numbers, and a `Balance` item without a
//! `Value`, as genuine callbacks often carry.

use chrono::{FixedOffset, Offset as _, Utc};
use serde_json::{json, Value};

/// Daraja's ResultDesc for a success.
pub const SUCCESS_DESC: &str = "The service request is processed successfully.";

/// A success callback.
pub fn success(
    merchant_request_id: &str,
    checkout_request_id: &str,
    amount: u32,
    receipt: &str,
    phone: &str,
) -> Value {
    let phone_num: u64 = phone.parse().unwrap_or(254_708_374_149);
    json!({
        "Body": {
            "stkCallback": {
                "MerchantRequestID": merchant_request_id,
                "CheckoutRequestID": checkout_request_id,
                "ResultCode": 0,
                "ResultDesc": SUCCESS_DESC,
                "CallbackMetadata": {
                    "Item": [
                        { "Name": "Amount", "Value": amount },
                        { "Name": "MpesaReceiptNumber", "Value": receipt },
                        { "Name": "Balance" },
                        { "Name": "TransactionDate", "Value": transaction_date_now() },
                        { "Name": "PhoneNumber", "Value": phone_num }
                    ]
                }
            }
        }
    })
}

/// A failure callback: just the four fields.
pub fn failure(
    merchant_request_id: &str,
    checkout_request_id: &str,
    result_code: i64,
    result_desc: &str,
) -> Value {
    json!({
        "Body": {
            "stkCallback": {
                "MerchantRequestID": merchant_request_id,
                "CheckoutRequestID": checkout_request_id,
                "ResultCode": result_code,
                "ResultDesc": result_desc
            }
        }
    })
}

/// A receipt number in Daraja's shape: 10 uppercase alphanumerics, unique per `n`.
pub fn receipt(n: u32) -> String {
    format!("TST{:07}", n % 10_000_000)
}

/// Now in EAT as the number `YYYYMMDDHHmmss`.
pub fn transaction_date_now() -> u64 {
    let eat = FixedOffset::east_opt(3 * 3600).unwrap_or_else(|| Utc.fix());
    Utc::now()
        .with_timezone(&eat)
        .format("%Y%m%d%H%M%S")
        .to_string()
        .parse()
        .unwrap_or(20_240_721_125_138)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let s = success("m1", "ws_CO_1", 10, &receipt(7), "254708374149");
        let cb = &s["Body"]["stkCallback"];
        assert_eq!(cb["ResultCode"], 0);
        assert_eq!(cb["CallbackMetadata"]["Item"][0]["Value"], 10);
        assert_eq!(cb["CallbackMetadata"]["Item"][1]["Value"], "TST0000007");
        assert!(cb["CallbackMetadata"]["Item"][2].get("Value").is_none());
        assert!(cb["CallbackMetadata"]["Item"][3]["Value"].is_u64());
        let f = failure("m1", "ws_CO_1", 1032, "Request cancelled by user");
        assert!(f["Body"]["stkCallback"].get("CallbackMetadata").is_none());
    }
}
