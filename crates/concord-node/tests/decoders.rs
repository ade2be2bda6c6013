//! Fuzzing, as property tests, of the decoders concord-node runs on input from
//! other people and devices: pairing tickets (pasted by a user) and sync
//! frames (from peers, through the same decoder the sync transport runs).
//! Errors, never panics, and no allocation beyond the stated limits.

use concord::service::protocol::Term;
use concord::service::protocol::{Envelope, Msg};
use concord::Uuid;
use concord_node::frame::{
    decode_envelope, encode_envelope, envelope_frame_len, LARGE_VARIANTS, MAX_ENVELOPE_FRAME,
    MAX_SMALL_ENVELOPE,
};
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
        relays: vec!["http://10.0.0.1:3340/".into()],
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
        let _ = Ticket::decode(&format!("concord2{body}"));
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

    /// Arbitrary bytes as a frame (flag byte and body): an error or a message.
    #[test]
    fn decode_of_arbitrary_frames(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_envelope(&bytes, 1 << 20);
    }

    /// Arbitrary bytes behind the compressed flag: an error or a message.
    #[test]
    fn decode_of_arbitrary_compressed_bodies(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut frame = vec![1u8];
        frame.extend_from_slice(&bytes);
        let _ = decode_envelope(&frame, 1 << 20);
    }

    /// Real frames, plain and compressed, with bytes flipped.
    #[test]
    fn decode_of_mutated_frames(flips in proptest::collection::vec((any::<usize>(), 1u8..), 1..6), long in any::<bool>()) {
        let reason = "x".repeat(if long { 8 * 1024 } else { 300 });
        let env = Envelope { id: 1, library: Uuid::from_u128(1), from: Uuid::from_u128(2), msg: Msg::SyncRequired { reason } };
        let (wire, _) = encode_envelope(&env).unwrap();
        let mut frame = wire[4..].to_vec();
        for (at, b) in flips {
            let n = frame.len();
            frame[at % n] ^= b;
        }
        let _ = decode_envelope(&frame, 1 << 20);
    }

    /// Any length prefix: refused outside the limit, before allocating.
    #[test]
    fn frame_lengths_are_bounded(prefix in any::<[u8; 4]>()) {
        if let Ok(len) = envelope_frame_len(prefix) {
            prop_assert!((1..=MAX_ENVELOPE_FRAME).contains(&len));
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
/// memory past `max`), and frames round-trip.
#[test]
fn decode_refuses_inflating_past_the_limit() {
    let env = Envelope {
        id: 1,
        library: Uuid::from_u128(1),
        from: Uuid::from_u128(2),
        msg: Msg::SyncRequired {
            reason: "a".repeat(1 << 19),
        },
    };
    let (wire, _) = encode_envelope(&env).unwrap();
    assert!(wire.len() < 10_000, "compresses well");
    let prefix: [u8; 4] = wire[..4].try_into().unwrap();
    assert_eq!(envelope_frame_len(prefix).unwrap(), wire.len() - 4);
    assert!(decode_envelope(&wire[4..], 1 << 16).is_err());
    assert_eq!(decode_envelope(&wire[4..], 2 << 20).unwrap(), env);
    assert!(envelope_frame_len(0u32.to_be_bytes()).is_err());
    assert!(envelope_frame_len((MAX_ENVELOPE_FRAME as u32 + 1).to_be_bytes()).is_err());
}

/// The variant index a message is encoded with (one byte after the
/// envelope's id and two UUIDs, for these small values).
fn variant(msg: Msg) -> u32 {
    let env = Envelope {
        id: 1,
        library: Uuid::from_u128(1),
        from: Uuid::from_u128(2),
        msg,
    };
    postcard::to_allocvec(&env).unwrap()[35] as u32
}

/// `LARGE_VARIANTS` names exactly the types that carry entries, rows or
/// pages; the others are bounded by `MAX_SMALL_ENVELOPE` before decoding.
#[test]
fn per_type_bounds_name_the_right_types() {
    let term = Term {
        epoch: 1,
        leader: Uuid::from_u128(3),
    };
    let large = [
        Msg::NewEntries {
            term,
            from_seq: 1,
            to_seq: 1,
            entries: None,
        },
        Msg::ProposeEntries { entries: vec![] },
        Msg::PushEntries { entries: vec![] },
        Msg::EntriesResponse {
            entries: vec![],
            has_more: false,
        },
        Msg::ReconcileResponse {
            vv: Default::default(),
            entries: vec![],
            has_more: false,
            term,
            seq: 0,
        },
        Msg::SnapshotChunk {
            rows: vec![],
            tombstones: vec![],
            bulk: vec![],
            next: None,
            vv: Default::default(),
        },
        Msg::PullPage {
            rows: vec![],
            next: None,
            total: 0,
            position: 0,
        },
        Msg::Sequenced {
            term,
            from_seq: 1,
            to_seq: 1,
            entries: None,
        },
    ];
    let mut found: Vec<u32> = large.into_iter().map(variant).collect();
    found.sort();
    assert_eq!(found, LARGE_VARIANTS);
    for small in [
        Msg::Ok,
        Msg::StaleTerm { term },
        Msg::TakeOver { term },
        Msg::Error {
            message: String::new(),
        },
    ] {
        assert!(!LARGE_VARIANTS.contains(&variant(small)));
    }
    // A small type past its bound is refused; within it, decoded.
    let error = |n: usize| Envelope {
        id: 1,
        library: Uuid::from_u128(1),
        from: Uuid::from_u128(2),
        msg: Msg::Error {
            message: "x".repeat(n),
        },
    };
    let (wire, _) = encode_envelope(&error(MAX_SMALL_ENVELOPE)).unwrap();
    assert!(decode_envelope(&wire[4..], 64 << 20).is_err());
    let (wire, _) = encode_envelope(&error(MAX_SMALL_ENVELOPE / 2)).unwrap();
    assert!(decode_envelope(&wire[4..], 64 << 20).is_ok());
}

/// A compressed body is judged by the size it declares, before anything is
/// inflated: a declared 1 GiB and an undeclared size are both refused.
#[test]
fn inflated_size_is_checked_before_inflating() {
    let mut declared = 0xFD2F_B528u32.to_le_bytes().to_vec();
    declared.push(0xE0); // single segment, 8-byte content size
    declared.extend_from_slice(&(1u64 << 30).to_le_bytes());
    declared.extend_from_slice(&[0x0B, 0, 0, 0]); // last RLE block of one byte
    let mut frame = vec![1u8];
    frame.extend(&declared);
    let err = decode_envelope(&frame, 64 << 20).unwrap_err().to_string();
    assert!(err.contains("inflates to 1073741824 bytes"), "{err}");

    let hidden = zstd::stream::encode_all(&vec![7u8; 100_000][..], 1).unwrap();
    let mut frame = vec![1u8];
    frame.extend(&hidden);
    let err = decode_envelope(&frame, 64 << 20).unwrap_err().to_string();
    assert!(err.contains("does not declare its size"), "{err}");
}
