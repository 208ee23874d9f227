//! Hostile-input and round-trip properties of the STK callback parser
//! (`stk_relay_shared::daraja::callback`), plus the fixture corpus in
//! `tests/fixtures/callbacks/` (`ok_*.json` must parse, `bad_*.json` must be rejected).

use std::path::Path;

use proptest::prelude::*;
use serde_json::{json, Map, Number, Value};
use stk_relay_shared::daraja::callback::{
    parse_callback, CallbackError, CallbackMetadata, StkCallback, MAX_JSON_DEPTH,
};
use stk_relay_shared::ids::{CheckoutRequestId, MerchantRequestId, Msisdn};
use stk_relay_shared::payment::{PaymentStatus, ResultCode};

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Parses, and checks the invariants every outcome must keep, whatever the input.
fn parse_checked(body: &[u8]) -> Result<StkCallback, CallbackError> {
    let parsed = parse_callback(body);
    match &parsed {
        Ok(cb) => {
            let outcome = cb.to_outcome(chrono::DateTime::UNIX_EPOCH);
            if outcome.status == PaymentStatus::Success {
                assert!(cb.metadata.mpesa_receipt_number.is_some());
            }
            if let Some(phone) = &outcome.phone_number {
                assert!(phone.contains("******"), "phone must be masked");
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if let Some(field) = e.field() {
                assert!(field == "callback" || field.starts_with("Body"), "{field}");
            }
        }
    }
    parsed
}

// ---- fixtures ---------------------------------------------------------------------------

#[test]
fn fixture_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/callbacks");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => panic!("cannot read {}: {e}", dir.display()),
    };
    let (mut good, mut bad) = (0, 0);
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let body = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => panic!("cannot read {name}: {e}"),
        };
        if name.starts_with("ok_") {
            if let Err(e) = parse_checked(&body) {
                panic!("{name} should parse: {e}");
            }
            good += 1;
        } else if name.starts_with("bad_") {
            if let Ok(cb) = parse_checked(&body) {
                panic!("{name} should be rejected, got {cb:?}");
            }
            bad += 1;
        }
    }
    // Guards against a test that passes because nothing was read.
    assert!(
        good >= 5 && bad >= 6,
        "found {good} ok and {bad} bad fixtures"
    );
}

#[test]
fn forwarder_fixture_values() {
    let body = include_bytes!("fixtures/callbacks/ok_forwarder_strings_shuffled.json");
    let cb = match parse_callback(body) {
        Ok(cb) => cb,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(cb.result_code, ResultCode::Code(0));
    assert_eq!(cb.metadata.amount, Some(100));
    assert_eq!(
        cb.metadata.mpesa_receipt_number.as_deref(),
        Some("SGL7RT61SV")
    );
    assert_eq!(cb.metadata.transaction_date, Some(20240721125138));
    assert_eq!(cb.metadata.balance, None);
    let outcome = cb.to_outcome(chrono::DateTime::UNIX_EPOCH);
    assert_eq!(outcome.phone_number.as_deref(), Some("2547******78"));
    assert_eq!(
        outcome.transaction_date.as_deref(),
        Some("2024-07-21T12:51:38+03:00")
    );
}

// ---- strategies -------------------------------------------------------------------------

const KNOWN_KEYS: &[&str] = &[
    "Body",
    "stkCallback",
    "MerchantRequestID",
    "CheckoutRequestID",
    "ResultCode",
    "ResultDesc",
    "CallbackMetadata",
    "Item",
    "Name",
    "Value",
    "Amount",
    "MpesaReceiptNumber",
    "TransactionDate",
    "PhoneNumber",
    "Balance",
];

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(KNOWN_KEYS).prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        prop_oneof![
            Just(0i64),
            Just(1032),
            Just(20191219102115),
            Just(254708374149)
        ]
        .prop_map(Value::from),
        proptest::sample::select(KNOWN_KEYS).prop_map(Value::from),
        "[A-Z0-9]{0,12}".prop_map(Value::String),
        "\\PC{0,40}".prop_map(Value::String),
        ".{0,20}".prop_map(Value::String),
    ]
}

