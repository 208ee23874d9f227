//! Daraja's wire formats for OAuth, STK Push and STK Push Query, defined once.
//!
//! Field names follow Daraja's spelling through serde renames. Both the client and the
//! simulator use these types, so the two cannot drift apart. Where Daraja is loose on
//! the wire (a token lifetime sent as a string, numbers sent as strings) the
//! deserialisers accept both forms; serialisation writes the documented form.

use serde::{Deserialize, Deserializer, Serialize};

/// `GET /oauth/v1/generate?grant_type=client_credentials` success body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// Seconds. Daraja sends a string (`"3599"`); a number is accepted too.
    #[serde(
        deserialize_with = "de_u64_lenient",
        serialize_with = "ser_u64_as_string"
    )]
    pub expires_in: u64,
}

/// `POST /mpesa/stkpush/v1/processrequest` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StkPushRequest {
    #[serde(deserialize_with = "de_string_lenient")]
    pub business_short_code: String,
    pub password: String,
    pub timestamp: String,
    pub transaction_type: String,
    #[serde(deserialize_with = "de_string_lenient")]
    pub amount: String,
    #[serde(rename = "PartyA", deserialize_with = "de_string_lenient")]
    pub party_a: String,
    #[serde(rename = "PartyB", deserialize_with = "de_string_lenient")]
    pub party_b: String,
    #[serde(deserialize_with = "de_string_lenient")]
    pub phone_number: String,
    #[serde(rename = "CallBackURL")]
    pub callback_url: String,
    pub account_reference: String,
    #[serde(default)]
    pub transaction_desc: Option<String>,
}

/// STK Push synchronous success body (HTTP 200: the prompt is queued, nothing is paid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StkPushResponse {
    #[serde(rename = "MerchantRequestID")]
    pub merchant_request_id: String,
    #[serde(rename = "CheckoutRequestID")]
    pub checkout_request_id: String,
    /// `"0"` on success; a string on the wire.
    #[serde(rename = "ResponseCode", deserialize_with = "de_string_lenient")]
    pub response_code: String,
    #[serde(rename = "ResponseDescription")]
    pub response_description: String,
    #[serde(rename = "CustomerMessage")]
    pub customer_message: String,
}

/// `POST /mpesa/stkpushquery/v1/query` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StkQueryRequest {
    #[serde(rename = "BusinessShortCode", deserialize_with = "de_string_lenient")]
    pub business_short_code: String,
    #[serde(rename = "Password")]
    pub password: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
    #[serde(rename = "CheckoutRequestID")]
    pub checkout_request_id: String,
}

/// STK Push Query final-state body (HTTP 200). `ResultCode` is a string here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StkQueryResponse {
    #[serde(rename = "ResponseCode", deserialize_with = "de_string_lenient")]
    pub response_code: String,
    #[serde(rename = "ResponseDescription")]
    pub response_description: String,
    #[serde(rename = "MerchantRequestID")]
    pub merchant_request_id: String,
    #[serde(rename = "CheckoutRequestID")]
    pub checkout_request_id: String,
    #[serde(rename = "ResultCode", deserialize_with = "de_string_lenient")]
    pub result_code: String,
    #[serde(rename = "ResultDesc")]
    pub result_desc: String,
}

/// Daraja's error body: `{"requestId","errorCode","errorMessage"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub request_id: String,
    pub error_code: String,
    pub error_message: String,
}

/// The Apigee gateway's fault body, e.g. a spike-arrest violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultBody {
    pub fault: Fault,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub faultstring: String,
    #[serde(default)]
    pub detail: Option<FaultDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultDetail {
    pub errorcode: String,
}

/// The STK callback result body we answer with. Daraja only needs a fast 200; this is
/// the body integrators conventionally send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackAck {
    #[serde(rename = "ResultCode")]
    pub result_code: i32,
    #[serde(rename = "ResultDesc")]
    pub result_desc: String,
}

