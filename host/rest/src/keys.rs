//! Storage account keys: two per account (primary and secondary, so one can be rotated while
//! clients move to the other), 512 random bits each, kept by the host in a file per account
//! readable by its owner only.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Bytes of a key (Azure's keys are 64 bytes, 88 characters of base64).
pub const KEY_BYTES: usize = 64;

/// The development account of the Azure Storage emulator: the name and key every Azure SDK's
/// `UseDevelopmentStorage=true` uses. Public, so served only on loopback.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The development account's published key.
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// One account key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    /// A key from its base64 text.
    pub fn from_base64(s: &str) -> Option<Key> {
        let raw = B64.decode(s.trim()).ok()?;
        (!raw.is_empty()).then_some(Key(raw))
    }

    /// A fresh random key.
    pub fn random() -> std::io::Result<Key> {
        let mut raw = vec![0u8; KEY_BYTES];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
        Ok(Key(raw))
    }

    /// The key's bytes (the HMAC key).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key as base64, as connection strings carry it.
    pub fn to_base64(&self) -> String {
        B64.encode(&self.0)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Which of an account's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// key1.
    Primary,
    /// key2.
    Secondary,
}

impl std::str::FromStr for Which {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "primary" | "key1" => Ok(Which::Primary),
            "secondary" | "key2" => Ok(Which::Secondary),
            _ => Err(format!("{s:?} is not a key: say primary or secondary")),
        }
    }
}

/// An account's two keys. A request signed with either is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountKeys {
    /// key1.
    pub primary: Key,
    /// key2.
    pub secondary: Key,
}

impl AccountKeys {
    /// Two fresh random keys.
    pub fn random() -> std::io::Result<AccountKeys> {
        Ok(AccountKeys {
            primary: Key::random()?,
            secondary: Key::random()?,
        })
    }

    /// The development account's keys (its one published key, twice).
    pub fn dev() -> AccountKeys {
        let k = Key::from_base64(DEV_KEY).unwrap_or(Key(Vec::new()));
        AccountKeys {
            primary: k.clone(),
            secondary: k,
        }
    }

    /// Both keys, primary first.
    pub fn both(&self) -> [&Key; 2] {
        [&self.primary, &self.secondary]
    }

    fn to_json(&self) -> String {
        serde_json::json!({
            "primary": self.primary.to_base64(),
            "secondary": self.secondary.to_base64(),
        })
        .to_string()
    }

    fn from_json(text: &str) -> Option<AccountKeys> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(AccountKeys {
            primary: Key::from_base64(v.get("primary")?.as_str()?)?,
            secondary: Key::from_base64(v.get("secondary")?.as_str()?)?,
        })
    }
}

/// Where the REST door finds an account's keys.
pub trait KeyLookup: Send + Sync {
    /// The account's keys, or `None` for an account this host does not serve (its requests are
    /// refused as unauthenticated, the same answer as a wrong signature).
    fn keys(&self, account: &str) -> Option<AccountKeys>;
}

/// Errors of the key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A key file that others may read is never used.
    #[error(
        "{0} can be read by other users; make it readable by its owner only (chmod 600) or remove it to make new keys"
    )]
    Exposed(String),
    /// A key file that is not what the host wrote.
    #[error("{0} is not a key file of this host (remove it to make new keys)")]
    Damaged(String),
}

/// How often a cached key file is looked at again for a rotation by another process.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Cached {
    keys: AccountKeys,
    modified: Option<std::time::SystemTime>,
    checked: std::time::Instant,
}

/// Keys kept in `<dir>/<account>.json` (0600, the directory 0700), cached in memory.
#[derive(Debug)]
pub struct KeyFiles {
    dir: PathBuf,
    /// Keys read, with the modification time of their file and when it was last looked at: a
    /// key rotated by another process (`rolehost storage keys --regenerate` while the host
    /// runs) is seen within [`RECHECK`], without a `stat` on every request.
    cache: RwLock<HashMap<String, Cached>>,
    /// Served in addition when the host serves the development account.
    dev: bool,
}

impl KeyFiles {
    /// Keys under `dir` (made 0700 if missing). `dev` also serves [`DEV_ACCOUNT`] with
    /// [`DEV_KEY`].
    pub fn open(dir: impl Into<PathBuf>, dev: bool) -> Result<Arc<KeyFiles>, KeyError> {
        let dir = dir.into();
        let io = |source| KeyError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        set_mode(&dir, 0o700).map_err(io)?;
        Ok(Arc::new(KeyFiles {
            dir,
            cache: RwLock::new(HashMap::new()),
            dev,
        }))
    }

    /// Whether the development account is served.
    pub fn serves_dev(&self) -> bool {
        self.dev
    }

    fn path(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{account}.json"))
    }

    /// The account's keys, made (and written) the first time.
    pub fn ensure(&self, account: &str) -> Result<AccountKeys, KeyError> {
        if let Some(k) = self.read(account)? {
            return Ok(k);
        }
        let keys = AccountKeys::random().map_err(|source| KeyError::Io {
            path: "/dev/urandom".into(),
            source,
        })?;
        self.write(account, &keys)?;
        Ok(keys)
    }

    /// Replaces one of the account's keys with a fresh random one; requests signed with the old
    /// one are refused from now on. Returns the keys.
    pub fn rotate(&self, account: &str, which: Which) -> Result<AccountKeys, KeyError> {
        let mut keys = self.ensure(account)?;
        let fresh = Key::random().map_err(|source| KeyError::Io {
            path: "/dev/urandom".into(),
            source,
        })?;
        match which {
            Which::Primary => keys.primary = fresh,
            Which::Secondary => keys.secondary = fresh,
        }
        self.write(account, &keys)?;
        Ok(keys)
    }

