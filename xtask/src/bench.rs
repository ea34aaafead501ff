//! `cargo xtask bench`: the benchmark suite (criterion, memory, peers, CLI, idle RSS) and its report.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::cmd;

/// How a step ended, when it did not fail.
#[derive(Debug)]
enum Outcome {
    Done,
    Skipped(String),
}

/// Shared state of one `cargo xtask bench` run.
#[derive(Debug)]
struct Bench {
    root: PathBuf,
    quick: bool,
    /// The report text so far (everything printed is also appended here).
    report: String,
    /// One summary line per step.
    summary: Vec<String>,
    /// Whether the release build succeeded (later steps need its binaries).
    build_ok: bool,
    /// Cached result of looking for / installing hyperfine.
    hyperfine: Option<Result<(), String>>,
}

/// Run the whole suite. Fails only if the release build fails.
pub fn run(root: &Path, quick: bool) -> Result<()> {
    let mut b = Bench {
        root: root.to_path_buf(),
        quick,
        report: String::new(),
        summary: Vec::new(),
        build_ok: false,
        hyperfine: None,
    };
    let bench_dir = b.bench_dir();
    fs::create_dir_all(&bench_dir).with_context(|| format!("creating {}", bench_dir.display()))?;

    b.line(format!(
        "# hive bench report{}",
        if quick { " (--quick)" } else { "" }
    ));
    b.step("a", "machine", Bench::machine);
    b.step("b", "release build", Bench::build);
    b.step(
        "c",
        "criterion (hive-kernel/benches/kernel)",
        Bench::criterion,
    );
    b.step("d", "memory probe", Bench::mem_probe);
    b.step("e1", "peer: asyncio_ref.py a c d", Bench::peer_asyncio);
    b.step("e2", "peer: proc_bench.sh", Bench::peer_proc);
    b.step("f1", "hive: 64 x sleep 0.05 at 8", Bench::hive_sleep64);
    b.step(
        "f2",
        "hive vs xargs: 1000 x /bin/true at 8",
        Bench::hive_vs_xargs,
    );
    b.step(
        "g",
        "idle RSS: hive agents, 8 process agents",
        Bench::idle_rss,
    );

    b.line(String::new());
    b.line("## summary".to_string());
    for s in b.summary.clone() {
        b.line(s);
    }
    let report_path = bench_dir.join("report.txt");
    fs::write(&report_path, &b.report)
        .with_context(|| format!("writing {}", report_path.display()))?;
    println!("report written to {}", report_path.display());
    if !b.build_ok {
        bail!("the release build failed; see the report");
    }
    Ok(())
}