impl CallbackAck {
    pub fn accepted() -> Self {
        Self {
            result_code: 0,
            result_desc: "Accepted".to_owned(),
        }
    }
}

/// The STK callback as Daraja POSTs it to `CallBackURL`, for *writing* one (the
/// simulator does). Incoming callbacks are parsed strictly by
/// [`crate::daraja::callback::parse_callback`], not with this type.
///
/// `{"Body":{"stkCallback":{MerchantRequestID, CheckoutRequestID, ResultCode (number),
/// ResultDesc, CallbackMetadata:{Item:[{Name, Value?}]} (success only)}}}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StkCallbackEnvelope {
    #[serde(rename = "Body")]
    pub body: StkCallbackBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StkCallbackBody {
    #[serde(rename = "stkCallback")]
    pub stk_callback: StkCallbackWire,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StkCallbackWire {
    #[serde(rename = "MerchantRequestID")]
    pub merchant_request_id: String,
    #[serde(rename = "CheckoutRequestID")]
    pub checkout_request_id: String,
    /// A JSON number for numeric codes (genuine callbacks), a string otherwise.
    #[serde(rename = "ResultCode")]
    pub result_code: crate::payment::ResultCode,
    #[serde(rename = "ResultDesc")]
    pub result_desc: String,
    /// Present only on success.
    #[serde(
        rename = "CallbackMetadata",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_metadata: Option<CallbackMetadataWire>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackMetadataWire {
    #[serde(rename = "Item")]
    pub item: Vec<CallbackItemWire>,
}

/// One `{"Name", "Value"}` item. `Value` may be absent (Daraja sends `{"Name":"Balance"}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackItemWire {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Value", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

impl CallbackItemWire {
    pub fn new(name: &str, value: impl Into<serde_json::Value>) -> Self {
        Self {
            name: name.to_owned(),
            value: Some(value.into()),
        }
    }

    /// An item without a `Value` key.
    pub fn empty(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            value: None,
        }
    }
}

/// Query's final-state `ResponseDescription`, spelled as Daraja spells it.
pub const QUERY_ACCEPTED_DESC: &str = "The service request has been accepted successsfully";
/// STK Push's success `ResponseDescription` and `CustomerMessage`.
pub const PUSH_ACCEPTED_DESC: &str = "Success. Request accepted for processing";

/// Transaction type names.
pub const PAYBILL: &str = "CustomerPayBillOnline";
pub const BUY_GOODS: &str = "CustomerBuyGoodsOnline";

/// Documented error codes this project switches on.
pub mod codes {
    /// `Bad Request - Invalid XXXX`.
    pub const INVALID_FIELD: &str = "400.002.02";
    pub const OAUTH_INVALID_AUTH: &str = "400.008.01";
    pub const OAUTH_INVALID_GRANT: &str = "400.008.02";
    pub const NOT_FOUND: &str = "404.001.01";
    pub const INVALID_ACCESS_TOKEN: &str = "404.001.03";
    pub const METHOD_NOT_ALLOWED: &str = "405.001";
    /// Overloaded: wrong credentials, merchant does not exist, subscriber locked, and on
    /// STK Push Query "The transaction is being processed".
    pub const GENERIC_500: &str = "500.001.1001";
    pub const INTERNAL: &str = "500.003.01";
    pub const SYSTEM_BUSY: &str = "500.003.02";
    pub const QUOTA: &str = "500.003.03";
}

/// Accepts a JSON string or a number and yields its text.
pub fn de_string_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom("expected a string or a number")),
    }
}

fn de_u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom("expected a whole number")),
        serde_json::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom("expected a whole number")),
        _ => Err(serde::de::Error::custom("expected a string or a number")),
    }
}

