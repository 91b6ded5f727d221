//! The harness the CLI's end-to-end tests share: a real `rolehost serve` process and the
//! CLI run against it.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// A `rolehost serve` process on a data directory; stopped with SIGTERM when dropped.
pub struct Host {
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Host {
    pub fn start(dir: &Path) -> Host {
        Host::start_with(dir, &[])
    }

    /// [`Host::start`] with more `serve` arguments.
    pub fn start_with(dir: &Path, more: &[&std::ffi::OsStr]) -> Host {
        Host::start_limited(dir, more, None)
    }

    /// [`Host::start_with`], the process's descriptor limit set to `nofile` when given.
    pub fn start_limited(dir: &Path, more: &[&std::ffi::OsStr], nofile: Option<u64>) -> Host {
        Host::start_full(dir, more, nofile, &[])
    }

    /// [`Host::start_with`], with more environment variables.
    pub fn start_env(dir: &Path, more: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Host {
        Host::start_full(dir, more, None, env)
    }

    fn start_full(
        dir: &Path,
        more: &[&std::ffi::OsStr],
        nofile: Option<u64>,
        env: &[(&str, &str)],
    ) -> Host {
        let _ = std::fs::remove_file(dir.join("management.url"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_rolehost"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
        command.envs(rolehost_tests::STORAGE_ON_ANY_PORT);
        command.arg(dir);
        if !more.iter().any(|a| *a == "--max-instances") {
            command.args(["--max-instances", "64"]);
        }
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit only, between fork and exec, on the child's own limits.
            #[allow(unsafe_code)]
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command
            .args(more)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
            .spawn()
            .expect("starting rolehost serve");
        let host = Host {
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("management.url").exists() {
            assert!(
                Instant::now() < deadline,
                "the host did not come up: {}",
                host.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        host
    }

    /// The host process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The host process's resident memory, KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The last `counted <n>` line `instance` of `service` logged (testbed mode memcount).
    pub fn last_count(&self, service: &str, instance: &str) -> Option<u64> {
        self.ok(&["logs", service, "--instance", instance])
            .lines()
            .rev()
            .find_map(|l| l.rsplit("counted ").next()?.trim().parse().ok())
    }

    /// The host process's CPU time so far (user and system), seconds, from /proc.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at state; utime and
        // stime are the 14th and 15th fields, in clock ticks (100 a second on Linux).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Waits until `service`'s guest output holds a line containing `needle`; returns that
    /// output.
    pub fn wait_log(&self, service: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.ok(&["logs", service]);
            if out.contains(needle) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the output of {service}:\n{out}\nhost log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        std::fs::read_to_string(self.dir.join("management.url")).unwrap()
    }

    /// Runs a client command against this host.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_rolehost"))
            .args(args)
            .env("ROLEHOST_HOST_DATA_DIR", &self.dir)
            .env_remove("ROLEHOST_HOST")
            .env_remove("ROLEHOST_TOKEN")
            .output()
            .expect("running rolehost")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "rolehost {args:?} failed:\n{}\nhost log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `GET path` on the management API with the host's token; the body.
    pub fn api_get(&self, path: &str) -> String {
        let token = std::fs::read_to_string(self.dir.join("management.token")).unwrap();
        let api: SocketAddr = self.url().strip_prefix("http://").unwrap().parse().unwrap();
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = rt
            .block_on(rolehost_tests::http_request(api, raw.as_bytes()))
            .unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.body
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// The first endpoint of `role` of `service`.
    pub fn endpoint(&self, service: &str, role: &str) -> SocketAddr {
        let st = self.status();
        let svc = st
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .unwrap();
        let r = svc["roles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == role)
            .unwrap();
        r["endpoints"][0].as_str().unwrap().parse().unwrap()
    }

    /// Instances of `role` in state running.
    pub fn running(&self, service: &str, role: &str) -> usize {
        let st = self.status();
        let Some(svc) = st.as_array().unwrap().iter().find(|s| s["name"] == service) else {
            return 0;
        };
        svc["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["role"] == role && i["state"] == "running")
            .count()
    }

    pub fn wait_running(&self, service: &str, role: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.running(service, role);
            if now == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{role}: {now} running, not {n}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the host to exit on its own (a crash point killed it): its exit status,
    /// or `None` when it still runs after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).unwrap();
            // SAFETY: sending a signal to our own child process.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
            assert_eq!(rc, 0);
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "the host did not stop");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A service directory holding `manifest` (`{guest:NAME}` stands for a guest's component).
pub fn service_dir(dir: &Path, manifest: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("rolehost.toml"),
        rolehost_tests::with_guests(manifest),
    )
    .unwrap();
    dir.display().to_string()
}