impl Bench {
    fn target_dir(&self) -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(d) => self.root.join(d),
            None => self.root.join("target"),
        }
    }

    fn bench_dir(&self) -> PathBuf {
        self.target_dir().join("bench")
    }

    /// `path` relative to the workspace root when it is inside it (commands run there).
    fn rel(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root).unwrap_or(path).to_path_buf()
    }

    fn release_bin(&self, rel: &str) -> PathBuf {
        self.rel(&self.target_dir().join("release").join(rel))
    }

    /// Print a line and append it to the report.
    fn line(&mut self, s: String) {
        println!("{s}");
        self.report.push_str(&s);
        self.report.push('\n');
    }

    fn step(&mut self, id: &str, name: &str, f: fn(&mut Bench) -> Result<Outcome>) {
        self.line(String::new());
        self.line(format!("## [{id}] {name}"));
        let start = Instant::now();
        let result = f(self);
        let secs = start.elapsed().as_secs_f64();
        let status = match result {
            Ok(Outcome::Done) => format!("ok ({secs:.1} s)"),
            Ok(Outcome::Skipped(why)) => format!("SKIPPED: {why}"),
            Err(e) => format!("FAILED: {e:#}"),
        };
        self.line(format!("-- [{id}] {status}"));
        self.summary.push(format!("[{id}] {name}: {status}"));
    }

    /// A command whose cwd is the workspace root.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.root);
        c
    }

    /// Print `$ cmd`, run it streaming its output into the report; Err if it
    /// fails or outlives `timeout`.
    fn stream(&mut self, cmd: &mut Command, timeout: Option<Duration>) -> Result<String> {
        let shown = cmd::display(cmd);
        self.line(format!("$ {}", cmd::display_in(cmd)));
        let r = cmd::run_piped(cmd, true, timeout)?;
        self.report.push_str(&r.all);
        if !r.status.success() {
            bail!("`{shown}` exited with {}", r.status);
        }
        Ok(r.all)
    }

    /// Print `$ cmd`, run it quietly and return its stdout; on failure the tail
    /// of its output goes into the report. Err if it fails or outlives `timeout`.
    fn capture(&mut self, cmd: &mut Command, timeout: Duration) -> Result<String> {
        let shown = cmd::display(cmd);
        self.line(format!("$ {}", cmd::display_in(cmd)));
        let r = cmd::run_piped(cmd, false, Some(timeout))?;
        if !r.status.success() {
            let lines: Vec<&str> = r.all.lines().collect();
            for l in &lines[lines.len().saturating_sub(20)..] {
                self.line(format!("  {l}"));
            }
            bail!("`{shown}` exited with {}", r.status);
        }
        Ok(r.stdout)
    }

    /// Skip reason if the release build did not produce `bin`.
    fn need_release(&self, bin: &Path) -> Option<Outcome> {
        if !self.build_ok {
            return Some(Outcome::Skipped("the release build failed".into()));
        }
        if !self.root.join(bin).is_file() {
            return Some(Outcome::Skipped(format!("{} not found", bin.display())));
        }
        None
    }

    /// Make sure hyperfine is on PATH, installing it with apt-get when root.
    fn ensure_hyperfine(&mut self) -> Result<(), String> {
        if let Some(r) = &self.hyperfine {
            return r.clone();
        }
        let r = self.find_or_install_hyperfine();
        self.hyperfine = Some(r.clone());
        r
    }

    fn find_or_install_hyperfine(&mut self) -> Result<(), String> {
        if cmd::have("hyperfine") {
            return Ok(());
        }
        let root_user = cmd::stdout_of(Command::new("id").arg("-u")).as_deref() == Some("0");
        if !root_user {
            return Err(
                "hyperfine not on PATH and not root (install it: apt-get install hyperfine)".into(),
            );
        }
        if !cmd::have("apt-get") {
            return Err("hyperfine not on PATH and no apt-get to install it".into());
        }
        self.line("hyperfine not on PATH; installing it with apt-get".into());
        let mut update = Command::new("apt-get");
        update
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive");
        if let Err(e) = self.stream(&mut update, None) {
            return Err(format!("apt-get update failed: {e:#}"));
        }
        let mut install = Command::new("apt-get");
        install
            .args(["install", "-y", "hyperfine"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        if let Err(e) = self.stream(&mut install, None) {
            return Err(format!("apt-get install hyperfine failed: {e:#}"));
        }
        if cmd::have("hyperfine") {
            Ok(())
        } else {
            Err("hyperfine still not on PATH after apt-get install".into())
        }
    }

    // ---- steps ----------------------------------------------------------

    /// (a) One line describing the machine.
    fn machine(&mut self) -> Result<Outcome> {
        let run = |program: &str, args: &[&str]| {
            cmd::stdout_of(Command::new(program).args(args)).unwrap_or_else(|| "?".into())
        };
        let uname = run("uname", &["-a"]);
        let nproc = run("nproc", &[]);
        let model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| cpu_model(&s))
            .unwrap_or_else(|| "?".into());
        let date = run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
        let rustc = run("rustc", &["--version"]);
        self.line(format!(
            "machine: {uname} | nproc={nproc} | cpu={model} | {rustc} | date={date}"
        ));
        Ok(Outcome::Done)
    }

    /// (b) `cargo build --release -p hive-kernel --bins --examples`.
    fn build(&mut self) -> Result<Outcome> {
        let mut c = self.command(cmd::cargo());
        c.args([
            "build",
            "--release",
            "-p",
            "hive-kernel",
            "--bins",
            "--examples",
        ]);
        self.stream(&mut c, None)?;
        self.build_ok = true;
        Ok(Outcome::Done)
    }

    /// (c) Criterion benches of the kernel.
    fn criterion(&mut self) -> Result<Outcome> {
        let mut c = self.command(cmd::cargo());
        c.args([
            "bench",
            "-p",
            "hive-kernel",
            "--bench",
            "kernel",
            "--",
            "--noplot",
        ]);
        if self.quick {
            c.arg("--quick");
        }
        self.stream(&mut c, None)?;
        Ok(Outcome::Done)
    }

    /// (d) The `mem_probe` example prints its own figures.
    fn mem_probe(&mut self) -> Result<Outcome> {
        let bin = self.release_bin("examples/mem_probe");
        if let Some(skip) = self.need_release(&bin) {
            return Ok(skip);
        }
        let mut c = self.command(&bin);
        self.stream(&mut c, Some(Duration::from_secs(600)))?;
        Ok(Outcome::Done)
    }

    fn peers_dir(&self) -> Option<PathBuf> {
        let dir = self.root.join("../shared/peers");
        dir.is_dir().then(|| dir.canonicalize().unwrap_or(dir))
    }

    /// (e1) The Python asyncio reference: workloads a, c, d.
    fn peer_asyncio(&mut self) -> Result<Outcome> {
        let Some(dir) = self.peers_dir() else {
            return Ok(Outcome::Skipped("../shared/peers not found".into()));
        };
        if !cmd::have("python3") {
            return Ok(Outcome::Skipped("python3 not on PATH".into()));
        }
        let mut c = Command::new("python3");
        c.current_dir(&dir).args(["asyncio_ref.py", "a", "c", "d"]);
        self.stream(&mut c, None)?;
        Ok(Outcome::Done)
    }

    /// (e2) make -j8 / xargs -P8 references (needs hyperfine).
    fn peer_proc(&mut self) -> Result<Outcome> {
        let Some(dir) = self.peers_dir() else {
            return Ok(Outcome::Skipped("../shared/peers not found".into()));
        };
        if let Err(why) = self.ensure_hyperfine() {
            return Ok(Outcome::Skipped(why));
        }
        let mut c = Command::new("bash");
        c.current_dir(&dir).arg("proc_bench.sh");
        if self.quick {
            c.env("QUICK", "1");
        }
        self.stream(&mut c, None)?;
        Ok(Outcome::Done)
    }

    /// Write the task files for step f; returns their root-relative paths.
    fn write_task_files(&self) -> Result<(PathBuf, PathBuf)> {
        let dir = self.bench_dir();
        fs::create_dir_all(&dir)?;
        let sleep = dir.join("sleep64.json");
        let tru = dir.join("true1000.json");
        fs::write(&sleep, serde_json::to_string_pretty(&sleep64_tasks())?)
            .with_context(|| format!("writing {}", sleep.display()))?;
        fs::write(&tru, serde_json::to_string_pretty(&true1000_tasks())?)
            .with_context(|| format!("writing {}", tru.display()))?;
        Ok((self.rel(&sleep), self.rel(&tru)))
    }

    /// (f1) `hive run` over 64 sleeps at concurrency 8: its own speedup figure.
    fn hive_sleep64(&mut self) -> Result<Outcome> {
        let hive = self.release_bin("hive");
        if let Some(skip) = self.need_release(&hive) {
            return Ok(skip);
        }
        let (sleep, _) = self.write_task_files()?;
        let mut c = self.command(&hive);
        c.arg("run")
            .arg("--tasks")
            .arg(format!("@{}", sleep.display()))
            .args(["--max-concurrency", "8", "--json"]);
        let out = self.capture(&mut c, Duration::from_secs(120))?;
        let speedup = speedup_vs_serial(&out)?;
        self.line(format!(
            "hive.c.sleep64.c8.speedup_vs_serial: {speedup:.2} x   (ideal 8.00 x)"
        ));
        Ok(Outcome::Done)
    }

    /// (f2) hyperfine, one invocation: `hive run` of 1000 `/bin/true` beside xargs -P8.
    fn hive_vs_xargs(&mut self) -> Result<Outcome> {
        let hive = self.release_bin("hive");
        if let Some(skip) = self.need_release(&hive) {
            return Ok(skip);
        }
        if let Err(why) = self.ensure_hyperfine() {
            return Ok(Outcome::Skipped(why));
        }
        let (_, tru) = self.write_task_files()?;
        let json_out = self.rel(&self.bench_dir().join("hive_vs_xargs.json"));
        let hive_cmd = format!(
            "{} run --tasks @{} --max-concurrency 8",
            hive.display(),
            tru.display()
        );
        let xargs_cmd = "seq 1000 | xargs -P8 -n1 /bin/true";
        let mut c = self.command("hyperfine");
        c.args([
            "--style",
            "basic",
            "--warmup",
            "1",
            "--runs",
            "5",
            "--export-json",
        ])
        .arg(&json_out)
        .args(["--command-name", "hive", &hive_cmd])
        .args(["--command-name", "xargs", xargs_cmd]);
        self.stream(&mut c, Some(Duration::from_secs(900)))?;

        let path = self.root.join(&json_out);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let medians = hyperfine_medians(&text)?;
        let (hive_m, xargs_m) = match medians.as_slice() {
            [h, x, ..] => (*h, *x),
            _ => bail!(
                "expected 2 results in {}, found {}",
                path.display(),
                medians.len()
            ),
        };
        let (hive_rate, xargs_rate) = (1000.0 / hive_m, 1000.0 / xargs_m);
        self.line(format!(
            "hive.d.spawn_true1000.c8.wall: {hive_m:.4} s (median)"
        ));
        self.line(format!(
            "xargs.d.spawn_true1000.P8.wall: {xargs_m:.4} s (median)"
        ));
        self.line(format!(
            "hive.d.spawn_true1000.c8.rate: {hive_rate:.0} procs/s"
        ));
        self.line(format!(
            "xargs.d.spawn_true1000.P8.rate: {xargs_rate:.0} procs/s"
        ));
        self.line(format!(
            "ratio hive/xargs: rate {:.2} x (>1: hive faster), wall {:.2} x",
            hive_rate / xargs_rate,
            hive_m / xargs_m
        ));
        Ok(Outcome::Done)
    }

    /// (g) RSS of an idle `hive agents` holding 8 process agents.
    fn idle_rss(&mut self) -> Result<Outcome> {
        let hive = self.release_bin("hive");
        if let Some(skip) = self.need_release(&hive) {
            return Ok(skip);
        }
        let dir = self.bench_dir();
        let config = dir.join("idle.toml");
        let state = dir.join("state");
        let state_rel = self.rel(&state);
        fs::write(&config, idle_config(&state_rel.to_string_lossy()))
            .with_context(|| format!("writing {}", config.display()))?;
        if state.exists() {
            fs::remove_dir_all(&state).with_context(|| format!("clearing {}", state.display()))?;
        }
        let log_path = dir.join("idle.log");
        let log = fs::File::create(&log_path)?;
        let log_err = log.try_clone()?;

        let mut c = self.command(&hive);
        c.args(["agents", "--config"]).arg(self.rel(&config));
        self.line(format!(
            "$ {}   (output in {})",
            cmd::display_in(&c),
            self.rel(&log_path).display()
        ));
        let mut child = c
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .context("could not start hive agents")?;
        let pid = child.id();

        thread::sleep(Duration::from_secs(2));
        if let Some(status) = child.try_wait()? {
            self.log_tail(&log_path);
            bail!("hive agents exited before the measurement: {status}");
        }
        let rss = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(anyhow::Error::from)
            .and_then(|s| vm_rss_kib(&s).ok_or_else(|| anyhow!("no VmRSS line")));
        match &rss {
            Ok(kib) => self.line(format!(
                "hive.idle_rss.agents8: {:.1} MiB ({kib} KiB, kernel process only)",
                *kib as f64 / 1024.0
            )),
            Err(e) => self.line(format!("could not read VmRSS of pid {pid}: {e:#}")),
        }

        self.line(format!("$ kill -INT {pid}"));
        let sent = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let start = Instant::now();
        let exited = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if !sent || start.elapsed() >= Duration::from_secs(10) {
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        match exited {
            Some(status) => self.line(format!(
                "exited {:.0} ms after SIGINT: {status}",
                start.elapsed().as_secs_f64() * 1000.0
            )),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                self.log_tail(&log_path);
                bail!("hive agents did not exit within 10 s of SIGINT (sent: {sent}); killed it");
            }
        }
        rss.map(|_| Outcome::Done)
    }

    fn log_tail(&mut self, path: &Path) {
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(20);
        for l in &lines[from..] {
            self.line(format!("  {l}"));
        }
    }
}

