//! Host secrets kept in files: the management token and the snapshot key. Each is 256
//! random bits in hex, in a file readable by its owner only. A file that others can read is
//! refused rather than used: whoever can read it can act as the host.

use std::path::{Path, PathBuf};

/// Bytes of a secret (256 bits).
pub const SECRET_BYTES: usize = 32;

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Reading or writing it failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Group or others may read or write it.
    #[error(
        "{} has mode {mode:04o}: a host secret must be readable by its owner only (chmod 600 {})",
        path.display(),
        path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not 64 hex digits.
    #[error("{} does not hold a secret (64 hex digits expected)", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the secret in `path`, making one the first time (mode 0600, never readable by
/// others, even for a moment: the file is created with that mode).
pub fn read_or_create(path: &Path) -> Result<[u8; SECRET_BYTES], SecretError> {
    let io = |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            check_mode(path)?;
            parse(text.trim()).ok_or_else(|| SecretError::Malformed {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = random().map_err(io)?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut f) => {
                    std::io::Write::write_all(&mut f, hex(&secret).as_bytes()).map_err(io)?;
                    f.sync_all().map_err(io)?;
                    Ok(secret)
                }
                // Another host sharing the file made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_or_create(path),
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

/// Refuses a file whose group or other permission bits are set.
pub fn check_mode(path: &Path) -> Result<(), SecretError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| SecretError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// 256 bits from the kernel's generator.
pub fn random() -> std::io::Result<[u8; SECRET_BYTES]> {
    let mut raw = [0u8; SECRET_BYTES];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
    Ok(raw)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse(text: &str) -> Option<[u8; SECRET_BYTES]> {
    if text.len() != SECRET_BYTES * 2 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; SECRET_BYTES];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_made_once_private_and_an_exposed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.key");
        let a = read_or_create(&path).unwrap();
        let b = read_or_create(&path).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = read_or_create(&path).unwrap_err().to_string();
            assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, "not hex").unwrap();
        let e = read_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("does not hold a secret"), "{e}");
    }
}
