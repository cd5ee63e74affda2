//! The agent's compression effort, adapted to what bounds the pull (FORMAT.md §Agent
//! protocol, capability `adaptive-level`).
//!
//! On a fast link the client's CPU bounds a first pull, and zstd at the repository's level
//! costs more time than the bytes it saves; on a slow link every byte saved is time saved.
//! The workers tell [`Effort`] how they spent their time: waiting for a request (the server
//! or the link is slower than this agent), answering (this agent's CPU or disk), or waiting
//! for room in the reply queue. With the CPU time of the client's cores (`/proc`), every
//! [`WINDOW`] it steps the level: down while the client's CPU is saturated (its cores barely
//! idle, or the agent's threads using all the cores it may run on) and the workers have work,
//! up while replies wait for the link and the CPU has room to spare, never above the level
//! the server asked for nor below [`FLOOR`]. Replies that wait while the CPU is saturated do
//! not count as a slow link: ssh's encryption on the same core makes them wait too.
//! When the server stores uncompressed chunks as they arrive (capability `raw-chunks`), one
//! step lies below [`FLOOR`]: [`UNCOMPRESSED`], chunks sent as they are.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xstore_format::protocol::WireChunk;

/// The fastest level the agent steps down to. Measured with the client pinned to one core
/// over an unshaped veth (a Debian system tree, 676 MB): fixed level 3 pulled at 149 MB/s,
/// 1 at 147, -1 at 185, -3 at 197, -5 at 192 (more bytes for ssh and the kernel to carry).
pub const FLOOR: i32 = -3;

/// The step below [`FLOOR`] (only with `raw-chunks`): chunks leave uncompressed. zstd at −3
/// still costs the client's core about 290 MB/s on a Debian tree, where ssh's cipher runs at
/// over 3 GB/s: on a link that carries the raw bytes, sending them costs less than
/// compressing them. Not a zstd level: [`wire_chunk`] sends the bytes as they are.
pub const UNCOMPRESSED: i32 = FLOOR - 1;

/// How often the level may change.
pub const WINDOW: Duration = Duration::from_millis(100);

/// Above this share of the workers' time waiting for room in the reply queue, the link is
/// the bound: compress harder.
const BLOCKED_SHARE_UP: f64 = 0.25;
/// Below this share of the workers' time waiting for a request, the agent is the bound:
/// compress faster (when the CPU's load is unknown).
const IDLE_SHARE_DOWN: f64 = 0.05;
/// Below this share of idle time on the cores the agent may run on, the CPU has no room to
/// spare: compressing harder would slow the pull. (Over an unshaped veth with the client on
/// one core, 10 % let the level wander up and the pull ran at 169 MB/s where a fixed −3 ran
/// at 197.)
const CPU_IDLE_SATURATED: f64 = 0.30;
/// The agent's threads using this share of the cores it may run on (at most one per
/// worker) saturate it as well.
const AGENT_CPU_SATURATED: f64 = 0.80;

/// Where the workers' time went during one window, summed over the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeSpent {
    /// Waiting for a request.
    pub idle: Duration,
    /// Answering requests (reading, chunking, hashing, compressing).
    pub busy: Duration,
    /// Waiting for room to queue a reply.
    pub blocked: Duration,
}

/// Which way the level moves after a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Compress harder: the link is the bound.
    Up,
    /// Compress faster: the agent is the bound.
    Down,
    /// Neither is clearly the bound.
    Hold,
}

impl TimeSpent {
    /// The step these shares call for, given whether the client's CPU was saturated during
    /// the window (`None`: unknown).
    pub fn step(&self, cpu_saturated: Option<bool>) -> Step {
        let total = (self.idle + self.busy + self.blocked).as_secs_f64();
        if total <= 0.0 {
            return Step::Hold;
        }
        let idle = self.idle.as_secs_f64() / total;
        let blocked = self.blocked.as_secs_f64() / total;
        match cpu_saturated {
            // The CPU is the bound; unless the workers mostly wait for requests (then the
            // CPU is someone else's and the server sets the pace).
            Some(true) if idle < 0.5 => Step::Down,
            Some(true) => Step::Hold,
            Some(false) if blocked > BLOCKED_SHARE_UP => Step::Up,
            Some(false) => Step::Hold,
            None if blocked > BLOCKED_SHARE_UP => Step::Up,
            None if idle < IDLE_SHARE_DOWN && self.busy > Duration::ZERO => Step::Down,
            None => Step::Hold,
        }
    }
}

