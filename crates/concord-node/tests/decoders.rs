//! Fuzzing, as property tests, of the decoders concord-node runs on input from
//! other people and devices: pairing tickets (pasted by a user) and compressed
//! sync frames (from peers). Errors, never panics, and no allocation beyond the
//! stated limits.

use concord::service::protocol::{Envelope, Msg};
use concord::Uuid;
use concord_node::frame::{compress, decompress};
use concord_node::ticket::{Ticket, MAX_TICKET_LEN};
use proptest::prelude::*;

/// Cases per property: the default keeps the suite fast; `CONCORD_FUZZ_CASES`
/// raises it for long fuzzing runs.
fn fuzz_cases(default: u32) -> u32 {
    std::env::var("CONCORD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ticket() -> Ticket {
    Ticket {
        node_id: *iroh::SecretKey::generate().public().as_bytes(),
        device_id: Uuid::from_u128(42),
        addrs: vec![
            "127.0.0.1:4242".parse().unwrap(),
            "[::1]:5".parse().unwrap(),
        ],
        invite_id: [1; 8],
        secret: [7; 32],
        expires_at: 123,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(512), ..ProptestConfig::default() })]

    #[test]
    fn ticket_decode_of_arbitrary_strings(s in any::<String>()) {
        let _ = Ticket::decode(&s);
    }

    #[test]
    fn ticket_decode_of_base32_noise(body in "[a-z2-7]{0,400}") {
        let _ = Ticket::decode(&format!("concord1{body}"));
    }

    /// A real ticket with characters changed, dropped or appended.
    #[test]
    fn ticket_decode_of_mutated_tickets(edits in proptest::collection::vec((any::<usize>(), "[a-z2-7]"), 1..5), cut in any::<usize>()) {
        let mut s: Vec<char> = ticket().encode().chars().collect();
        for (at, c) in edits {
            let n = s.len();
            let i = 8 + at % (n - 8);
            s[i] = c.chars().next().unwrap();
        }
        if cut % 4 == 0 {
            s.truncate(8 + cut % (s.len() - 8));
        }
        let s: String = s.into_iter().collect();
        if let Ok(t) = Ticket::decode(&s) {
            prop_assert!(t.addrs.len() <= concord_node::ticket::MAX_TICKET_ADDRS);
        }
    }

    /// Arbitrary bytes as a compressed frame body: an error or a message.
    #[test]
    fn decompress_of_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decompress::<Envelope>(&bytes, 1 << 20);
    }

    /// Real compressed messages with bytes flipped.
    #[test]
    fn decompress_of_mutated_frames(flips in proptest::collection::vec((any::<usize>(), 1u8..), 1..6)) {
        let env = Envelope { id: 1, library: Uuid::from_u128(1), from: Uuid::from_u128(2), msg: Msg::SyncRequired { reason: "x".repeat(300) } };
        let mut bytes = compress(&env).unwrap();
        for (at, b) in flips {
            let n = bytes.len();
            bytes[at % n] ^= b;
        }
        if let Ok(env) = decompress::<Envelope>(&bytes, 1 << 20) {
            let _ = env.msg.check_bounds();
        }
    }
}

#[test]
fn a_ticket_round_trips_and_limits_hold() {
    let t = ticket();
    assert_eq!(Ticket::decode(&t.encode()).unwrap(), t);
    assert!(Ticket::decode(&"concord1".repeat(MAX_TICKET_LEN)).is_err());
    let mut many = ticket();
    many.addrs = vec!["127.0.0.1:1".parse().unwrap(); 17];
    assert!(
        Ticket::decode(&many.encode()).is_err(),
        "too many addresses"
    );
}

/// A frame that inflates past the limit is refused (a zip bomb cannot grow
/// memory past `max`).
#[test]
fn decompress_refuses_inflating_past_the_limit() {
    let env = Envelope {
        id: 1,
        library: Uuid::from_u128(1),
        from: Uuid::from_u128(2),
        msg: Msg::SyncRequired {
            reason: "a".repeat(1 << 20),
        },
    };
    let bytes = compress(&env).unwrap();
    assert!(bytes.len() < 10_000, "compresses well");
    assert!(decompress::<Envelope>(&bytes, 1 << 16).is_err());
    assert_eq!(decompress::<Envelope>(&bytes, 2 << 20).unwrap(), env);
}
