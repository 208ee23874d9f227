//! Properties of text from outside: cleaned text never holds a forbidden character and
//! is at most 256 characters; the JSON a browser receives never holds a raw `<`, `>` or
//! `&`, and still decodes to the same STATE.

use chrono::Utc;
use proptest::prelude::*;
use stk_relay_shared::api::{encode_message, MessageType, ServerMessageOwned};
use stk_relay_shared::ids::{CheckoutRequestId, MerchantRequestId};
use stk_relay_shared::payment::{PaymentOutcome, PaymentState, ResultCode};
use stk_relay_shared::text::{clean_external, is_forbidden, MAX_EXTERNAL_CHARS};

/// Strings weighted towards the characters that matter: controls, bidi, zero-width,
/// non-characters, markup and plain text.
fn hostile_string() -> impl Strategy<Value = String> {
    let interesting = prop_oneof![
        Just('\u{0}'),
        Just('\u{1b}'),
        Just('\u{7f}'),
        Just('\u{85}'),
        Just('\u{9f}'),
        Just('\u{200b}'),
        Just('\u{200f}'),
        Just('\u{202a}'),
        Just('\u{202e}'),
        Just('\u{2066}'),
        Just('\u{2069}'),
        Just('\u{feff}'),
        Just('\u{fdd0}'),
        Just('\u{fffe}'),
        Just('\u{1fffe}'),
        Just('<'),
        Just('>'),
        Just('&'),
        Just('"'),
        Just('\\'),
        Just('é'),
        Just(' '),
    ];
    prop::collection::vec(prop_oneof![interesting, any::<char>()], 0..400)
        .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn cleaned_text_holds_no_forbidden_character(s in hostile_string()) {
        let c = clean_external(&s);
        prop_assert!(!c.chars().any(is_forbidden), "{c:?}");
        prop_assert!(c.chars().count() <= MAX_EXTERNAL_CHARS);
        // Cleaning is idempotent.
        let again = clean_external(&c).into_owned();
        prop_assert_eq!(again.as_str(), c.as_ref());
    }

    #[test]
    fn browser_json_never_holds_raw_markup(desc in hostile_string()) {
        let mut state = PaymentState::pending(
            CheckoutRequestId::parse("ws_CO_1").unwrap(),
            MerchantRequestId::parse("1-2-3").unwrap(),
            10,
            "2547******12".into(),
            Utc::now(),
        );
        let outcome = PaymentOutcome::from_code(ResultCode::Code(1032), desc, Utc::now());
        state.apply(&outcome);
        let json = serde_json::to_string(&state).unwrap();
        let frame = encode_message(MessageType::PaymentCompleted, &json);
        prop_assert!(!frame.contains(['<', '>', '&']), "{frame}");
        let back: ServerMessageOwned = serde_json::from_str(&frame).unwrap();
        prop_assert_eq!(back.data, state);
    }
}
