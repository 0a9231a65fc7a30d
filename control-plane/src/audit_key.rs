//! The audit key: the Ed25519 key that signs audit checkpoints (see `audit`), held outside the
//! registry so that a database writer cannot sign a history of their own.
//!
//! Today the key is a PKCS#8 PEM file (the format `openssl genpkey -algorithm ed25519` writes, so
//! an operator may bring their own), created with mode 0600 on first start if it is missing, with
//! its public half written beside it (`….pub`). Every control-plane replica must use the same key.
//! A KMS signer would take this type's place: nothing else sees the private key.
//!
//! Each checkpoint is also appended to the **checkpoint log** (JSON lines, fsynced) and written to
//! the server's log, so copies live outside the database.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cellfleet_api::{AuditCheckpoint, AuditKeyView};
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::audit::{checkpoint_statement, key_id};

#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("audit key {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("checkpoint log {path}: {why}")]
    Log { path: PathBuf, why: String },
}

/// The signing key and where checkpoints are copied.
pub struct AuditKey {
    signing: SigningKey,
    key_id: String,
    /// The checkpoint log (JSON lines), when there is one.
    log: Option<PathBuf>,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("key_id", &self.key_id)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

/// What loading the key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Loaded,
    /// There was none: a new key was written.
    Created,
}

impl AuditKey {
    /// Loads the key at `path`, or creates one there (mode 0600, public half in `path.pub`).
    pub fn load_or_create(
        path: &Path,
        log: Option<PathBuf>,
    ) -> Result<(AuditKey, KeySource), AuditKeyError> {
        let err = |why: String| AuditKeyError::Key {
            path: path.to_owned(),
            why,
        };
        let (signing, source) = match std::fs::read_to_string(path) {
            Ok(pem) => (
                SigningKey::from_pkcs8_pem(&pem)
                    .map_err(|e| err(format!("not an Ed25519 PKCS#8 PEM key: {e}")))?,
                KeySource::Loaded,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                rand::fill(&mut seed);
                let signing = SigningKey::from_bytes(&seed);
                let pem = signing
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| err(format!("cannot encode a new key: {e}")))?;
                write_new(path, pem.as_bytes(), true).map_err(|e| err(e.to_string()))?;
                let public = public_pem(&signing.verifying_key()).map_err(err)?;
                let mut pub_path = path.as_os_str().to_owned();
                pub_path.push(".pub");
                write_new(Path::new(&pub_path), public.as_bytes(), false)
                    .map_err(|e| err(e.to_string()))?;
                (signing, KeySource::Created)
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let key_id = key_id(&signing.verifying_key());
        Ok((
            AuditKey {
                signing,
                key_id,
                log,
            },
            source,
        ))
    }

    /// A key for tests and benchmarks (no file, no log).
    pub fn ephemeral() -> AuditKey {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let signing = SigningKey::from_bytes(&seed);
        AuditKey {
            key_id: key_id(&signing.verifying_key()),
            signing,
            log: None,
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn view(&self) -> AuditKeyView {
        AuditKeyView {
            algorithm: "ed25519".to_owned(),
            key_id: self.key_id.clone(),
            public_key_pem: public_pem(&self.signing.verifying_key()).unwrap_or_default(),
        }
    }

    /// Signs "record `seq` has hash `hash`" as of `at`.
    pub fn sign(&self, seq: i64, hash: &str, at: DateTime<Utc>) -> AuditCheckpoint {
        // Signed at millisecond precision, the precision it is stored at.
        let at_ms = at.timestamp_millis();
        let at = DateTime::from_timestamp_millis(at_ms).unwrap_or(at);
        let signature = self
            .signing
            .sign(checkpoint_statement(seq, hash, at_ms).as_bytes());
        AuditCheckpoint {
            seq,
            hash: hash.to_owned(),
            at,
            key_id: self.key_id.clone(),
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }

    /// Copies a checkpoint outside the database: one JSON line in the checkpoint log (fsynced)
    /// and one line in the server's log.
    pub fn emit(&self, cp: &AuditCheckpoint) -> Result<(), AuditKeyError> {
        let line = serde_json::to_string(cp).unwrap_or_default();
        tracing::info!(target: "cellfleet::audit", checkpoint = %line, "audit checkpoint");
        let Some(path) = &self.log else {
            return Ok(());
        };
        let err = |e: std::io::Error| AuditKeyError::Log {
            path: path.clone(),
            why: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        writeln!(file, "{line}").map_err(err)?;
        file.sync_data().map_err(err)
    }

    /// The checkpoints of the checkpoint log (none without one). A line that is not a
    /// checkpoint is an error naming it: a damaged copy must not pass silently.
    pub fn logged(&self) -> Result<Vec<AuditCheckpoint>, AuditKeyError> {
        let Some(path) = &self.log else {
            return Ok(Vec::new());
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(AuditKeyError::Log {
                    path: path.clone(),
                    why: e.to_string(),
                });
            }
        };
        parse_checkpoints(&text).map_err(|why| AuditKeyError::Log {
            path: path.clone(),
            why,
        })
    }
}

/// Checkpoints from JSON lines or a JSON array (what `audit checkpoints -o json` prints).
pub fn parse_checkpoints(text: &str) -> Result<Vec<AuditCheckpoint>, String> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).map_err(|e| format!("not a list of checkpoints: {e}"));
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("line {}: not a checkpoint: {e}", i + 1))
        })
        .collect()
}