/// Arbitrary JSON, biased towards our key names.
fn arb_json() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(8, 128, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A callback skeleton whose every slot may hold anything (or be absent).
fn arb_callback_shape() -> impl Strategy<Value = Value> {
    let slot = || prop::option::of(arb_json());
    let item = (slot(), slot(), slot()).prop_map(|(name, value, extra)| {
        let mut m = Map::new();
        for (k, v) in [("Name", name), ("Value", value), ("x", extra)] {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        }
        Value::Object(m)
    });
    let named_item = (proptest::sample::select(KNOWN_KEYS), arb_leaf())
        .prop_map(|(name, value)| json!({"Name": name, "Value": value}));
    let items = prop::collection::vec(prop_oneof![item, named_item], 0..8);
    (slot(), slot(), slot(), slot(), items, any::<bool>()).prop_map(
        |(merchant, checkout, code, desc, items, with_meta)| {
            let mut cb = Map::new();
            for (k, v) in [
                ("MerchantRequestID", merchant),
                ("CheckoutRequestID", checkout),
                ("ResultCode", code),
                ("ResultDesc", desc),
            ] {
                if let Some(v) = v {
                    cb.insert(k.to_owned(), v);
                }
            }
            if with_meta {
                cb.insert("CallbackMetadata".into(), json!({"Item": items}));
            }
            json!({"Body": {"stkCallback": cb}})
        },
    )
}

/// A valid callback, and what parsing it must produce.
#[derive(Debug, Clone)]
struct Case {
    body: Value,
    expected: StkCallback,
}

fn arb_phone() -> impl Strategy<Value = (Value, Msisdn)> {
    (prop_oneof![Just('7'), Just('1')], "[0-9]{8}", 0..4u8).prop_filter_map(
        "valid phone",
        |(lead, rest, form)| {
            let full = format!("254{lead}{rest}");
            let phone = Msisdn::parse(&full).ok()?;
            let wire = match form {
                0 => Value::from(full.parse::<u64>().ok()?),
                1 => Value::from(full),
                2 => Value::from(format!("0{lead}{rest}")),
                _ => Value::from(format!("+254 {lead}{rest}")),
            };
            Some((wire, phone))
        },
    )
}

fn arb_date() -> impl Strategy<Value = (Value, u64)> {
    (
        2000u64..2100,
        1u64..=12,
        1u64..=28,
        0u64..24,
        0u64..60,
        0u64..60,
        any::<bool>(),
    )
        .prop_map(|(y, mo, d, h, mi, s, as_string)| {
            let raw = ((((y * 100 + mo) * 100 + d) * 100 + h) * 100 + mi) * 100 + s;
            let wire = if as_string {
                Value::from(raw.to_string())
            } else {
                Value::from(raw)
            };
            (wire, raw)
        })
}

fn arb_amount() -> impl Strategy<Value = (Value, u32)> {
    (1u32..=1_000_000, 0..4u8).prop_filter_map("amount", |(a, form)| {
        let wire = match form {
            0 => Value::from(a),
            1 => Value::Number(Number::from_f64(f64::from(a))?),
            2 => Value::from(a.to_string()),
            _ => Value::from(format!("{a}.00")),
        };
        Some((wire, a))
    })
}

fn arb_result_code() -> impl Strategy<Value = (Value, ResultCode)> {
    let numeric = prop_oneof![
        Just(0i64),
        proptest::sample::select(vec![
            1i64, 2, 3, 4, 8, 17, 26, 1001, 1019, 1025, 1031, 1032, 1036, 1037, 2001, 2028, 8006,
            9999
        ]),
        any::<i64>(),
    ];
    prop_oneof![
        (numeric, any::<bool>()).prop_map(|(n, as_string)| {
            let wire = if as_string {
                Value::from(n.to_string())
            } else {
                Value::from(n)
            };
            (wire, ResultCode::Code(n))
        }),
        "SFC_[A-Z0-9_]{1,20}".prop_map(|s| (Value::from(s.clone()), ResultCode::Other(s))),
    ]
}

fn arb_case() -> impl Strategy<Value = Case> {
    let ids = ("[A-Za-z0-9_.-]{1,64}", "ws_CO_[0-9]{20,26}");
    let desc = prop::option::of("\\PC{0,200}");
    let metadata = (
        prop::option::of(arb_amount()),
        prop::option::of("[A-Z0-9]{10}"),
        prop::option::of(arb_date()),
        prop::option::of(arb_phone()),
        prop::option::of(prop::option::of(prop_oneof![
            "[0-9]{1,6}\\.[0-9]{2}".prop_map(Value::from),
            (0u32..1_000_000).prop_map(Value::from),
        ])),
        prop::collection::vec(("[a-z]{1,12}", arb_leaf()), 0..4),
    );
    let extra_keys = prop::collection::vec(("x[a-z]{0,8}", arb_leaf()), 0..3);
    (
        ids,
        arb_result_code(),
        desc,
        metadata,
        extra_keys,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_filter_map(
            "valid case",
            |((merchant, checkout), (code_wire, code), desc, meta, extra, with_meta, seed)| {
                let (amount, receipt, date, phone, balance, unknown) = meta;
                let success = code.is_success();
                // A success always carries a receipt; a failure usually carries no metadata.
                let receipt = if success {
                    Some(receipt.unwrap_or_else(|| "NLJ7RT61SV".to_owned()))
                } else {
                    receipt
                };
                let with_meta = with_meta || success;

                let mut items = Vec::new();
                let mut expected_meta = CallbackMetadata::default();
                if with_meta {
                    if let Some((wire, a)) = amount {
                        items.push(json!({"Name": "Amount", "Value": wire}));
                        expected_meta.amount = Some(a);
                    }
                    if let Some(r) = receipt {
                        items.push(json!({"Name": "MpesaReceiptNumber", "Value": r}));
                        expected_meta.mpesa_receipt_number = Some(r);
                    }
                    if let Some((wire, raw)) = date {
                        items.push(json!({"Name": "TransactionDate", "Value": wire}));
                        expected_meta.transaction_date = Some(raw);
                    }
                    if let Some((wire, p)) = phone {
                        items.push(json!({"Name": "PhoneNumber", "Value": wire}));
                        expected_meta.phone = Some(p);
                    }
                    match balance {
                        None => {}
                        Some(None) => items.push(json!({"Name": "Balance"})),
                        Some(Some(v)) => {
                            expected_meta.balance = Some(match &v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            });
                            items.push(json!({"Name": "Balance", "Value": v}));
                        }
                    }
                    for (name, value) in unknown {
                        items.push(json!({"Name": name, "Value": value}));
                    }
                    shuffle(&mut items, seed);
                }

                let mut cb = Map::new();
                cb.insert("MerchantRequestID".into(), Value::from(merchant.clone()));
                cb.insert("CheckoutRequestID".into(), Value::from(checkout.clone()));
                cb.insert("ResultCode".into(), code_wire);
                if let Some(d) = &desc {
                    cb.insert("ResultDesc".into(), Value::from(d.clone()));
                }
                for (k, v) in &extra {
                    cb.insert(k.clone(), v.clone());
                }
                if with_meta {
                    cb.insert("CallbackMetadata".into(), json!({"Item": items}));
                }
                let mut root = Map::new();
                root.insert("Body".into(), json!({"stkCallback": cb}));
                for (k, v) in extra {
                    root.insert(k, v);
                }

                let expected = StkCallback {
                    merchant_request_id: MerchantRequestId::parse(&merchant).ok()?,
                    checkout_request_id: CheckoutRequestId::parse(&checkout).ok()?,
                    result_code: code,
                    result_desc: desc.unwrap_or_default(),
                    metadata: expected_meta,
                };
                Some(Case {
                    body: Value::Object(root),
                    expected,
                })
            },
        )
}

/// A deterministic Fisher–Yates shuffle driven by a generated seed (xorshift).
fn shuffle(items: &mut [Value], mut seed: u64) {
    seed |= 1;
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

// ---- properties -------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = parse_checked(&body);
    }

    #[test]
    fn json_like_text_never_panics(body in "[\\[\\]{}\",:\\\\ 0-9a-zA-Z.eE+-]{0,600}") {
        let _ = parse_checked(body.as_bytes());
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let _ = parse_checked(&to_bytes(&v));
        // The same value wrapped where a callback is expected.
        let _ = parse_checked(&to_bytes(&json!({"Body": v.clone()})));
        let _ = parse_checked(&to_bytes(&json!({"Body": {"stkCallback": v}})));
    }

    #[test]
    fn arbitrary_callback_shapes_never_panic(v in arb_callback_shape()) {
        let _ = parse_checked(&to_bytes(&v));
    }

    #[test]
    fn depth_limit_is_exact(depth in 0usize..80, leaf in arb_leaf()) {
        let mut v = leaf;
        for i in 0..depth {
            v = if i % 2 == 0 { json!([v]) } else { json!({"k": v}) };
        }
        let too_deep = matches!(parse_callback(&to_bytes(&v)), Err(CallbackError::TooDeep { .. }));
        prop_assert_eq!(too_deep, depth > MAX_JSON_DEPTH);
    }

    #[test]
    fn valid_callbacks_parse_to_their_values(case in arb_case()) {
        let body = to_bytes(&case.body);
        match parse_checked(&body) {
            Ok(cb) => prop_assert_eq!(&cb, &case.expected),
            Err(e) => prop_assert!(false, "valid callback rejected: {}\n{}", e, case.body),
        }
        // Pretty-printed (Daraja's own samples are) parses the same.
        let pretty = serde_json::to_vec_pretty(&case.body).unwrap_or_default();
        prop_assert_eq!(parse_callback(&pretty).ok(), Some(case.expected));
    }
}
