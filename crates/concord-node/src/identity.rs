//! The device's network identity: an ed25519 secret key (its Iroh node id) kept
//! in `<data-dir>/node.key` with mode 0600.

use std::io::Write;
use std::path::Path;

use iroh::SecretKey;

use crate::error::NetError;

/// Load the key, creating it on first use.
pub fn load_or_create(data_dir: &Path) -> Result<SecretKey, NetError> {
    let path = data_dir.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                NetError::Other(format!("{} is corrupt (expected 32 bytes)", path.display()))
            })?;
            Ok(SecretKey::from_bytes(&arr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            // A fresh `node.tmp`, exclusively and 0600: a leftover (a crash
            // here, or a file planted under that name) is never written through.
            let tmp = path.with_extension("tmp");
            let mut f = concord::private::create_new(&tmp)?;
            f.write_all(&key.to_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

/// Cryptographically random bytes (invite secrets and nonces).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}
