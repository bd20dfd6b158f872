//! The agent's thing identity and credentials, as provisioning handed them over: kept in
//! `<state_dir>/credentials.pb` (mode 0600, replaced atomically), and published to the uploader,
//! which picks a rotation up at its next session without a restart.

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use prost::Message;
use sipmba_proto::v1 as pb;
use tokio::sync::watch;

/// What the agent holds: the provisioning request, without its proof.
pub type Credentials = pb::ProvisionRequest;

/// The stored credentials and their subscribers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    path: PathBuf,
    current: Arc<watch::Sender<Option<Arc<Credentials>>>>,
}

impl CredentialStore {
    /// Loads the credentials kept in `state_dir`, if any.
    pub fn open(state_dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
        let path = state_dir.join("credentials.pb");
        let current = match std::fs::read(&path) {
            Ok(bytes) => Some(Arc::new(Credentials::decode(bytes.as_slice()).map_err(
                |e| {
                    format!(
                        "{} is damaged ({e}); provision the agent again",
                        path.display()
                    )
                },
            )?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if current.is_some() {
            // Whatever created it, only the agent reads it.
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Self {
            path,
            current: Arc::new(watch::channel(current).0),
        })
    }

    /// The current credentials.
    pub fn get(&self) -> Option<Arc<Credentials>> {
        self.current.borrow().clone()
    }

    /// Follows changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Credentials>>> {
        self.current.subscribe()
    }

    /// Stores new credentials (written to a 0600 temporary file, synced, renamed over the old
    /// one) and publishes them. Returns false when they equal the current ones.
    pub fn replace(&self, mut credentials: Credentials) -> Result<bool, String> {
        credentials.enrollment_proof.clear();
        if self.get().as_deref() == Some(&credentials) {
            return Ok(false);
        }
        let tmp = self.path.with_extension("pb.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&credentials.encode_to_vec())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| format!("cannot store {}: {e}", self.path.display()))?;
        self.current.send_replace(Some(Arc::new(credentials)));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn credentials_are_private_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::open(dir.path()).unwrap();
        assert!(store.get().is_none());
        let mut rx = store.subscribe();
        let creds = Credentials {
            enrollment_proof: "secret:do-not-keep".into(),
            thing: Some(pb::ThingId { value: "t".into() }),
            access_token: "token-1".into(),
            collect_endpoint: "http://127.0.0.1:1".into(),
            ..Default::default()
        };
        assert!(store.replace(creds.clone()).unwrap());
        assert!(
            !store.replace(creds.clone()).unwrap(),
            "the same again changes nothing"
        );
        assert!(rx.has_changed().unwrap());
        let mode = std::fs::metadata(dir.path().join("credentials.pb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let reopened = CredentialStore::open(dir.path()).unwrap().get().unwrap();
        assert_eq!(reopened.access_token, "token-1");
        assert!(
            reopened.enrollment_proof.is_empty(),
            "the proof is not kept"
        );
        let _ = rx.borrow_and_update();
    }
}
