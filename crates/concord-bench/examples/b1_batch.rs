//! B1's batch phase alone (1M tags through `commit_batch`, 1,000 per batch),
//! for profiling it apart from the rest of B1: `perf record -g
//! target/release/examples/b1_batch [items]`. Prints the phase's wall time.

use concord::hlc::SystemClock;
use concord::model::Tag;
use concord::sync::txn::LibraryOptions;
use concord::{Change, Library, Uuid};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut ms = 1_700_000_000_000u64;
    let mut x = 0xB102u64;
    let rows: Vec<Tag> = (0..n)
        .map(|i| {
            ms += 1;
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut tail = [0u8; 10];
            tail[..8].copy_from_slice(&x.to_le_bytes());
            tail[8..].copy_from_slice(&x.rotate_left(17).to_le_bytes()[..2]);
            Ok(Tag {
                id: uuid::Builder::from_unix_timestamp_millis(ms, &tail).into_uuid(),
                name: format!("tag {i}"),
                color: (i % 3 == 0).then(|| format!("#{:06x}", (i * 7919) & 0xff_ffff)),
            })
        })
        .collect::<Result<_, std::convert::Infallible>>()?;
    let tmp = tempfile::tempdir()?;
    let lib = Library::create_with(
        &tmp.path().join("concord"),
        Uuid::from_u128(0xB1),
        "bench",
        Uuid::from_u128(0xB1DE),
        Box::new(SystemClock),
        LibraryOptions {
            key: Some(concord::sync::seal::NodeKey::from_bytes(&[0xB1; 32])),
            ..LibraryOptions::default()
        },
    )?;
    let start = std::time::Instant::now();
    for chunk in rows.chunks(1_000) {
        lib.commit_batch(chunk.iter().map(Change::insert).collect())?;
    }
    lib.flush()?;
    let s = start.elapsed().as_secs_f64();
    println!("{n} items in {s:.3} s: {:.0} items/s", n as f64 / s);
    Ok(())
}
