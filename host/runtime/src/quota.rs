//! VM sizes: one name for all of an instance's limits, and the mechanisms that enforce them
//! (the CPU meter, the memory limiter; local-disk quotas live with the filesystem).
//!
//! | size | CPU share | memory | local storage |
//! |---|---|---|---|
//! | ExtraSmall | a shared 1.0 GHz core (0.625 of Small) | 768 MiB | 20 GiB |
//! | Small (default) | one 1.6 GHz core | 1.7 GiB | 50 GiB |
//! | Medium | 2 cores | 3.5 GiB | 490 GiB |
//! | Large | 4 cores | 7 GiB | 1000 GiB |
//! | ExtraLarge | 8 cores | 14 GiB | 2040 GiB |
//!
//! A wasm32 instance addresses at most 4 GiB, so Large and ExtraLarge give each instance the
//! whole 4 GiB; their CPU share and disk still differ.

use std::time::{Duration, Instant};

use crate::manifest::VmSize;

/// Fuel (roughly one WebAssembly instruction each) per second of one reference core: the 1.6 GHz
/// core of the 2008 Small VM. Calibrated so that a Small instance runs wasm at about the speed
/// such a core ran comparable native code (wasm counts about two to three instructions where a
/// 2008 core retired one, at about one per cycle). A fixed rate, so a role gets the same share on
/// a fast host and a slow one.
pub const REFERENCE_CORE_FUEL_PER_SEC: u64 = 4_000_000_000;

/// The largest memory a wasm32 instance can address.
pub const WASM32_MAX_MEMORY: u64 = 4 << 30;

/// How much CPU credit an instance may bank while idle: a burst of this long at its full share.
pub const CPU_BURST: Duration = Duration::from_millis(100);

/// Per instance: most WebAssembly table elements (function tables of the guest).
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Per instance: most core instances, tables and memories a component may create.
pub const MAX_CORE_INSTANCES: usize = 32;
/// Per instance, see [`MAX_CORE_INSTANCES`].
pub const MAX_TABLES: usize = 32;
/// Per instance, see [`MAX_CORE_INSTANCES`].
pub const MAX_MEMORIES: usize = 8;
/// Per instance: most live host handles (WASI streams, descriptors, pollables).
pub const MAX_HOST_HANDLES: usize = 10_000;
/// Per host call: most bytes a guest may hand the host (a 64 MiB put-blob fits).
pub const MAX_HOSTCALL_BYTES: usize = 80 << 20;

/// All of an instance's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The size these come from (before overrides).
    pub size: VmSize,
    /// CPU share in fuel per wall-clock second.
    pub fuel_per_sec: u64,
    /// Linear memory cap in bytes (per memory; guests have one).
    pub memory_bytes: u64,
    /// Total local storage the instance's local resources may declare.
    pub local_storage_bytes: u64,
    /// Fuel one call may use without calling the host (`None`: no per-call budget). A runaway
    /// loop iteration or request ends with a clear error instead of running on.
    pub call_budget: Option<u64>,
}

impl Limits {
    /// The limits of a VM size.
    pub fn of(size: VmSize) -> Self {
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        let (milli_cores, memory, disk_gib) = match size {
            VmSize::ExtraSmall => (625, 768 * MIB, 20),
            VmSize::Small => (1000, 1700 * MIB, 50),
            VmSize::Medium => (2000, 3584 * MIB, 490),
            VmSize::Large => (4000, 7 * GIB, 1000),
            VmSize::ExtraLarge => (8000, 14 * GIB, 2040),
        };
        Limits {
            size,
            fuel_per_sec: REFERENCE_CORE_FUEL_PER_SEC / 1000 * milli_cores,
            memory_bytes: memory.min(WASM32_MAX_MEMORY),
            local_storage_bytes: disk_gib * GIB,
            call_budget: None,
        }
    }
}

/// The memory and table limiter of one instance. Remembers a refused growth, so that an
/// instance that then aborts is reported as having hit its memory quota.
/// What a freeze's capture may grow a memory by past its cap: wizer's accessor grows it by one
/// Wasm page to return the memory's bounds, so an instance at its cap could not be frozen
/// otherwise. The page is the host's, not the guest's: the snapshot leaves it out.
pub const FREEZE_HEADROOM: usize = 64 << 10;

