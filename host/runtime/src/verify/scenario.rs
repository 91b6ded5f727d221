//! The scenario file of `rolehost verify` (`verify.toml` next to the manifest): what to set up,
//! which roles run with how many instances, when a run is over, and what must hold at the end.
//!
//! ```toml
//! seed = 1                          # the run's seed (default 1)
//!
//! [roles]                           # instance counts (default: the manifest's); web roles
//! Counter = 2                       # do not run under verify
//!
//! [[setup.messages]]                # put before anything starts
//! queue = "increments"
//! body = "total"
//! count = 10                        # this many copies (default 1)
//! [[setup.blobs]]
//! container = "config"
//! name = "limits"
//! text = "..."
//! [[setup.entities]]
//! table = "accounts"
//! partition = "a"
//! row = "1"
//! properties = { balance = 100 }    # strings, integers (Int64), floats, booleans
//!
//! [end]
//! idle-secs = 5                     # over when every queue of the service has been empty this
//!                                   # long (the default), or:
//! # after-secs = 300                # over after this much virtual time
//! limit-secs = 3600                 # a run still busy then is reported as stuck
//!
//! [[check]]                         # what must hold at the end (all of them)
//! blob = "counters/total"           # container/name
//! equals = "10"                     # or: exists = true / false
//! [[check]]
//! queue = "increments"
//! count = 0                         # messages left (visible or not)
//! [[check]]
//! entity = "counts/c/total"         # table/partition/row
//! property = "count"
//! equals = "10"                     # or: exists = true / false (the entity)
//!
//! [checker]                         # optional: your own check, a worker-role component
//! crate = "checker"                 # (or component = "checker.wasm"), relative to this file.
//! [checker.settings]                # It runs once at the end of every run, on that run's
//! expected = "10"                   # storage: `run` returning Ok passes, Err(message) fails.
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The file `rolehost verify <dir>` reads next to the manifest.
pub const SCENARIO_FILE: &str = "verify.toml";

/// What is wrong with a scenario file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not readable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for a scenario.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is invalid; the key is named.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A message put before the run starts.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetupMessage {
    /// The queue (created if missing).
    pub queue: String,
    /// The body, as text.
    pub body: String,
    /// Copies.
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// A blob created before the run starts.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetupBlob {
    /// The container (created if missing).
    pub container: String,
    /// The blob.
    pub name: String,
    /// Its content, as text.
    pub text: String,
}

/// An entity inserted before the run starts.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetupEntity {
    /// The table (created if missing).
    pub table: String,
    /// PartitionKey.
    pub partition: String,
    /// RowKey.
    pub row: String,
    /// Properties.
    #[serde(default)]
    pub properties: BTreeMap<String, toml::Value>,
}

/// What to set up.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// Messages.
    #[serde(default)]
    pub messages: Vec<SetupMessage>,
    /// Blobs.
    #[serde(default)]
    pub blobs: Vec<SetupBlob>,
    /// Entities.
    #[serde(default)]
    pub entities: Vec<SetupEntity>,
}

/// When a run is over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum End {
    /// When every queue has been empty this long.
    Idle(Duration),
    /// After this much virtual time.
    After(Duration),
}