/// CPU time counters from `/proc`, in clock ticks: the agent's own (all threads), and the
/// idle and total time of the cores it may run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    /// The agent process's user + system time.
    pub agent: u64,
    /// Idle + iowait time of the allowed cores.
    pub idle: u64,
    /// All time of the allowed cores.
    pub total: u64,
    /// How many cores the agent may run on.
    pub cores: u32,
}

impl CpuSample {
    /// Reads the counters; `None` where `/proc` does not tell.
    pub fn now() -> Option<CpuSample> {
        let allowed = allowed_cpus(&std::fs::read_to_string("/proc/self/status").ok()?)?;
        let (idle, total) = cpu_times(&std::fs::read_to_string("/proc/stat").ok()?, &allowed)?;
        Some(CpuSample {
            agent: own_cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?,
            idle,
            total,
            cores: allowed.len() as u32,
        })
    }

    /// Whether the CPU was saturated between `earlier` and this sample, for an agent with
    /// `workers` worker threads.
    pub fn saturated_since(&self, earlier: &CpuSample, workers: usize) -> Option<bool> {
        let total = self.total.checked_sub(earlier.total)?;
        let idle = self.idle.checked_sub(earlier.idle)?;
        let agent = self.agent.checked_sub(earlier.agent)?;
        if total == 0 || self.cores == 0 {
            return None;
        }
        let idle_share = idle as f64 / total as f64;
        // The agent's share of the time of the cores it can keep busy (one per worker).
        let usable = workers.clamp(1, self.cores as usize) as f64 / self.cores as f64;
        let agent_share = agent as f64 / (total as f64 * usable);
        Some(idle_share < CPU_IDLE_SATURATED || agent_share >= AGENT_CPU_SATURATED)
    }
}

/// Most cores [`allowed_cpus`] accepts (the kernel's `NR_CPUS` limit).
const MAX_CPUS: usize = 8192;

/// The cores in `Cpus_allowed_list` of a `/proc/PID/status` text (`0-3,5`).
fn allowed_cpus(status: &str) -> Option<Vec<u32>> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?);
                if b < a || (b - a) as usize >= MAX_CPUS {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
        // More than any machine has: the text is not what the kernel writes.
        if cpus.len() > MAX_CPUS {
            return None;
        }
    }
    Some(cpus)
}

/// Idle (idle + iowait) and total ticks of `cpus` in a `/proc/stat` text.
fn cpu_times(stat: &str, cpus: &[u32]) -> Option<(u64, u64)> {
    let (mut idle, mut total) = (0u64, 0u64);
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(n) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !cpus.contains(&n) {
            continue;
        }
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let values: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
        if values.len() < 5 {
            return None;
        }
        idle += values[3] + values[4];
        total += values.iter().sum::<u64>();
    }
    Some((idle, total))
}

