//! Throwaway databases on a test server, for the conformance suite, the runtime's tests and
//! the benchmarks: each gets a database of its own on the server `scripts/postgres` started,
//! dropped again when it is done.

use std::sync::atomic::{AtomicU64, Ordering};

/// The variable naming the test server (`scripts/test` sets it from `scripts/postgres start`).
pub const TEST_SERVER_VAR: &str = "ROLEHOST_TEST_POSTGRES";

/// The test server's URL. Panics, saying how to get one, when none is set: a test that needs
/// PostgreSQL fails without it, it is never skipped.
pub fn test_server_url() -> String {
    match std::env::var(TEST_SERVER_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{TEST_SERVER_VAR} is not set: these tests need a PostgreSQL server. Run them with \
             ./scripts/test, or start one with `scripts/postgres start DIR` and set \
             {TEST_SERVER_VAR} to the URL it prints"
        ),
    }
}

/// A database of its own on a server, dropped (with any connection left to it) when this is.
#[derive(Debug)]
pub struct ScratchDatabase {
    server: String,
    name: String,
    url: String,
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |i| {
        i + 3 + base[i + 3..].find('/').unwrap_or(base.len() - i - 3)
    });
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl ScratchDatabase {
    /// Creates a new, empty database on the server at `server` (a URL naming any database
    /// that exists there, `postgres` say).
    pub fn create(server: &str) -> Result<ScratchDatabase, postgres::Error> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "rh_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // The name is made of digits and letters above: nothing to quote.
        crate::off_runtime(|| -> Result<(), postgres::Error> {
            let mut client = postgres::Client::connect(server, postgres::NoTls)?;
            client.batch_execute(&format!("CREATE DATABASE {name}"))
        })?;
        Ok(ScratchDatabase {
            server: server.to_string(),
            url: with_database(server, &name),
            name,
        })
    }

    /// A new database on the test server ([`test_server_url`]); panics if it cannot be made.
    pub fn on_test_server() -> ScratchDatabase {
        let server = test_server_url();
        ScratchDatabase::create(&server)
            .unwrap_or_else(|e| panic!("creating a database on the test server {server}: {e}"))
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        crate::off_runtime(|| {
            if let Ok(mut client) = postgres::Client::connect(&self.server, postgres::NoTls) {
                let _ = client.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_gets_another_database() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
