//! The node's identity: an ed25519 secret key in `<data dir>/identity.key`.
//!
//! The key is created on first start (32 random bytes, file mode 0600) and reused
//! after every restart. It signs every statement the node makes, and its public half
//! is the node's libp2p PeerId.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use polity_consensus::PublicKey;

/// File name of the secret key inside the data dir.
pub const KEY_FILE: &str = "identity.key";
const KEY_LENGTH_BYTES: usize = 32;

/// A node's signing key and what derives from it.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity")
            .field("public_key", &self.public_key().to_string())
            .finish()
    }
}

impl Identity {
    /// Loads the key from `data_dir`, creating it (mode 0600) when absent.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Identity> {
        let path = key_path(data_dir);
        if path.exists() {
            return Identity::load(&path);
        }
        let mut secret = [0u8; KEY_LENGTH_BYTES];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating identity key {}", path.display()))?;
        file.write_all(&secret)?;
        file.sync_all()?;
        Ok(Identity {
            key: SigningKey::from_bytes(&secret),
        })
    }

    /// Loads an existing key; refuses a key file others can read.
    pub fn load(path: &Path) -> anyhow::Result<Identity> {
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("reading identity key {}", path.display()))?;
        if metadata.permissions().mode() & 0o077 != 0 {
            bail!(
                "identity key {} is readable by others (mode {:o}); run chmod 600 on it",
                path.display(),
                metadata.permissions().mode() & 0o777
            );
        }
        let bytes = std::fs::read(path)?;
        let secret: [u8; KEY_LENGTH_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "identity key {} has {} bytes, expected {KEY_LENGTH_BYTES}",
                path.display(),
                bytes.len()
            )
        })?;
        Ok(Identity {
            key: SigningKey::from_bytes(&secret),
        })
    }

    /// The raw secret, for the libp2p identity (the same key is the PeerId).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_verifying_key(&self.key.verifying_key())
    }

    /// The libp2p PeerId of this identity, base58.
    pub fn peer_id(&self) -> String {
        polity_net::peer_id_of(&self.public_key().0)
            .expect("the public half of a signing key is a valid ed25519 point")
            .to_string()
    }
}

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(first.peer_id(), second.peer_id());
        assert!(
            first.peer_id().starts_with("12D3KooW"),
            "{}",
            first.peer_id()
        );
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        let path = key_path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Identity::load(&path).unwrap_err().to_string();
        assert!(error.contains("readable by others"), "{error}");
    }

    #[test]
    fn a_truncated_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        let path = key_path(dir.path());
        std::fs::write(&path, [1u8; 7]).unwrap();
        let error = Identity::load(&path).unwrap_err().to_string();
        assert!(error.contains("7 bytes"), "{error}");
    }
}