fn ser_u64_as_string<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetime_as_string_or_number() {
        let a: TokenResponse =
            serde_json::from_str(r#"{"access_token":"abc","expires_in":"3599"}"#).unwrap();
        let b: TokenResponse =
            serde_json::from_str(r#"{"access_token":"abc","expires_in":3599}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"access_token":"abc","expires_in":"3599"}"#
        );
    }

    #[test]
    fn push_request_golden() {
        let r = StkPushRequest {
            business_short_code: "174379".into(),
            password: "pw".into(),
            timestamp: "20160216165627".into(),
            transaction_type: PAYBILL.into(),
            amount: "1".into(),
            party_a: "254708374149".into(),
            party_b: "174379".into(),
            phone_number: "254708374149".into(),
            callback_url: "https://example.com/cb".into(),
            account_reference: "ORDER1".into(),
            transaction_desc: Some("Payment".into()),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"BusinessShortCode":"174379","Password":"pw","Timestamp":"20160216165627","TransactionType":"CustomerPayBillOnline","Amount":"1","PartyA":"254708374149","PartyB":"174379","PhoneNumber":"254708374149","CallBackURL":"https://example.com/cb","AccountReference":"ORDER1","TransactionDesc":"Payment"}"#
        );
        // Daraja's own samples send numbers for these fields.
        let n: StkPushRequest = serde_json::from_str(r#"{"BusinessShortCode":174379,"Password":"pw","Timestamp":"20160216165627","TransactionType":"CustomerPayBillOnline","Amount":1,"PartyA":254708374149,"PartyB":174379,"PhoneNumber":254708374149,"CallBackURL":"https://example.com/cb","AccountReference":"ORDER1","TransactionDesc":"Payment"}"#).unwrap();
        assert_eq!(n, r);
    }

    #[test]
    fn callback_wire_golden() {
        let cb = StkCallbackEnvelope {
            body: StkCallbackBody {
                stk_callback: StkCallbackWire {
                    merchant_request_id: "29115-34620561-1".into(),
                    checkout_request_id: "ws_CO_191220191020363925".into(),
                    result_code: crate::payment::ResultCode::Code(0),
                    result_desc: "The service request is processed successfully.".into(),
                    callback_metadata: Some(CallbackMetadataWire {
                        item: vec![
                            CallbackItemWire::new("Amount", 1),
                            CallbackItemWire::new("MpesaReceiptNumber", "NLJ7RT61SV"),
                            CallbackItemWire::empty("Balance"),
                            CallbackItemWire::new("TransactionDate", 20191219102115_u64),
                            CallbackItemWire::new("PhoneNumber", 254708374149_u64),
                        ],
                    }),
                },
            },
        };
        assert_eq!(
            serde_json::to_string(&cb).expect("serialisable"),
            r#"{"Body":{"stkCallback":{"MerchantRequestID":"29115-34620561-1","CheckoutRequestID":"ws_CO_191220191020363925","ResultCode":0,"ResultDesc":"The service request is processed successfully.","CallbackMetadata":{"Item":[{"Name":"Amount","Value":1},{"Name":"MpesaReceiptNumber","Value":"NLJ7RT61SV"},{"Name":"Balance"},{"Name":"TransactionDate","Value":20191219102115},{"Name":"PhoneNumber","Value":254708374149}]}}}}"#
        );
        let fail = StkCallbackWire {
            result_code: crate::payment::ResultCode::Code(1032),
            result_desc: "Request cancelled by user".into(),
            callback_metadata: None,
            ..cb.body.stk_callback.clone()
        };
        let json = serde_json::to_string(&fail).expect("serialisable");
        assert!(json.contains(r#""ResultCode":1032"#) && !json.contains("CallbackMetadata"));
        // The strict parser accepts what we write.
        let parsed = crate::daraja::callback::parse_callback(
            serde_json::to_vec(&cb).expect("serialisable").as_slice(),
        );
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn error_body_golden() {
        let e: ErrorBody = serde_json::from_str(
            r#"{"requestId":"ws_CO_1","errorCode":"500.001.1001","errorMessage":"The transaction is being processed"}"#,
        )
        .unwrap();
        assert_eq!(e.error_code, codes::GENERIC_500);
    }
}