/// utime + stime of a `/proc/self/stat` text (fields 14 and 15; the command name, field 2,
/// may hold spaces and parentheses, so fields are counted after its last `)`).
fn own_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The level one `step` away from `level`, within `floor..=ceiling` (level 0, zstd's
/// "default", is skipped).
pub fn next_level(level: i32, step: Step, floor: i32, ceiling: i32) -> i32 {
    let next = match step {
        Step::Up if level == -1 => 1,
        Step::Up => level + 1,
        Step::Down if level == 1 => -1,
        Step::Down => level - 1,
        Step::Hold => level,
    };
    next.clamp(floor.min(ceiling), ceiling)
}

/// The lowest step of the ladder: the server's level when the agent may not adapt
/// (`adaptive-level` off), [`FLOOR`] when it may, [`UNCOMPRESSED`] when the server also
/// stores uncompressed chunks as they arrive (`raw-chunks`).
pub fn lowest_level(ceiling: i32, adaptive: bool, uncompressed: bool) -> i32 {
    match (adaptive, uncompressed) {
        (false, _) => ceiling,
        (true, false) => FLOOR,
        (true, true) => UNCOMPRESSED,
    }
}

/// `raw` as it goes on the wire at `level`: uncompressed at [`UNCOMPRESSED`], else a zstd
/// frame at `level` (or `raw` itself when the frame is not smaller).
pub fn wire_chunk(raw: &[u8], level: i32) -> WireChunk {
    if level == UNCOMPRESSED {
        WireChunk::raw(raw)
    } else {
        WireChunk::compressed(raw, level)
    }
}

/// The level the workers compress at, shared by them and moved by what they report.
#[derive(Debug)]
pub struct Effort {
    level: AtomicI32,
    ceiling: i32,
    floor: i32,
    window: Mutex<Window>,
    workers: usize,
    changes: AtomicU64,
}

/// One window's start and what was reported in it.
#[derive(Debug)]
struct Window {
    start: Instant,
    cpu: Option<CpuSample>,
    spent: TimeSpent,
}

impl Window {
    fn new() -> Window {
        Window {
            start: Instant::now(),
            cpu: CpuSample::now(),
            spent: TimeSpent::default(),
        }
    }
}

impl Effort {
    /// Compression at `ceiling` (the server's level) by `workers` threads, adapted between
    /// `floor` ([`lowest_level`]) and it.
    pub fn new(ceiling: i32, floor: i32, workers: usize) -> Effort {
        Effort {
            level: AtomicI32::new(ceiling),
            ceiling,
            floor: floor.min(ceiling),
            window: Mutex::new(Window::new()),
            workers,
            changes: AtomicU64::new(0),
        }
    }

    /// Compression held at `level`, whatever the workers report.
    pub fn pinned(level: i32) -> Effort {
        Effort::new(level, level, 1)
    }

    /// The level to compress the next chunk at.
    pub fn level(&self) -> i32 {
        self.level.load(Ordering::Relaxed)
    }

    /// How many times the level changed.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Adds one request's time; at the end of a window, steps the level.
    pub fn record(&self, spent: TimeSpent) {
        if self.floor == self.ceiling {
            return;
        }
        // A poisoned lock only loses statistics: the level stays where it is.
        let Ok(mut window) = self.window.lock() else {
            return;
        };
        let sum = &mut window.spent;
        sum.idle += spent.idle;
        sum.busy += spent.busy;
        sum.blocked += spent.blocked;
        if window.start.elapsed() < WINDOW {
            return;
        }
        let next_window = Window::new();
        let saturated = match (&next_window.cpu, &window.cpu) {
            (Some(now), Some(then)) => now.saturated_since(then, self.workers),
            _ => None,
        };
        let step = window.spent.step(saturated);
        *window = next_window;
        self.apply(step);
    }

    /// Moves the level one `step`.
    fn apply(&self, step: Step) {
        let level = self.level();
        let next = next_level(level, step, self.floor, self.ceiling);
        if next != level {
            self.level.store(next, Ordering::Relaxed);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(idle: u64, busy: u64, blocked: u64) -> TimeSpent {
        TimeSpent {
            idle: Duration::from_millis(idle),
            busy: Duration::from_millis(busy),
            blocked: Duration::from_millis(blocked),
        }
    }

    #[test]
    fn the_bound_decides_the_step() {
        for cpu in [None, Some(true)] {
            // Always busy: the agent's CPU is the bound.
            assert_eq!(spent(1, 199, 0).step(cpu), Step::Down);
            // Waiting for the server: neither.
            assert_eq!(spent(120, 80, 0).step(cpu), Step::Hold);
            assert_eq!(spent(0, 0, 0).step(cpu), Step::Hold);
            assert_eq!(spent(50, 0, 0).step(cpu), Step::Hold);
        }
        // Replies wait for the link while the CPU has room.
        assert_eq!(spent(0, 100, 100).step(Some(false)), Step::Up);
        assert_eq!(spent(0, 100, 100).step(None), Step::Up);
        // Replies wait while the CPU is saturated (ssh on the same core): still the CPU.
        assert_eq!(spent(0, 100, 100).step(Some(true)), Step::Down);
        // Busy with room to spare on the CPU: the disk, say.
        assert_eq!(spent(1, 199, 0).step(Some(false)), Step::Hold);
        // Waiting for the server with room to spare: holding. Compressing harder there was
        // measured slower (ARCHITECTURE.md, "Compression effort").
        assert_eq!(spent(120, 80, 0).step(Some(false)), Step::Hold);
    }

    #[test]
    fn proc_texts_are_read_as_the_kernel_writes_them() {
        let status = "Name:\tx\nCpus_allowed:\tf\nCpus_allowed_list:\t0-2,5\nMems_allowed:\t1\n";
        assert_eq!(allowed_cpus(status), Some(vec![0, 1, 2, 5]));
        assert_eq!(allowed_cpus("Name: x\n"), None);
        assert_eq!(allowed_cpus("Cpus_allowed_list:\t0-4294967295\n"), None);
        assert_eq!(allowed_cpus("Cpus_allowed_list:\t3-1\n"), None);
        let stat = "cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 1 0 1 50 2 0 0 0 0 0\ncpu1 3 0 3 10 1 1 1 0 0 0\nintr 5\n";
        assert_eq!(cpu_times(stat, &[0]), Some((52, 54)));
        assert_eq!(cpu_times(stat, &[0, 1]), Some((63, 73)));
        let own = "42 (a (b) c) R 1 1 1 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 4 0 5 1 1";
        assert_eq!(own_cpu_ticks(own), Some(10));
        let now = CpuSample::now().expect("/proc on Linux");
        assert!(now.cores >= 1 && now.total >= now.idle);
        let later = CpuSample {
            agent: now.agent + 80,
            idle: now.idle + 10,
            total: now.total + 100,
            cores: 1,
        };
        let earlier = CpuSample { cores: 1, ..now };
        assert_eq!(later.saturated_since(&earlier, 2), Some(true));
        let calm = CpuSample {
            agent: now.agent + 20,
            idle: now.idle + 70,
            ..later
        };
        assert_eq!(calm.saturated_since(&earlier, 2), Some(false));
    }

    #[test]
    fn levels_step_within_the_floor_and_the_ceiling_skipping_zero() {
        assert_eq!(next_level(3, Step::Down, FLOOR, 3), 2);
        assert_eq!(next_level(1, Step::Down, FLOOR, 3), -1);
        assert_eq!(next_level(FLOOR, Step::Down, FLOOR, 3), FLOOR);
        assert_eq!(next_level(-1, Step::Up, FLOOR, 3), 1);
        assert_eq!(next_level(3, Step::Up, FLOOR, 3), 3);
        assert_eq!(next_level(2, Step::Hold, FLOOR, 3), 2);
        // A ceiling below the floor (a server asking for a fast level) wins.
        assert_eq!(next_level(-5, Step::Down, FLOOR, -5), -5);
    }

    #[test]
    fn a_fixed_effort_never_moves() {
        let e = Effort::new(3, lowest_level(3, false, true), 2);
        std::thread::sleep(WINDOW);
        e.record(spent(0, 500, 0));
        e.apply(Step::Down);
        assert_eq!((e.level(), e.changes()), (3, 0));
        let e = Effort::new(3, lowest_level(3, true, false), 2);
        e.apply(Step::Down);
        assert_eq!((e.level(), e.changes()), (2, 1));
        for _ in 0..10 {
            e.apply(Step::Down);
        }
        assert_eq!(e.level(), FLOOR);
        e.apply(Step::Up);
        assert_eq!(e.level(), FLOOR + 1);
    }

    #[test]
    fn below_the_floor_chunks_go_uncompressed_only_when_the_server_stores_them_so() {
        let text = b"the same words again and again ".repeat(64);
        let e = Effort::new(3, lowest_level(3, true, true), 2);
        assert!(wire_chunk(&text, e.level()).zstd);
        for _ in 0..10 {
            e.apply(Step::Down);
        }
        assert_eq!(e.level(), UNCOMPRESSED);
        let sent = wire_chunk(&text, e.level());
        assert_eq!(
            (sent.zstd, sent.raw_len as usize, &sent.bytes[..]),
            (false, text.len(), &text[..])
        );
        // The link became the bound: back to zstd at the floor, then up.
        e.apply(Step::Up);
        assert_eq!(e.level(), FLOOR);
        assert!(wire_chunk(&text, e.level()).zstd);
        // Without `raw-chunks` the floor is the last step.
        let e = Effort::new(3, lowest_level(3, true, false), 2);
        for _ in 0..10 {
            e.apply(Step::Down);
        }
        assert_eq!(e.level(), FLOOR);
        assert!(wire_chunk(&text, e.level()).zstd);
    }
}