/// The first `model name` in /proc/cpuinfo.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// VmRSS in KiB from /proc/<pid>/status.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn sleep64_tasks() -> Value {
    Value::Array(
        (0..64)
            .map(|i| json!({"id": format!("s{i}"), "command": "sleep", "args": ["0.05"]}))
            .collect(),
    )
}

fn true1000_tasks() -> Value {
    Value::Array(
        (0..1000)
            .map(|i| json!({"id": format!("t{i}"), "command": "/bin/true"}))
            .collect(),
    )
}

fn idle_config(state_dir: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "[kernel]\nstate_dir = {}\n\n[[pools]]\nrole = \"idle\"\ndriver = \"process\"\nsize = 8\ncapacity = 1\n",
        Value::String(state_dir.to_string())
    );
    s
}

/// `metrics.speedup_vs_serial` from `hive run --json` output: the whole output
/// as one JSON document, else the last line that parses as one.
fn speedup_vs_serial(out: &str) -> Result<f64> {
    let docs = std::iter::once(out).chain(out.lines().rev());
    for doc in docs {
        if let Ok(v) = serde_json::from_str::<Value>(doc.trim()) {
            if let Some(x) = v
                .pointer("/metrics/speedup_vs_serial")
                .and_then(Value::as_f64)
            {
                return Ok(x);
            }
        }
    }
    let head: String = out.chars().take(300).collect();
    bail!("no metrics.speedup_vs_serial in `hive run --json` output: {head:?}")
}

