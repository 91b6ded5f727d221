//! Errors of the runtime: one enum for the layer, turned into messages at the CLI.

use std::path::PathBuf;

/// A manifest problem, naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file is not valid TOML or does not fit the schema (toml's message names the key,
    /// line and column).
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A value breaks a rule.
    #[error("`{key}`: {message}")]
    Invalid {
        /// The offending key, e.g. `roles.Counter.instances`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ManifestError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ManifestError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Compiling a guest crate failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A tool could not be started.
    #[error("could not run `{tool}`: {source}")]
    Spawn {
        /// The tool.
        tool: String,
        /// Why.
        source: std::io::Error,
    },
    /// Installing the wasm32-wasip2 target failed.
    #[error("`rustup target add wasm32-wasip2` failed; install the target by hand")]
    Target,
    /// cargo failed (its diagnostics were printed above).
    #[error("cargo build of {crate_dir} failed (see the errors above)")]
    Cargo {
        /// The crate.
        crate_dir: PathBuf,
    },
    /// cargo succeeded but produced no component.
    #[error("{crate_dir} produced no .wasm component; is it a `cdylib` crate?")]
    NoComponent {
        /// The crate.
        crate_dir: PathBuf,
    },
}

/// Why a service could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The manifest is wrong.
    #[error("manifest {path}: {source}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        source: ManifestError,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A component is not a valid component, or does not fit its role's world.
    #[error("role {role}: component {path}: {detail}")]
    Component {
        /// The role.
        role: String,
        /// The component file.
        path: PathBuf,
        /// What is wrong (names the import or export).
        detail: String,
    },
    /// The storage engine could not be opened.
    #[error("storage at {location}: {source}")]
    Storage {
        /// The database file, or the database's URL without its password.
        location: String,
        /// Why.
        source: rolehost_storage::StorageError,
    },
    /// A guest crate did not build.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The wasmtime engine could not be set up.
    #[error("wasmtime engine: {0}")]
    Engine(String),
    /// Something this version does not do yet.
    #[error("{0}")]
    Unsupported(String),
}