/// One thing that must hold at the end.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// A blob's content equals a text.
    BlobEquals {
        /// Container.
        container: String,
        /// Blob.
        name: String,
        /// Expected text.
        text: String,
    },
    /// A blob exists, or does not.
    BlobExists {
        /// Container.
        container: String,
        /// Blob.
        name: String,
        /// Whether it must.
        exists: bool,
    },
    /// A queue holds this many messages.
    QueueCount {
        /// Queue.
        queue: String,
        /// Count.
        count: u64,
    },
    /// An entity's property, shown as text, equals this.
    EntityEquals {
        /// Table.
        table: String,
        /// PartitionKey.
        partition: String,
        /// RowKey.
        row: String,
        /// Property.
        property: String,
        /// Expected text.
        text: String,
    },
    /// An entity exists, or does not.
    EntityExists {
        /// Table.
        table: String,
        /// PartitionKey.
        partition: String,
        /// RowKey.
        row: String,
        /// Whether it must.
        exists: bool,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct EndSection {
    idle_secs: Option<u64>,
    after_secs: Option<u64>,
    limit_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckSection {
    blob: Option<String>,
    queue: Option<String>,
    entity: Option<String>,
    property: Option<String>,
    equals: Option<toml::Value>,
    exists: Option<bool>,
    count: Option<u64>,
}

/// The user's checker: a worker-role component run once at the end of every run.
#[derive(Clone, Debug, PartialEq)]
pub struct Checker {
    /// Its component, or the crate that builds it.
    pub source: crate::manifest::ComponentSource,
    /// Settings it reads with `env::setting`.
    pub settings: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckerSection {
    component: Option<PathBuf>,
    #[serde(rename = "crate")]
    krate: Option<PathBuf>,
    #[serde(default)]
    settings: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    checker: Option<CheckerSection>,
    seed: Option<u64>,
    #[serde(default)]
    roles: BTreeMap<String, u32>,
    #[serde(default)]
    setup: Setup,
    end: Option<EndSection>,
    #[serde(default)]
    check: Vec<CheckSection>,
}

/// A parsed scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The file it came from.
    pub path: PathBuf,
    /// The seed of every run.
    pub seed: u64,
    /// Instance counts by role.
    pub roles: BTreeMap<String, u32>,
    /// What to set up.
    pub setup: Setup,
    /// When a run is over.
    pub end: End,
    /// A run still going after this much virtual time is stuck.
    pub limit: Duration,
    /// What must hold.
    pub checks: Vec<Check>,
    /// The user's own check, if any.
    pub checker: Option<Checker>,
}

fn text_of(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Longest simulated time of a case (`end.*-secs`): a week. Simulated time is free, but past
/// it the paused clock's arithmetic overflows.
pub const MAX_SCENARIO_SECS: u64 = 7 * 24 * 3600;
/// Most copies of one setup message: each is a queue message in every case's database.
pub const MAX_SETUP_COPIES: u32 = 100_000;
/// Most instances of one role in a scenario: every case runs them all on one thread.
pub const MAX_SCENARIO_INSTANCES: u32 = 64;

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Scenario::parse(&text, path)
    }

    /// Parses scenario text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        let file: File = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |key: String, message: &str| ScenarioError::Invalid {
            path: path.to_path_buf(),
            key,
            message: message.to_string(),
        };
        let bounded = |key: &str, v: Option<u64>| match v {
            Some(n) if n > MAX_SCENARIO_SECS => Err(invalid(
                format!("end.{key}"),
                &format!("{n} is outside 0..={MAX_SCENARIO_SECS}"),
            )),
            v => Ok(v),
        };
        for (role, n) in &file.roles {
            if *n > MAX_SCENARIO_INSTANCES {
                return Err(invalid(
                    format!("roles.{role}"),
                    &format!("{n} is outside 0..={MAX_SCENARIO_INSTANCES}"),
                ));
            }
        }
        for (i, m) in file.setup.messages.iter().enumerate() {
            if m.count > MAX_SETUP_COPIES {
                return Err(invalid(
                    format!("setup.messages[{i}].count"),
                    &format!("{} is outside 0..={MAX_SETUP_COPIES}", m.count),
                ));
            }
        }
        let (end, limit) = match file.end {
            None => (End::Idle(Duration::from_secs(5)), Duration::from_secs(3600)),
            Some(mut e) => {
                e.idle_secs = bounded("idle-secs", e.idle_secs)?;
                e.after_secs = bounded("after-secs", e.after_secs)?;
                e.limit_secs = bounded("limit-secs", e.limit_secs)?;
                let end = match (e.idle_secs, e.after_secs) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "end".into(),
                            "give idle-secs or after-secs, not both",
                        ));
                    }
                    (_, Some(a)) => End::After(Duration::from_secs(a)),
                    (i, None) => End::Idle(Duration::from_secs(i.unwrap_or(5).max(1))),
                };
                (end, Duration::from_secs(e.limit_secs.unwrap_or(3600)))
            }
        };
        let mut checks = Vec::new();
        for (i, c) in file.check.into_iter().enumerate() {
            let key = |k: &str| format!("check[{i}].{k}");
            let split =
                |s: &str, n: usize, k: &str, form: &str| -> Result<Vec<String>, ScenarioError> {
                    let parts: Vec<String> = s.splitn(n, '/').map(str::to_string).collect();
                    if parts.len() != n || parts.iter().any(String::is_empty) {
                        return Err(invalid(key(k), &format!("{s:?} is not {form}")));
                    }
                    Ok(parts)
                };
            let check = match (&c.blob, &c.queue, &c.entity) {
                (Some(b), None, None) => {
                    let p = split(b, 2, "blob", "container/name")?;
                    match (&c.equals, c.exists) {
                        (Some(v), None) => Check::BlobEquals {
                            container: p[0].clone(),
                            name: p[1].clone(),
                            text: text_of(v),
                        },
                        (None, Some(exists)) => Check::BlobExists {
                            container: p[0].clone(),
                            name: p[1].clone(),
                            exists,
                        },
                        _ => {
                            return Err(invalid(
                                key("blob"),
                                "a blob check has `equals` or `exists`",
                            ));
                        }
                    }
                }
                (None, Some(q), None) => match c.count {
                    Some(count) => Check::QueueCount {
                        queue: q.clone(),
                        count,
                    },
                    None => return Err(invalid(key("queue"), "a queue check has `count`")),
                },
                (None, None, Some(e)) => {
                    let p = split(e, 3, "entity", "table/partition/row")?;
                    match (&c.property, &c.equals, c.exists) {
                        (Some(prop), Some(v), None) => Check::EntityEquals {
                            table: p[0].clone(),
                            partition: p[1].clone(),
                            row: p[2].clone(),
                            property: prop.clone(),
                            text: text_of(v),
                        },
                        (None, None, Some(exists)) => Check::EntityExists {
                            table: p[0].clone(),
                            partition: p[1].clone(),
                            row: p[2].clone(),
                            exists,
                        },
                        _ => {
                            return Err(invalid(
                                key("entity"),
                                "an entity check has `property` and `equals`, or `exists`",
                            ));
                        }
                    }
                }
                _ => {
                    return Err(invalid(
                        format!("check[{i}]"),
                        "a check names one of blob, queue or entity",
                    ));
                }
            };
            checks.push(check);
        }
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let checker = match file.checker {
            None => None,
            Some(c) => {
                let source = match (c.component, c.krate) {
                    (Some(f), None) => crate::manifest::ComponentSource::File(base.join(f)),
                    (None, Some(d)) => crate::manifest::ComponentSource::Crate(base.join(d)),
                    _ => return Err(invalid("checker".into(), "give `component` or `crate`")),
                };
                Some(Checker {
                    source,
                    settings: c
                        .settings
                        .iter()
                        .map(|(k, v)| (k.clone(), text_of(v)))
                        .collect(),
                })
            }
        };
        if checks.is_empty() && checker.is_none() {
            return Err(invalid(
                "check".into(),
                "a scenario needs at least one check or a checker",
            ));
        }
        Ok(Scenario {
            path: path.to_path_buf(),
            seed: file.seed.unwrap_or(1),
            roles: file.roles,
            setup: file.setup,
            end,
            limit,
            checks,
            checker,
        })
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::BlobEquals {
                container,
                name,
                text,
            } => write!(f, "blob {container}/{name} is {text:?}"),
            Check::BlobExists {
                container,
                name,
                exists,
            } => {
                write!(
                    f,
                    "blob {container}/{name} {}",
                    if *exists { "exists" } else { "does not exist" }
                )
            }
            Check::QueueCount { queue, count } => write!(f, "queue {queue} holds {count} messages"),
            Check::EntityEquals {
                table,
                partition,
                row,
                property,
                text,
            } => {
                write!(
                    f,
                    "entity {table}/{partition}/{row} has {property} = {text:?}"
                )
            }
            Check::EntityExists {
                table,
                partition,
                row,
                exists,
            } => {
                write!(
                    f,
                    "entity {table}/{partition}/{row} {}",
                    if *exists { "exists" } else { "does not exist" }
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_parses_and_bad_checks_name_the_key() {
        let s = Scenario::parse(
            "[roles]\nCounter = 2\n[[setup.messages]]\nqueue = \"q\"\nbody = \"x\"\ncount = 3\n\
             [end]\nidle-secs = 2\n[[check]]\nblob = \"c/total\"\nequals = 3\n\
             [[check]]\nqueue = \"q\"\ncount = 0\n",
            Path::new("verify.toml"),
        )
        .unwrap();
        assert_eq!(s.roles["Counter"], 2);
        assert_eq!(s.setup.messages[0].count, 3);
        assert_eq!(s.end, End::Idle(Duration::from_secs(2)));
        assert_eq!(
            s.checks[0],
            Check::BlobEquals {
                container: "c".into(),
                name: "total".into(),
                text: "3".into()
            }
        );
        let e = Scenario::parse(
            "[[check]]\nblob = \"nocontainer\"\nequals = 1\n",
            Path::new("v.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("check[0].blob") && e.contains("container/name"),
            "{e}"
        );
        let e = Scenario::parse("seed = 1\n", Path::new("v.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one check"), "{e}");
        let s = Scenario::parse(
            "[checker]\ncrate = \"../checker\"\n[checker.settings]\nexpected = 10\n",
            Path::new("/x/verify.toml"),
        )
        .unwrap();
        let c = s.checker.unwrap();
        assert_eq!(
            c.source,
            crate::manifest::ComponentSource::Crate("/x/../checker".into())
        );
        assert_eq!(c.settings, [("expected".to_string(), "10".to_string())]);
    }
}