fn public_pem(key: &VerifyingKey) -> Result<String, String> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the public key: {e}"))
}

/// Writes a new file (never over an existing one), private or world-readable.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::audit::signature_valid;

    #[test]
    fn a_key_is_created_once_and_loaded_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let (a, source) = AuditKey::load_or_create(&path, None).unwrap();
        assert_eq!(source, KeySource::Created);
        let (b, source) = AuditKey::load_or_create(&path, None).unwrap();
        assert_eq!(source, KeySource::Loaded);
        assert_eq!(a.key_id(), b.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let public = std::fs::read_to_string(dir.path().join("audit.key.pub")).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
        std::fs::write(&path, "not a key").unwrap();
        let e = AuditKey::load_or_create(&path, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an Ed25519 PKCS#8 PEM key"), "{e}");
    }

    #[test]
    fn checkpoints_verify_only_with_their_key_and_content() {
        let key = AuditKey::ephemeral();
        let cp = key.sign(7, "abc", Utc::now());
        assert!(signature_valid(&cp, &key.verifying_key()));
        let other = AuditKey::ephemeral();
        assert!(!signature_valid(&cp, &other.verifying_key()));
        for tamper in [
            AuditCheckpoint {
                seq: 8,
                ..cp.clone()
            },
            AuditCheckpoint {
                hash: "abd".into(),
                ..cp.clone()
            },
            AuditCheckpoint {
                at: cp.at + chrono::TimeDelta::milliseconds(1),
                ..cp.clone()
            },
            AuditCheckpoint {
                signature: "AAAA".into(),
                ..cp.clone()
            },
        ] {
            assert!(
                !signature_valid(&tamper, &key.verifying_key()),
                "{tamper:?}"
            );
        }
    }

    #[test]
    fn the_log_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("checkpoints.jsonl");
        let (key, _) = AuditKey::load_or_create(&dir.path().join("k"), Some(log.clone())).unwrap();
        let a = key.sign(1, "h1", Utc::now());
        let b = key.sign(2, "h2", Utc::now());
        key.emit(&a).unwrap();
        key.emit(&b).unwrap();
        assert_eq!(key.logged().unwrap(), vec![a.clone(), b]);
        std::fs::write(&log, "{\"seq\": 1}\n").unwrap();
        let e = key.logged().unwrap_err().to_string();
        assert!(e.contains("line 1: not a checkpoint"), "{e}");
        let array = serde_json::to_string(&vec![a.clone()]).unwrap();
        assert_eq!(parse_checkpoints(&array).unwrap(), vec![a]);
    }
}