/// The `median` of each result in a hyperfine `--export-json` file, in order.
fn hyperfine_medians(text: &str) -> Result<Vec<f64>> {
    let v: Value = serde_json::from_str(text).context("parsing hyperfine JSON")?;
    let results = v
        .get("results")
        .and_then(Value::as_array)
        .context("hyperfine JSON has no `results`")?;
    results
        .iter()
        .map(|r| {
            r.get("median")
                .and_then(Value::as_f64)
                .context("hyperfine result without `median`")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_files() -> Result<()> {
        let s = sleep64_tasks();
        let s = s.as_array().context("array")?;
        assert_eq!(s.len(), 64);
        assert_eq!(
            s[3],
            json!({"id": "s3", "command": "sleep", "args": ["0.05"]})
        );
        let t = true1000_tasks();
        let t = t.as_array().context("array")?;
        assert_eq!(t.len(), 1000);
        assert_eq!(t[999], json!({"id": "t999", "command": "/bin/true"}));
        Ok(())
    }

    #[test]
    fn idle_config_is_the_documented_toml() -> Result<()> {
        let text = idle_config("target/bench/state");
        let v: toml::Table = text.parse()?;
        let expected: toml::Table = r#"
            [kernel]
            state_dir = "target/bench/state"
            [[pools]]
            role = "idle"
            driver = "process"
            size = 8
            capacity = 1
        "#
        .parse()?;
        assert_eq!(v, expected);
        Ok(())
    }

    #[test]
    fn parses_speedup() -> Result<()> {
        let doc = r#"{"results": [], "metrics": {"wall_s": 0.41, "speedup_vs_serial": 7.8}}"#;
        assert!((speedup_vs_serial(doc)? - 7.8).abs() < 1e-9);
        let pretty = "{\n  \"metrics\": {\n    \"speedup_vs_serial\": 7\n  }\n}\n";
        assert!((speedup_vs_serial(pretty)? - 7.0).abs() < 1e-9);
        let lines = format!("{{\"event\":\"done\",\"id\":\"s1\"}}\n{doc}\n");
        assert!((speedup_vs_serial(&lines)? - 7.8).abs() < 1e-9);
        assert!(speedup_vs_serial("not json").is_err());
        Ok(())
    }

    #[test]
    fn parses_hyperfine_and_proc() -> Result<()> {
        let hf = r#"{"results": [{"command": "hive", "median": 0.5}, {"command": "xargs", "median": 0.25}]}"#;
        assert_eq!(hyperfine_medians(hf)?, [0.5, 0.25]);
        assert!(hyperfine_medians("{}").is_err());
        let status = "Name:\thive\nVmPeak:\t  9000 kB\nVmRSS:\t    7168 kB\n";
        assert_eq!(vm_rss_kib(status), Some(7168));
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: x\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        Ok(())
    }
}