#[derive(Debug)]
pub struct MemoryLimiter {
    cap: usize,
    /// Current size of the largest memory.
    pub current: usize,
    /// The last growth refused, in bytes asked for.
    pub refused: Option<usize>,
    /// Bytes allowed past the cap, for the host's own needs: a freeze's capture sets it to
    /// [`FREEZE_HEADROOM`] while it runs.
    pub headroom: usize,
    /// Where the size is published as it grows (status and metrics read it).
    usage: Option<std::sync::Arc<UsageCell>>,
}

impl MemoryLimiter {
    /// A limiter capping every memory at `cap` bytes.
    pub fn new(cap: u64) -> Self {
        MemoryLimiter {
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            current: 0,
            refused: None,
            headroom: 0,
            usage: None,
        }
    }

    /// Publishes the size to `usage` at every growth.
    pub fn publishing(mut self, usage: std::sync::Arc<UsageCell>) -> Self {
        self.usage = Some(usage);
        self
    }

    /// The cap in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap.saturating_add(self.headroom) {
            self.refused = Some(desired);
            return Ok(false);
        }
        self.current = self.current.max(desired);
        if let Some(u) = &self.usage {
            u.memory
                .store(self.current as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Fuel charged between two readings of the clock (1 ms of a reference core). Most host calls
/// of a web request or a queue loop use a few thousand units; reading the clock and refilling
/// the bucket at each of them showed in profiles of the web bench (`clock_gettime`), so the
/// reading waits until this much was charged, or the credit is gone. A fuel slice (4M) always
/// ends in one, so a CPU-bound guest is read as often as before.
pub const TICK_FUEL: u64 = REFERENCE_CORE_FUEL_PER_SEC / 1000;

/// The CPU share of one instance: a token bucket of fuel, refilled at the share's rate per
/// wall-clock second. Checked at every slice of fuel and host call while the guest runs: a guest over its share
/// sleeps until its credit is back (throttled, never killed); one within it just yields.
#[derive(Debug)]
pub struct CpuMeter {
    fuel_per_sec: f64,
    burst: f64,
    credit: f64,
    last_refill: Instant,
    /// Fuel remaining in the store at the last reading.
    last_fuel: u64,
    /// Fuel consumed in all.
    pub consumed: u64,
    /// Fuel charged since the last reading of the clock.
    since_reading: u64,
    /// Time spent throttled in all.
    pub throttled: Duration,
}

/// What the metering hook should do after a reading.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Within the share: yield to let others run, then go on.
    Yield,
    /// Over the share: sleep this long first.
    Sleep(Duration),
}

impl CpuMeter {
    /// A meter for `fuel_per_sec`, starting with a full burst of credit. `fuel` is the store's
    /// fuel now.
    pub fn new(fuel_per_sec: u64, fuel: u64) -> Self {
        let rate = fuel_per_sec.max(1) as f64;
        let burst = rate * CPU_BURST.as_secs_f64();
        CpuMeter {
            fuel_per_sec: rate,
            burst,
            credit: burst,
            last_refill: Instant::now(),
            last_fuel: fuel,
            consumed: 0,
            since_reading: 0,
            throttled: Duration::ZERO,
        }
    }

    /// Records a refill of the store's fuel to `new_fuel` (a per-call budget), charging what
    /// was used up to `fuel_before`.
    pub fn reset_fuel(&mut self, fuel_before: u64, new_fuel: u64) {
        self.charge(fuel_before);
        self.last_fuel = new_fuel;
    }

    /// Charges the fuel used since the last reading, the store now holding `fuel_now`.
    fn charge(&mut self, fuel_now: u64) {
        let used = self.last_fuel.saturating_sub(fuel_now);
        self.consumed += used;
        self.since_reading += used;
        self.credit -= used as f64;
    }

    /// Charges what was used, the store now holding `fuel`; whether a reading of the clock
    /// ([`CpuMeter::read`]) is due: [`TICK_FUEL`] charged since the last one, or no credit
    /// left. Between readings the bucket is not refilled, which only delays credit.
    pub fn charge_to(&mut self, fuel: u64) -> bool {
        self.charge(fuel);
        self.last_fuel = fuel;
        self.since_reading >= TICK_FUEL || self.credit < 0.0
    }

    /// Charges `fuel` of host work done in the guest's calls (no change to the store's fuel).
    pub fn charge_host(&mut self, fuel: u64) {
        self.consumed += fuel;
        self.since_reading += fuel;
        self.credit -= fuel as f64;
    }

    /// Takes a reading at `now` with `fuel` left in the store.
    pub fn tick(&mut self, fuel: u64, now: Instant) -> Verdict {
        self.charge_to(fuel);
        self.read(now)
    }

    /// Refills the bucket for the time since the last reading, at `now`: within the share
    /// the guest goes on, over it the verdict says how long to sleep.
    pub fn read(&mut self, now: Instant) -> Verdict {
        self.since_reading = 0;
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.last_refill = now;
        self.credit = (self.credit + elapsed * self.fuel_per_sec).min(self.burst);
        if self.credit >= 0.0 {
            Verdict::Yield
        } else {
            let wait = Duration::from_secs_f64(-self.credit / self.fuel_per_sec);
            self.throttled += wait;
            Verdict::Sleep(wait)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_table() {
        let s = Limits::of(VmSize::Small);
        assert_eq!(s.fuel_per_sec, REFERENCE_CORE_FUEL_PER_SEC);
        assert_eq!(s.memory_bytes, 1700 << 20);
        assert_eq!(
            Limits::of(VmSize::Medium).fuel_per_sec,
            2 * REFERENCE_CORE_FUEL_PER_SEC
        );
        assert_eq!(Limits::of(VmSize::ExtraSmall).memory_bytes, 768 << 20);
        assert_eq!(
            Limits::of(VmSize::ExtraLarge).memory_bytes,
            WASM32_MAX_MEMORY
        );
        assert!(Limits::of(VmSize::ExtraSmall).fuel_per_sec < s.fuel_per_sec);
    }

    #[test]
    fn memory_limiter_refuses_past_the_cap_and_remembers() {
        use wasmtime::ResourceLimiter;
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!l.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert_eq!(l.refused, Some(2 << 20));
        assert_eq!(l.current, 1 << 20);
        // A freeze's headroom lets one page past the cap, and no more.
        l.headroom = FREEZE_HEADROOM;
        assert!(
            !l.memory_growing(1 << 20, (1 << 20) + 2 * FREEZE_HEADROOM, None)
                .unwrap()
        );
        assert!(
            l.memory_growing(1 << 20, (1 << 20) + FREEZE_HEADROOM, None)
                .unwrap()
        );
    }

    #[test]
    fn cpu_meter_reads_the_clock_once_enough_fuel_is_charged_or_the_credit_is_gone() {
        let start = Instant::now();
        let full = 1u64 << 40;
        let mut m = CpuMeter::new(REFERENCE_CORE_FUEL_PER_SEC, full);
        // Small charges: no reading due, but all of it is charged.
        assert!(!m.charge_to(full - TICK_FUEL / 2));
        assert!(m.charge_to(full - TICK_FUEL));
        assert_eq!(m.consumed, TICK_FUEL);
        assert_eq!(m.read(start), Verdict::Yield);
        assert!(!m.charge_to(full - TICK_FUEL - 1));
        // Past the credit (100 fuel of burst at this rate, already spent): due at once,
        // however little was charged since, and the reading says to sleep.
        let mut m = CpuMeter::new(1_000, full);
        assert!(m.charge_to(full - 200));
        assert!(matches!(m.read(start), Verdict::Sleep(_)));
        assert!(m.charge_to(full - 201));
    }

    #[test]
    fn cpu_meter_throttles_a_guest_over_its_share() {
        let start = Instant::now();
        let mut m = CpuMeter::new(1_000_000, 1 << 40);
        // Within the burst (100 ms worth = 100,000 fuel): yield only.
        assert_eq!(m.tick((1 << 40) - 50_000, start), Verdict::Yield);
        // 1,000,000 more fuel used in 10 ms: ~0.95 s of debt to sleep off.
        let v = m.tick((1 << 40) - 1_050_000, start + Duration::from_millis(10));
        let Verdict::Sleep(wait) = v else {
            panic!("{v:?}")
        };
        assert!(
            wait > Duration::from_millis(900) && wait < Duration::from_millis(1000),
            "{wait:?}"
        );
        assert_eq!(m.consumed, 1_050_000);
        // After sleeping it off, it is within its share again.
        let v = m.tick(
            (1 << 40) - 1_050_000,
            start + Duration::from_millis(10) + wait,
        );
        assert_eq!(v, Verdict::Yield);
    }
}

/// Milliseconds on the host's monotonic clock (since the first call).
pub fn host_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What an instance uses, published by its store as it runs (read by status and the log).
#[derive(Debug, Default)]
pub struct UsageCell {
    /// Fuel consumed since the instance slot started (all incarnations).
    pub fuel: std::sync::atomic::AtomicU64,
    /// Linear memory of the current incarnation, bytes.
    pub memory: std::sync::atomic::AtomicU64,
    /// Time spent throttled, microseconds.
    pub throttled_us: std::sync::atomic::AtomicU64,
    /// Bytes in the local resources.
    pub disk: std::sync::atomic::AtomicU64,
    /// Requests a web instance answered.
    pub requests: std::sync::atomic::AtomicU64,
    /// Queue messages the instance deleted (processed).
    pub messages_processed: std::sync::atomic::AtomicU64,
    /// Queue messages the instance received that had been delivered before (dequeue count
    /// over 1): the redeliveries at-least-once makes.
    pub redeliveries: std::sync::atomic::AtomicU64,
    /// When the instance last had work: it started, or a queue read returned messages
    /// ([`host_ms`]). A worker's scale to zero reads it.
    pub last_active_ms: std::sync::atomic::AtomicU64,
    /// The queues the instance reads: a message in one of them thaws it when it is frozen for
    /// idleness. At most [`MAX_POLLED_QUEUES`], each one a read succeeded on.
    pub polled: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The stdout and stderr streams the guest holds now: a freeze is refused while it holds
    /// one, because no handle survives a thaw (the SDK releases wasi-libc's at `on-freeze`).
    pub stdio_held: std::sync::atomic::AtomicU32,
}

/// Most queues an instance's reads are remembered for (scale to zero watches them): a worker
/// reads a handful; a guest calling with ever new names must not grow host memory.
pub const MAX_POLLED_QUEUES: usize = 64;

/// A reading of [`UsageCell`] with the quotas it is measured against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Fuel consumed in all.
    pub fuel: u64,
    /// The CPU share, fuel per second.
    pub fuel_per_sec: u64,
    /// Time spent throttled in all.
    pub throttled: Duration,
    /// Linear memory now.
    pub memory_bytes: u64,
    /// The memory cap.
    pub memory_cap: u64,
    /// Local resource bytes now.
    pub disk_bytes: u64,
    /// The local resources' quotas together.
    pub disk_quota: u64,
    /// Requests answered (web roles).
    pub requests: u64,
    /// Queue messages deleted.
    pub messages_processed: u64,
    /// Queue messages received with a dequeue count over 1.
    pub redeliveries: u64,
}

impl UsageCell {
    /// Reads the cell against `limits` and the declared local storage `disk_quota`.
    pub fn read(&self, limits: &Limits, disk_quota: u64) -> Usage {
        use std::sync::atomic::Ordering::Relaxed;
        Usage {
            fuel: self.fuel.load(Relaxed),
            fuel_per_sec: limits.fuel_per_sec,
            throttled: Duration::from_micros(self.throttled_us.load(Relaxed)),
            memory_bytes: self.memory.load(Relaxed),
            memory_cap: limits.memory_bytes,
            disk_bytes: self.disk.load(Relaxed),
            disk_quota,
            requests: self.requests.load(Relaxed),
            messages_processed: self.messages_processed.load(Relaxed),
            redeliveries: self.redeliveries.load(Relaxed),
        }
    }
}