    /// Forgets the account's keys (its storage was purged).
    pub fn remove(&self, account: &str) -> Result<(), KeyError> {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(account);
        match std::fs::remove_file(self.path(account)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(KeyError::Io {
                path: self.path(account).display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// The account's keys if it has a key file.
    pub fn read(&self, account: &str) -> Result<Option<AccountKeys>, KeyError> {
        if rolehost_storage::names::check_account(account).is_err() {
            return Ok(None);
        }
        if let Some(c) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(account)
            && c.checked.elapsed() < RECHECK
        {
            return Ok(Some(c.keys.clone()));
        }
        let path = self.path(account);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if let Some(c) = self
            .cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(account)
            && c.modified == modified
            && modified.is_some()
        {
            c.checked = std::time::Instant::now();
            return Ok(Some(c.keys.clone()));
        }
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyError::Io {
                    path: shown,
                    source,
                });
            }
        };
        if exposed(&path) {
            return Err(KeyError::Exposed(shown));
        }
        let keys = AccountKeys::from_json(&text).ok_or(KeyError::Damaged(shown))?;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                account.to_string(),
                Cached {
                    keys: keys.clone(),
                    modified,
                    checked: std::time::Instant::now(),
                },
            );
        Ok(Some(keys))
    }

    fn write(&self, account: &str, keys: &AccountKeys) -> Result<(), KeyError> {
        let path = self.path(account);
        let tmp = self.dir.join(format!(".{account}.json.tmp"));
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        {
            let mut f = std::fs::OpenOptions::new();
            f.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
            let mut f = f.open(&tmp).map_err(io)?;
            f.write_all(keys.to_json().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(account);
        Ok(())
    }
}

impl KeyLookup for KeyFiles {
    fn keys(&self, account: &str) -> Option<AccountKeys> {
        if self.dev && account == DEV_ACCOUNT {
            return Some(AccountKeys::dev());
        }
        match self.read(account) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(account, error = %e, "storage keys unreadable; the account's requests are refused");
                None
            }
        }
    }
}

#[cfg(unix)]
fn exposed(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
fn exposed(_: &Path) -> bool {
    false
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// A connection string for `account` with `key`, naming the three endpoints.
pub fn connection_string(account: &str, key: &Key, endpoints: &Endpoints) -> String {
    let mut s = format!(
        "DefaultEndpointsProtocol={};AccountName={account};AccountKey={}",
        endpoints.scheme,
        key.to_base64()
    );
    for (name, addr) in [
        ("BlobEndpoint", &endpoints.blob),
        ("QueueEndpoint", &endpoints.queue),
        ("TableEndpoint", &endpoints.table),
    ] {
        if let Some(addr) = addr {
            s.push_str(&format!(";{name}={}://{addr}/{account}", endpoints.scheme));
        }
    }
    s.push(';');
    s
}

/// Where the three services answer (`None`: turned off).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    /// `http` or `https`.
    pub scheme: String,
    /// Blob `host:port`.
    pub blob: Option<String>,
    /// Queue `host:port`.
    pub queue: Option<String>,
    /// Table `host:port`.
    pub table: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_kept_private_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::open(dir.path().join("keys"), false).unwrap();
        assert!(files.keys("demo").is_none(), "no key until made");
        let k = files.ensure("demo").unwrap();
        assert_eq!(k.primary.bytes().len(), KEY_BYTES);
        assert_ne!(k.primary, k.secondary);
        assert!(!exposed(&dir.path().join("keys/demo.json")));
        let again = KeyFiles::open(dir.path().join("keys"), false).unwrap();
        assert_eq!(again.keys("demo"), Some(k.clone()));
        let r = again.rotate("demo", Which::Secondary).unwrap();
        assert_eq!(r.primary, k.primary);
        assert_ne!(r.secondary, k.secondary);
        // Another process (the CLI) rotating is seen by the host's cache within RECHECK.
        let _ = files.keys("demo");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let r2 = again.rotate("demo", Which::Primary).unwrap();
        std::thread::sleep(RECHECK + std::time::Duration::from_millis(50));
        assert_eq!(files.keys("demo"), Some(r2));
        again.remove("demo").unwrap();
        assert!(again.keys("demo").is_none());
        assert!(
            again.keys("../etc/passwd").is_none(),
            "names are checked before any path is made"
        );
    }

    #[test]
    fn the_dev_account_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            KeyFiles::open(dir.path(), false)
                .unwrap()
                .keys(DEV_ACCOUNT)
                .is_none()
        );
        let k = KeyFiles::open(dir.path(), true)
            .unwrap()
            .keys(DEV_ACCOUNT)
            .unwrap();
        assert_eq!(k.primary.to_base64(), DEV_KEY);
    }

    #[test]
    fn connection_strings_name_each_endpoint() {
        let k = Key::from_base64(DEV_KEY).unwrap();
        let ep = Endpoints {
            scheme: "http".into(),
            blob: Some("127.0.0.1:10000".into()),
            queue: Some("127.0.0.1:10001".into()),
            table: None,
        };
        let s = connection_string("demo", &k, &ep);
        assert!(s.contains("AccountName=demo;"));
        assert!(s.contains("BlobEndpoint=http://127.0.0.1:10000/demo;"));
        assert!(s.contains("QueueEndpoint=http://127.0.0.1:10001/demo;"));
        assert!(!s.contains("TableEndpoint"));
    }
}
